"""The SQLite statements several `SqliteOperations` methods share.

Reading a run or its lease, ending or requeueing it, appending to its history.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from aiki._core.ids import RunId, WorkerId
from aiki._core.models import (
    EVENT_RECEIVED_DIGEST,
    EVENT_TASK_PREFIX,
    EventKind,
    Lease,
    RunStatus,
    TaskAddress,
    TaskRecord,
    WorkerInfo,
)
from aiki._core.states import RunAction, RunState
from aiki.errors import ErrorInfo, LeaseLostError
from aiki.storage._records import (
    dump_json,
    error_text,
    run_from_row,
    task_record_from_row,
    task_start_data,
    worker_from_row,
)
from aiki.storage._rules import RunChange, check_lease, check_running
from aiki.storage._sql_files import load_queries

Q = load_queries("sqlite")


def read_run(conn: sqlite3.Connection, run_id: str) -> RunStatus | None:
    row = conn.execute(Q["get_run"], {"id": run_id}).fetchone()
    return None if row is None else run_from_row(row)


def check_lease_now(
    conn: sqlite3.Connection, lease: Lease, action: RunAction
) -> tuple[RunState | None, str | None]:
    """`check_lease` on the run as it is now (None: sent again), and the worker holding it."""
    row = conn.execute(Q["lease_state"], {"id": lease.run_id}).fetchone()
    if row is None:
        return check_lease(lease, action, None, None), None
    return check_lease(lease, action, row["state"], row["revision"]), row["worker_id"]


def check_running_now(conn: sqlite3.Connection, lease: Lease) -> bool:
    """`check_running` on the run as it is now; its cancel flag."""
    row = conn.execute(Q["lease_state"], {"id": lease.run_id}).fetchone()
    if row is None:
        raise LeaseLostError(lease.run_id, lease.revision)
    check_running(lease, row["state"], row["revision"])
    return bool(row["cancel_requested"])


def append_event(
    conn: sqlite3.Connection,
    run_id: str,
    now: int,
    kind: EventKind,
    state: RunState,
    data: dict[str, Any] | None = None,
) -> None:
    conn.execute(
        Q["append_event"],
        {
            "run_id": run_id,
            "at": now,
            "kind": kind.value,
            "state": state.value,
            "data": dump_json(data) if data else None,
        },
    )


def append_start(
    conn: sqlite3.Connection,
    run_id: RunId,
    at_ms: int,
    address: TaskAddress,
    attempt: int,
    worker_id: WorkerId,
) -> None:
    data = task_start_data(address, attempt, worker_id)
    append_event(conn, run_id, at_ms, EventKind.TASK_STARTED, RunState.RUNNING, data)


def end_run(
    conn: sqlite3.Connection,
    run_id: str,
    now: int,
    state: RunState,
    *,
    result_json: str | None = None,
    error: ErrorInfo | None = None,
    reason: str | None = None,
) -> RunStatus:
    """Completed, failed or cancelled; the run as it is now."""
    row = conn.execute(
        Q["end_run"],
        {
            "id": run_id,
            "state": state.value,
            "result": result_json,
            "error": error_text(error),
            "reason": reason,
            "now": now,
        },
    ).fetchone()
    return run_from_row(row)


def apply_change(conn: sqlite3.Connection, now: int, change: RunChange) -> None:
    """Apply a change `_rules` decided (a wake-up, an expired lease) and record its event."""
    if change.state.is_final:
        end_run(conn, change.run_id, now, change.state, error=change.error)
    else:
        params = {"id": change.run_id, "recovered": change.recovered, "now": now}
        conn.execute(Q["requeue_run"], params)
    append_event(conn, change.run_id, now, change.event, change.state, change.data)


def has_unconsumed_event(conn: sqlite3.Connection, run_id: str, name: str) -> bool:
    row = conn.execute(
        Q["unconsumed_event"],
        {
            "run_id": run_id,
            "name": name,
            "task": EVENT_TASK_PREFIX + name,
            "digest": EVENT_RECEIVED_DIGEST,
        },
    ).fetchone()
    return bool(row["unconsumed"])


def task_records(conn: sqlite3.Connection, run_ids: list[RunId]) -> dict[str, list[TaskRecord]]:
    """The recorded task results of these runs, by run id."""
    records: dict[str, list[TaskRecord]] = {}
    if not run_ids:
        return records
    for row in conn.execute(Q["task_results_of_runs"], {"run_ids": dump_json(run_ids)}):
        records.setdefault(row["run_id"], []).append(task_record_from_row(row))
    return records


def live_workers(conn: sqlite3.Connection, now: int) -> list[WorkerInfo]:
    """Every worker, with whether it is alive at `now`."""
    return [worker_from_row(row) for row in conn.execute(Q["list_workers"], {"now": now})]
