"""Typed identifiers, ordered by creation time."""

from __future__ import annotations

import os
import threading
import time
from typing import NewType

RunId = NewType("RunId", str)
WorkerId = NewType("WorkerId", str)

_lock = threading.Lock()
_last = 0


def new_run_id() -> RunId:
    """A 26-character id: 12 hex digits of a strictly increasing millisecond count, then 14 random.

    Ids made later in one process sort later, even within one millisecond (the count runs ahead
    of the clock when needed), so "oldest first" is first-in, first-out. The random part keeps
    ids from several processes apart.
    """
    global _last
    with _lock:
        _last = max(_last + 1, time.time_ns() // 1_000_000)
        stamp = _last
    return RunId(f"{stamp:012x}{os.urandom(7).hex()}")
