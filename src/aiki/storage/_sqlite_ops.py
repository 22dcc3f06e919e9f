"""What each `SqliteStorage` method does, as plain functions of a connection.

The writer thread runs each one inside a SAVEPOINT of its batch's transaction: when one raises,
everything it wrote is rolled back and nothing else is. Times come from the clock when the
operation runs, not when it was queued.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from typing import Any

from aiki._core.clock import Clock
from aiki._core.ids import RunId, WorkerId, new_run_id
from aiki._core.models import (
    EVENT_RECEIVED_DIGEST,
    EVENT_TASK_PREFIX,
    ClaimedRun,
    Enqueued,
    EventKind,
    EventSent,
    HeartbeatReply,
    HistoryEvent,
    Lease,
    NewEvent,
    NewRun,
    RunEvent,
    RunOutcome,
    RunStatus,
    TaskAddress,
    TaskEnd,
    TaskRecord,
    TaskStart,
    TimerReport,
    WaitInfo,
    WaitKind,
    WorkerInfo,
    WorkflowKey,
    WorkflowSummary,
)
from aiki._core.states import RunAction, RunState, check_transition
from aiki.errors import (
    ErrorInfo,
    EventRejectedError,
    IdempotencyConflictError,
    LeaseLostError,
    RunNotFoundError,
)
from aiki.storage._records import (
    END_ACTIONS,
    END_EVENTS,
    dump_json,
    error_text,
    history_event,
    interrupted_tasks,
    lease_expired_error,
    list_params,
    list_query_name,
    run_from_row,
    sent_again,
    task_end_data,
    task_end_kind,
    task_record,
    task_start_data,
    wait_data,
    workflow_keys,
    workflow_keys_json,
)
from aiki.storage._sql_files import load_queries

Q = load_queries("sqlite")


# --- events and leases --------------------------------------------------------------------------


def _append_event(
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


def _held_state(conn: sqlite3.Connection, lease: Lease) -> tuple[RunState, bool, str | None]:
    """The run's state, cancel flag and worker, if `lease` is current; else `LeaseLostError`."""
    row = conn.execute(Q["lease_state"], {"id": lease.run_id}).fetchone()
    if row is None or row[1] != lease.revision:
        raise LeaseLostError(lease.run_id, lease.revision)
    return RunState(row[0]), bool(row[2]), row[3]


def _moved_by_lease(conn: sqlite3.Connection, lease: Lease, state: RunState) -> bool:
    """Whether `lease`'s holder already moved the run to `state` (see `sent_again`)."""
    row = conn.execute(Q["lease_state"], {"id": lease.run_id}).fetchone()
    return row is not None and sent_again(lease, state, row[0], row[1])


def _running(conn: sqlite3.Connection, lease: Lease) -> bool:
    """Check that the worker holds the run; return its cancel flag.

    A current revision on a run that is not running (an unclaimed pending run still has its
    revision 0) is no lease either.
    """
    state, cancel_requested, _ = _held_state(conn, lease)
    if state is not RunState.RUNNING:
        raise LeaseLostError(lease.run_id, lease.revision)
    return cancel_requested


# --- runs ---------------------------------------------------------------------------------------


def enqueue(conn: sqlite3.Connection, clock: Clock, new: NewRun) -> Enqueued:
    now = clock.now_ms()
    if new.idempotency_key is not None:
        row = conn.execute(
            Q["find_by_idempotency_key"],
            {
                "workflow": new.workflow,
                "version": new.version,
                "idempotency_key": new.idempotency_key,
            },
        ).fetchone()
        if row is not None:
            # Payloads are canonical JSON text, so equal payloads are equal strings.
            if row[4] != new.payload_json:
                raise IdempotencyConflictError(
                    workflow=new.workflow,
                    version=new.version,
                    idempotency_key=new.idempotency_key,
                    run_id=row[0],
                )
            return Enqueued(id=RunId(row[0]), created=False)
    run_id = new_run_id()
    conn.execute(
        Q["insert_run"],
        {
            "id": run_id,
            "workflow": new.workflow,
            "version": new.version,
            "payload": new.payload_json,
            "idempotency_key": new.idempotency_key,
            "now": now,
        },
    )
    conn.execute(Q["insert_workflow"], {"name": new.workflow, "version": new.version, "now": now})
    _append_event(conn, run_id, now, EventKind.ENQUEUED, RunState.PENDING)
    return Enqueued(id=run_id, created=True)


def get_run(conn: sqlite3.Connection, run_id: RunId) -> RunStatus | None:
    row = conn.execute(Q["get_run"], {"id": run_id}).fetchone()
    return None if row is None else run_from_row(row)


def list_runs(
    conn: sqlite3.Connection,
    *,
    workflow: str | None,
    state: RunState | None,
    after: RunId | None,
    limit: int,
) -> list[RunStatus]:
    if limit <= 0:
        return []
    params = list_params(workflow, state, after, limit)
    # One query per filter combination: SQLite picks its index when the query is prepared.
    query = Q[list_query_name(workflow, state)]
    return [run_from_row(row) for row in conn.execute(query, params)]


def get_history(conn: sqlite3.Connection, run_id: RunId) -> list[HistoryEvent]:
    return [history_event(*row) for row in conn.execute(Q["get_history"], {"run_id": run_id})]


def cancel(conn: sqlite3.Connection, clock: Clock, run_id: RunId, reason: str | None) -> RunStatus:
    now = clock.now_ms()
    run = get_run(conn, run_id)
    if run is None:
        raise RunNotFoundError(run_id)
    if run.state.is_final:
        return run
    if run.state is RunState.RUNNING:
        # The worker sees the flag at its next heartbeat or task end, and ends the run itself.
        if run.cancel_requested:
            return run
        row = conn.execute(Q["request_cancel"], {"id": run_id, "reason": reason, "now": now})
        updated = run_from_row(row.fetchone())
        _append_event(
            conn, run_id, now, EventKind.CANCEL_REQUESTED, RunState.RUNNING, {"reason": reason}
        )
        return updated
    target = check_transition(run_id, run.state, RunAction.CANCEL)
    cancelled = _end_run(conn, run_id, now, target, reason=reason)
    _append_event(conn, run_id, now, EventKind.CANCELLED, target, {"reason": reason})
    return cancelled


def _end_run(
    conn: sqlite3.Connection,
    run_id: str,
    now: int,
    state: RunState,
    *,
    result_json: str | None = None,
    error: ErrorInfo | None = None,
    reason: str | None = None,
) -> RunStatus:
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


# --- workers ------------------------------------------------------------------------------------


def claim(
    conn: sqlite3.Connection,
    clock: Clock,
    worker_id: WorkerId,
    workflows: Sequence[WorkflowKey],
    limit: int,
    lease_ms: int,
) -> list[ClaimedRun]:
    if limit <= 0 or not workflows:
        return []
    now = clock.now_ms()
    # One indexed range scan per workflow key, merged: oldest first across all of them.
    candidates: list[str] = []
    for key in dict.fromkeys(workflows):
        params = {"workflow": key.name, "version": key.version, "limit": limit}
        candidates.extend(row[0] for row in conn.execute(Q["pending_ids"], params))
    candidates.sort()
    runs: list[RunStatus] = []
    for run_id in candidates[:limit]:
        check_transition(run_id, RunState.PENDING, RunAction.CLAIM)
        row = conn.execute(
            Q["claim_run"],
            {"id": run_id, "worker_id": worker_id, "lease_expires_at": now + lease_ms, "now": now},
        ).fetchone()
        run = run_from_row(row)
        _append_event(
            conn,
            run_id,
            now,
            EventKind.CLAIMED,
            RunState.RUNNING,
            {"worker_id": worker_id, "attempt": run.attempt},
        )
        runs.append(run)
    tasks = _task_records(conn, [run.id for run in runs])
    return [
        ClaimedRun(run=run, revision=run.revision, now_ms=now, tasks=tuple(tasks.get(run.id, ())))
        for run in runs
    ]


def _task_records(conn: sqlite3.Connection, run_ids: list[RunId]) -> dict[str, list[TaskRecord]]:
    records: dict[str, list[TaskRecord]] = {}
    if not run_ids:
        return records
    rows = conn.execute(Q["task_results_of_runs"], {"run_ids": dump_json(run_ids)})
    for run_id, *fields in rows:
        records.setdefault(run_id, []).append(task_record(*fields))
    return records


def heartbeat(
    conn: sqlite3.Connection,
    clock: Clock,
    worker_id: WorkerId,
    leases: Sequence[Lease],
    lease_ms: int,
) -> HeartbeatReply:
    now = clock.now_ms()
    lost: list[RunId] = []
    cancels: list[RunId] = []
    for lease in leases:
        row = conn.execute(
            Q["extend_lease"],
            {"id": lease.run_id, "revision": lease.revision, "lease_expires_at": now + lease_ms},
        ).fetchone()
        if row is None:
            lost.append(lease.run_id)
        elif row[0]:
            cancels.append(lease.run_id)
    conn.execute(Q["touch_worker"], {"id": worker_id, "now": now, "alive_until": now + lease_ms})
    return HeartbeatReply(lost=tuple(lost), cancel_requested=tuple(cancels))


def start_task(conn: sqlite3.Connection, clock: Clock, lease: Lease, start: TaskStart) -> None:
    now = clock.now_ms()
    _running(conn, lease)
    if _is_last_start(conn, lease.run_id, start.address, start.attempt):
        return  # the same start, sent again after its reply was lost
    _append_start(conn, lease.run_id, now, start.address, start.attempt, start.worker_id)


def _is_last_start(
    conn: sqlite3.Connection, run_id: RunId, address: TaskAddress, attempt: int
) -> bool:
    row = conn.execute(Q["last_event"], {"run_id": run_id}).fetchone()
    if row is None or row[0] != EventKind.TASK_STARTED.value:
        return False
    data = json.loads(row[1])
    return bool(
        data["task"] == address.task
        and data["digest"] == address.digest
        and data["index"] == address.index
        and data["attempt"] == attempt
    )


def _append_start(
    conn: sqlite3.Connection,
    run_id: RunId,
    at_ms: int,
    address: TaskAddress,
    attempt: int,
    worker_id: WorkerId,
) -> None:
    _append_event(
        conn,
        run_id,
        at_ms,
        EventKind.TASK_STARTED,
        RunState.RUNNING,
        task_start_data(address, attempt, worker_id),
    )


def finish_task(conn: sqlite3.Connection, clock: Clock, lease: Lease, end: TaskEnd) -> bool:
    now = clock.now_ms()
    cancel_requested = _running(conn, lease)
    address = end.address
    recorded = conn.execute(
        Q["task_result_state"],
        {
            "run_id": lease.run_id,
            "task": address.task,
            "digest": address.digest,
            "idx": address.index,
        },
    ).fetchone()
    if recorded is not None and tuple(recorded) == (end.outcome.value, end.attempt):
        return cancel_requested  # this attempt's end is recorded: the write was sent again
    if not end.start_reported:
        # Stamped now, not now - duration: the worker's clock is not the storage's, and the
        # history's times must not go backwards. The end event carries the duration.
        _append_start(conn, lease.run_id, now, address, end.attempt, end.worker_id)
    conn.execute(
        Q["upsert_task_result"],
        {
            "run_id": lease.run_id,
            "task": address.task,
            "digest": address.digest,
            "idx": address.index,
            "outcome": end.outcome.value,
            "attempts": end.attempt,
            "result": end.result_json,
            "error": error_text(end.error),
            "now": now,
        },
    )
    _append_event(conn, lease.run_id, now, task_end_kind(end), RunState.RUNNING, task_end_data(end))
    return cancel_requested


def suspend(conn: sqlite3.Connection, clock: Clock, lease: Lease, wait: WaitInfo) -> bool:
    now = clock.now_ms()
    try:
        state, _, _ = _held_state(conn, lease)
    except LeaseLostError:
        if _moved_by_lease(conn, lease, RunState.WAITING):
            return False
        raise
    target = check_transition(lease.run_id, state, RunAction.SUSPEND)
    conn.execute(
        Q["suspend_run"],
        {
            "id": lease.run_id,
            "wait_kind": wait.kind.value,
            "wait_until": wait.until_ms,
            "wait_detail": wait.detail,
            "now": now,
        },
    )
    _append_event(
        conn,
        lease.run_id,
        now,
        EventKind.SUSPENDED,
        target,
        wait_data(wait),
    )
    if wait.kind is WaitKind.EVENT and _has_unconsumed_event(conn, lease.run_id, wait.detail):
        # The event came while the run was running, after its code looked: wake it at once.
        _wake(conn, lease.run_id, now, wait.kind.value, wait.detail)
        return True
    return False


def _has_unconsumed_event(conn: sqlite3.Connection, run_id: str, name: str) -> bool:
    row = conn.execute(
        Q["unconsumed_event"],
        {
            "run_id": run_id,
            "name": name,
            "task": EVENT_TASK_PREFIX + name,
            "digest": EVENT_RECEIVED_DIGEST,
        },
    ).fetchone()
    return bool(row[0])


def _wake(conn: sqlite3.Connection, run_id: str, now: int, kind: str, detail: str | None) -> None:
    target = check_transition(run_id, RunState.WAITING, RunAction.WAKE)
    conn.execute(Q["requeue_run"], {"id": run_id, "recovered": 0, "now": now})
    _append_event(conn, run_id, now, EventKind.WOKEN, target, {"kind": kind, "detail": detail})


# --- events -------------------------------------------------------------------------------------


def send_event(conn: sqlite3.Connection, clock: Clock, new: NewEvent) -> EventSent:
    now = clock.now_ms()
    row = conn.execute(Q["run_for_event"], {"id": new.run_id}).fetchone()
    if row is None:
        raise RunNotFoundError(new.run_id)
    state, workflow, version, wait_kind = row
    key = new.idempotency_key
    if key is not None:
        found = conn.execute(
            Q["event_by_key"], {"run_id": new.run_id, "name": new.name, "key": key}
        ).fetchone()
        if found is not None:
            if found[1] != new.data_json:
                raise EventRejectedError.conflict(
                    run_id=new.run_id, name=new.name, idempotency_key=key
                )
            return EventSent(seq=found[0], created=False)
    run_state = RunState(state)
    if run_state.is_final:
        raise EventRejectedError.run_final(run_id=new.run_id, name=new.name, state=state)
    seq: int = conn.execute(
        Q["insert_event"],
        {"run_id": new.run_id, "name": new.name, "data": new.data_json, "key": key, "now": now},
    ).fetchone()[0]
    _append_event(
        conn, new.run_id, now, EventKind.EVENT_SENT, run_state, {"name": new.name, "seq": seq}
    )
    # Any event wakes a run waiting for events: it may wait for several names at once
    # (asyncio.gather), and a wake-up for a name it does not wait for only replays it.
    woken = run_state is RunState.WAITING and wait_kind == WaitKind.EVENT.value
    if woken:
        _wake(conn, new.run_id, now, WaitKind.EVENT.value, new.name)
    return EventSent(
        seq=seq,
        created=True,
        woken=woken,
        workflow=WorkflowKey(name=workflow, version=version) if woken else None,
    )


def next_event(
    conn: sqlite3.Connection, run_id: RunId, name: str, after_seq: int
) -> RunEvent | None:
    row = conn.execute(
        Q["next_event"], {"run_id": run_id, "name": name, "after_seq": after_seq}
    ).fetchone()
    return None if row is None else RunEvent(seq=row[0], name=row[1], data_json=row[2])


def release(conn: sqlite3.Connection, clock: Clock, lease: Lease) -> None:
    now = clock.now_ms()
    try:
        state, _, worker_id = _held_state(conn, lease)
    except LeaseLostError:
        if _moved_by_lease(conn, lease, RunState.PENDING):
            return
        raise
    target = check_transition(lease.run_id, state, RunAction.RELEASE)
    conn.execute(Q["requeue_run"], {"id": lease.run_id, "recovered": 0, "now": now})
    _append_event(conn, lease.run_id, now, EventKind.RELEASED, target, {"worker_id": worker_id})


def finish(conn: sqlite3.Connection, clock: Clock, lease: Lease, outcome: RunOutcome) -> RunStatus:
    now = clock.now_ms()
    try:
        state, _, _ = _held_state(conn, lease)
    except LeaseLostError:
        if _moved_by_lease(conn, lease, outcome.state):
            run = get_run(conn, lease.run_id)
            assert run is not None
            return run
        raise
    target = check_transition(lease.run_id, state, END_ACTIONS[outcome.state])
    run = _end_run(
        conn,
        lease.run_id,
        now,
        target,
        result_json=outcome.result_json,
        error=outcome.error,
        reason=outcome.reason,
    )
    data: dict[str, Any] = {}
    if outcome.error is not None:
        data["error"] = outcome.error.to_json()
    if target is RunState.CANCELLED:
        data["reason"] = run.cancel_reason
    _append_event(conn, lease.run_id, now, END_EVENTS[target], target, data)
    return run


def register_worker(
    conn: sqlite3.Connection,
    clock: Clock,
    worker_id: WorkerId,
    workflows: Sequence[WorkflowKey],
    lease_ms: int,
) -> None:
    now = clock.now_ms()
    keys = list(dict.fromkeys(workflows))
    conn.execute(
        Q["upsert_worker"],
        {
            "id": worker_id,
            "workflows": workflow_keys_json(keys),
            "now": now,
            "alive_until": now + lease_ms,
        },
    )
    for key in keys:
        conn.execute(Q["insert_workflow"], {"name": key.name, "version": key.version, "now": now})


def workflow_versions(conn: sqlite3.Connection, name: str) -> list[str]:
    return [row[0] for row in conn.execute(Q["workflow_versions"], {"name": name})]


def unregister_worker(conn: sqlite3.Connection, clock: Clock, worker_id: WorkerId) -> None:
    conn.execute(Q["unregister_worker"], {"id": worker_id, "now": clock.now_ms()})


def list_workers(conn: sqlite3.Connection, clock: Clock) -> list[WorkerInfo]:
    now = clock.now_ms()
    return [
        WorkerInfo(
            id=WorkerId(worker_id),
            workflows=workflow_keys(workflows),
            last_seen_ms=last_seen,
            alive_until_ms=alive_until,
            alive=alive_until > now,
        )
        for worker_id, workflows, last_seen, alive_until in conn.execute(Q["list_workers"])
    ]


def list_workflows(conn: sqlite3.Connection, clock: Clock) -> list[WorkflowSummary]:
    counts: dict[tuple[str, str], dict[str, int]] = {}
    for workflow, version, state, count in conn.execute(Q["run_counts"]):
        counts.setdefault((workflow, version), {})[state] = count
    live: dict[tuple[str, str], list[WorkerId]] = {}
    for worker in list_workers(conn, clock):
        if worker.alive:
            for key in worker.workflows:
                live.setdefault((key.name, key.version), []).append(worker.id)
    return [
        WorkflowSummary(
            name=name,
            version=version,
            live_workers=tuple(live.get((name, version), ())),
            runs=counts.get((name, version), {}),
        )
        for name, version in conn.execute(Q["list_workflows"])
    ]


# --- timers -------------------------------------------------------------------------------------


def fire_timers(
    conn: sqlite3.Connection, clock: Clock, *, max_recovery_attempts: int, limit: int
) -> TimerReport:
    now = clock.now_ms()
    expired: list[RunId] = []
    ended: list[RunId] = []
    woken: list[RunId] = []
    if limit > 0:
        # fetchall: the loop below updates the rows this query reads.
        rows = conn.execute(Q["expired_leases"], {"now": now, "limit": limit}).fetchall()
        for run_id, worker_id, recovery_attempts, cancel_requested, cancel_reason in rows:
            outcome = _expire_lease(
                conn,
                run_id,
                now,
                worker_id=worker_id,
                recovery_attempts=recovery_attempts,
                cancel_requested=bool(cancel_requested),
                cancel_reason=cancel_reason,
                max_recovery_attempts=max_recovery_attempts,
            )
            (ended if outcome.is_final else expired).append(RunId(run_id))
    remaining = limit - len(expired) - len(ended)
    if remaining > 0:
        rows = conn.execute(Q["due_waits"], {"now": now, "limit": remaining}).fetchall()
        for run_id, wait_kind, wait_detail in rows:
            _wake(conn, run_id, now, wait_kind, wait_detail)
            woken.append(RunId(run_id))
    dues = [
        due
        for due in (
            conn.execute(Q["next_wait_due"]).fetchone()[0],
            conn.execute(Q["next_lease_due"]).fetchone()[0],
        )
        if due is not None
    ]
    return TimerReport(
        woken=tuple(woken),
        expired=tuple(expired),
        ended=tuple(ended),
        next_due_ms=min(dues) if dues else None,
        now_ms=now,
    )


def _expire_lease(
    conn: sqlite3.Connection,
    run_id: str,
    now: int,
    *,
    worker_id: str | None,
    recovery_attempts: int,
    cancel_requested: bool,
    cancel_reason: str | None,
    max_recovery_attempts: int,
) -> RunState:
    """Take back a run whose worker went silent; return the state it is left in."""
    losses = recovery_attempts + 1
    data: dict[str, Any] = {
        "worker_id": worker_id,
        "interrupted": interrupted_tasks(
            conn.execute(Q["task_events_of_attempt"], {"run_id": run_id})
        ),
    }
    if cancel_requested:
        target = check_transition(run_id, RunState.RUNNING, RunAction.CANCEL)
        _end_run(conn, run_id, now, target)
        data |= {"reason": cancel_reason, "lease_expired": True}
        _append_event(conn, run_id, now, EventKind.CANCELLED, target, data)
    elif losses > max_recovery_attempts:
        target = check_transition(run_id, RunState.RUNNING, RunAction.FAIL)
        error = lease_expired_error(run_id, losses, worker_id, max_recovery_attempts)
        _end_run(conn, run_id, now, target, error=error)
        data |= {"error": error.to_json(), "lease_expired": True}
        _append_event(conn, run_id, now, EventKind.FAILED, target, data)
    else:
        target = check_transition(run_id, RunState.RUNNING, RunAction.EXPIRE_LEASE)
        conn.execute(Q["requeue_run"], {"id": run_id, "recovered": 1, "now": now})
        data["recovery_attempts"] = losses
        _append_event(conn, run_id, now, EventKind.LEASE_EXPIRED, target, data)
    return target
