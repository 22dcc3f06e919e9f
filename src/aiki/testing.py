"""Public test kit: a fake clock and a way to make a worker die as if its process was killed."""

from __future__ import annotations

from aiki._core.clock import FakeClock
from aiki.worker import Worker

__all__ = ["FakeClock", "kill_worker"]


async def kill_worker(worker: Worker) -> None:
    """Stop `worker` at once, as a crash would: nothing is reported or handed back.

    Its runs stay `running` until their leases expire; then another worker resumes them.
    """
    await worker._kill()
