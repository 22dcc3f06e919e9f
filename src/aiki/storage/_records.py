"""What the SQL backends share: rows to records, and the history events' data, built once.

Both dialects store the same columns and the same JSON, so reading a row and writing an event's
data is the same Python for SQLite and PostgreSQL; only the statements differ.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, Protocol

from aiki._core.ids import RunId, WorkerId
from aiki._core.models import (
    EventKind,
    HistoryEvent,
    Lease,
    RunStatus,
    TaskAddress,
    TaskEnd,
    TaskOutcome,
    TaskRecord,
    WaitInfo,
    WaitKind,
    WorkflowKey,
)
from aiki._core.states import RunAction, RunState
from aiki.errors import ErrorInfo, RecoveryLimitError

LEASE_EXPIRED_ERROR_TYPE = f"{RecoveryLimitError.__module__}.{RecoveryLimitError.__qualname__}"

# Sorts after every run id (ids are lowercase hex, compared bytewise): `id < '~'` is "no lower
# bound" for paging.
FIRST_PAGE = "~"

END_ACTIONS = {
    RunState.COMPLETED: RunAction.COMPLETE,
    RunState.FAILED: RunAction.FAIL,
    RunState.CANCELLED: RunAction.CANCEL,
}
END_EVENTS = {
    RunState.COMPLETED: EventKind.COMPLETED,
    RunState.FAILED: EventKind.FAILED,
    RunState.CANCELLED: EventKind.CANCELLED,
}


class Row(Protocol):
    """A row as either driver returns it (a tuple, an asyncpg `Record`): sliced, it is a tuple."""

    def __getitem__(self, index: slice, /) -> tuple[Any, ...]: ...


# Built once: `json.dumps` with non-default options builds a new encoder on every call.
dump_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def error_text(error: ErrorInfo | None) -> str | None:
    return None if error is None else dump_json(error.to_json())


def error_info(text: str | None) -> ErrorInfo | None:
    return None if text is None else ErrorInfo.from_json(json.loads(text))


def run_from_row(row: Row, start: int = 0) -> RunStatus:
    """A `RunStatus` from the run columns, in queries.sql's order, from column `start` on."""
    (run_id, workflow, version, state, payload, result, error, idempotency_key, attempt,
     recovery_attempts, revision, wait_kind, wait_until, wait_detail, worker_id,
     lease_expires_at, cancel_requested, cancel_reason, created_at,
     updated_at) = row[start:start + 20]  # fmt: skip
    wait = (
        None
        if wait_kind is None
        else WaitInfo(kind=WaitKind(wait_kind), until_ms=wait_until, detail=wait_detail or "")
    )
    return RunStatus(
        id=RunId(run_id),
        workflow=workflow,
        version=version,
        state=RunState(state),
        payload_json=payload,
        result_json=result,
        error=error_info(error),
        idempotency_key=idempotency_key,
        attempt=attempt,
        recovery_attempts=recovery_attempts,
        revision=revision,
        wait=wait,
        worker_id=None if worker_id is None else WorkerId(worker_id),
        lease_expires_at_ms=lease_expires_at,
        cancel_requested=bool(cancel_requested),  # SQLite has no booleans: 0 or 1
        cancel_reason=cancel_reason,
        created_at_ms=created_at,
        updated_at_ms=updated_at,
    )


def task_record(
    task: str,
    digest: str,
    index: int,
    outcome: str,
    attempts: int,
    result: str | None,
    error: str | None,
) -> TaskRecord:
    return TaskRecord(
        address=TaskAddress(task=task, digest=digest, index=index),
        outcome=TaskOutcome(outcome),
        attempts=attempts,
        result_json=result,
        error=error_info(error),
    )


def history_event(seq: int, at: int, kind: str, state: str, data: str | None) -> HistoryEvent:
    return HistoryEvent(
        seq=seq,
        at_ms=at,
        kind=EventKind(kind),
        state=RunState(state),
        data=json.loads(data) if data else {},
    )


def workflow_keys_json(keys: Iterable[WorkflowKey]) -> str:
    """A worker's workflows, as its row stores them."""
    return dump_json([{"name": key.name, "version": key.version} for key in keys])


def workflow_keys(text: str) -> tuple[WorkflowKey, ...]:
    return tuple(WorkflowKey(name=k["name"], version=k["version"]) for k in json.loads(text))


def list_query_name(workflow: str | None, state: RunState | None) -> str:
    """The list_runs statement for a filter combination: each gets a plan for its own index."""
    if workflow is not None and state is not None:
        return "list_runs_by_workflow_and_state"
    if workflow is not None:
        return "list_runs_by_workflow"
    if state is not None:
        return "list_runs_by_state"
    return "list_runs"


def list_params(
    workflow: str | None, state: RunState | None, after: RunId | None, limit: int
) -> dict[str, Any]:
    params: dict[str, Any] = {"after": FIRST_PAGE if after is None else after, "limit": limit}
    if workflow is not None:
        params["workflow"] = workflow
    if state is not None:
        params["state"] = state.value
    return params


def sent_again(lease: Lease, target: RunState, state: str | None, revision: int | None) -> bool:
    """Whether `lease`'s holder already moved the run to `target`: its write, sent again.

    A worker sends a write again when the reply to the first was lost (the server died, the
    connection dropped). A write that ends a lease bumps the revision once; finding the run in
    the state it asked for, one revision on, means the first one was applied. `state` and
    `revision` are the run as last read.
    """
    return state == target.value and revision == lease.revision + 1


# --- history event data -------------------------------------------------------------------------


def task_start_data(address: TaskAddress, attempt: int, worker_id: WorkerId) -> dict[str, Any]:
    return {
        "task": address.task,
        "index": address.index,
        "digest": address.digest,
        "attempt": attempt,
        "worker_id": worker_id,
    }


def task_end_kind(end: TaskEnd) -> EventKind:
    return (
        EventKind.TASK_COMPLETED if end.outcome is TaskOutcome.COMPLETED else EventKind.TASK_FAILED
    )


def task_end_data(end: TaskEnd) -> dict[str, Any]:
    return task_start_data(end.address, end.attempt, end.worker_id) | {
        "duration_ms": end.duration_ms,
        "error": None if end.error is None else end.error.to_json(),
        "final": end.outcome is TaskOutcome.FAILED,
        "retry_delay_ms": end.retry_delay_ms,
    }


def wait_data(wait: WaitInfo) -> dict[str, Any]:
    """A suspended event's data."""
    return {"kind": wait.kind.value, "until_ms": wait.until_ms, "detail": wait.detail}


def lease_expired_error(
    run_id: str, losses: int, worker_id: str | None, max_recovery_attempts: int
) -> ErrorInfo:
    """Why a run failed when its worker went silent once too often."""
    return ErrorInfo(
        type=LEASE_EXPIRED_ERROR_TYPE,
        message=(
            f"workflow run {run_id} lost its worker {losses} time(s), the last time worker "
            f"{worker_id!r}; max_recovery_attempts is {max_recovery_attempts}"
        ),
    )


def interrupted_tasks(events: Iterable[tuple[str, str]]) -> list[dict[str, Any]]:
    """The task attempts the lost worker started and never reported, oldest first.

    `events` are the (kind, data) of the attempt's task events, oldest first.
    """
    started: dict[tuple[Any, ...], dict[str, Any]] = {}
    for kind, text in events:
        data = json.loads(text)
        key = (data["task"], data["digest"], data["index"], data["attempt"])
        if kind == EventKind.TASK_STARTED.value:
            started[key] = {name: data[name] for name in ("task", "index", "digest", "attempt")}
        else:
            started.pop(key, None)
    return list(started.values())
