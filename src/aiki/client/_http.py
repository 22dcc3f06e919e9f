"""`HttpApi`: `EngineApi` over HTTP, for clients and workers in other processes.

One pooled HTTP transport (aiohttp by default, see `_transport`) per `HttpApi`. Error replies
come back as the exception classes the in-process service raises. A request that never reached
the server (connection refused, connect timeout) is retried with exponential backoff whatever
the call; one that may have
reached it (read error, read timeout, connection dropped) is retried only when repeating it
cannot do harm: reads, cancel, heartbeats, (un)registration, keyed enqueues, and a worker's
writes to the runs it holds (storage applies a repeated write once). After `retry_timeout`
seconds without success, `ServerUnavailableError`.

Network waits use real time (the event loop's clock), not the engine's `Clock`: a fake clock
must not make a socket wait forever.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import TypeVar
from urllib.parse import quote, urlsplit

from aiki._core.ids import RunId, WorkerId
from aiki._core.models import (
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
    WaitInfo,
    WorkerInfo,
    WorkflowSummary,
)
from aiki._core.states import RunState
from aiki._http.bodies import (
    MAX_WAITED_RUNS,
    CancelBody,
    EventSentBody,
    HeartbeatBody,
    HistoryBody,
    NextEventBody,
    NextEventReply,
    RegisterWorkerBody,
    Report,
    ReportAnswer,
    ReportsBody,
    ReportsReply,
    RunPage,
    SendEventBody,
    UnregisterWorkerBody,
    WaitAnyBody,
    WorkersBody,
    WorkflowsBody,
)
from aiki._http.codec import BodyError, Codec, encode
from aiki._http.errors import ErrorBody, exception_of, read_error
from aiki.client._reports import ReportBatcher
from aiki.client._transport import (
    AiohttpTransport,
    HttpTransport,
    Reply,
    RequestFailedError,
    RequestNotSentError,
)
from aiki.client._waits import SharedWaits
from aiki.errors import ClientError, ConfigError, RunNotFoundError, ServerUnavailableError

_log = logging.getLogger("aiki.client")

T = TypeVar("T")

DEFAULT_RETRY_TIMEOUT_S = 30.0
DEFAULT_REQUEST_TIMEOUT_S = 30.0

# One long-poll request asks for this long at most (the server caps it too); wait() asks again.
_LONG_POLL_S = 25.0
# A long-poll reply may come this much later than the wait asked for (storage, network).
_LONG_POLL_GRACE_S = 10.0
_FIRST_BACKOFF_S = 0.05
_MAX_BACKOFF_S = 2.0

_ENQUEUED = Codec(Enqueued)
_RUN_STATUS = Codec(RunStatus)
_HISTORY = Codec(HistoryBody)
_RUN_PAGE = Codec(RunPage)
_WORKERS = Codec(WorkersBody)
_WORKFLOWS = Codec(WorkflowsBody)
_POLL_REPLY = Codec(PollReply)
_HEARTBEAT_REPLY = Codec(HeartbeatReply)
_REPORTS_REPLY = Codec(ReportsReply)
_RUNS_ENDED = Codec(RunsEnded)
_EVENT_SENT = Codec(EventSentBody)
_NEXT_EVENT_REPLY = Codec(NextEventReply)

# Replies of a proxy or load balancer with no server behind it (ours carry an error code).
_GATEWAY = frozenset({502, 503, 504})


def normalize_url(url: str) -> str:
    """The base URL of a server: a scheme-less URL means http; no trailing slash.

    Raises:
        ConfigError: not an http(s) URL.
    """
    if not isinstance(url, str) or not url.strip():
        raise ConfigError(f"server URL must be a non-empty string, got {url!r}")
    url = url.strip()
    if "://" not in url:
        url = f"http://{url}"
    scheme = url.split("://", 1)[0].lower()
    if scheme not in ("http", "https"):
        raise ConfigError(f"server URL {url!r}: the scheme must be http or https")
    try:
        parsed = urlsplit(url)
        parsed.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as exc:
        raise ConfigError(f"server URL {url!r} is not valid: {exc}") from None
    if not parsed.hostname:
        raise ConfigError(f"server URL {url!r} names no host")
    return url.rstrip("/")


def _run_path(run_id: str, suffix: str = "") -> str:
    return f"/v1/runs/{quote(run_id, safe='')}{suffix}"


class HttpApi:
    """The operations of an Aiki server, over HTTP (see `EngineApi`)."""

    def __init__(
        self,
        url: str,
        *,
        api_key: str | None = None,
        retry_timeout: float = DEFAULT_RETRY_TIMEOUT_S,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT_S,
        transport: HttpTransport | None = None,
    ) -> None:
        if retry_timeout < 0:
            raise ConfigError(f"retry_timeout must be >= 0, got {retry_timeout}")
        if request_timeout <= 0:
            raise ConfigError(f"request_timeout must be > 0, got {request_timeout}")
        self.url = normalize_url(url)
        self.retry_timeout = retry_timeout
        self._request_timeout = request_timeout
        self._headers = {"accept": "application/json"}
        if api_key is not None:
            self._headers["authorization"] = f"Bearer {api_key}"
        self._body_headers = {**self._headers, "content-type": "application/json"}
        self._http: HttpTransport = transport or AiohttpTransport()
        self._reports = ReportBatcher(self._send_reports)
        self._waits = SharedWaits(self.wait_any, cap_s=_LONG_POLL_S, max_runs=MAX_WAITED_RUNS)

    async def aclose(self) -> None:
        """Close the pooled connections."""
        await self._reports.aclose()
        await self._waits.aclose()
        await self._http.aclose()

    async def __aenter__(self) -> HttpApi:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # --- transport ------------------------------------------------------------------------

    async def _send(
        self,
        method: str,
        path: str,
        *,
        body: object = None,
        params: Mapping[str, str | int | float] | None = None,
        idempotent: bool,
        read_timeout: float | None = None,
    ) -> Reply:
        """Send one request, retrying what is safe to retry, until `retry_timeout`."""
        content = None if body is None else encode(body)
        headers = self._headers if body is None else self._body_headers
        timeout = self._request_timeout if read_timeout is None else read_timeout
        url = f"{self.url}{path}"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.retry_timeout
        backoff = _FIRST_BACKOFF_S
        while True:
            try:
                response = await self._http.request(
                    method,
                    url,
                    content=content,
                    params=params,
                    headers=headers,
                    read_timeout=timeout,
                )
            except (RequestNotSentError, RequestFailedError) as exc:
                if isinstance(exc, RequestFailedError) and not idempotent:
                    raise ServerUnavailableError(
                        f"{method} {url}: {exc}; the request may or may not have been applied"
                    ) from exc
                failure: str = str(exc)
                cause: BaseException | None = exc
            else:
                if response.status not in _GATEWAY:
                    return response
                if _is_ours(response):
                    # The server answered but its storage failed (a dropped database
                    # connection, say): the request may have been applied, so only what is
                    # safe to repeat is tried again; the rest gets the error.
                    if not (idempotent and _is_storage_error(response)):
                        return response
                    if loop.time() >= deadline:
                        return response  # the caller gets the StorageError itself
                    failure, cause = "storage error", None
                elif not idempotent:
                    raise ServerUnavailableError(
                        f"{method} {url}: HTTP {response.status} from a gateway"
                    )
                else:
                    failure, cause = f"HTTP {response.status} from a gateway", None
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise ServerUnavailableError(
                    f"{method} {self.url}{path}: server unavailable for {self.retry_timeout:g} s "
                    f"({failure})"
                ) from cause
            _log.info("%s %s%s: %s; retrying", method, self.url, path, failure)
            await asyncio.sleep(min(backoff * random.uniform(0.5, 1.0), remaining))
            backoff = min(backoff * 2, _MAX_BACKOFF_S)

    async def _call(
        self,
        codec: Codec[T],
        method: str,
        path: str,
        *,
        body: object = None,
        params: Mapping[str, str | int | float] | None = None,
        idempotent: bool,
        read_timeout: float | None = None,
        run_id: str | None = None,
    ) -> T:
        response = await self._send(
            method,
            path,
            body=body,
            params=params,
            idempotent=idempotent,
            read_timeout=read_timeout,
        )
        if not response.is_success:
            raise _error(response, run_id)
        try:
            return codec.decode(response.content)
        except BodyError as exc:
            raise ClientError(
                f"{method} {self.url}{path}: the server's reply is not a {codec.name}: {exc}"
            ) from None

    async def _call_no_reply(
        self, method: str, path: str, *, body: object, idempotent: bool, run_id: str | None = None
    ) -> None:
        response = await self._send(method, path, body=body, idempotent=idempotent)
        if not response.is_success:
            raise _error(response, run_id)

    # --- applications ---------------------------------------------------------------------

    async def enqueue(self, new: NewRun) -> Enqueued:
        """See `EngineApi.enqueue`; retried after a lost reply only with an idempotency key."""
        return await self._call(
            _ENQUEUED, "POST", "/v1/runs", body=new, idempotent=new.idempotency_key is not None
        )

    async def get_status(self, run_id: RunId) -> RunStatus:
        """See `EngineApi.get_status`."""
        return await self._call(
            _RUN_STATUS, "GET", _run_path(run_id), idempotent=True, run_id=run_id
        )

    async def get_history(self, run_id: RunId) -> list[HistoryEvent]:
        """See `EngineApi.get_history`."""
        body = await self._call(
            _HISTORY, "GET", _run_path(run_id, "/history"), idempotent=True, run_id=run_id
        )
        return list(body.events)

    async def wait(self, run_id: RunId, timeout_s: float | None) -> RunStatus:
        """See `EngineApi.wait`: shares a long-poll with this client's other waits."""
        status = await self._waits.wait(run_id, timeout_s)
        return status if status is not None else await self.get_status(run_id)

    async def wait_any(self, run_ids: Sequence[RunId], timeout_s: float) -> RunsEnded:
        """See `EngineApi.wait_any`: one long-poll request (the server caps how long)."""
        step = min(timeout_s, _LONG_POLL_S)
        return await self._call(
            _RUNS_ENDED,
            "POST",
            "/v1/runs/wait-any",
            body=WaitAnyBody(run_ids=tuple(run_ids), timeout_s=round(step, 3)),
            idempotent=True,
            read_timeout=step + _LONG_POLL_GRACE_S,
        )

    async def cancel(self, run_id: RunId, reason: str | None) -> RunStatus:
        """See `EngineApi.cancel`."""
        return await self._call(
            _RUN_STATUS,
            "POST",
            _run_path(run_id, "/cancel"),
            body=CancelBody(reason=reason),
            idempotent=True,
            run_id=run_id,
        )

    async def send_event(self, new: NewEvent) -> EventSent:
        """See `EngineApi.send_event`."""
        request = SendEventBody(
            name=new.name, data_json=new.data_json, idempotency_key=new.idempotency_key
        )
        body = await self._call(
            _EVENT_SENT,
            "POST",
            _run_path(new.run_id, "/events"),
            body=request,
            idempotent=new.idempotency_key is not None,
            run_id=new.run_id,
        )
        return EventSent(seq=body.seq, created=body.created)

    async def list_runs(
        self,
        *,
        workflow: str | None = None,
        state: RunState | None = None,
        after: RunId | None = None,
        limit: int = 100,
    ) -> list[RunStatus]:
        """See `EngineApi.list_runs`."""
        params: dict[str, str | int] = {"limit": limit}
        if workflow is not None:
            params["workflow"] = workflow
        if state is not None:
            params["state"] = RunState(state).value
        if after is not None:
            params["after"] = after
        body = await self._call(_RUN_PAGE, "GET", "/v1/runs", params=params, idempotent=True)
        return list(body.runs)

    async def list_workers(self) -> list[WorkerInfo]:
        """See `EngineApi.list_workers`."""
        body = await self._call(_WORKERS, "GET", "/v1/workers", idempotent=True)
        return list(body.workers)

    async def list_workflows(self) -> list[WorkflowSummary]:
        """See `EngineApi.list_workflows`."""
        body = await self._call(_WORKFLOWS, "GET", "/v1/workflows", idempotent=True)
        return list(body.workflows)

    # --- workers --------------------------------------------------------------------------

    async def register_worker(
        self, worker_id: WorkerId, versions: Sequence[ServedVersion], lease_ms: int
    ) -> None:
        """See `EngineApi.register_worker`."""
        body = RegisterWorkerBody(worker_id=worker_id, workflows=tuple(versions), lease_ms=lease_ms)
        await self._call_no_reply("POST", "/v1/workers/register", body=body, idempotent=True)

    async def unregister_worker(self, worker_id: WorkerId) -> None:
        """See `EngineApi.unregister_worker`."""
        body = UnregisterWorkerBody(worker_id=worker_id)
        await self._call_no_reply("POST", "/v1/workers/unregister", body=body, idempotent=True)

    async def poll(self, request: PollRequest) -> PollReply:
        """See `EngineApi.poll`. Cancelling it drops the connection: the server hands back."""
        wait_s = min(request.wait_ms / 1000, _LONG_POLL_S)
        reply = await self._call(
            _POLL_REPLY,
            "POST",
            "/v1/workers/poll",
            body=request,
            idempotent=False,  # a lost reply may hold claimed runs; their leases will expire
            read_timeout=wait_s + _LONG_POLL_GRACE_S,
        )
        self._reports.max_bytes = reply.max_payload_bytes  # what one request of reports carries
        return reply

    async def heartbeat(
        self, worker_id: WorkerId, leases: Sequence[Lease], lease_ms: int
    ) -> HeartbeatReply:
        """See `EngineApi.heartbeat`."""
        request = HeartbeatBody(worker_id=worker_id, leases=tuple(leases), lease_ms=lease_ms)
        return await self._call(
            _HEARTBEAT_REPLY, "POST", "/v1/workers/heartbeat", body=request, idempotent=True
        )

    async def _report(self, report: Report) -> ReportAnswer:
        """A leased write, sent with the others waiting (see `ReportBatcher`)."""
        answer = await self._reports.submit(report)
        if answer.error is not None:
            raise _error_of(answer.error, report.run_id)
        return answer

    async def _send_reports(self, reports: tuple[Report, ...]) -> tuple[ReportAnswer, ...]:
        # Storage applies each write once however often it is sent: the batch may go again.
        reply = await self._call(
            _REPORTS_REPLY,
            "POST",
            "/v1/workers/reports",
            body=ReportsBody(reports=reports),
            idempotent=True,
        )
        if len(reply.answers) != len(reports):
            raise ClientError(
                f"POST {self.url}/v1/workers/reports: {len(reply.answers)} answers "
                f"for {len(reports)} reports"
            )
        return reply.answers

    async def _leased_call(self, codec: Codec[T], lease: Lease, suffix: str, body: object) -> T:
        """A leased read (or a write with a reply of its own), in a request of its own."""
        return await self._call(
            codec,
            "POST",
            _run_path(lease.run_id, suffix),
            body=body,
            idempotent=True,
            run_id=lease.run_id,
        )

    async def start_task(self, lease: Lease, start: TaskStart) -> None:
        """See `EngineApi.start_task`."""
        await self._report(Report(run_id=lease.run_id, revision=lease.revision, start_task=start))

    async def finish_task(self, lease: Lease, end: TaskEnd) -> bool:
        """See `EngineApi.finish_task`."""
        report = Report(run_id=lease.run_id, revision=lease.revision, finish_task=end)
        return (await self._report(report)).cancel_requested

    async def next_event(self, lease: Lease, name: str, after_seq: int) -> RunEvent | None:
        """See `EngineApi.next_event`."""
        request = NextEventBody(revision=lease.revision, name=name, after_seq=after_seq)
        body = await self._leased_call(_NEXT_EVENT_REPLY, lease, "/events/next", request)
        return body.event

    async def suspend(self, lease: Lease, wait: WaitInfo) -> None:
        """See `EngineApi.suspend`."""
        await self._report(Report(run_id=lease.run_id, revision=lease.revision, suspend=wait))

    async def release(self, lease: Lease) -> None:
        """See `EngineApi.release`."""
        await self._report(Report(run_id=lease.run_id, revision=lease.revision, release=True))

    async def finish(self, lease: Lease, outcome: RunOutcome) -> None:
        """See `EngineApi.finish`."""
        await self._report(Report(run_id=lease.run_id, revision=lease.revision, finish=outcome))


def _is_ours(response: Reply) -> bool:
    return response.content_type.startswith("application/json")


def _is_storage_error(response: Reply) -> bool:
    body = read_error(response.content)
    return body is not None and body.code == "storage_error"


def _error(response: Reply, run_id: str | None) -> Exception:
    """The exception an error reply stands for."""
    body = read_error(response.content)
    if body is None:
        text = response.text[:200]
        return ClientError(f"HTTP {response.status} from {response.url}: {text}")
    return _error_of(body, run_id)


def _error_of(body: ErrorBody, run_id: str | None) -> Exception:
    if body.code == "not_found" and run_id is not None:
        # No route matched: a run id no run can have (e.g. one holding "/").
        return RunNotFoundError(run_id)
    return exception_of(body)
