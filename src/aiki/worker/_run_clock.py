"""The storage clock as one claimed run reads it: the claim's time, moved on by the worker's clock.

Due times (sleeps, event deadlines, retry wake-ups) are storage times, so that every worker
and server agrees on them; waiting for one happens on this worker's `Clock`.
"""

from __future__ import annotations

from aiki._core.clock import Clock


class RunClock:
    """Converts between the storage clock and this worker's clock for one claimed run."""

    __slots__ = ("_storage_at_claim_ms", "_worker_at_claim_ms", "worker")

    def __init__(self, worker: Clock, storage_now_ms: int) -> None:
        self.worker = worker
        self._storage_at_claim_ms = storage_now_ms
        self._worker_at_claim_ms = worker.now_ms()

    def storage_now_ms(self) -> int:
        """The storage clock as of the claim, moved on by this worker's clock since then."""
        return self._storage_at_claim_ms + (self.worker.now_ms() - self._worker_at_claim_ms)

    def worker_time_ms(self, storage_ms: int) -> int:
        """A storage time on this worker's clock (the inverse of `storage_now_ms`)."""
        return storage_ms - self._storage_at_claim_ms + self._worker_at_claim_ms
