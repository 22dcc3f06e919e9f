"""Choose the queue from the server's settings."""

from __future__ import annotations

from urllib.parse import SplitResult, parse_qsl, urlencode, urlsplit, urlunsplit

from aiki.errors import ConfigError
from aiki.queue._keys import DEFAULT_NAMESPACE, check_namespace
from aiki.queue._local import LocalQueue
from aiki.queue._protocol import Queue


def open_queue(url: str | None, *, storage_url: str | None, notify: bool = True) -> Queue:
    """Build (not yet open) the queue for a server.

    Args:
        url: `redis://host:port/db` (or `rediss://`, `unix://`), optionally with
            `?namespace=name` (default "aiki"); or None for storage claims alone.
        storage_url: The storage's URL, when it was given as one.
        notify: With storage claims on PostgreSQL, whether servers wake each other with
            LISTEN/NOTIFY. Off, a server learns of another's news only by looking at storage
            again (every `poll_interval_ms` of the waiting worker).

    Raises:
        ConfigError: the URL names no queue Aiki has, or a bad option.
    """
    if url is None or url == "storage":
        if notify and storage_url is not None and _is_postgres(storage_url):
            return _postgres_notify(storage_url)
        # SQLite is one server's own (its writes go through one process).
        alone = storage_url is not None and storage_url.startswith("sqlite:")
        return LocalQueue(alone=alone)
    if url.startswith(("redis://", "rediss://", "unix://")):
        return _redis(url)
    scheme = url.split(":", 1)[0] if ":" in url else url
    raise ConfigError(
        f"queue URL {url!r}: unknown scheme {scheme!r} (expected redis://host:port/db, "
        "or none for storage claims)"
    )


def _is_postgres(url: str) -> bool:
    return url.startswith(("postgresql://", "postgres://"))


def _postgres_notify(storage_url: str) -> Queue:
    from aiki.queue._postgres import PostgresNotifyQueue  # asyncpg: the extra aiki[postgres]

    return PostgresNotifyQueue(storage_url, description="PostgreSQL LISTEN/NOTIFY")


def _redis(url: str) -> Queue:
    parts = urlsplit(url)
    options = parse_qsl(parts.query, keep_blank_values=True)
    namespaces = [value for key, value in options if key == "namespace"]
    rest = [(key, value) for key, value in options if key != "namespace"]
    try:
        namespace = check_namespace(namespaces[-1] if namespaces else DEFAULT_NAMESPACE)
    except ValueError as exc:
        raise ConfigError(f"queue URL: {exc}") from None
    try:
        from aiki.queue._redis import RedisQueue
    except ImportError as exc:
        raise ConfigError(
            f"queue URL {_redacted(parts)} needs the Redis client: "
            f"pip install 'aiki[redis]' ({exc})"
        ) from exc
    plain = urlunsplit(parts._replace(query=urlencode(rest)))
    return RedisQueue(
        plain, namespace=namespace, description=f"Redis {_redacted(parts)} ({namespace})"
    )


def _redacted(parts: SplitResult) -> str:
    """The URL without its password, for messages and logs."""
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))
