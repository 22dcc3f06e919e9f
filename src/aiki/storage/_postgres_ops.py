"""What each `PostgresStorage` method does, as functions of a connection pool.

Each method is one statement, so one round trip and one transaction, except `fire_timers`
when something is due (see there). The hot writes (enqueue, task starts and ends, run ends)
go through a `WriteBatcher` of their kind, which sends concurrent ones as one statement over
arrays, one element per call: each call's checks and effects are its own, they only share
the round trip and the commit. The statements write only when their checks pass; when a
worker write is refused, the statement says why, and the same error as SQLite's is raised here,
from the same state machine. `now` is a test clock's reading, or None for the database clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import asyncpg

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
from aiki._core.states import TARGET, RunAction, RunState, allowed, check_transition
from aiki.errors import (
    ErrorInfo,
    EventRejectedError,
    IdempotencyConflictError,
    LeaseLostError,
    RunNotFoundError,
    StorageError,
)
from aiki.storage._postgres_batch import WriteBatcher
from aiki.storage._postgres_schema import load_postgres_queries
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

# Strings: the stubs make these generic; asyncpg's classes are not subscriptable at run time.
Pool: TypeAlias = "asyncpg.Pool[asyncpg.Record]"
Connection: TypeAlias = "asyncpg.pool.PoolConnectionProxy[asyncpg.Record]"
Record: TypeAlias = asyncpg.Record
Executor: TypeAlias = "Pool | Connection"  # a statement runs on either

Q = load_postgres_queries()

# A statement that found its run moved by a concurrent write is run again, this often at most.
_RACE_RETRIES = 5


def _allowed_states(action: RunAction) -> list[str]:
    """The states the state machine lets `action` start from, for a statement's `:allowed`."""
    return [state.value for state in RunState if allowed(action, state)]


_ALLOWED = {action: _allowed_states(action) for action in RunAction}
# The same for a batched statement, which takes them as one text per call.
_ALLOWED_TEXT = {action: ",".join(states) for action, states in _ALLOWED.items()}
# A pending or waiting run is cancelled at once; a running one is only flagged for its worker.
_CANCEL_NOW = [state for state in _ALLOWED[RunAction.CANCEL] if state != RunState.RUNNING]


def _check_fixed_states() -> None:
    """Fail at import if the state machine no longer matches the states queries.sql names.

    Claims, timers, task writes and heartbeats spell their states out ('pending', 'running',
    'waiting'): claims and timers so that the partial indexes apply, task writes and
    heartbeats on runs they found by primary key (see start_task in queries.sql); the other
    changes take `:allowed` from the state machine at run time.
    """
    fixed = {
        RunAction.CLAIM: ([RunState.PENDING], RunState.RUNNING),
        RunAction.WAKE: ([RunState.WAITING], RunState.PENDING),
        RunAction.EXPIRE_LEASE: ([RunState.RUNNING], RunState.PENDING),
    }
    for action, (sources, target) in fixed.items():
        if _ALLOWED[action] != [state.value for state in sources] or TARGET[action] is not target:
            raise RuntimeError(f"queries.sql hard-codes the states of {action!r}: update it")


_check_fixed_states()


# --- batched writes -----------------------------------------------------------------------------

# The array parameters of each batched statement, in the order each call gives its values.
_ENQUEUE = ("ids", "nows", "workflows", "versions", "payloads", "idempotency_keys")
_START_TASK = ("ids", "revisions", "nows", "tasks", "digests", "indexes", "attempts", "data")
_FINISH_TASK = (
    "ids", "revisions", "nows", "tasks", "digests", "indexes", "outcomes", "attempts",
    "results", "errors", "kinds", "data", "start_data",
)  # fmt: skip
_FINISH = (
    "ids", "revisions", "nows", "allowed", "states", "kinds", "results", "errors", "reasons",
    "error_data",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Writers:
    """One `WriteBatcher` per batched write; `max_flushes` statements of each kind at once."""

    enqueue: WriteBatcher
    start_task: WriteBatcher
    finish_task: WriteBatcher
    finish: WriteBatcher

    @classmethod
    def create(cls, *, max_flushes: int) -> Writers:
        return cls(
            enqueue=WriteBatcher(Q["enqueue"], _ENQUEUE, max_flushes=max_flushes),
            start_task=WriteBatcher(Q["start_task"], _START_TASK, max_flushes=max_flushes),
            finish_task=WriteBatcher(Q["finish_task"], _FINISH_TASK, max_flushes=max_flushes),
            finish=WriteBatcher(Q["finish"], _FINISH, max_flushes=max_flushes),
        )

    async def drain(self) -> None:
        """Wait until every write handed in has run."""
        await asyncio.gather(
            self.enqueue.drain(),
            self.start_task.drain(),
            self.finish_task.drain(),
            self.finish.drain(),
        )


# --- statements ---------------------------------------------------------------------------------


async def _fetch(db: Executor, name: str, **params: Any) -> list[Record]:
    query = Q[name]
    return await db.fetch(query.sql, *query.args(params))


async def _fetchrow(db: Executor, name: str, **params: Any) -> Record | None:
    query = Q[name]
    return await db.fetchrow(query.sql, *query.args(params))


async def _fetchval(db: Executor, name: str, **params: Any) -> Any:
    query = Q[name]
    return await db.fetchval(query.sql, *query.args(params))


async def _execute(db: Executor, name: str, **params: Any) -> None:
    query = Q[name]
    await db.execute(query.sql, *query.args(params))


async def _fetchone(db: Executor, name: str, **params: Any) -> Record:
    """The row of a statement that returns one row, even when it changed nothing."""
    row = await _fetchrow(db, name, **params)
    if row is None:
        raise StorageError(f"PostgreSQL returned no row for {name}")
    return row


# --- clock and runs -----------------------------------------------------------------------------


async def now_ms(db: Pool) -> int:
    value: int = await db.fetchval(Q["now"].sql)
    return value


async def enqueue(db: Pool, writers: Writers, now: int | None, new: NewRun) -> Enqueued:
    run_id = new_run_id()
    key = new.idempotency_key
    row = await writers.enqueue.write(
        db,
        # One key at a time: a second enqueue with it must see the first's run.
        run_id if key is None else (new.workflow, new.version, key),
        (run_id, now, new.workflow, new.version, new.payload_json, key),
    )
    if row is None:
        raise StorageError("PostgreSQL returned no row for enqueue")
    created_at: int | None = row[1]
    if created_at is not None:
        return Enqueued(id=run_id, created=True)
    assert key is not None  # only a key can conflict
    if row[2] is not None:
        existing, start = row, 2
    else:
        # The run holding the key was committed after this statement's snapshot was taken (the
        # INSERT waited for it): a new statement sees it.
        found = await _fetchrow(
            db,
            "find_by_idempotency_key",
            workflow=new.workflow,
            version=new.version,
            idempotency_key=key,
        )
        if found is None:
            raise StorageError(f"idempotency key {key!r} is taken, yet no run holds it")
        existing, start = found, 0
    existing_id = RunId(existing[start])
    # Payloads are canonical JSON text, stored as given (json, not jsonb): equal payloads are
    # equal strings.
    if existing[start + 4] != new.payload_json:
        raise IdempotencyConflictError(
            workflow=new.workflow, version=new.version, idempotency_key=key, run_id=existing_id
        )
    return Enqueued(id=existing_id, created=False)


async def get_run(db: Pool, run_id: RunId) -> RunStatus | None:
    row = await db.fetchrow(Q["get_run"].sql, run_id)
    return None if row is None else run_from_row(row)


async def list_runs(
    db: Pool,
    *,
    workflow: str | None,
    state: RunState | None,
    after: RunId | None,
    limit: int,
) -> list[RunStatus]:
    if limit <= 0:
        return []
    params = list_params(workflow, state, after, limit)
    query = Q[list_query_name(workflow, state)]
    return [run_from_row(row) for row in await db.fetch(query.sql, *query.args(params))]


async def get_history(db: Pool, run_id: RunId) -> list[HistoryEvent]:
    return [history_event(*row) for row in await db.fetch(Q["get_history"].sql, run_id)]


async def cancel(db: Pool, now: int | None, run_id: RunId, reason: str | None) -> RunStatus:
    for _ in range(_RACE_RETRIES):
        row = await _fetchrow(db, "cancel", now=now, reason=reason, id=run_id, allowed=_CANCEL_NOW)
        if row is None:
            raise RunNotFoundError(run_id)
        run = run_from_row(row, 1)
        if row[0] or run.state.is_final:
            return run
        if run.state is RunState.RUNNING and run.cancel_requested:
            return run  # flagged already: its worker ends it
        if run.state is not RunState.RUNNING:
            check_transition(run_id, run.state, RunAction.CANCEL)
        # The snapshot showed a run this statement should have changed: a concurrent write
        # (a claim, a wake-up) moved it first. Look again.
    raise StorageError(f"run {run_id} kept changing while it was being cancelled")


# --- workers ------------------------------------------------------------------------------------


def _task_records(row: Record) -> tuple[TaskRecord, ...]:
    tasks, digests, indexes, outcomes, attempts, results, errors = row[20:27]
    if tasks is None:
        return ()
    return tuple(
        task_record(*fields)
        for fields in zip(tasks, digests, indexes, outcomes, attempts, results, errors, strict=True)
    )


async def claim(
    db: Pool,
    now: int | None,
    worker_id: WorkerId,
    workflows: Sequence[WorkflowKey],
    limit: int,
    lease_ms: int,
) -> list[ClaimedRun]:
    if limit <= 0 or not workflows:
        return []
    keys = list(dict.fromkeys(workflows))
    rows = await _fetch(
        db,
        "claim",
        now=now,
        names=[key.name for key in keys],
        versions=[key.version for key in keys],
        limit=limit,
        worker_id=worker_id,
        lease_ms=lease_ms,
    )
    claimed: list[ClaimedRun] = []
    for row in rows:
        run = run_from_row(row)
        claimed.append(
            ClaimedRun(
                run=run, revision=run.revision, now_ms=run.updated_at_ms, tasks=_task_records(row)
            )
        )
    return claimed


async def heartbeat(
    db: Pool,
    now: int | None,
    worker_id: WorkerId,
    leases: Sequence[Lease],
    lease_ms: int,
) -> HeartbeatReply:
    rows = await _fetch(
        db,
        "heartbeat",
        now=now,
        ids=[lease.run_id for lease in leases],
        revisions=[lease.revision for lease in leases],
        lease_ms=lease_ms,
        worker_id=worker_id,
    )
    lost = tuple(RunId(run_id) for run_id, held, _ in rows if not held)
    cancels = tuple(RunId(run_id) for run_id, held, flagged in rows if held and flagged)
    return HeartbeatReply(lost=lost, cancel_requested=cancels)


async def start_task(
    db: Pool, writers: Writers, now: int | None, lease: Lease, start: TaskStart
) -> None:
    address = start.address
    data = task_start_data(address, start.attempt, start.worker_id)
    row = await writers.start_task.write(
        db,
        lease.run_id,
        (
            lease.run_id,
            lease.revision,
            now,
            address.task,
            address.digest,
            address.index,
            start.attempt,
            dump_json(data),
        ),
    )
    if row is None:
        raise LeaseLostError(lease.run_id, lease.revision)


async def finish_task(
    db: Pool, writers: Writers, now: int | None, lease: Lease, end: TaskEnd
) -> bool:
    address = end.address
    # Stamped with the end's time, not now - duration, as SQLite does: the worker's clock is
    # not the storage's, and the history's times must not go backwards.
    start_data = (
        None
        if end.start_reported
        else dump_json(task_start_data(address, end.attempt, end.worker_id))
    )
    row = await writers.finish_task.write(
        db,
        lease.run_id,
        (
            lease.run_id,
            lease.revision,
            now,
            address.task,
            address.digest,
            address.index,
            end.outcome.value,
            end.attempt,
            end.result_json,
            error_text(end.error),
            task_end_kind(end).value,
            dump_json(task_end_data(end)),
            start_data,
        ),
    )
    if row is None:
        raise LeaseLostError(lease.run_id, lease.revision)
    cancel_requested: bool = row[1]
    return cancel_requested


def _refused(lease: Lease, action: RunAction, state: str | None, revision: int | None) -> None:
    """Raise what SQLite raises for a refused state change: a lost lease, else the state machine.

    `state` and `revision` are the run as the refused statement's snapshot saw it.
    """
    if state is None or revision != lease.revision:
        raise LeaseLostError(lease.run_id, lease.revision)
    check_transition(lease.run_id, RunState(state), action)
    # The snapshot allowed the change, but the row had moved on by the time it was locked:
    # a concurrent write bumped the revision.
    raise LeaseLostError(lease.run_id, lease.revision)


async def suspend(db: Pool, now: int | None, lease: Lease, wait: WaitInfo) -> bool:
    row = await _fetchone(
        db,
        "suspend",
        now=now,
        id=lease.run_id,
        revision=lease.revision,
        allowed=_ALLOWED[RunAction.SUSPEND],
        wait_kind=wait.kind.value,
        wait_until=wait.until_ms,
        wait_detail=wait.detail,
        data=dump_json(wait_data(wait)),
    )
    changed, state, revision = row
    if not changed:
        if not sent_again(lease, RunState.WAITING, state, revision):
            _refused(lease, RunAction.SUSPEND, state, revision)
        return False
    if wait.kind is not WaitKind.EVENT:
        return False
    # An event sent while the run ran, after its code looked: wake it at once. A send locks
    # the run until it commits, so by now every event that found the run running is visible.
    woken: int = await _fetchval(
        db,
        "wake_for_event",
        now=now,
        id=lease.run_id,
        revision=lease.revision + 1,
        event_name=wait.detail,
        task=EVENT_TASK_PREFIX + wait.detail,
        digest=EVENT_RECEIVED_DIGEST,
        data=dump_json({"kind": wait.kind.value, "detail": wait.detail}),
    )
    return woken > 0


# --- events -------------------------------------------------------------------------------------


async def send_event(db: Pool, now: int | None, new: NewEvent) -> EventSent:
    async with db.acquire() as conn, conn.transaction():
        row = await _fetchrow(conn, "lock_run_for_event", now=now, id=new.run_id)
        if row is None:
            raise RunNotFoundError(new.run_id)
        state, workflow, version, wait_kind, clock = row
        key = new.idempotency_key
        if key is not None:
            found = await _fetchrow(
                conn, "event_by_key", run_id=new.run_id, event_name=new.name, key=key
            )
            if found is not None:
                if found[1] != new.data_json:
                    raise EventRejectedError.conflict(
                        run_id=new.run_id, name=new.name, idempotency_key=key
                    )
                return EventSent(seq=found[0], created=False)
        if RunState(state).is_final:
            raise EventRejectedError.run_final(run_id=new.run_id, name=new.name, state=state)
        seq: int = await _fetchval(
            conn,
            "insert_event",
            run_id=new.run_id,
            event_name=new.name,
            data=new.data_json,
            key=key,
            now=clock,
        )
        data = dump_json({"name": new.name, "seq": seq})
        await _execute(conn, "event_sent", id=new.run_id, now=clock, data=data)
        # Any event wakes a run waiting for events: it may wait for several names at once
        # (asyncio.gather), and a wake-up for a name it does not wait for only replays it.
        woken = state == RunState.WAITING.value and wait_kind == WaitKind.EVENT.value
        if woken:
            check_transition(new.run_id, RunState.WAITING, RunAction.WAKE)
            await _fetchval(
                conn,
                "wake_for_event",
                now=clock,
                id=new.run_id,
                revision=None,
                event_name=new.name,
                task=None,
                digest=None,
                data=dump_json({"kind": WaitKind.EVENT.value, "detail": new.name}),
            )
    return EventSent(
        seq=seq,
        created=True,
        woken=woken,
        workflow=WorkflowKey(name=workflow, version=version) if woken else None,
    )


async def next_event(db: Pool, run_id: RunId, name: str, after_seq: int) -> RunEvent | None:
    row = await _fetchrow(db, "next_event", run_id=run_id, event_name=name, after_seq=after_seq)
    return None if row is None else RunEvent(seq=row[0], name=row[1], data_json=row[2])


async def release(db: Pool, now: int | None, lease: Lease) -> None:
    row = await _fetchone(
        db,
        "release",
        now=now,
        id=lease.run_id,
        revision=lease.revision,
        allowed=_ALLOWED[RunAction.RELEASE],
    )
    changed, state, revision = row
    if not changed and not sent_again(lease, RunState.PENDING, state, revision):
        _refused(lease, RunAction.RELEASE, state, revision)


async def finish(
    db: Pool, writers: Writers, now: int | None, lease: Lease, outcome: RunOutcome
) -> RunStatus:
    action = END_ACTIONS[outcome.state]
    target = TARGET[action]
    error = error_text(outcome.error)
    row = await writers.finish.write(
        db,
        lease.run_id,
        (
            lease.run_id,
            lease.revision,
            now,
            _ALLOWED_TEXT[action],
            target.value,
            END_EVENTS[target].value,
            outcome.result_json,
            error,
            outcome.reason,
            None if error is None else f'{{"error":{error}}}',
        ),
    )
    if row is None:
        raise StorageError("PostgreSQL returned no row for finish")
    if row[1] is not None:
        return run_from_row(row, 1)
    state, revision = row[24], row[31]  # the run's columns as the snapshot saw it: from 21
    if sent_again(lease, target, state, revision):
        return run_from_row(row, 21)  # this end, sent again after its reply was lost
    _refused(lease, action, state, revision)
    raise AssertionError("unreachable: _refused raises")


async def register_worker(
    db: Pool,
    now: int | None,
    worker_id: WorkerId,
    workflows: Sequence[WorkflowKey],
    lease_ms: int,
) -> None:
    keys = list(dict.fromkeys(workflows))
    await _execute(
        db,
        "register_worker",
        now=now,
        id=worker_id,
        workflows=workflow_keys_json(keys),
        lease_ms=lease_ms,
        names=[key.name for key in keys],
        versions=[key.version for key in keys],
    )


async def unregister_worker(db: Pool, now: int | None, worker_id: WorkerId) -> None:
    await _execute(db, "unregister_worker", now=now, id=worker_id)


async def workflow_versions(db: Pool, name: str) -> list[str]:
    return [row[0] for row in await db.fetch(Q["workflow_versions"].sql, name)]


async def list_workers(db: Pool, now: int | None) -> list[WorkerInfo]:
    return [
        WorkerInfo(
            id=WorkerId(worker_id),
            workflows=workflow_keys(workflows),
            last_seen_ms=last_seen,
            alive_until_ms=alive_until,
            alive=alive,
        )
        for worker_id, workflows, last_seen, alive_until, alive in await db.fetch(
            Q["list_workers"].sql, now
        )
    ]


async def list_workflows(db: Pool, now: int | None) -> list[WorkflowSummary]:
    # The one statement that reads every run (to count them): a sequential scan does that
    # best, which the session otherwise rules out (see postgres.py).
    async with db.acquire() as conn, conn.transaction(readonly=True):
        await conn.execute("SET LOCAL enable_seqscan = on")
        rows = await conn.fetch(Q["list_workflows"].sql, now)
    return [
        WorkflowSummary(
            name=name,
            version=version,
            live_workers=tuple(WorkerId(worker) for worker in live or ()),
            runs=dict(zip(states or (), counts or (), strict=True)),
        )
        for name, version, states, counts, live in rows
    ]


# --- timers -------------------------------------------------------------------------------------


async def fire_timers(
    db: Pool, now: int | None, *, max_recovery_attempts: int, limit: int
) -> TimerReport:
    """Wake due waits and take back expired leases.

    A first statement looks at the clock and the earliest due times (one round trip; all a
    server's timer loop pays when nothing is due). When something is due, one transaction locks
    the due runs (SKIP LOCKED: another server's timers take the others), decides each change
    here, with the state machine, and applies them all in one statement.
    """
    clock, next_wait, next_lease = await _fetchone(db, "timers_due", now=now)
    dues = [due for due in (next_wait, next_lease) if due is not None]
    if limit <= 0 or not any(due <= clock for due in dues):
        return TimerReport(next_due_ms=min(dues) if dues else None, now_ms=clock)
    async with db.acquire() as conn, conn.transaction():
        return await _fire_due(
            conn, clock, max_recovery_attempts=max_recovery_attempts, limit=limit
        )


class _Changes:
    """The run changes of one fire_timers pass, as the parallel arrays apply_timers takes."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.states: list[str] = []
        self.recovered: list[int] = []
        self.errors: list[str | None] = []
        self.kinds: list[str] = []
        self.data: list[str] = []

    def add(
        self,
        run_id: str,
        state: RunState,
        kind: EventKind,
        data: dict[str, Any],
        *,
        recovered: int = 0,
        error: ErrorInfo | None = None,
    ) -> None:
        self.ids.append(run_id)
        self.states.append(state.value)
        self.recovered.append(recovered)
        self.errors.append(error_text(error))
        self.kinds.append(kind.value)
        self.data.append(dump_json(data))


async def _fire_due(
    conn: Connection, now: int, *, max_recovery_attempts: int, limit: int
) -> TimerReport:
    changes = _Changes()
    expired: list[RunId] = []
    ended: list[RunId] = []
    woken: list[RunId] = []
    for row in await _fetch(conn, "lock_expired_leases", now=now, limit=limit):
        run_id = row[0]
        target = _expire_lease(changes, row, max_recovery_attempts=max_recovery_attempts)
        (ended if target.is_final else expired).append(RunId(run_id))
    remaining = limit - len(changes.ids)
    if remaining > 0:
        rows = await _fetch(conn, "lock_due_waits", now=now, limit=remaining)
        for run_id, wait_kind, wait_detail in rows:
            target = check_transition(run_id, RunState.WAITING, RunAction.WAKE)
            data = {"kind": wait_kind, "detail": wait_detail}
            changes.add(run_id, target, EventKind.WOKEN, data)
            woken.append(RunId(run_id))
    next_wait, next_lease = await _fetchone(
        conn,
        "apply_timers",
        ids=changes.ids,
        states=changes.states,
        recovered=changes.recovered,
        errors=changes.errors,
        kinds=changes.kinds,
        data=changes.data,
        now=now,
    )
    dues = [due for due in (next_wait, next_lease) if due is not None]
    return TimerReport(
        woken=tuple(woken),
        expired=tuple(expired),
        ended=tuple(ended),
        next_due_ms=min(dues) if dues else None,
        now_ms=now,
    )


def _expire_lease(changes: _Changes, row: Record, *, max_recovery_attempts: int) -> RunState:
    """Decide what becomes of a run whose worker went silent; return the state it is left in."""
    run_id, worker_id, recovery_attempts, cancel_requested, cancel_reason, kinds, texts = row
    losses = recovery_attempts + 1
    data: dict[str, Any] = {
        "worker_id": worker_id,
        "interrupted": interrupted_tasks(zip(kinds or (), texts or (), strict=True)),
    }
    if cancel_requested:
        target = check_transition(run_id, RunState.RUNNING, RunAction.CANCEL)
        data |= {"reason": cancel_reason, "lease_expired": True}
        changes.add(run_id, target, EventKind.CANCELLED, data)
    elif losses > max_recovery_attempts:
        target = check_transition(run_id, RunState.RUNNING, RunAction.FAIL)
        error = lease_expired_error(run_id, losses, worker_id, max_recovery_attempts)
        data |= {"error": error.to_json(), "lease_expired": True}
        changes.add(run_id, target, EventKind.FAILED, data, error=error)
    else:
        target = check_transition(run_id, RunState.RUNNING, RunAction.EXPIRE_LEASE)
        data["recovery_attempts"] = losses
        changes.add(run_id, target, EventKind.LEASE_EXPIRED, data, recovered=1)
    return target
