"""The service layer: every operation of `EngineApi`, over storage, with wake-ups.

It knows nothing of HTTP. The in-process client calls it directly; the HTTP layer is a thin
adapter over it. The storage decides what is allowed (revisions, the state machine); this
layer checks sizes, long-polls and tells waiters when something they wait for has happened.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import replace
from typing import Any, TypeVar

from aiki._core.ids import RunId, WorkerId
from aiki._core.models import (
    ClaimedRun,
    Enqueued,
    EventSent,
    HeartbeatReply,
    HistoryEvent,
    Lease,
    NewEvent,
    NewRun,
    PollReply,
    PollRequest,
    RunEvent,
    RunOutcome,
    RunsEnded,
    RunStatus,
    ServedVersion,
    TaskEnd,
    TaskStart,
    TimerReport,
    WaitInfo,
    WorkerInfo,
    WorkflowKey,
    WorkflowSummary,
    check_event_name,
)
from aiki._core.notes import unserved_note
from aiki._core.serde import check_size, encode, parse_json
from aiki._core.states import RunState
from aiki.config import ServerSettings
from aiki.errors import (
    InvalidRequestError,
    RunNotFoundError,
    StorageError,
    WorkflowNotFoundError,
)
from aiki.queue import Announcement, LocalQueue, Queue
from aiki.server._payload_schemas import check_payload
from aiki.server._run_ends import WAIT_RECHECK_S, RunEnds
from aiki.server._signals import KeyedSignal, Shutdown, Signal, wait_any
from aiki.storage import Storage

_log = logging.getLogger("aiki.server")

T = TypeVar("T")

# A worker that has not polled this server for so long is served by another one (or gone):
# cancel requests for it, heard from other servers, are not kept here.
_QUIET_WORKER_S = 300.0
# Pauses before a worker's write is made again after a storage error.
_STORAGE_RETRY_S = (0.05, 0.25)


class Service:
    """The run state machine as a service: what clients and workers call."""

    def __init__(
        self, storage: Storage, settings: ServerSettings, queue: Queue | None = None
    ) -> None:
        self._storage = storage
        self._settings = settings
        self._queue: Queue = queue or LocalQueue()
        self._ready: KeyedSignal[WorkflowKey] = KeyedSignal()  # runs of a version claimable
        self._ready_any = Signal()  # runs of any version may be claimable
        self._timers_changed = Signal()  # a new due time may be earlier than the timer loop knows
        self._shutdown = Shutdown()  # long-polls return at once when the server shuts down
        self._ends = RunEnds(
            lambda ids: self._storage.get_runs(ids),  # looked up at each call
            self._shutdown,
            hears_every_end=self._queue.hears_every_end,
        )
        self._worker_notices: KeyedSignal[WorkerId] = KeyedSignal()
        # Polls parked here with room for runs, longest waiting first: a new run goes to one
        # of them in its enqueue's own transaction, with no claim of its own.
        self._waiting_polls: dict[WorkerId, _WaitingPoll] = {}
        self._enqueues = 0  # in flight now
        self._cancel_notices: dict[WorkerId, set[RunId]] = {}
        self._polled_at: dict[WorkerId, float] = {}  # loop time of each worker's last poll here
        # Counts news of claimable runs. A worker whose last claim came back short, with no
        # such news since, has nothing to claim: its next poll waits before it claims.
        self._ready_news = 0
        # worker -> (`_ready_news` before that claim, the workflows it claimed for)
        self._drained: dict[WorkerId, tuple[int, tuple[WorkflowKey, ...]]] = {}
        self._background: set[asyncio.Task[None]] = set()
        # Long-polls waiting for news right now: tests wait on these instead of guessing how
        # long a request takes to reach its wait.
        self._parked_polls = 0
        # Versions a worker has registered: once known, always known (registration is never
        # undone), so the SDK's enqueues of them need no read.
        self._known: set[WorkflowKey] = set()

    @property
    def parked_polls(self) -> int:
        """Worker polls waiting on this server for work or a cancel request, now."""
        return self._parked_polls

    @property
    def parked_waits(self) -> int:
        """Waits for a run's end (`RunHandle.wait_for_completion`) parked here, now."""
        return self._ends.parked

    # --- applications -------------------------------------------------------------------

    async def enqueue(self, new: NewRun) -> Enqueued:
        what = f"workflow {new.workflow!r} payload"
        check_size(new.payload_json, what=what, limit=self._settings.max_payload_bytes)
        key = WorkflowKey(name=new.workflow, version=new.version)
        if not new.checked:
            # By name (CLI, HTTP): any JSON text may come. Parsed once, to check it against
            # the schema the version's workers registered and to store its canonical form
            # (storage compares payloads as text for idempotency). The SDK's text already is.
            value = parse_json(new.payload_json, what=what)
            served = await self._served(key, allow_unknown=new.allow_unknown)
            if served is not None and served.payload_schema_json is not None:
                check_payload(value, served.payload_schema_json, what=what)
            new = replace(new, payload_json=encode(value, what=what, limit=None))
        elif not new.allow_unknown and key not in self._known:
            await self._served(key, allow_unknown=False)
        mark = self._ends.mark()
        # Only an enqueue on its own: many at once are stored together in one batch, and the
        # worker claims them together too.
        alone = self._enqueues == 0 and new.idempotency_key is None
        poll = self._waiting_poll(key) if alone else None
        self._enqueues += 1
        try:
            if poll is not None:
                enqueued = await self._enqueue_to(poll, new)
            else:
                enqueued = await self._storage.enqueue(new)
                if enqueued.created:
                    self._announce(Announcement(ready=frozenset((key,))))
        finally:
            self._enqueues -= 1
        if enqueued.created:
            self._ends.made(enqueued.id, mark)
            # One turn of the loop first: the worker's poll woken by the run (or the news of
            # it) replies, or claims it, before this caller's reply is written.
            await asyncio.sleep(0)
        return enqueued

    def _waiting_poll(self, key: WorkflowKey) -> _WaitingPoll | None:
        """A parked poll of a worker serving `key`, taken: it is handed one run, no more.

        Its worker asks again at once, and a claim then takes whatever else came meanwhile.
        """
        for worker, poll in self._waiting_polls.items():
            if key in poll.workflows and not poll.woken:
                del self._waiting_polls[worker]
                return poll
        return None

    async def _enqueue_to(self, poll: _WaitingPoll, new: NewRun) -> Enqueued:
        """Create the run claimed by the worker of `poll`, and hand it to that poll."""
        claimed = await self._storage.enqueue_claimed(new, poll.worker_id, poll.lease_ms)
        if not poll.left:
            poll.handed = claimed
            self._worker_notices.notify(poll.worker_id)
        else:
            # The poll went away meanwhile (it timed out, or its worker is stopping): the run
            # is handed back at once, to be claimed like any other.
            await self._release(claimed)
        return Enqueued(id=claimed.run.id, created=True)

    async def _served(self, key: WorkflowKey, *, allow_unknown: bool) -> ServedVersion | None:
        """The version as its workers last registered it; None if none has, and that is allowed.

        Raises:
            WorkflowNotFoundError: no worker has ever registered it and `allow_unknown` is
                False; lists the versions of that workflow that are known.
        """
        versions = await self._storage.served_versions(key.name)
        for served in versions:
            if served.version == key.version:
                self._known.add(key)
                return served
        if allow_unknown:
            return None
        raise WorkflowNotFoundError(
            workflow=key.name, version=key.version, known=[v.version for v in versions]
        )

    async def get_status(self, run_id: RunId) -> RunStatus:
        status = await self._storage.get_run(run_id)
        if status is None:
            raise RunNotFoundError(run_id)
        if status.state is RunState.PENDING:
            return _with_note(status, await self._storage.list_workers())
        return status

    async def list_workers(self) -> list[WorkerInfo]:
        return await self._storage.list_workers()

    async def list_workflows(self) -> list[WorkflowSummary]:
        return await self._storage.list_workflows()

    async def get_history(self, run_id: RunId) -> list[HistoryEvent]:
        history = await self._storage.get_history(run_id)
        if not history and await self._storage.get_run(run_id) is None:
            raise RunNotFoundError(run_id)
        return history

    async def list_runs(
        self,
        *,
        workflow: str | None = None,
        state: RunState | None = None,
        after: RunId | None = None,
        limit: int = 100,
    ) -> list[RunStatus]:
        if not 1 <= limit <= 1000:
            raise ValueError(f"limit must be between 1 and 1000, got {limit}")
        runs = await self._storage.list_runs(
            workflow=workflow, state=state, after=after, limit=limit
        )
        if not any(r.state is RunState.PENDING for r in runs):
            return runs
        workers = await self._storage.list_workers()  # once per page, not once per run
        return [_with_note(r, workers) if r.state is RunState.PENDING else r for r in runs]

    async def wait(self, run_id: RunId, timeout_s: float | None) -> RunStatus:
        """The run's status once it has ended, or as it is after `timeout_s` (None: no end)."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout_s is None else loop.time() + timeout_s
        while True:
            remaining = WAIT_RECHECK_S if deadline is None else deadline - loop.time()
            seen = await self.wait_any([run_id], max(remaining, 0.0))
            if seen.ended:
                return seen.ended[0]
            if seen.missing:
                raise RunNotFoundError(run_id)
            if (deadline is not None and loop.time() >= deadline) or self._shutdown.closed:
                break
        status = await self._storage.get_run(run_id)
        if status is None:
            raise RunNotFoundError(run_id)
        return status

    async def wait_any(self, run_ids: Sequence[RunId], timeout_s: float) -> RunsEnded:
        return await self._ends.wait_any(run_ids, timeout_s)

    async def cancel(self, run_id: RunId, reason: str | None) -> RunStatus:
        status = await self._storage.cancel(run_id, reason)
        if status.state.is_final:
            self._ends.ended_here(status)
            self._announce(Announcement(ended=frozenset((run_id,))))
        elif status.cancel_requested and status.worker_id is not None:
            self._announce(Announcement(cancels=frozenset(((status.worker_id, run_id),))))
        return status

    async def send_event(self, new: NewEvent) -> EventSent:
        try:
            check_event_name(new.name)
        except (TypeError, ValueError) as exc:
            raise InvalidRequestError(str(exc), field="name") from exc
        check_size(
            new.data_json,
            what=f"data of event {new.name!r}",
            limit=self._settings.max_payload_bytes,
        )
        sent = await self._storage.send_event(new)
        if sent.woken and sent.workflow is not None:
            self._announce(Announcement(ready=frozenset((sent.workflow,))))
        return EventSent(seq=sent.seq, created=sent.created)  # the wake-up is ours alone

    # --- workers ------------------------------------------------------------------------

    async def register_worker(
        self, worker_id: WorkerId, versions: Sequence[ServedVersion], lease_ms: int
    ) -> None:
        await self._storage.register_worker(worker_id, versions, lease_ms)
        self._known.update(version.key for version in versions)

    async def unregister_worker(self, worker_id: WorkerId) -> None:
        await self._storage.unregister_worker(worker_id)
        self._forget(worker_id)  # nobody is left to read its notices

    async def poll(self, request: PollRequest) -> PollReply:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + request.wait_ms / 1000
        worker = request.worker_id
        self._polled_at[worker] = loop.time()
        # A worker asks again as soon as a claim brought it runs; at low load that claim
        # would find nothing (one wasted query per run) unless news came in between.
        nothing_new = self._drained.get(worker) == (self._ready_news, request.workflows)
        while True:
            tickets = [self._worker_notices.ticket(worker)]
            ready_keys = request.workflows if request.capacity > 0 else ()
            try:
                if request.capacity > 0:
                    tickets.append(self._ready_any.ticket())
                    tickets.extend(self._ready.ticket(key) for key in ready_keys)
                    claimed = [] if nothing_new else await self._claim(request)
                    nothing_new = False  # after a wait, claim: a timeout is the fallback
                else:
                    claimed = []
                cancels = tuple(self._cancel_notices.pop(worker, ()))
                remaining = deadline - loop.time()
                if claimed or cancels or remaining <= 0 or self._shutdown.closed:
                    return PollReply(
                        claimed=tuple(claimed),
                        cancel_requested=cancels,
                        max_payload_bytes=self._settings.max_payload_bytes,
                    )
                tickets.append(self._shutdown.ticket())
                waiting = _WaitingPoll(request, tickets) if request.capacity > 0 else None
                if waiting is not None:
                    self._waiting_polls[worker] = waiting
                self._parked_polls += 1
                try:
                    await wait_any(tickets, min(remaining, request.recheck_ms / 1000))
                except BaseException:  # the poll was abandoned: nobody takes its run
                    if waiting is not None and waiting.handed is not None:
                        self._spawn(self._release(waiting.handed))
                    raise
                finally:
                    self._parked_polls -= 1
                    if waiting is not None:
                        waiting.left = True
                        if self._waiting_polls.get(worker) is waiting:
                            del self._waiting_polls[worker]
                if waiting is not None and waiting.handed is not None:
                    return PollReply(
                        claimed=(waiting.handed,),
                        cancel_requested=tuple(self._cancel_notices.pop(worker, ())),
                        max_payload_bytes=self._settings.max_payload_bytes,
                    )
            finally:
                self._worker_notices.release(worker)
                for key in ready_keys:
                    self._ready.release(key)
                self._polled_at[worker] = loop.time()

    async def _claim(self, request: PollRequest) -> list[ClaimedRun]:
        news_before = self._ready_news
        claimed = await self._claim_from_storage(request)
        if len(claimed) < request.capacity:
            self._drained[request.worker_id] = (news_before, request.workflows)
        else:
            self._drained.pop(request.worker_id, None)
        return claimed

    async def _claim_from_storage(self, request: PollRequest) -> list[ClaimedRun]:
        claim = asyncio.ensure_future(
            self._storage.claim(
                request.worker_id, request.workflows, request.capacity, request.lease_ms
            )
        )
        try:
            return await asyncio.shield(claim)
        except asyncio.CancelledError:
            # The poll was abandoned (worker stopping, connection gone) while the claim was in
            # flight. Hand back whatever it took, so those runs don't wait out a lease.
            self._spawn(self._hand_back(claim))
            raise

    async def _hand_back(self, claim: asyncio.Future[list[ClaimedRun]]) -> None:
        for claimed in await claim:
            await self._release(claimed)

    async def _release(self, claimed: ClaimedRun) -> None:
        """Hand back a run claimed for a worker that will not get it."""
        await self.release(Lease(run_id=claimed.run.id, revision=claimed.revision))

    async def heartbeat(
        self, worker_id: WorkerId, leases: Sequence[Lease], lease_ms: int
    ) -> HeartbeatReply:
        return await self._storage.heartbeat(worker_id, leases, lease_ms)

    async def start_task(self, lease: Lease, start: TaskStart) -> None:
        await self._retried(lease, lambda: self._storage.start_task(lease, start))

    async def finish_task(self, lease: Lease, end: TaskEnd) -> bool:
        self._check_result_size(end)
        return await self._retried(lease, lambda: self._storage.finish_task(lease, end))

    def _check_result_size(self, end: TaskEnd) -> None:
        if end.result_json is not None:
            check_size(
                end.result_json,
                what=f"task {end.address.task!r} result",
                limit=self._settings.max_payload_bytes,
            )

    async def suspend(self, lease: Lease, wait: WaitInfo) -> None:
        if await self._retried(lease, lambda: self._storage.suspend(lease, wait)):
            # An event the run waits for came while it ran: it is pending again at once.
            self._announce(Announcement(ready_all=True))
        else:
            self._timers_changed.notify()

    async def next_event(self, lease: Lease, name: str, after_seq: int) -> RunEvent | None:
        return await self._retried(
            lease, lambda: self._storage.next_event(lease.run_id, name, after_seq)
        )

    async def release(self, lease: Lease) -> None:
        await self._retried(lease, lambda: self._storage.release(lease))
        self._announce(Announcement(ready_all=True))

    async def finish(self, lease: Lease, outcome: RunOutcome) -> None:
        if outcome.result_json is not None:
            check_size(
                outcome.result_json,
                what=f"result of workflow run {lease.run_id}",
                limit=self._settings.max_payload_bytes,
            )
        addresses = set()
        for i, end in enumerate(outcome.task_ends):
            self._check_result_size(end)
            if end.address in addresses:
                raise InvalidRequestError(
                    f"outcome.task_ends[{i}] is a second end of task call {end.address}",
                    field=f"outcome.task_ends[{i}]",
                )
            addresses.add(end.address)
        self._ends.ended_here(
            await self._retried(lease, lambda: self._storage.finish(lease, outcome))
        )
        self._announce(Announcement(ended=frozenset((lease.run_id,))))
        await asyncio.sleep(0)  # the waiters' replies go before the worker's

    async def _retried(self, lease: Lease, write: Callable[[], Awaitable[T]]) -> T:
        """A worker's write to its run, made again after a storage error.

        Storage applies a repeated worker write once (a task end already recorded for its
        attempt, a run already moved to the state asked for), so a write whose database
        connection dropped can simply be made again, instead of the run waiting out its lease
        and its interrupted task running twice.
        """
        for delay_s in _STORAGE_RETRY_S:
            try:
                return await write()
            except StorageError as exc:
                _log.warning("run %s: storage error (%s); writing again", lease.run_id, exc)
            await asyncio.sleep(delay_s)  # real time: a test's fake clock must not hold it
        return await write()

    # --- timers -------------------------------------------------------------------------

    async def fire_timers(self) -> TimerReport:
        """One pass of the timers, then the wake-ups it calls for."""
        report = await self._storage.fire_timers(
            max_recovery_attempts=self._settings.max_recovery_attempts
        )
        self._announce(
            Announcement(
                ready_all=bool(report.woken or report.expired), ended=frozenset(report.ended)
            )
        )
        return report

    def timers_ticket(self) -> asyncio.Future[None]:
        """A ticket that resolves when a new due time was set."""
        return self._timers_changed.ticket()

    # --- news between servers -----------------------------------------------------------

    def _announce(self, news: Announcement) -> None:
        """Wake this server's waiters, and tell the other servers through the queue."""
        self.receive(news)
        self._queue.announce(news)

    def receive(self, news: Announcement) -> None:
        """Wake the waiters that `news` concerns (the queue calls this with other servers' news)."""
        if news.ready or news.ready_all or news.missed:
            self._ready_news += 1
        if news.ready_all or news.missed:
            self._ready_any.notify()
        for key in news.ready:
            self._ready.notify(key)
        self._ends.heard(news)
        if news.cancels:
            self._note_cancels(news.cancels)

    def _forget(self, worker: WorkerId) -> None:
        """Drop what this server keeps about a worker that is gone or polls elsewhere."""
        self._polled_at.pop(worker, None)
        self._cancel_notices.pop(worker, None)
        self._drained.pop(worker, None)

    def _note_cancels(self, cancels: frozenset[tuple[WorkerId, RunId]]) -> None:
        now = asyncio.get_running_loop().time()
        for worker, polled_at in list(self._polled_at.items()):
            if now - polled_at > _QUIET_WORKER_S:
                self._forget(worker)
        for worker, run_id in cancels:
            # A worker polls one server at a time; the others need not keep its notices (its
            # heartbeat reply carries them too, from storage).
            if worker in self._polled_at:
                self._cancel_notices.setdefault(worker, set()).add(run_id)
                self._worker_notices.notify(worker)

    # --- lifecycle ----------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro, name="aiki hand-back")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def accept_long_polls(self) -> None:
        """Undo `begin_shutdown()` when a stopped server starts again."""
        self._shutdown.undo()

    def begin_shutdown(self) -> None:
        """Answer every long-poll now and every new one at once: the server is going away.

        Clients and workers see an ordinary empty reply and ask again, reaching another server
        or this one once it is back.
        """
        self._shutdown.begin()

    async def close(self) -> None:
        """Finish background hand-backs."""
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)


class _WaitingPoll:
    """A worker's poll parked on this server with room for runs (see `Service.enqueue`)."""

    __slots__ = ("handed", "lease_ms", "left", "tickets", "worker_id", "workflows")

    def __init__(self, request: PollRequest, tickets: Sequence[asyncio.Future[None]]) -> None:
        self.tickets = tickets  # what it waits for
        self.worker_id = request.worker_id
        self.workflows = frozenset(request.workflows)
        self.lease_ms = request.lease_ms
        self.handed: ClaimedRun | None = None  # the run created claimed for it, for its reply
        self.left = False  # it has stopped waiting: a run made for it now is handed back

    @property
    def woken(self) -> bool:
        """Woken by news, it is about to claim, or to reply: not one to hand a run to."""
        return any(ticket.done() for ticket in self.tickets)


def _with_note(status: RunStatus, workers: Sequence[WorkerInfo]) -> RunStatus:
    """A pending run says so when no live worker serves its version: it would wait forever."""
    note = unserved_note(WorkflowKey(name=status.workflow, version=status.version), workers)
    return status if note is None else replace(status, note=note)
