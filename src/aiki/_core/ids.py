"""Typed identifiers, sortable by creation time."""

from __future__ import annotations

import os
import time
from typing import NewType

RunId = NewType("RunId", str)
WorkerId = NewType("WorkerId", str)


def new_run_id() -> RunId:
    """A 26-character id: 12 hex digits of milliseconds, then 14 random ones.

    Ids made later sort later, which keeps primary-key inserts at the end of the index
    and lets listings page by id.
    """
    return RunId(f"{time.time_ns() // 1_000_000:012x}{os.urandom(7).hex()}")
