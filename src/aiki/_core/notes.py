"""What a run's status says beside its state: one wording for every surface."""

from __future__ import annotations

from collections.abc import Sequence

from aiki._core.models import WorkerInfo, WorkflowKey


def unserved_note(key: WorkflowKey, workers: Sequence[WorkerInfo]) -> str | None:
    """For a pending run of `key`: that no live worker serves it, or None if one does.

    Such a run would wait forever; the note names the versions live workers do serve.
    """
    live = [w for w in workers if w.alive]
    if any(key in w.workflows for w in live):
        return None
    others = sorted({k.version for w in live for k in w.workflows if k.name == key.name})
    note = f"no live worker serves {key}"
    return f"{note} (live workers serve version(s) {', '.join(others)})" if others else note
