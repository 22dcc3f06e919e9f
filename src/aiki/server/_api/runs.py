"""Endpoints applications use: enqueue, status, history, wait, cancel, events, listings."""

from __future__ import annotations

from starlette.responses import Response

from aiki._core.ids import RunId
from aiki._core.models import Enqueued, NewEvent, NewRun, RunsEnded, RunStatus
from aiki._core.serde import canonical_json
from aiki._http.bodies import (
    CancelBody,
    EventSentBody,
    HistoryBody,
    ListRunsQuery,
    RunPage,
    SendEventBody,
    WaitAnyBody,
    WaitQuery,
    WorkersBody,
    WorkflowsBody,
)
from aiki._http.codec import Codec
from aiki.server._api._base import Call, Endpoint, json_response

NEW_RUN = Codec(NewRun)
ENQUEUED = Codec(Enqueued)
RUN_STATUS = Codec(RunStatus)
HISTORY = Codec(HistoryBody)
WAIT = Codec(WaitQuery)
WAIT_ANY = Codec(WaitAnyBody)
RUNS_ENDED = Codec(RunsEnded)
CANCEL = Codec(CancelBody)
SEND_EVENT = Codec(SendEventBody)
EVENT_SENT = Codec(EventSentBody)
LIST_RUNS = Codec(ListRunsQuery)
RUN_PAGE = Codec(RunPage)
WORKERS = Codec(WorkersBody)
WORKFLOWS = Codec(WorkflowsBody)


async def enqueue(call: Call) -> Response:
    """Create a run (201), or find the one its idempotency key names (200)."""
    enqueued = await call.api.enqueue(await call.body(NEW_RUN))
    return json_response(enqueued, 201 if enqueued.created else 200)


async def get_status(call: Call) -> Response:
    """The run's status."""
    status = await call.api.get_status(RunId(call.path("run_id")))
    return json_response(status)


async def get_history(call: Call) -> Response:
    """The run's history, oldest first."""
    history = await call.api.get_history(RunId(call.path("run_id")))
    return json_response(HistoryBody(events=tuple(history)))


async def wait(call: Call) -> Response:
    """Long-poll: the status once the run is final, or when `timeout_s` (capped) passes."""
    run_id = RunId(call.path("run_id"))
    cap = call.limits.long_poll_cap_s
    asked = call.query(WAIT).timeout_s
    timeout = cap if asked is None else min(asked, cap)
    status, _ = await call.long_poll(call.api.wait(run_id, timeout))
    return json_response(status)


async def wait_any(call: Call) -> Response:
    """Long-poll on many runs: as soon as one has ended (or names no run), those that have."""
    body = await call.body(WAIT_ANY)
    timeout = min(body.timeout_s, call.limits.long_poll_cap_s)
    run_ids = [RunId(run_id) for run_id in body.run_ids]
    ended, _ = await call.long_poll(call.api.wait_any(run_ids, timeout))
    return json_response(ended)


async def cancel(call: Call) -> Response:
    """Cancel the run; a run already final is returned unchanged."""
    body = await call.body(CANCEL, optional=True)
    status = await call.api.cancel(RunId(call.path("run_id")), body.reason)
    return json_response(status)


async def send_event(call: Call) -> Response:
    """Store an event for the run (201), or find the one its idempotency key names (200)."""
    body = await call.body(SEND_EVENT)
    new = NewEvent(
        run_id=RunId(call.path("run_id")),
        name=body.name,
        data_json=canonical_json(body.data_json, what=f"data of event {body.name!r}"),
        idempotency_key=body.idempotency_key,
    )
    sent = await call.api.send_event(new)
    reply = EventSentBody(seq=sent.seq, created=sent.created)
    return json_response(reply, 201 if sent.created else 200)


async def list_runs(call: Call) -> Response:
    """Runs, newest first, filtered, one page at a time."""
    query = call.query(LIST_RUNS)
    runs = await call.api.list_runs(
        workflow=query.workflow,
        state=query.state,
        after=None if query.after is None else RunId(query.after),
        limit=query.limit,
    )
    return json_response(RunPage.of(runs, limit=query.limit))


async def list_workers(call: Call) -> Response:
    """Every worker the server has heard from, alive or not."""
    return json_response(WorkersBody(workers=tuple(await call.api.list_workers())))


async def list_workflows(call: Call) -> Response:
    """Every workflow version known, with live workers and run counts."""
    return json_response(WorkflowsBody(workflows=tuple(await call.api.list_workflows())))


_RUN = ("run_not_found",)

ENDPOINTS = (
    Endpoint(
        method="POST",
        path="/v1/runs",
        name="enqueue",
        summary="Enqueue a run (201), or return the run its idempotency key names (200)",
        handler=enqueue,
        body=NEW_RUN,
        reply=ENQUEUED,
        status=201,
        errors=("idempotency_conflict", "payload_too_large", "payload_invalid"),
    ),
    Endpoint(
        method="GET",
        path="/v1/runs",
        name="list_runs",
        summary="List runs, newest first; page with `after` (the previous page's `next_after`)",
        handler=list_runs,
        query=LIST_RUNS,
        reply=RUN_PAGE,
    ),
    Endpoint(
        method="GET",
        path="/v1/runs/{run_id}",
        name="get_status",
        summary="A run's status",
        handler=get_status,
        reply=RUN_STATUS,
        errors=_RUN,
    ),
    Endpoint(
        method="GET",
        path="/v1/runs/{run_id}/history",
        name="get_history",
        summary="A run's history: every transition and task attempt, oldest first",
        handler=get_history,
        reply=HISTORY,
        errors=_RUN,
    ),
    Endpoint(
        method="POST",
        path="/v1/runs/wait-any",
        name="wait_any",
        summary=(
            "Long-poll on many runs: as soon as one has ended, the statuses of those that "
            "have (and ids no run has); empty after `timeout_s` (at most 25 s per request)"
        ),
        handler=wait_any,
        body=WAIT_ANY,
        reply=RUNS_ENDED,
    ),
    Endpoint(
        method="GET",
        path="/v1/runs/{run_id}/wait",
        name="wait",
        summary=(
            "Long-poll: the run's status once it is final, or after `timeout_s` "
            "(at most 25 s per request: ask again to wait longer)"
        ),
        handler=wait,
        query=WAIT,
        reply=RUN_STATUS,
        errors=_RUN,
    ),
    Endpoint(
        method="POST",
        path="/v1/runs/{run_id}/cancel",
        name="cancel",
        summary="Cancel a run (a final run is returned unchanged); the body may be empty",
        handler=cancel,
        body=CANCEL,
        reply=RUN_STATUS,
        errors=_RUN,
    ),
    Endpoint(
        method="POST",
        path="/v1/runs/{run_id}/events",
        name="send_event",
        summary=(
            "Send an event to a run (201), or return the event its idempotency key names (200)"
        ),
        handler=send_event,
        body=SEND_EVENT,
        reply=EVENT_SENT,
        status=201,
        errors=(*_RUN, "event_rejected", "payload_too_large", "payload_invalid"),
    ),
    Endpoint(
        method="GET",
        path="/v1/workers",
        name="list_workers",
        summary="Workers the server has heard from, and whether each is alive",
        handler=list_workers,
        reply=WORKERS,
        tag="workers",
    ),
    Endpoint(
        method="GET",
        path="/v1/workflows",
        name="list_workflows",
        summary="Workflow versions: live workers and run counts by state",
        handler=list_workflows,
        reply=WORKFLOWS,
    ),
)
