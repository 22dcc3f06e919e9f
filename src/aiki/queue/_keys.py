"""Names of what Aiki keeps in Redis, all under one namespace.

Two Aiki installations may share one Redis: each uses its own namespace (`?namespace=` in the
queue URL), and nothing of one is seen by the other.
"""

from __future__ import annotations

import re

DEFAULT_NAMESPACE = "aiki"

_NAMESPACE = re.compile(r"[A-Za-z0-9_.\-]{1,64}")


def check_namespace(namespace: str) -> str:
    """`namespace` if it is usable in key names; `ValueError` naming the problem if not."""
    if not _NAMESPACE.fullmatch(namespace):
        raise ValueError(
            f"Redis namespace {namespace!r} must be 1 to 64 letters, digits, '_', '.' or '-'"
        )
    return namespace


def events_channel(namespace: str) -> str:
    """The pub/sub channel on which the servers of one installation announce news."""
    return f"{namespace}:events"
