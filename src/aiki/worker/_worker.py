"""`Worker` and `aiki.worker()`: claim runs, execute them concurrently, keep their leases."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from types import TracebackType
from typing import Any

from aiki._core.clock import Clock, SystemClock
from aiki._core.ids import RunId, WorkerId
from aiki._core.models import ClaimedRun, Lease, PollReply, PollRequest, WorkflowKey
from aiki.client import Client
from aiki.config import SubscriberConfig, WorkflowRunConfig
from aiki.errors import ConfigError
from aiki.sdk import Registry
from aiki.worker._execution import RunExecution, StopReason

_log = logging.getLogger("aiki.worker")

_FIRST_RETRY_DELAY_MS = 100
_UNREGISTER_TIMEOUT_S = 2.0


class Worker:
    """Executes workflow runs from a server. Build one with `aiki.worker(...)`.

    `start()` registers the worker's workflows and starts claiming; `stop()` stops claiming,
    lets running work finish within the grace period and hands the rest back.
    """

    def __init__(
        self,
        client: Client,
        *,
        id: str,
        max_concurrent_workflow_runs: int,
        workflow_run_subscriber: SubscriberConfig,
        workflow_run: WorkflowRunConfig,
        graceful_shutdown_timeout_ms: int,
        clock: Clock,
    ) -> None:
        self.id = WorkerId(id)
        self.registry = Registry()
        self.max_concurrent_workflow_runs = max_concurrent_workflow_runs
        self.subscriber_config = workflow_run_subscriber
        self.run_config = workflow_run
        self.graceful_shutdown_timeout_ms = graceful_shutdown_timeout_ms
        self._api = client.api
        self._clock = clock
        self._active: dict[RunId, RunExecution] = {}
        self._run_tasks: dict[RunId, asyncio.Task[None]] = {}
        self._slot_freed: asyncio.Event | None = None
        self._stopping: asyncio.Event | None = None
        self._loops: list[asyncio.Task[None]] = []

    @property
    def active_runs(self) -> int:
        """How many runs this worker is executing now."""
        return len(self._active)

    async def start(self) -> None:
        """Register this worker's workflows with the server and start taking runs.

        Raises:
            ConfigError: no workflow is registered.
        """
        if self._loops:
            return
        if not len(self.registry):
            raise ConfigError(
                f"worker {self.id!r} has no workflows: call worker.registry.add(...) first"
            )
        await self._api.register_worker(
            self.id, self.registry.served, self.run_config.effective_lease_ms
        )
        self._stopping = asyncio.Event()
        self._slot_freed = asyncio.Event()
        self._loops = [
            asyncio.create_task(self._subscribe(), name=f"worker {self.id} subscriber"),
            asyncio.create_task(self._heartbeat(), name=f"worker {self.id} heartbeat"),
        ]

    async def stop(self) -> None:
        """Stop claiming, give running runs the grace period, then hand back the rest."""
        if not self._loops or self._stopping is None:
            return
        self._stopping.set()
        subscriber, heartbeat = self._loops
        await _finish(subscriber)
        running = list(self._run_tasks.values())
        if running:
            deadline = self._clock.now_ms() + self.graceful_shutdown_timeout_ms
            grace = asyncio.ensure_future(self._clock.sleep_until_ms(deadline))
            await asyncio.wait([*running, grace], return_when=asyncio.FIRST_COMPLETED)
            while not grace.done() and self._run_tasks:
                await asyncio.wait(
                    [*self._run_tasks.values(), grace], return_when=asyncio.FIRST_COMPLETED
                )
            grace.cancel()
        for execution in list(self._active.values()):
            execution.stop(StopReason.HAND_BACK)
        if self._run_tasks:
            await asyncio.gather(*self._run_tasks.values(), return_exceptions=True)
        heartbeat.cancel()
        await _finish(heartbeat)
        self._loops = []
        try:
            # Best effort and bounded: with the server gone, the worker's lease runs out anyway.
            async with asyncio.timeout(_UNREGISTER_TIMEOUT_S):
                await self._api.unregister_worker(self.id)
        except Exception as exc:
            _log.warning("worker %s: could not unregister (%r)", self.id, exc)

    async def _kill(self) -> None:
        """Stop at once and write nothing, as if the process died (see `aiki.testing`)."""
        for loop in self._loops:
            loop.cancel()
        for execution in list(self._active.values()):
            execution.stop(StopReason.KILL)
        await asyncio.gather(*self._loops, *self._run_tasks.values(), return_exceptions=True)
        self._loops = []

    async def __aenter__(self) -> Worker:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # --- claiming ---------------------------------------------------------------------------

    async def _subscribe(self) -> None:
        assert self._stopping is not None and self._slot_freed is not None
        config = self.subscriber_config
        failures = 0
        stopping = asyncio.ensure_future(self._stopping.wait())
        poll: asyncio.Future[PollReply] | None = None
        try:
            while not self._stopping.is_set():
                capacity = self.max_concurrent_workflow_runs - len(self._active)
                if config.max_batch_size is not None:
                    capacity = min(capacity, config.max_batch_size)
                self._slot_freed.clear()
                poll = asyncio.ensure_future(self._api.poll(self._poll_request(capacity)))
                waits: list[asyncio.Future[Any]] = [poll, stopping]
                if capacity == 0:
                    waits.append(asyncio.ensure_future(self._slot_freed.wait()))
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                for extra in waits[2:]:
                    extra.cancel()
                if not poll.done():
                    # Stopping, or a slot came free and a poll with capacity is due. A poll
                    # cancelled mid-claim hands its runs back on the server side.
                    poll.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await poll
                    continue
                try:
                    reply = poll.result()
                except Exception as exc:
                    failures += 1
                    delay = min(
                        _FIRST_RETRY_DELAY_MS * 2 ** min(failures - 1, 20),
                        config.max_retry_delay_ms,
                    )
                    _log.warning(
                        "worker %s: poll failed (%s); retrying in %d ms", self.id, exc, delay
                    )
                    await self._clock.sleep_ms(delay)
                    continue
                failures = 0
                self._take(reply)
                if reply.claimed:
                    # One turn of the loop first: the runs just launched make their first
                    # writes (a quick run, its end) before the next poll goes out.
                    await asyncio.sleep(0)
        finally:
            stopping.cancel()
            if poll is not None and not poll.done():
                # A poll left running would claim runs for a worker that is gone.
                poll.cancel()

    def _poll_request(self, capacity: int) -> PollRequest:
        return PollRequest(
            worker_id=self.id,
            workflows=self.registry.keys,
            capacity=capacity,
            lease_ms=self.run_config.effective_lease_ms,
            wait_ms=self.subscriber_config.long_poll_ms,
            recheck_ms=self.subscriber_config.poll_interval_ms,
        )

    def _take(self, reply: PollReply) -> None:
        for claimed in reply.claimed:
            self._launch(claimed, reply.max_payload_bytes)
        for run_id in reply.cancel_requested:
            execution = self._active.get(run_id)
            if execution is not None:
                execution.stop(StopReason.CANCEL)

    def _launch(self, claimed: ClaimedRun, max_result_bytes: int) -> None:
        run = claimed.run
        workflow = self.registry.get(WorkflowKey(name=run.workflow, version=run.version))
        if workflow is None:  # cannot happen: claims are filtered by the registry's keys
            _log.error("worker %s claimed run %s of unknown %s", self.id, run.id, run.workflow)
            return
        execution = RunExecution(
            api=self._api,
            claimed=claimed,
            workflow=workflow,
            worker_id=self.id,
            config=self.run_config,
            clock=self._clock,
            max_result_bytes=max_result_bytes,
        )
        self._active[run.id] = execution
        self._run_tasks[run.id] = asyncio.create_task(
            self._execute(execution), name=f"run {run.id}"
        )

    async def _execute(self, execution: RunExecution) -> None:
        try:
            await execution.execute()
        except asyncio.CancelledError:
            pass  # the execution was stopped from outside and has concluded as it should
        except Exception:
            _log.exception(
                "worker %s: run %s broke off; its lease will expire", self.id, execution.run_id
            )
        finally:
            # The run may have been claimed again already (it suspended, was woken and came
            # back here while this execution wound down): then the entries are the new one's.
            if self._active.get(execution.run_id) is execution:
                del self._active[execution.run_id]
                self._run_tasks.pop(execution.run_id, None)
            if self._slot_freed is not None:
                self._slot_freed.set()

    # --- leases -----------------------------------------------------------------------------

    async def _heartbeat(self) -> None:
        interval = self.run_config.heartbeat_interval_ms
        while True:
            await self._clock.sleep_ms(interval)
            leases = [
                Lease(run_id=e.lease.run_id, revision=e.lease.revision)
                for e in self._active.values()
            ]
            try:
                # One heartbeat never outlasts its interval: the next one carries the leases
                # held by then, where a retried old one would miss runs claimed meanwhile.
                async with asyncio.timeout(interval / 1000):
                    reply = await self._api.heartbeat(
                        self.id, leases, self.run_config.effective_lease_ms
                    )
            except Exception as exc:
                _log.warning("worker %s: heartbeat failed (%r)", self.id, exc)
                continue
            for run_id in reply.lost:
                execution = self._active.get(run_id)
                if execution is not None:
                    execution.stop(StopReason.LOST)
            for run_id in reply.cancel_requested:
                execution = self._active.get(run_id)
                if execution is not None:
                    execution.stop(StopReason.CANCEL)


async def _finish(task: asyncio.Task[None]) -> None:
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def worker(
    client: Client,
    *,
    id: str | None = None,
    max_concurrent_workflow_runs: int = 10,
    workflow_run_subscriber: SubscriberConfig | None = None,
    workflow_run: WorkflowRunConfig | None = None,
    graceful_shutdown_timeout_ms: int = 5_000,
    clock: Clock | None = None,
) -> Worker:
    """Build a worker (register workflows on `worker.registry`, then `await worker.start()`).

    Args:
        client: How the worker reaches the server.
        id: Unique id of the worker; host name and process id by default.
        max_concurrent_workflow_runs: Most runs executed at once.
        workflow_run_subscriber: How runs are asked for.
        workflow_run: Heartbeats and leases of the runs held.
        graceful_shutdown_timeout_ms: How long `stop()` lets running runs finish.
        clock: The clock for heartbeats and waits; tests pass `aiki.testing.FakeClock`.

    Raises:
        ValueError: a count or duration out of range.
    """
    if isinstance(max_concurrent_workflow_runs, bool) or not isinstance(
        max_concurrent_workflow_runs, int
    ):
        raise TypeError("max_concurrent_workflow_runs must be an int")
    if max_concurrent_workflow_runs < 1:
        raise ValueError(
            f"max_concurrent_workflow_runs must be >= 1, got {max_concurrent_workflow_runs}"
        )
    if graceful_shutdown_timeout_ms < 0:
        raise ValueError(
            f"graceful_shutdown_timeout_ms must be >= 0, got {graceful_shutdown_timeout_ms}"
        )
    if id is not None and (not isinstance(id, str) or not id):
        raise ValueError(f"worker id must be a non-empty str, got {id!r}")
    return Worker(
        client,
        id=id or f"{socket.gethostname()}-{os.getpid()}-{os.urandom(3).hex()}",
        max_concurrent_workflow_runs=max_concurrent_workflow_runs,
        workflow_run_subscriber=workflow_run_subscriber or SubscriberConfig(),
        workflow_run=workflow_run or WorkflowRunConfig(),
        graceful_shutdown_timeout_ms=graceful_shutdown_timeout_ms,
        clock=clock or SystemClock(),
    )
