"""Workers: `worker()` builds one."""

from aiki.worker._worker import Worker, worker

__all__ = ["Worker", "worker"]
