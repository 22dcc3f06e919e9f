"""What each `PostgresStorage` method does: its statements, run on the connection pool.

Each method is written as a function of the pool (`db`) and called without it: `_pooled` hands
it the open pool and turns driver errors into `StorageError`. Each method is one statement, so
one round trip and one transaction, except `fire_timers` when something is due (see there). The
hot writes (enqueue, task starts and ends, run ends) go through a `WriteBatcher` of their kind,
which sends concurrent ones as one statement over arrays, one element per call: each call's
checks and effects are its own, they only share the round trip and the commit. When a worker
write is refused, the statement returns the run as it saw it, and `_rules` decides, as for
SQLite, what to raise. `now` is a test clock's reading, or None for the database clock.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Concatenate, ParamSpec, TypeVar

from aiki._core.clock import Clock
from aiki._core.ids import RunId, WorkerId, new_run_id
from aiki._core.models import (
    EVENT_RECEIVED_DIGEST,
    EVENT_TASK_PREFIX,
    ClaimedRun,
    Enqueued,
    EventSent,
    HeartbeatReply,
    HistoryEvent,
    Lease,
    NewEvent,
    NewRun,
    RunEvent,
    RunOutcome,
    RunStatus,
    ServedVersion,
    TaskEnd,
    TaskStart,
    TimerReport,
    WaitInfo,
    WaitKind,
    WorkerInfo,
    WorkflowKey,
    WorkflowSummary,
)
from aiki._core.states import TARGET, RunAction, RunState
from aiki.errors import LeaseLostError, RunNotFoundError, StorageError
from aiki.storage._postgres_statements import (
    ALLOWED,
    ALLOWED_TEXT,
    CANCEL_NOW,
    DRIVER_ERRORS,
    Pool,
    Q,
    Writers,
    claimed_tasks,
    execute,
    fetch,
    fetchone,
    fetchrow,
    fetchval,
)
from aiki.storage._postgres_timers import fire_due
from aiki.storage._records import (
    END_ACTIONS,
    END_EVENTS,
    dump_json,
    error_text,
    history_event,
    list_params,
    list_query_name,
    run_from_row,
    served_version_from_row,
    task_end_data,
    task_end_kind,
    task_ends_json,
    task_start_data,
    wait_data,
    worker_from_row,
    workflow_keys_json,
)
from aiki.storage._rules import (
    TimerPass,
    cancel_step,
    check_claimable,
    check_event_accepted,
    check_refused,
    enqueued_before,
    event_sent_before,
    event_stored,
    next_due,
    wake,
    wakes_on_event,
)

P = ParamSpec("P")
T = TypeVar("T")

# A statement that found its run moved by a concurrent write is run again, this often at most.
_RACE_RETRIES = 5

# Statements of one batched write kind (enqueue, task start, task end, run end) in flight at
# once. Each takes every call of its kind queued since the last one went: under load, calls
# share round trips and commits; two let one statement execute while the other commits.
_WRITE_FLUSHES = 2

_Op = Callable[Concatenate["PostgresOperations", Pool, P], Coroutine[Any, Any, T]]
_Method = Callable[Concatenate["PostgresOperations", P], Coroutine[Any, Any, T]]


def _pooled(op: _Op[P, T]) -> _Method[P, T]:
    """The method runs on the open pool; a driver error becomes `StorageError`."""

    @functools.wraps(op)
    async def method(self: PostgresOperations, /, *args: P.args, **kwargs: P.kwargs) -> T:
        pool = self._pool
        if pool is None:
            raise StorageError(f"{self!r} is not open")
        self._calls += 1
        self._idle.clear()
        try:
            return await op(self, pool, *args, **kwargs)
        except DRIVER_ERRORS as exc:
            raise StorageError(f"PostgreSQL: {type(exc).__name__}: {exc}") from exc
        finally:
            self._calls -= 1
            if self._calls == 0:
                self._idle.set()

    return method


class PostgresOperations:
    """The `Storage` methods on PostgreSQL; `PostgresStorage` adds opening and closing."""

    def __init__(self, *, clock: Clock | None) -> None:
        self._clock = clock
        self._pool: Pool | None = None
        self._writers = Writers.create(max_flushes=_WRITE_FLUSHES)
        self._calls = 0  # calls in progress: close() waits for them
        self._idle = asyncio.Event()
        self._idle.set()

    def _now(self) -> int | None:
        """A test clock's reading, or None: the statement reads the database clock."""
        return None if self._clock is None else self._clock.now_ms()

    async def now_ms(self) -> int:
        """The storage clock: the database's (or the test clock this storage was built with)."""
        if self._clock is not None:
            return self._clock.now_ms()
        return await self._database_now()

    @_pooled
    async def _database_now(self, db: Pool) -> int:
        value: int = await db.fetchval(Q["now"].sql)
        return value

    # --- runs -----------------------------------------------------------------------------------

    @_pooled
    async def enqueue(self, db: Pool, new: NewRun) -> Enqueued:
        """See `Storage.enqueue`."""
        run_id = new_run_id()
        key = new.idempotency_key
        row = await self._writers.enqueue.write(
            db,
            # One key at a time: a second enqueue with it must see the first's run.
            run_id if key is None else (new.workflow, new.version, key),
            (run_id, self._now(), new.workflow, new.version, new.payload_json, key),
        )
        if row is None:
            raise StorageError("PostgreSQL returned no row for enqueue")
        if row["created"]:
            return Enqueued(id=run_id, created=True)
        existing = row
        if row["id"] is None:
            # The run holding the key was committed after this statement's snapshot was taken
            # (the INSERT waited for it): a new statement sees it.
            found = await fetchrow(
                db,
                "find_by_idempotency_key",
                workflow=new.workflow,
                version=new.version,
                idempotency_key=key,
            )
            if found is None:
                raise StorageError(f"idempotency key {key!r} is taken, yet no run holds it")
            existing = found
        # Payloads are stored as given (json, not jsonb): the text read back is the text sent.
        return enqueued_before(new, existing["id"], existing["payload"])

    @_pooled
    async def enqueue_claimed(
        self, db: Pool, new: NewRun, worker_id: WorkerId, lease_ms: int
    ) -> ClaimedRun:
        """See `Storage.enqueue_claimed`."""
        check_claimable(new)
        row = await fetchrow(
            db,
            "enqueue_claimed",
            now=self._now(),
            id=new_run_id(),
            workflow=new.workflow,
            version=new.version,
            payload=new.payload_json,
            worker_id=worker_id,
            lease_ms=lease_ms,
        )
        if row is None:
            raise StorageError("PostgreSQL returned no row for enqueue_claimed")
        run = run_from_row(row)
        return ClaimedRun(run=run, revision=run.revision, now_ms=run.updated_at_ms)

    @_pooled
    async def get_run(self, db: Pool, run_id: RunId) -> RunStatus | None:
        """See `Storage.get_run`."""
        row = await db.fetchrow(Q["get_run"].sql, run_id)
        return None if row is None else run_from_row(row)

    @_pooled
    async def get_runs(self, db: Pool, run_ids: Sequence[RunId]) -> list[RunStatus]:
        """See `Storage.get_runs`."""
        return [run_from_row(row) for row in await fetch(db, "get_runs", ids=list(run_ids))]

    @_pooled
    async def list_runs(
        self,
        db: Pool,
        *,
        workflow: str | None = None,
        state: RunState | None = None,
        after: RunId | None = None,
        limit: int = 100,
    ) -> list[RunStatus]:
        """See `Storage.list_runs`."""
        if limit <= 0:
            return []
        params = list_params(workflow, state, after, limit)
        query = Q[list_query_name(workflow, state)]
        return [run_from_row(row) for row in await db.fetch(query.sql, *query.args(params))]

    @_pooled
    async def get_history(self, db: Pool, run_id: RunId) -> list[HistoryEvent]:
        """See `Storage.get_history`."""
        return [history_event(row) for row in await db.fetch(Q["get_history"].sql, run_id)]

    @_pooled
    async def cancel(self, db: Pool, run_id: RunId, reason: str | None) -> RunStatus:
        """See `Storage.cancel`."""
        now = self._now()
        for _ in range(_RACE_RETRIES):
            row = await fetchrow(
                db, "cancel", now=now, reason=reason, id=run_id, allowed=CANCEL_NOW
            )
            if row is None:
                raise RunNotFoundError(run_id)
            run = run_from_row(row)
            if row["changed"] or cancel_step(run) is None:
                return run
            # The snapshot showed a run this statement should have changed: a concurrent write
            # (a claim, a wake-up) moved it first. Look again.
        raise StorageError(f"run {run_id} kept changing while it was being cancelled")

    # --- a worker's writes ----------------------------------------------------------------------

    @_pooled
    async def claim(
        self,
        db: Pool,
        worker_id: WorkerId,
        workflows: Sequence[WorkflowKey],
        limit: int,
        lease_ms: int,
    ) -> list[ClaimedRun]:
        """See `Storage.claim`."""
        if limit <= 0 or not workflows:
            return []
        keys = list(dict.fromkeys(workflows))
        rows = await fetch(
            db,
            "claim",
            now=self._now(),
            names=[key.name for key in keys],
            versions=[key.version for key in keys],
            limit=limit,
            worker_id=worker_id,
            lease_ms=lease_ms,
        )
        claimed: list[ClaimedRun] = []
        for row in rows:
            run = run_from_row(row)
            tasks = claimed_tasks(row)
            claimed.append(
                ClaimedRun(run=run, revision=run.revision, now_ms=run.updated_at_ms, tasks=tasks)
            )
        return claimed

    @_pooled
    async def heartbeat(
        self, db: Pool, worker_id: WorkerId, leases: Sequence[Lease], lease_ms: int
    ) -> HeartbeatReply:
        """See `Storage.heartbeat`."""
        rows = await fetch(
            db,
            "heartbeat",
            now=self._now(),
            ids=[lease.run_id for lease in leases],
            revisions=[lease.revision for lease in leases],
            lease_ms=lease_ms,
            worker_id=worker_id,
        )
        lost = tuple(RunId(row["id"]) for row in rows if not row["held"])
        cancels = tuple(RunId(row["id"]) for row in rows if row["held"] and row["cancel_requested"])
        return HeartbeatReply(lost=lost, cancel_requested=cancels)

    @_pooled
    async def start_task(self, db: Pool, lease: Lease, start: TaskStart) -> None:
        """See `Storage.start_task`."""
        address = start.address
        data = task_start_data(address, start.attempt, start.worker_id)
        row = await self._writers.start_task.write(
            db,
            lease.run_id,
            (
                lease.run_id,
                lease.revision,
                self._now(),
                address.task,
                address.digest,
                address.index,
                start.attempt,
                dump_json(data),
            ),
        )
        if row is None:
            raise LeaseLostError(lease.run_id, lease.revision)

    @_pooled
    async def finish_task(self, db: Pool, lease: Lease, end: TaskEnd) -> bool:
        """See `Storage.finish_task`."""
        address = end.address
        # Stamped with the end's time, not now - duration, as SQLite does: the worker's clock is
        # not the storage's, and the history's times must not go backwards.
        start_data = (
            None
            if end.start_reported
            else dump_json(task_start_data(address, end.attempt, end.worker_id))
        )
        row = await self._writers.finish_task.write(
            db,
            lease.run_id,
            (
                lease.run_id,
                lease.revision,
                self._now(),
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
        cancel_requested: bool = row["cancel_requested"]
        return cancel_requested

    @_pooled
    async def suspend(self, db: Pool, lease: Lease, wait: WaitInfo) -> bool:
        """See `Storage.suspend`."""
        now = self._now()
        row = await fetchone(
            db,
            "suspend",
            now=now,
            id=lease.run_id,
            revision=lease.revision,
            allowed=ALLOWED[RunAction.SUSPEND],
            wait_kind=wait.kind.value,
            wait_until=wait.until_ms,
            wait_detail=wait.detail,
            data=dump_json(wait_data(wait)),
        )
        if not row["changed"]:
            check_refused(lease, RunAction.SUSPEND, row["state"], row["revision"])
            return False  # suspended already: the write was sent again
        if wait.kind is not WaitKind.EVENT:
            return False
        # An event sent while the run ran, after its code looked: wake it at once. A send locks
        # the run until it commits, so by now every event that found the run running is visible.
        woken: int = await fetchval(
            db,
            "wake_for_event",
            now=now,
            id=lease.run_id,
            revision=lease.revision + 1,
            event_name=wait.detail,
            task=EVENT_TASK_PREFIX + wait.detail,
            digest=EVENT_RECEIVED_DIGEST,
            data=dump_json(wake(lease.run_id, wait.kind.value, wait.detail).data),
        )
        return woken > 0

    @_pooled
    async def release(self, db: Pool, lease: Lease) -> None:
        """See `Storage.release`."""
        row = await fetchone(
            db,
            "release",
            now=self._now(),
            id=lease.run_id,
            revision=lease.revision,
            allowed=ALLOWED[RunAction.RELEASE],
        )
        if not row["changed"]:
            check_refused(lease, RunAction.RELEASE, row["state"], row["revision"])

    @_pooled
    async def finish(self, db: Pool, lease: Lease, outcome: RunOutcome) -> RunStatus:
        """See `Storage.finish`."""
        action = END_ACTIONS[outcome.state]
        target = TARGET[action]
        error = error_text(outcome.error)
        row = await self._writers.finish.write(
            db,
            lease.run_id,
            (
                lease.run_id,
                lease.revision,
                self._now(),
                ALLOWED_TEXT[action],
                target.value,
                END_EVENTS[target].value,
                outcome.result_json,
                error,
                outcome.reason,
                None if error is None else f'{{"error":{error}}}',
                task_ends_json(outcome.task_ends),
            ),
        )
        if row is None:
            raise StorageError("PostgreSQL returned no row for finish")
        if row["id"] is not None:
            return run_from_row(row)  # the run as this end left it
        # `cur_*`: the run as the statement's snapshot saw it.
        check_refused(lease, action, row["cur_state"], row["cur_revision"])
        return run_from_row(row, "cur_")  # this end, sent again after its reply was lost

    # --- events ---------------------------------------------------------------------------------

    @_pooled
    async def send_event(self, db: Pool, new: NewEvent) -> EventSent:
        """See `Storage.send_event`."""
        async with db.acquire() as conn, conn.transaction():
            run = await fetchrow(conn, "lock_run_for_event", now=self._now(), id=new.run_id)
            if run is None:
                raise RunNotFoundError(new.run_id)
            key = new.idempotency_key
            if key is not None:
                found = await fetchrow(
                    conn, "event_by_key", run_id=new.run_id, event_name=new.name, key=key
                )
                if found is not None:
                    return event_sent_before(new, found["seq"], found["data"])
            state = check_event_accepted(new, run["state"])
            clock = run["now"]
            seq: int = await fetchval(
                conn,
                "insert_event",
                run_id=new.run_id,
                event_name=new.name,
                data=new.data_json,
                key=key,
                now=clock,
            )
            data = dump_json({"name": new.name, "seq": seq})
            await execute(conn, "event_sent", id=new.run_id, now=clock, data=data)
            woken = wakes_on_event(state, run["wait_kind"])
            if woken:
                change = wake(new.run_id, WaitKind.EVENT.value, new.name)
                await fetchval(
                    conn,
                    "wake_for_event",
                    now=clock,
                    id=new.run_id,
                    revision=None,
                    event_name=new.name,
                    task=None,
                    digest=None,
                    data=dump_json(change.data),
                )
        return event_stored(seq, woken, run["workflow"], run["version"])

    @_pooled
    async def next_event(
        self, db: Pool, run_id: RunId, name: str, after_seq: int
    ) -> RunEvent | None:
        """See `Storage.next_event`."""
        row = await fetchrow(db, "next_event", run_id=run_id, event_name=name, after_seq=after_seq)
        if row is None:
            return None
        return RunEvent(seq=row["seq"], name=row["name"], data_json=row["data"])

    # --- timers ---------------------------------------------------------------------------------

    @_pooled
    async def fire_timers(
        self, db: Pool, *, max_recovery_attempts: int, limit: int = 1000
    ) -> TimerReport:
        """See `Storage.fire_timers`.

        A first statement looks at the clock and the earliest due times (one round trip; all a
        server's timer loop pays when nothing is due). When something is due, one transaction
        locks the due runs (SKIP LOCKED: another server's timers take the others), decides each
        change with `_rules`, and applies them all in one statement.
        """
        due = await fetchone(db, "timers_due", now=self._now())
        clock: int = due["now"]
        dues = (due["next_wait"], due["next_lease"])
        if limit <= 0 or not any(at is not None and at <= clock for at in dues):
            return TimerReport(next_due_ms=next_due(*dues), now_ms=clock)
        timers = TimerPass(now_ms=clock, max_recovery_attempts=max_recovery_attempts, limit=limit)
        async with db.acquire() as conn, conn.transaction():
            return await fire_due(conn, timers)

    # --- workers and workflows ------------------------------------------------------------------

    @_pooled
    async def register_worker(
        self, db: Pool, worker_id: WorkerId, versions: Sequence[ServedVersion], lease_ms: int
    ) -> None:
        """See `Storage.register_worker`."""
        served = {version.key: version for version in versions}
        await execute(
            db,
            "register_worker",
            now=self._now(),
            id=worker_id,
            workflows=workflow_keys_json(list(served)),
            lease_ms=lease_ms,
            names=[version.name for version in served.values()],
            versions=[version.version for version in served.values()],
            schemas=[version.payload_schema_json for version in served.values()],
        )

    @_pooled
    async def unregister_worker(self, db: Pool, worker_id: WorkerId) -> None:
        """See `Storage.unregister_worker`."""
        await execute(db, "unregister_worker", now=self._now(), id=worker_id)

    @_pooled
    async def list_workers(self, db: Pool) -> list[WorkerInfo]:
        """See `Storage.list_workers`."""
        return [worker_from_row(row) for row in await fetch(db, "list_workers", now=self._now())]

    @_pooled
    async def served_versions(self, db: Pool, name: str) -> list[ServedVersion]:
        """See `Storage.served_versions`."""
        rows = await db.fetch(Q["served_versions"].sql, name)
        return [served_version_from_row(row) for row in rows]

    @_pooled
    async def list_workflows(self, db: Pool) -> list[WorkflowSummary]:
        """See `Storage.list_workflows`."""
        now = self._now()
        # The one statement that reads every run (to count them): a sequential scan does that
        # best, which the session otherwise rules out (see postgres.py).
        async with db.acquire() as conn, conn.transaction(readonly=True):
            await conn.execute("SET LOCAL enable_seqscan = on")
            rows = await fetch(conn, "list_workflows", now=now)
        return [
            WorkflowSummary(
                name=row["name"],
                version=row["version"],
                live_workers=tuple(WorkerId(worker) for worker in row["ids"] or ()),
                runs=dict(zip(row["states"] or (), row["counts"] or (), strict=True)),
            )
            for row in rows
        ]
