"""Choose a storage backend from a URL."""

from __future__ import annotations

from aiki._core.clock import Clock, SystemClock
from aiki.errors import ConfigError
from aiki.storage._protocol import Storage
from aiki.storage.sqlite import SqliteStorage


def open_storage(url: str, *, clock: Clock | None = None) -> Storage:
    """Build (not yet open) the storage a URL names.

    `sqlite:///relative/path.db`, `sqlite:////absolute/path.db` and `sqlite://:memory:` are
    understood.

    Raises:
        ConfigError: the URL names no backend Aiki has.
    """
    if url.startswith("sqlite://"):
        path = url.removeprefix("sqlite://")
        if path.startswith("/"):
            path = path[1:]
        if not path:
            raise ConfigError(f"storage URL {url!r} names no database file")
        return SqliteStorage(path, clock=clock or SystemClock())
    scheme = url.split(":", 1)[0] if ":" in url else url
    raise ConfigError(
        f"storage URL {url!r}: unknown scheme {scheme!r} (expected sqlite:///path/to/file.db)"
    )
