"""Endpoints workers use: registration, claiming (long-poll), heartbeats and leased writes.

Every write about a run carries the lease revision the worker claimed; a stale one is refused
with `lease_lost` and changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import replace

from starlette.responses import Response

from aiki._core.api import EngineApi
from aiki._core.ids import RunId, WorkerId
from aiki._core.models import HeartbeatReply, Lease, PollReply, PollRequest
from aiki._http.bodies import (
    FinishBody,
    FinishTaskBody,
    FinishTaskReply,
    HeartbeatBody,
    NextEventBody,
    NextEventReply,
    RegisterWorkerBody,
    ReleaseBody,
    Report,
    ReportAnswer,
    ReportsBody,
    ReportsReply,
    StartTaskBody,
    SuspendBody,
    UnregisterWorkerBody,
)
from aiki._http.codec import Codec
from aiki._http.errors import ErrorBody, error_reply
from aiki.errors import AikiError, InvalidRequestError
from aiki.server._api._base import Call, ClientGoneError, Endpoint, json_response, no_content

REGISTER = Codec(RegisterWorkerBody)
UNREGISTER = Codec(UnregisterWorkerBody)
POLL = Codec(PollRequest)
POLL_REPLY = Codec(PollReply)
HEARTBEAT = Codec(HeartbeatBody)
HEARTBEAT_REPLY = Codec(HeartbeatReply)
START_TASK = Codec(StartTaskBody)
FINISH_TASK = Codec(FinishTaskBody)
FINISH_TASK_REPLY = Codec(FinishTaskReply)
SUSPEND = Codec(SuspendBody)
NEXT_EVENT = Codec(NextEventBody)
NEXT_EVENT_REPLY = Codec(NextEventReply)
RELEASE = Codec(ReleaseBody)
FINISH = Codec(FinishBody)
REPORTS = Codec(ReportsBody)
REPORTS_REPLY = Codec(ReportsReply)


async def register_worker(call: Call) -> Response:
    """Record the worker as alive for `lease_ms`, serving `workflows` (with their schemas)."""
    body = await call.body(REGISTER)
    await call.api.register_worker(WorkerId(body.worker_id), list(body.workflows), body.lease_ms)
    return no_content()


async def unregister_worker(call: Call) -> Response:
    """The worker stops: it no longer counts as alive."""
    body = await call.body(UNREGISTER)
    await call.api.unregister_worker(WorkerId(body.worker_id))
    return no_content()


async def poll(call: Call) -> Response:
    """Long-poll for runs to claim and cancel requests; cancelled if the worker disconnects."""
    request = await call.body(POLL)
    cap_ms = int(call.limits.long_poll_cap_s * 1000)
    if request.wait_ms > cap_ms:
        request = replace(request, wait_ms=cap_ms)
    reply, gone = await call.long_poll(call.api.poll(request))
    if gone and reply.claimed:
        # The worker left while its claim completed: nobody will run these. Hand them back
        # now rather than let them wait out their lease.
        await _hand_back(call.api, reply)
        raise ClientGoneError
    return json_response(reply)


async def _hand_back(api: EngineApi, reply: PollReply) -> None:
    for claimed in reply.claimed:
        with contextlib.suppress(AikiError):  # a lease already gone needs no handing back
            await api.release(Lease(run_id=claimed.run.id, revision=claimed.revision))


async def heartbeat(call: Call) -> Response:
    """Extend the worker's leases; say which are lost and which runs are to be cancelled."""
    body = await call.body(HEARTBEAT)
    reply = await call.api.heartbeat(WorkerId(body.worker_id), list(body.leases), body.lease_ms)
    return json_response(reply)


def _lease(call: Call, revision: int) -> Lease:
    return Lease(run_id=RunId(call.path("run_id")), revision=revision)


async def start_task(call: Call) -> Response:
    """Record that a task attempt began."""
    body = await call.body(START_TASK)
    await call.api.start_task(_lease(call, body.revision), body.start)
    return no_content()


async def finish_task(call: Call) -> Response:
    """Record how a task attempt ended; reply whether the run is to be cancelled."""
    body = await call.body(FINISH_TASK)
    # The result is the worker's canonical JSON text: stored as sent, never parsed here.
    cancel_requested = await call.api.finish_task(_lease(call, body.revision), body.end)
    return json_response(FinishTaskReply(cancel_requested=cancel_requested))


async def next_event(call: Call) -> Response:
    """The held run's first event of a name after a seq, or null."""
    body = await call.body(NEXT_EVENT)
    event = await call.api.next_event(_lease(call, body.revision), body.name, body.after_seq)
    return json_response(NextEventReply(event=event))


async def suspend(call: Call) -> Response:
    """Put the run to wait (a retry backoff, a sleep, an event) and free the worker."""
    body = await call.body(SUSPEND)
    await call.api.suspend(_lease(call, body.revision), body.wait)
    return no_content()


async def release(call: Call) -> Response:
    """Hand the run back unfinished (the worker is stopping)."""
    body = await call.body(RELEASE)
    await call.api.release(_lease(call, body.revision))
    return no_content()


async def finish(call: Call) -> Response:
    """End the run: completed with its result, failed with its error, or cancelled."""
    body = await call.body(FINISH)
    # As for a task's result: the worker's canonical text, stored as sent.
    await call.api.finish(_lease(call, body.revision), body.outcome)
    return no_content()


async def reports(call: Call) -> Response:
    """Apply a batch of leased writes: each run's in the order sent, the runs side by side.

    Each report gets its own answer: a lease lost for one run fails that report, not the
    batch. The writes of many runs meet in the storage batcher, which commits them together.
    """
    body = await call.body(REPORTS)
    by_run: dict[str, list[int]] = {}
    for i, report in enumerate(body.reports):
        _check_one_write(report, i)
        by_run.setdefault(report.run_id, []).append(i)
    answers: list[ReportAnswer] = [_NO_ANSWER] * len(body.reports)

    async def apply_in_order(indexes: list[int]) -> None:
        for i in indexes:
            answers[i] = await _apply(call.api, body.reports[i])

    await asyncio.gather(*(apply_in_order(indexes) for indexes in by_run.values()))
    return json_response(ReportsReply(answers=tuple(answers)))


_NO_ANSWER = ReportAnswer()


def _check_one_write(report: Report, index: int) -> None:
    writes = (
        report.start_task is not None,
        report.finish_task is not None,
        report.suspend is not None,
        report.finish is not None,
        report.release,
    )
    if sum(writes) != 1:
        raise InvalidRequestError(
            f"reports[{index}] must hold exactly one of start_task, finish_task, suspend, "
            f"finish or release (it holds {sum(writes)})",
            field=f"reports[{index}]",
        )


async def _apply(api: EngineApi, report: Report) -> ReportAnswer:
    lease = report.lease
    try:
        if report.finish_task is not None:
            return ReportAnswer(cancel_requested=await api.finish_task(lease, report.finish_task))
        if report.start_task is not None:
            await api.start_task(lease, report.start_task)
        elif report.suspend is not None:
            await api.suspend(lease, report.suspend)
        elif report.finish is not None:
            await api.finish(lease, report.finish)
        else:
            await api.release(lease)
    except AikiError as exc:
        reply = error_reply(exc)
        if reply is None:
            raise
        return ReportAnswer(error=ErrorBody(**reply[1]))
    return _NO_ANSWER


_LEASED = ("run_not_found", "lease_lost", "illegal_transition")

ENDPOINTS = (
    Endpoint(
        method="POST",
        path="/v1/workers/reports",
        name="reports",
        summary=(
            "Apply a batch of leased writes (task starts and ends, suspensions, run ends, "
            "hand-backs), each run's in order; one answer per report"
        ),
        handler=reports,
        body=REPORTS,
        reply=REPORTS_REPLY,
        tag="workers",
    ),
    Endpoint(
        method="POST",
        path="/v1/workers/register",
        name="register_worker",
        summary="Register a worker and the workflow versions it serves",
        handler=register_worker,
        body=REGISTER,
        status=204,
        tag="workers",
    ),
    Endpoint(
        method="POST",
        path="/v1/workers/unregister",
        name="unregister_worker",
        summary="A worker stopping cleanly: it no longer counts as alive",
        handler=unregister_worker,
        body=UNREGISTER,
        status=204,
        tag="workers",
    ),
    Endpoint(
        method="POST",
        path="/v1/workers/poll",
        name="poll",
        summary=(
            "Long-poll for work: claim up to `capacity` runs, waiting up to `wait_ms` "
            "(at most 25 s per request); runs claimed for a worker that disconnects are handed back"
        ),
        handler=poll,
        body=POLL,
        reply=POLL_REPLY,
        tag="workers",
    ),
    Endpoint(
        method="POST",
        path="/v1/workers/heartbeat",
        name="heartbeat",
        summary="Extend a worker's leases",
        handler=heartbeat,
        body=HEARTBEAT,
        reply=HEARTBEAT_REPLY,
        tag="workers",
    ),
    Endpoint(
        method="POST",
        path="/v1/runs/{run_id}/tasks/start",
        name="start_task",
        summary="Record the start of a task attempt (leased)",
        handler=start_task,
        body=START_TASK,
        status=204,
        errors=_LEASED,
        tag="workers",
    ),
    Endpoint(
        method="POST",
        path="/v1/runs/{run_id}/tasks/finish",
        name="finish_task",
        summary="Record the end of a task attempt (leased)",
        handler=finish_task,
        body=FINISH_TASK,
        reply=FINISH_TASK_REPLY,
        errors=(*_LEASED, "payload_too_large", "payload_invalid"),
        tag="workers",
    ),
    Endpoint(
        method="POST",
        path="/v1/runs/{run_id}/events/next",
        name="next_event",
        summary="Read the run's first event of a name after a seq (leased)",
        handler=next_event,
        body=NEXT_EVENT,
        reply=NEXT_EVENT_REPLY,
        errors=_LEASED,
        tag="workers",
    ),
    Endpoint(
        method="POST",
        path="/v1/runs/{run_id}/suspend",
        name="suspend",
        summary="Put a running run to wait until a time (leased)",
        handler=suspend,
        body=SUSPEND,
        status=204,
        errors=_LEASED,
        tag="workers",
    ),
    Endpoint(
        method="POST",
        path="/v1/runs/{run_id}/release",
        name="release",
        summary="Hand a run back unfinished (leased)",
        handler=release,
        body=RELEASE,
        status=204,
        errors=_LEASED,
        tag="workers",
    ),
    Endpoint(
        method="POST",
        path="/v1/runs/{run_id}/finish",
        name="finish",
        summary="End a run: completed, failed or cancelled (leased)",
        handler=finish,
        body=FINISH,
        status=204,
        errors=(*_LEASED, "payload_too_large", "payload_invalid"),
        tag="workers",
    ),
)
