"""What the SQL backends share: rows to records, and the history events' data, built once.

Both dialects store the same columns under the same names and the same JSON, so reading a row
(by column name) and writing an event's data is the same Python for SQLite and PostgreSQL; only
the statements differ. The decisions both make are in `_rules`.
"""

from __future__ import annotations

import functools
import json
import operator
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from aiki._core.ids import RunId, WorkerId
from aiki._core.models import (
    EventKind,
    HistoryEvent,
    RunStatus,
    ServedVersion,
    TaskAddress,
    TaskEnd,
    TaskOutcome,
    TaskRecord,
    WaitInfo,
    WaitKind,
    WorkerInfo,
    WorkflowKey,
)
from aiki._core.states import RunAction, RunState
from aiki.errors import ErrorInfo

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
    """A row as either driver returns it (a `sqlite3.Row`, an asyncpg `Record`), read by name."""

    def __getitem__(self, key: str, /) -> Any: ...


# A run's columns, as each dialect's `queries.sql` lists them in its fragment run_columns.
RUN_COLUMNS = (
    "id", "workflow", "version", "state", "payload", "result", "error", "idempotency_key",
    "attempt", "recovery_attempts", "revision", "wait_kind", "wait_until", "wait_detail",
    "worker_id", "lease_expires_at", "cancel_requested", "cancel_reason", "created_at",
    "updated_at",
)  # fmt: skip


@functools.cache
def _run_columns_getter(prefix: str) -> Callable[[Row], tuple[Any, ...]]:
    # itemgetter reads every column by name in one C call: run_from_row is on every hot path.
    return operator.itemgetter(*(prefix + name for name in RUN_COLUMNS))


# Built once: `json.dumps` with non-default options builds a new encoder on every call.
dump_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def error_text(error: ErrorInfo | None) -> str | None:
    return None if error is None else dump_json(error.to_json())


def error_info(text: str | None) -> ErrorInfo | None:
    return None if text is None else ErrorInfo.from_json(json.loads(text))


def run_from_row(row: Row, prefix: str = "") -> RunStatus:
    """A `RunStatus` from a row's run columns, named `prefix` + each of `RUN_COLUMNS`."""
    (run_id, workflow, version, state, payload, result, error, idempotency_key, attempt,
     recovery_attempts, revision, wait_kind, wait_until, wait_detail, worker_id,
     lease_expires_at, cancel_requested, cancel_reason, created_at,
     updated_at) = _run_columns_getter(prefix)(row)  # fmt: skip
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
    *,
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


def task_record_from_row(row: Row) -> TaskRecord:
    """A `TaskRecord` from a `task_results` row."""
    return task_record(
        task=row["task"],
        digest=row["digest"],
        index=row["idx"],
        outcome=row["outcome"],
        attempts=row["attempts"],
        result=row["result"],
        error=row["error"],
    )


def history_event(row: Row) -> HistoryEvent:
    """A `HistoryEvent` from a `history` row."""
    data = row["data"]
    return HistoryEvent(
        seq=row["seq"],
        at_ms=row["at"],
        kind=EventKind(row["kind"]),
        state=RunState(row["state"]),
        data=json.loads(data) if data else {},
    )


def worker_from_row(row: Row) -> WorkerInfo:
    """A `WorkerInfo` from a `workers` row and whether it is `alive` now."""
    return WorkerInfo(
        id=WorkerId(row["id"]),
        workflows=workflow_keys(row["workflows"]),
        last_seen_ms=row["last_seen"],
        alive_until_ms=row["alive_until"],
        alive=bool(row["alive"]),  # SQLite has no booleans: 0 or 1
    )


def served_version_from_row(row: Row) -> ServedVersion:
    """A `ServedVersion` from a `workflows` row."""
    return ServedVersion(
        name=row["name"], version=row["version"], payload_schema_json=row["payload_schema"]
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


def task_ends_json(ends: Sequence[TaskEnd]) -> str | None:
    """Task ends as PostgreSQL's `finish` takes them: a JSON array, each value as text."""
    if not ends:
        return None
    return dump_json(
        [
            {
                "task": end.address.task,
                "digest": end.address.digest,
                "idx": end.address.index,
                "outcome": end.outcome.value,
                "attempts": end.attempt,
                "result": end.result_json,
                "error": error_text(end.error),
                "kind": task_end_kind(end).value,
                "data": dump_json(task_end_data(end)),
                "start_data": None
                if end.start_reported
                else dump_json(task_start_data(end.address, end.attempt, end.worker_id)),
            }
            for end in ends
        ]
    )


def wait_data(wait: WaitInfo) -> dict[str, Any]:
    """A suspended event's data."""
    return {"kind": wait.kind.value, "until_ms": wait.until_ms, "detail": wait.detail}


def end_data(target: RunState, error: ErrorInfo | None, reason: str | None) -> dict[str, Any]:
    """A run end event's data: its error, and a cancelled run's reason."""
    data: dict[str, Any] = {}
    if error is not None:
        data["error"] = error.to_json()
    if target is RunState.CANCELLED:
        data["reason"] = reason
    return data
