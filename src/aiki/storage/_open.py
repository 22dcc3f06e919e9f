"""Choose a storage backend from a URL."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from aiki._core.clock import Clock, SystemClock
from aiki.errors import ConfigError
from aiki.storage._protocol import Storage
from aiki.storage.sqlite import SqliteStorage


def open_storage(url: str, *, clock: Clock | None = None) -> Storage:
    """Build (not yet open) the storage a URL names.

    `sqlite:///relative/path.db`, `sqlite:////absolute/path.db` and `sqlite://:memory:` are
    understood; `?synchronous=normal` trades durability against power loss for latency.
    `postgresql://user:password@host:port/database` (or `postgres://`) is PostgreSQL, with
    libpq's URL options (`?sslmode=require`...) and Aiki's own `pool_min_size` and
    `pool_max_size` (connections per server: 2 and 10); it needs the extra `aiki[postgres]`.

    A PostgreSQL storage reads time from the database clock, so that servers on several
    machines agree on due times: a `SystemClock` is not passed on to it; a test clock is.

    Raises:
        ConfigError: the URL names no backend Aiki has.
    """
    if url.startswith("sqlite://"):
        location, _, query = url.removeprefix("sqlite://").partition("?")
        if location.startswith("/"):
            location = location[1:]
        if not location:
            raise ConfigError(f"storage URL {url!r} names no database file")
        options = dict(parse_qsl(query, keep_blank_values=True))
        synchronous = options.pop("synchronous", "full")
        if options:
            raise ConfigError(
                f"storage URL {url!r}: unknown option(s) {', '.join(sorted(options))} "
                "(SQLite understands synchronous=full|normal)"
            )
        return SqliteStorage(location, clock=clock or SystemClock(), synchronous=synchronous)
    if url.startswith(("postgresql://", "postgres://")):
        return _postgres(url, clock)
    scheme = url.split(":", 1)[0] if ":" in url else url
    raise ConfigError(
        f"storage URL {url!r}: unknown scheme {scheme!r}; the schemes supported are "
        "sqlite:// (sqlite:///path/to/file.db) and postgresql:// or postgres:// "
        "(postgresql://user@host:5432/database)"
    )


def _postgres(url: str, clock: Clock | None) -> Storage:
    # Imported here, not at the top: aiki.storage.postgres imports asyncpg, which only the
    # extra aiki[postgres] installs, and this module is imported by `import aiki`.
    try:
        from aiki.storage.postgres import PostgresStorage
    except ImportError as exc:
        raise ConfigError(
            f"storage URL {url!r} needs the PostgreSQL driver: pip install 'aiki[postgres]' ({exc})"
        ) from exc
    test_clock = None if clock is None or isinstance(clock, SystemClock) else clock
    parts = urlsplit(url)
    options = parse_qsl(parts.query, keep_blank_values=True)
    sizes: dict[str, int] = {}
    for name in _POOL_OPTIONS:
        values = [value for key, value in options if key == name]
        if values:
            try:
                sizes[name.removeprefix("pool_")] = int(values[-1])
            except ValueError:
                raise ConfigError(
                    f"storage URL option {name}={values[-1]!r} is not a whole number"
                ) from None
    # The rest goes to the driver, which would send unknown options to the server as settings.
    rest = [(key, value) for key, value in options if key not in _POOL_OPTIONS]
    dsn = urlunsplit(parts._replace(query=urlencode(rest))) if sizes else url
    return PostgresStorage(dsn, clock=test_clock, **sizes)


_POOL_OPTIONS = ("pool_min_size", "pool_max_size")
