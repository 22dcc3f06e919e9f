"""What each `SqliteStorage` method does: its statements, run on the writer's connection.

Each method is written as a function of the connection (`conn`) and called without it: `_writes`
and `_reads` queue it on the writer thread (`_sqlite_writer`) and await its outcome. A write runs
inside a SAVEPOINT of its batch's transaction: when one raises, everything it wrote is rolled
back and nothing else is. Times come from the clock when the operation runs, not when it was
queued. The decisions are `_rules`'; the row changes several methods share, `_sqlite_changes`'.
"""

from __future__ import annotations

import functools
import json
import sqlite3
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Concatenate, ParamSpec, TypeVar

from aiki._core.clock import Clock
from aiki._core.ids import RunId, WorkerId, new_run_id
from aiki._core.models import (
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
from aiki._core.states import TARGET, RunAction, RunState, check_transition
from aiki.errors import RunNotFoundError, StorageError
from aiki.storage._records import (
    END_ACTIONS,
    END_EVENTS,
    end_data,
    error_text,
    history_event,
    list_params,
    list_query_name,
    run_from_row,
    served_version_from_row,
    task_end_data,
    task_end_kind,
    wait_data,
    workflow_keys_json,
)
from aiki.storage._rules import (
    CancelStep,
    ExpiredLease,
    TimerPass,
    cancel_step,
    check_claimable,
    check_event_accepted,
    enqueued_before,
    event_sent_before,
    event_stored,
    same_end,
    same_start,
    wake,
    wakes_on_event,
)
from aiki.storage._sqlite_changes import (
    Q,
    append_event,
    append_start,
    apply_change,
    check_lease_now,
    check_running_now,
    end_run,
    has_unconsumed_event,
    live_workers,
    read_run,
    task_records,
)
from aiki.storage._sqlite_writer import SqliteWriter

P = ParamSpec("P")
T = TypeVar("T")

_Op = Callable[Concatenate["SqliteOperations", sqlite3.Connection, P], T]
_Method = Callable[Concatenate["SqliteOperations", P], Coroutine[Any, Any, T]]


def _on_writer(*, write: bool) -> Callable[[_Op[P, T]], _Method[P, T]]:
    def decorate(op: _Op[P, T]) -> _Method[P, T]:
        @functools.wraps(op)
        async def method(self: SqliteOperations, /, *args: P.args, **kwargs: P.kwargs) -> T:
            writer = self._open_writer()
            return await writer.run(lambda conn: op(self, conn, *args, **kwargs), write=write)

        return method

    return decorate


# The method writes: it runs in the writer's next transaction, inside a SAVEPOINT of its own.
_writes = _on_writer(write=True)
# The method only reads: no SAVEPOINT, and a batch of reads alone takes no write lock.
_reads = _on_writer(write=False)


class SqliteOperations:
    """The `Storage` methods on SQLite; `SqliteStorage` adds opening and closing."""

    def __init__(self, *, clock: Clock) -> None:
        self._clock = clock
        self._writer: SqliteWriter | None = None

    def _open_writer(self) -> SqliteWriter:
        if self._writer is None:
            raise StorageError(f"{self!r} is not open")
        return self._writer

    async def now_ms(self) -> int:
        """The storage clock: the clock this storage was built with."""
        return self._clock.now_ms()

    # --- runs -----------------------------------------------------------------------------------

    @_writes
    def enqueue(self, conn: sqlite3.Connection, new: NewRun) -> Enqueued:
        """See `Storage.enqueue`."""
        now = self._clock.now_ms()
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
                return enqueued_before(new, row["id"], row["payload"])
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
        conn.execute(
            Q["insert_workflow"], {"name": new.workflow, "version": new.version, "now": now}
        )
        append_event(conn, run_id, now, EventKind.ENQUEUED, RunState.PENDING)
        return Enqueued(id=run_id, created=True)

    @_writes
    def enqueue_claimed(
        self, conn: sqlite3.Connection, new: NewRun, worker_id: WorkerId, lease_ms: int
    ) -> ClaimedRun:
        """See `Storage.enqueue_claimed`."""
        check_claimable(new)
        now = self._clock.now_ms()
        run_id = new_run_id()
        row = conn.execute(
            Q["insert_claimed_run"],
            {
                "id": run_id,
                "workflow": new.workflow,
                "version": new.version,
                "payload": new.payload_json,
                "worker_id": worker_id,
                "lease_expires_at": now + lease_ms,
                "now": now,
            },
        ).fetchone()
        conn.execute(
            Q["insert_workflow"], {"name": new.workflow, "version": new.version, "now": now}
        )
        append_event(conn, run_id, now, EventKind.ENQUEUED, RunState.PENDING)
        run = run_from_row(row)
        data = {"worker_id": worker_id, "attempt": run.attempt}
        append_event(conn, run_id, now, EventKind.CLAIMED, RunState.RUNNING, data)
        return ClaimedRun(run=run, revision=run.revision, now_ms=now)

    @_reads
    def get_run(self, conn: sqlite3.Connection, run_id: RunId) -> RunStatus | None:
        """See `Storage.get_run`."""
        return read_run(conn, run_id)

    @_reads
    def get_runs(self, conn: sqlite3.Connection, run_ids: Sequence[RunId]) -> list[RunStatus]:
        """See `Storage.get_runs`."""
        rows = conn.execute(Q["get_runs"], {"ids": json.dumps(list(run_ids))}).fetchall()
        return [run_from_row(row) for row in rows]

    @_reads
    def list_runs(
        self,
        conn: sqlite3.Connection,
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
        # One query per filter combination: SQLite picks its index when the query is prepared.
        query = Q[list_query_name(workflow, state)]
        return [run_from_row(row) for row in conn.execute(query, params)]

    @_reads
    def get_history(self, conn: sqlite3.Connection, run_id: RunId) -> list[HistoryEvent]:
        """See `Storage.get_history`."""
        return [history_event(row) for row in conn.execute(Q["get_history"], {"run_id": run_id})]

    @_writes
    def cancel(self, conn: sqlite3.Connection, run_id: RunId, reason: str | None) -> RunStatus:
        """See `Storage.cancel`."""
        now = self._clock.now_ms()
        run = read_run(conn, run_id)
        if run is None:
            raise RunNotFoundError(run_id)
        step = cancel_step(run)
        if step is None:
            return run
        if step is CancelStep.FLAG:
            row = conn.execute(Q["request_cancel"], {"id": run_id, "reason": reason, "now": now})
            flagged = run_from_row(row.fetchone())
            append_event(
                conn, run_id, now, EventKind.CANCEL_REQUESTED, RunState.RUNNING, {"reason": reason}
            )
            return flagged
        target = TARGET[RunAction.CANCEL]
        cancelled = end_run(conn, run_id, now, target, reason=reason)
        append_event(conn, run_id, now, EventKind.CANCELLED, target, {"reason": reason})
        return cancelled

    # --- a worker's writes ----------------------------------------------------------------------

    @_writes
    def claim(
        self,
        conn: sqlite3.Connection,
        worker_id: WorkerId,
        workflows: Sequence[WorkflowKey],
        limit: int,
        lease_ms: int,
    ) -> list[ClaimedRun]:
        """See `Storage.claim`."""
        if limit <= 0 or not workflows:
            return []
        now = self._clock.now_ms()
        # One indexed range scan per workflow key, merged: oldest first across all of them.
        candidates: list[str] = []
        for key in dict.fromkeys(workflows):
            params = {"workflow": key.name, "version": key.version, "limit": limit}
            candidates.extend(row["id"] for row in conn.execute(Q["pending_ids"], params))
        candidates.sort()
        runs: list[RunStatus] = []
        for run_id in candidates[:limit]:
            target = check_transition(run_id, RunState.PENDING, RunAction.CLAIM)
            row = conn.execute(
                Q["claim_run"],
                {
                    "id": run_id,
                    "worker_id": worker_id,
                    "lease_expires_at": now + lease_ms,
                    "now": now,
                },
            ).fetchone()
            run = run_from_row(row)
            data = {"worker_id": worker_id, "attempt": run.attempt}
            append_event(conn, run_id, now, EventKind.CLAIMED, target, data)
            runs.append(run)
        tasks = task_records(conn, [run.id for run in runs])
        return [
            ClaimedRun(
                run=run, revision=run.revision, now_ms=now, tasks=tuple(tasks.get(run.id, ()))
            )
            for run in runs
        ]

    @_writes
    def heartbeat(
        self,
        conn: sqlite3.Connection,
        worker_id: WorkerId,
        leases: Sequence[Lease],
        lease_ms: int,
    ) -> HeartbeatReply:
        """See `Storage.heartbeat`."""
        now = self._clock.now_ms()
        lost: list[RunId] = []
        cancels: list[RunId] = []
        for lease in leases:
            row = conn.execute(
                Q["extend_lease"],
                {
                    "id": lease.run_id,
                    "revision": lease.revision,
                    "lease_expires_at": now + lease_ms,
                },
            ).fetchone()
            if row is None:
                lost.append(lease.run_id)
            elif row["cancel_requested"]:
                cancels.append(lease.run_id)
        conn.execute(
            Q["touch_worker"], {"id": worker_id, "now": now, "alive_until": now + lease_ms}
        )
        return HeartbeatReply(lost=tuple(lost), cancel_requested=tuple(cancels))

    @_writes
    def start_task(self, conn: sqlite3.Connection, lease: Lease, start: TaskStart) -> None:
        """See `Storage.start_task`."""
        now = self._clock.now_ms()
        check_running_now(conn, lease)
        last = conn.execute(Q["last_event"], {"run_id": lease.run_id}).fetchone()
        address = start.address
        if last is not None and same_start(last["kind"], last["data"], address, start.attempt):
            return  # the same start, sent again after its reply was lost
        append_start(conn, lease.run_id, now, start.address, start.attempt, start.worker_id)

    @_writes
    def finish_task(self, conn: sqlite3.Connection, lease: Lease, end: TaskEnd) -> bool:
        """See `Storage.finish_task`."""
        cancel_requested = check_running_now(conn, lease)
        _record_end(conn, lease, end, self._clock.now_ms())
        return cancel_requested

    @_writes
    def suspend(self, conn: sqlite3.Connection, lease: Lease, wait: WaitInfo) -> bool:
        """See `Storage.suspend`."""
        now = self._clock.now_ms()
        target, _ = check_lease_now(conn, lease, RunAction.SUSPEND)
        if target is None:
            return False  # suspended already: the write was sent again
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
        append_event(conn, lease.run_id, now, EventKind.SUSPENDED, target, wait_data(wait))
        if wait.kind is WaitKind.EVENT and has_unconsumed_event(conn, lease.run_id, wait.detail):
            # The event came while the run was running, after its code looked: wake it at once.
            apply_change(conn, now, wake(lease.run_id, wait.kind.value, wait.detail))
            return True
        return False

    @_writes
    def release(self, conn: sqlite3.Connection, lease: Lease) -> None:
        """See `Storage.release`."""
        now = self._clock.now_ms()
        target, worker_id = check_lease_now(conn, lease, RunAction.RELEASE)
        if target is None:
            return  # released already: the write was sent again
        conn.execute(Q["requeue_run"], {"id": lease.run_id, "recovered": 0, "now": now})
        data = {"worker_id": worker_id}
        append_event(conn, lease.run_id, now, EventKind.RELEASED, target, data)

    @_writes
    def finish(self, conn: sqlite3.Connection, lease: Lease, outcome: RunOutcome) -> RunStatus:
        """See `Storage.finish`."""
        now = self._clock.now_ms()
        target, _ = check_lease_now(conn, lease, END_ACTIONS[outcome.state])
        if target is None:
            run = read_run(conn, lease.run_id)  # this end, sent again after its reply was lost
            assert run is not None
            return run
        for end in outcome.task_ends:
            _record_end(conn, lease, end, now)
        run = end_run(
            conn,
            lease.run_id,
            now,
            target,
            result_json=outcome.result_json,
            error=outcome.error,
            reason=outcome.reason,
        )
        data = end_data(target, outcome.error, run.cancel_reason)
        append_event(conn, lease.run_id, now, END_EVENTS[target], target, data)
        return run

    # --- events ---------------------------------------------------------------------------------

    @_writes
    def send_event(self, conn: sqlite3.Connection, new: NewEvent) -> EventSent:
        """See `Storage.send_event`."""
        now = self._clock.now_ms()
        run = conn.execute(Q["run_for_event"], {"id": new.run_id}).fetchone()
        if run is None:
            raise RunNotFoundError(new.run_id)
        key = new.idempotency_key
        if key is not None:
            found = conn.execute(
                Q["event_by_key"], {"run_id": new.run_id, "name": new.name, "key": key}
            ).fetchone()
            if found is not None:
                return event_sent_before(new, found["seq"], found["data"])
        state = check_event_accepted(new, run["state"])
        seq: int = conn.execute(
            Q["insert_event"],
            {"run_id": new.run_id, "name": new.name, "data": new.data_json, "key": key, "now": now},
        ).fetchone()["seq"]
        data = {"name": new.name, "seq": seq}
        append_event(conn, new.run_id, now, EventKind.EVENT_SENT, state, data)
        woken = wakes_on_event(state, run["wait_kind"])
        if woken:
            apply_change(conn, now, wake(new.run_id, WaitKind.EVENT.value, new.name))
        return event_stored(seq, woken, run["workflow"], run["version"])

    @_reads
    def next_event(
        self, conn: sqlite3.Connection, run_id: RunId, name: str, after_seq: int
    ) -> RunEvent | None:
        """See `Storage.next_event`."""
        row = conn.execute(
            Q["next_event"], {"run_id": run_id, "name": name, "after_seq": after_seq}
        ).fetchone()
        if row is None:
            return None
        return RunEvent(seq=row["seq"], name=row["name"], data_json=row["data"])

    # --- timers ---------------------------------------------------------------------------------

    @_writes
    def fire_timers(
        self, conn: sqlite3.Connection, *, max_recovery_attempts: int, limit: int = 1000
    ) -> TimerReport:
        """See `Storage.fire_timers`."""
        now = self._clock.now_ms()
        timers = TimerPass(now_ms=now, max_recovery_attempts=max_recovery_attempts, limit=limit)
        if limit > 0:
            # fetchall: the loop below updates the rows this query reads.
            rows = conn.execute(Q["expired_leases"], {"now": now, "limit": limit}).fetchall()
            for row in rows:
                events = conn.execute(Q["task_events_of_attempt"], {"run_id": row["id"]})
                lease = ExpiredLease(
                    run_id=row["id"],
                    worker_id=row["worker_id"],
                    recovery_attempts=row["recovery_attempts"],
                    cancel_requested=bool(row["cancel_requested"]),
                    cancel_reason=row["cancel_reason"],
                    task_events=[(event["kind"], event["data"]) for event in events],
                )
                apply_change(conn, now, timers.expire(lease))
        if timers.remaining > 0:
            params = {"now": now, "limit": timers.remaining}
            for row in conn.execute(Q["due_waits"], params).fetchall():
                change = timers.wake(row["id"], row["wait_kind"], row["wait_detail"])
                apply_change(conn, now, change)
        return timers.report(
            conn.execute(Q["next_wait_due"]).fetchone()["due"],
            conn.execute(Q["next_lease_due"]).fetchone()["due"],
        )

    # --- workers and workflows ------------------------------------------------------------------

    @_writes
    def register_worker(
        self,
        conn: sqlite3.Connection,
        worker_id: WorkerId,
        versions: Sequence[ServedVersion],
        lease_ms: int,
    ) -> None:
        """See `Storage.register_worker`."""
        now = self._clock.now_ms()
        served = {version.key: version for version in versions}
        conn.execute(
            Q["upsert_worker"],
            {
                "id": worker_id,
                "workflows": workflow_keys_json(list(served)),
                "now": now,
                "alive_until": now + lease_ms,
            },
        )
        for version in served.values():
            conn.execute(
                Q["register_workflow"],
                {
                    "name": version.name,
                    "version": version.version,
                    "now": now,
                    "payload_schema": version.payload_schema_json,
                },
            )

    @_writes
    def unregister_worker(self, conn: sqlite3.Connection, worker_id: WorkerId) -> None:
        """See `Storage.unregister_worker`."""
        conn.execute(Q["unregister_worker"], {"id": worker_id, "now": self._clock.now_ms()})

    @_reads
    def list_workers(self, conn: sqlite3.Connection) -> list[WorkerInfo]:
        """See `Storage.list_workers`."""
        return live_workers(conn, self._clock.now_ms())

    @_reads
    def served_versions(self, conn: sqlite3.Connection, name: str) -> list[ServedVersion]:
        """See `Storage.served_versions`."""
        rows = conn.execute(Q["served_versions"], {"name": name})
        return [served_version_from_row(row) for row in rows]

    @_reads
    def list_workflows(self, conn: sqlite3.Connection) -> list[WorkflowSummary]:
        """See `Storage.list_workflows`."""
        counts: dict[tuple[str, str], dict[str, int]] = {}
        for row in conn.execute(Q["run_counts"]):
            counts.setdefault((row["workflow"], row["version"]), {})[row["state"]] = row["n"]
        live: dict[tuple[str, str], list[WorkerId]] = {}
        for worker in live_workers(conn, self._clock.now_ms()):
            if worker.alive:
                for key in worker.workflows:
                    live.setdefault((key.name, key.version), []).append(worker.id)
        return [
            WorkflowSummary(
                name=row["name"],
                version=row["version"],
                live_workers=tuple(live.get((row["name"], row["version"]), ())),
                runs=counts.get((row["name"], row["version"]), {}),
            )
            for row in conn.execute(Q["list_workflows"])
        ]


def _record_end(conn: sqlite3.Connection, lease: Lease, end: TaskEnd, now: int) -> None:
    """A task attempt's end (and its start, if not written), on a run known to be held."""
    address = end.address
    task = {
        "run_id": lease.run_id,
        "task": address.task,
        "digest": address.digest,
        "idx": address.index,
    }
    recorded = conn.execute(Q["task_result_state"], task).fetchone()
    if recorded is not None and same_end(recorded["outcome"], recorded["attempts"], end):
        return  # this attempt's end is recorded: the write was sent again
    if not end.start_reported:
        # Stamped now, not now - duration: the worker's clock is not the storage's, and the
        # history's times must not go backwards. The end event carries the duration.
        append_start(conn, lease.run_id, now, address, end.attempt, end.worker_id)
    conn.execute(
        Q["upsert_task_result"],
        task
        | {
            "outcome": end.outcome.value,
            "attempts": end.attempt,
            "result": end.result_json,
            "error": error_text(end.error),
            "now": now,
        },
    )
    kind = task_end_kind(end)
    append_event(conn, lease.run_id, now, kind, RunState.RUNNING, task_end_data(end))
