"""The seam between workflow code and the worker: what a `WorkflowRun` delegates to.

The SDK knows the worker only through this protocol; the worker's `RunExecution` implements
it, and tests pass a fake.
"""

from __future__ import annotations

from collections.abc import Awaitable
from datetime import datetime
from typing import Any, Protocol


class RunExecution(Protocol):
    """The worker's side of a run."""

    def now(self) -> datetime:
        """The storage clock's current time."""
        ...

    # `task` is an `aiki.sdk.task.Task`; typed Any because `task.py` sits above this seam
    # (it imports `WorkflowRun`), so naming it here would be an import cycle.
    def call_task(self, task: Any, payload: object) -> Awaitable[Any]:
        """Replay or run `task` with `payload`; the result as the task's annotation wants it."""
        ...

    def sleep(self, name: str, duration_ms: int) -> Awaitable[None]:
        """Sleep durably: replay the sleep `name` or record its wake-up, then wait for it."""
        ...

    def wait_for_event(self, name: str, timeout_ms: int | None) -> Awaitable[Any]:
        """Replay or receive the next event `name`; TimeoutError after `timeout_ms`."""
        ...
