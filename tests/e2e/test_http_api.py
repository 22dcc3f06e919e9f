"""The HTTP API: error codes, validation, OpenAPI, health, API key, paging, long-polls, retries.

Everything runs the real app and the real SQLite storage through `httpx.ASGITransport`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.routing import Route

import aiki
from _httpx_transport import HttpxTransport
from aiki._core.api import EngineApi
from aiki._core.ids import RunId, WorkerId
from aiki._core.models import (
    Lease,
    NewEvent,
    NewRun,
    PollRequest,
    RunOutcome,
    ServedVersion,
    TaskAddress,
    TaskEnd,
    TaskOutcome,
    TaskStart,
    WaitInfo,
    WaitKind,
    WorkflowKey,
)
from aiki._core.serde import dumps
from aiki._http.errors import ERROR_CODES, ROUTING_CODES
from aiki.client._http import HttpApi
from aiki.server._app import ENDPOINTS, create_app
from aiki.testing import FakeClock
from helpers import until

BASE = "http://aiki.test"
KEY = WorkflowKey(name="w", version="1")
WORKER = WorkerId("w1")


def new_run(payload: Any = None, key: str | None = None) -> NewRun:
    """A run of `w@1`, which no worker here serves: these tests drive the runs themselves."""
    return NewRun(
        workflow="w",
        version="1",
        payload_json=dumps(payload),
        idempotency_key=key,
        allow_unknown=True,
    )


@pytest.fixture
async def raw(srv: aiki.Server) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=srv.app), base_url=BASE) as c:
        yield c


@pytest.fixture
async def http(srv: aiki.Server) -> AsyncIterator[HttpApi]:
    api = HttpApi(
        BASE, transport=HttpxTransport(httpx.ASGITransport(app=srv.app)), retry_timeout=1.0
    )
    yield api
    await api.aclose()


# --- every error code comes back as the class the in-process service raises --------------

Call = Callable[[EngineApi], Awaitable[object]]


async def raised(call: Call, api: EngineApi) -> Exception:
    try:
        await call(api)
    except Exception as exc:
        return exc
    raise AssertionError("expected an error")


async def same_error(srv: aiki.Server, http: HttpApi, call: Call) -> Exception:
    """Make the same call in-process and over HTTP: the same class, message and attributes."""
    local = await raised(call, srv.service)
    remote = await raised(call, http)
    assert type(remote) is type(local)
    assert str(remote) == str(local)
    assert vars(remote) == vars(local)
    return remote


async def test_error_codes_round_trip_to_their_classes(
    srv: aiki.Server, http: HttpApi, tmp_path: Path, clock: FakeClock
) -> None:
    seen: set[str] = set()
    deployed_once = ServedVersion(name="w", version="1")  # its worker has stopped since
    await srv.service.register_worker(WorkerId("w-old"), [deployed_once], 1_000)
    await srv.service.unregister_worker(WorkerId("w-old"))
    pending = await srv.service.get_status(
        (await srv.service.enqueue(new_run({"n": 1}, key="k"))).id
    )

    exc = await same_error(srv, http, lambda api: api.get_status(RunId("no-such-run")))
    assert isinstance(exc, aiki.RunNotFoundError) and exc.run_id == "no-such-run"
    seen.add("run_not_found")

    by_name = NewRun(workflow="w", version="9", payload_json="{}")
    exc = await same_error(srv, http, lambda api: api.enqueue(by_name))
    assert isinstance(exc, aiki.WorkflowNotFoundError)
    assert (exc.workflow, exc.version, exc.known) == ("w", "9", ("1",))
    seen.add("workflow_not_found")

    exc = await same_error(srv, http, lambda api: api.enqueue(new_run({"n": 2}, key="k")))
    assert isinstance(exc, aiki.IdempotencyConflictError)
    assert (exc.workflow, exc.version, exc.idempotency_key, exc.run_id) == (
        "w",
        "1",
        "k",
        pending.id,
    )
    seen.add("idempotency_conflict")

    sent = NewEvent(run_id=pending.id, name="e", data_json="1", idempotency_key="k")
    await srv.service.send_event(sent)
    exc = await same_error(srv, http, lambda api: api.send_event(replace(sent, data_json="2")))
    assert isinstance(exc, aiki.EventRejectedError)
    assert (exc.run_id, exc.name, exc.idempotency_key) == (pending.id, "e", "k")
    seen.add("event_rejected")

    stale = Lease(run_id=pending.id, revision=pending.revision + 7)
    exc = await same_error(srv, http, lambda api: api.release(stale))
    assert isinstance(exc, aiki.LeaseLostError) and exc.revision == pending.revision + 7
    seen.add("lease_lost")

    current = Lease(run_id=pending.id, revision=pending.revision)
    wait = WaitInfo(kind=WaitKind.RETRY, until_ms=clock.now_ms() + 1_000)
    exc = await same_error(srv, http, lambda api: api.suspend(current, wait))
    assert isinstance(exc, aiki.IllegalTransitionError)
    assert (exc.run_id, exc.current) == (pending.id, "pending")
    seen.add("illegal_transition")

    big = new_run("x" * (srv.settings.max_payload_bytes + 10))
    exc = await same_error(srv, http, lambda api: api.enqueue(big))
    assert isinstance(exc, aiki.PayloadTooLargeError)
    assert exc.limit == srv.settings.max_payload_bytes and exc.size > exc.limit
    seen.add("payload_too_large")

    # An Aiki client always sends valid JSON text; a hand-made request may not.
    for bad in ("{not json", "NaN", '"\\ud800"'):
        unreadable = NewRun(workflow="w", version="1", payload_json=bad)
        refused = await raised(lambda api: api.enqueue(unreadable), http)  # noqa: B023
        assert type(refused) is aiki.PayloadError, bad
        assert "workflow 'w' payload" in str(refused)
    seen.add("payload_invalid")

    local = await raised(lambda api: api.list_runs(limit=0), srv.service)
    remote = await raised(lambda api: api.list_runs(limit=0), http)
    assert isinstance(local, ValueError) and isinstance(remote, ValueError)
    assert isinstance(remote, aiki.InvalidRequestError) and remote.field == "limit"
    seen.add("invalid_request")

    keyed = create_app(srv, api_key="s3cret")
    async with HttpApi(BASE, transport=HttpxTransport(httpx.ASGITransport(app=keyed))) as no_key:
        exc = await raised(lambda api: api.list_workers(), no_key)
    assert isinstance(exc, aiki.UnauthorizedError)
    seen.add("unauthorized")

    async with aiki.server(f"sqlite:///{tmp_path}/broken.db", clock=clock) as broken:
        await broken.storage.close()  # the database goes away under a running server
        async with HttpApi(
            BASE, transport=HttpxTransport(httpx.ASGITransport(app=broken.app)), retry_timeout=0
        ) as api:
            exc = await raised(lambda a: a.get_status(pending.id), api)
        assert type(exc) is aiki.StorageError
        assert type(await raised(lambda a: a.get_status(pending.id), broken.service)) is type(exc)
    seen.add("storage_error")

    assert seen == set(ERROR_CODES) - set(ROUTING_CODES)


async def test_error_bodies_carry_code_message_and_attributes(
    srv: aiki.Server, raw: httpx.AsyncClient
) -> None:
    first = await raw.post(
        "/v1/runs",
        json={"workflow": "w", "version": "1", "payload_json": "1", "idempotency_key": "k"}
        | {"allow_unknown": True},
    )
    assert first.status_code == 201
    run_id = first.json()["id"]

    again = await raw.post(
        "/v1/runs",
        json={"workflow": "w", "version": "1", "payload_json": "2", "idempotency_key": "k"}
        | {"allow_unknown": True},
    )

    assert again.status_code == 409
    assert again.headers["content-type"] == "application/json"
    body = again.json()
    assert body["code"] == "idempotency_conflict"
    assert body["run_id"] == run_id and body["idempotency_key"] == "k"
    assert "'k'" in body["message"]


# --- bad requests: 4xx naming the field, never a 500 --------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "field"),
    [
        ("POST", "/v1/runs", b"{bad", 400, None),
        ("POST", "/v1/runs", b"", 400, None),
        ("POST", "/v1/runs", b"[]", 400, None),
        ("POST", "/v1/runs", {"version": "1", "payload_json": "1"}, 422, "workflow"),
        (
            "POST",
            "/v1/runs",
            {"workflow": "w", "version": "1", "payload_json": 5},
            422,
            "payload_json",
        ),
        (
            "POST",
            "/v1/runs",
            {"workflow": "", "version": "1", "payload_json": "1"},
            422,
            "workflow",
        ),
        (
            "POST",
            "/v1/workers/poll",
            {
                "worker_id": "x",
                "workflows": [],
                "capacity": "3",
                "lease_ms": 1000,
                "wait_ms": 0,
                "recheck_ms": 10,
            },
            422,
            "capacity",
        ),
        (
            "POST",
            "/v1/workers/poll",
            {
                "worker_id": "x",
                "workflows": [{"name": "w"}],
                "capacity": 1,
                "lease_ms": 1000,
                "wait_ms": 0,
                "recheck_ms": 10,
            },
            422,
            "workflows[0].version",
        ),
        (
            "POST",
            "/v1/workers/heartbeat",
            {"worker_id": "x", "lease_ms": 1000, "leases": [{"run_id": "r", "revision": -1}]},
            422,
            "leases[0].revision",
        ),
        (
            "POST",
            "/v1/workers/register",
            {"worker_id": "x", "workflows": [], "lease_ms": True},
            422,
            "lease_ms",
        ),
        (
            "POST",
            "/v1/runs/r/finish",
            {"revision": 1, "outcome": {"state": "running"}},
            422,
            "outcome.state",
        ),
        (
            "POST",
            "/v1/runs/r/tasks/finish",
            {"revision": 1, "end": {"attempt": 1}},
            422,
            "end.address",
        ),
        (
            "POST",
            "/v1/runs/r/suspend",
            {"revision": 1, "wait": {"kind": "nap", "until_ms": 1}},
            422,
            "wait.kind",
        ),
        ("POST", "/v1/runs/r/release", {"revision": 1.5}, 422, "revision"),
        ("GET", "/v1/runs?state=bogus", None, 422, "state"),
        ("GET", "/v1/runs?limit=0", None, 422, "limit"),
        ("GET", "/v1/runs?limit=1001", None, 422, "limit"),
        ("GET", "/v1/runs?limit=ten", None, 422, "limit"),
        ("GET", "/v1/runs/r/wait?timeout_s=-1", None, 422, "timeout_s"),
        ("GET", "/v1/runs/r/wait?timeout_s=nan", None, 422, "timeout_s"),
    ],
)
async def test_bad_requests_name_the_field(
    raw: httpx.AsyncClient, method: str, path: str, body: Any, status: int, field: str | None
) -> None:
    content = body if isinstance(body, bytes | None) else json.dumps(body).encode()

    response = await raw.request(method, path, content=content)

    assert response.status_code == status, response.text
    error = response.json()
    assert error["code"] == "invalid_request"
    assert error["field"] == field
    if field is not None:
        assert field in error["message"]


@pytest.mark.parametrize("suffix", ["", "/history", "/wait?timeout_s=0", "/cancel"])
async def test_unknown_run_ids_are_404(raw: httpx.AsyncClient, suffix: str) -> None:
    method = "POST" if suffix == "/cancel" else "GET"

    response = await raw.request(method, f"/v1/runs/nope{suffix}")

    assert response.status_code == 404
    assert response.json() == {
        "code": "run_not_found",
        "message": "no workflow run with id 'nope'",
        "run_id": "nope",
    }


async def test_leased_write_to_unknown_run_is_lease_lost(raw: httpx.AsyncClient) -> None:
    response = await raw.post("/v1/runs/nope/release", json={"revision": 1})
    assert response.status_code == 409 and response.json()["code"] == "lease_lost"


GARBAGE: list[bytes] = [
    b"null",
    b"1",
    b'"x"',
    b"{}",
    b'{"revision": "1"}',
    b'{"revision": 1, "outcome": null, "end": [], "wait": {}, "start": 7}',
    b"[" * 5_000 + b"]" * 5_000,
    b'{"worker_id": "\\ud800", "workflows": "w"}',
    b"\xff\xfe",
]


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=lambda e: e.name)
async def test_no_garbage_body_gives_a_500(raw: httpx.AsyncClient, endpoint: Any) -> None:
    path = endpoint.path.replace("{run_id}", "nope")
    for body in GARBAGE:
        response = await raw.request(endpoint.method, path, content=body)
        if endpoint.body is None:  # a GET ignores its body
            assert response.status_code < 500, (body[:40], response.text)
            continue
        assert 400 <= response.status_code < 500, (body[:40], response.text)
        assert response.json()["code"] in ERROR_CODES


async def test_body_over_the_limit_is_413(tmp_path: Path, clock: FakeClock) -> None:
    async with aiki.server(
        f"sqlite:///{tmp_path}/small.db", clock=clock, max_payload_bytes=100
    ) as small:
        transport = httpx.ASGITransport(app=small.app)
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as raw:
            body = {"workflow": "w", "version": "1", "payload_json": dumps("x" * 100_000)}
            response = await raw.post("/v1/runs", json=body)
    assert response.status_code == 413
    error = response.json()
    assert (error["code"], error["limit"]) == ("payload_too_large", 100)
    assert "within the limit of 100 bytes (max_payload_bytes)" in error["message"]


async def test_unknown_route_and_method_are_json(raw: httpx.AsyncClient) -> None:
    missing = await raw.get("/v1/nothing")
    assert missing.status_code == 404 and missing.json()["code"] == "not_found"
    wrong = await raw.delete("/v1/runs")
    assert wrong.status_code == 405 and wrong.json()["code"] == "method_not_allowed"


async def test_hand_written_payload_text_is_stored_canonical(raw: httpx.AsyncClient) -> None:
    """Key order and spaces do not make another payload: idempotency still holds."""
    body = {"workflow": "w", "version": "1", "idempotency_key": "k", "allow_unknown": True}
    first = await raw.post("/v1/runs", json=body | {"payload_json": '{"b": 2, "a": 1}'})
    again = await raw.post("/v1/runs", json=body | {"payload_json": '{"a":1,"b":2}'})

    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json() == {"id": first.json()["id"], "created": False}
    stored = await raw.get(f"/v1/runs/{first.json()['id']}")
    assert stored.json()["payload_json"] == '{"a":1,"b":2}'


# --- OpenAPI and health ---------------------------------------------------------------------


def refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [r for value in node.values() for r in refs(value)]
    if isinstance(node, list):
        return [r for item in node for r in refs(item)]
    return []


async def test_openapi_lists_every_route(srv: aiki.Server, raw: httpx.AsyncClient) -> None:
    response = await raw.get("/openapi.json")
    assert response.status_code == 200
    doc = response.json()

    served = {
        (method.lower(), route.path)
        for route in srv.app.routes
        if isinstance(route, Route)
        for method in route.methods or ()
        if method != "HEAD"
    }
    documented = {(method, path) for path, item in doc["paths"].items() for method in item}
    assert documented == served
    assert len(served) == len(ENDPOINTS) + 2  # + /health, /openapi.json
    assert doc["openapi"] == "3.1.0"
    schemas = doc["components"]["schemas"]
    for ref in refs(doc):
        assert ref.startswith("#/components/schemas/") and ref.split("/")[-1] in schemas, ref
    operation_ids = [op["operationId"] for item in doc["paths"].values() for op in item.values()]
    assert len(operation_ids) == len(set(operation_ids))
    enqueue = doc["paths"]["/v1/runs"]["post"]
    assert enqueue["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/NewRun"
    }
    assert {"201", "200", "409", "413", "422"} <= set(enqueue["responses"])
    listing = doc["paths"]["/v1/runs"]["get"]
    assert {p["name"] for p in listing["parameters"]} == {"workflow", "state", "after", "limit"}
    assert sorted(schemas["RunState"]["enum"]) == sorted(s.value for s in aiki.RunState)


async def test_health(raw: httpx.AsyncClient) -> None:
    response = await raw.get("/health")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


# --- API key --------------------------------------------------------------------------------


async def test_api_key_is_required_and_accepted(srv: aiki.Server) -> None:
    app = create_app(srv, api_key="s3cret")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as raw:
        assert (await raw.get("/health")).status_code == 200, "health needs no key"
        for headers in (
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": "s3cret"},
            {"Authorization": "Basic s3cret"},
        ):
            refused = await raw.get("/v1/runs", headers=headers)
            assert refused.status_code == 401, headers
            assert refused.json()["code"] == "unauthorized"
            assert refused.headers["www-authenticate"] == "Bearer"
        assert (await raw.get("/openapi.json")).status_code == 401
        for scheme in ("Bearer", "bearer"):
            ok = await raw.get("/v1/runs", headers={"Authorization": f"{scheme} s3cret"})
            assert ok.status_code == 200

    client = await aiki.create_client(
        url=BASE, api_key="s3cret", _transport=HttpxTransport(httpx.ASGITransport(app=app))
    )
    async with client:
        run = await client.enqueue(new_run({"n": 1}))
        assert (await run.get_status()).state is aiki.RunState.PENDING
    anonymous = await aiki.create_client(
        url=BASE, _transport=HttpxTransport(httpx.ASGITransport(app=app))
    )
    async with anonymous:
        with pytest.raises(aiki.UnauthorizedError):
            await anonymous.list_runs()


async def test_server_api_key_option(tmp_path: Path, clock: FakeClock) -> None:
    async with aiki.server(f"sqlite:///{tmp_path}/k.db", clock=clock, api_key="k") as keyed:
        transport = httpx.ASGITransport(app=keyed.app)
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as raw:
            assert (await raw.get("/v1/workers")).status_code == 401
            ok = await raw.get("/v1/workers", headers={"Authorization": "Bearer k"})
            assert ok.status_code == 200
    with pytest.raises(aiki.ConfigError):
        aiki.server("sqlite://:memory:", api_key="")


# --- listing --------------------------------------------------------------------------------


async def test_list_runs_pages_with_a_cursor(
    srv: aiki.Server, raw: httpx.AsyncClient, client: aiki.Client
) -> None:
    ids = [(await srv.service.enqueue(new_run(i))).id for i in range(7)]
    other = NewRun(workflow="other", version="1", payload_json="0", allow_unknown=True)
    await srv.service.enqueue(other)
    cancelled = await srv.service.cancel(ids[2], "no")

    pages: list[list[str]] = []
    after: str | None = None
    while True:
        params = {"workflow": "w", "limit": "3"} | ({"after": after} if after else {})
        body = (await raw.get("/v1/runs", params=params)).json()
        pages.append([r["id"] for r in body["runs"]])
        after = body["next_after"]
        if after is None:
            break
    assert [len(p) for p in pages] == [3, 3, 1]
    assert [i for page in pages for i in page] == list(reversed(ids)), "newest first, no gaps"

    via_client = await client.list_runs(workflow="w", limit=3, after=pages[0][-1])
    assert [r.id for r in via_client] == pages[1]
    only_cancelled = await client.list_runs(state="cancelled")
    assert [r.id for r in only_cancelled] == [cancelled.id]
    assert len(await client.list_runs()) == 8


async def test_list_workers_and_workflows(client: aiki.Client) -> None:
    served = ServedVersion(name=KEY.name, version=KEY.version)
    await client.api.register_worker(WorkerId("w-1"), [served], 60_000)
    await client.api.enqueue(new_run(1))

    workers = await client.api.list_workers()
    assert [(w.id, w.workflows, w.alive) for w in workers] == [("w-1", (KEY,), True)]
    summaries = await client.api.list_workflows()
    assert [(s.name, s.version, s.live_workers, s.runs) for s in summaries] == [
        ("w", "1", ("w-1",), {"pending": 1})
    ]
    await client.api.unregister_worker(WorkerId("w-1"))
    assert not (await client.api.list_workers())[0].alive


# --- long-poll wait -------------------------------------------------------------------------


class Counting(httpx.AsyncBaseTransport):
    """Counts requests by path on their way to an inner transport."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.paths: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.paths.append(request.url.path)
        return await self.inner.handle_async_request(request)


async def test_wait_returns_as_soon_as_the_run_ends(srv: aiki.Server) -> None:
    counting = Counting(httpx.ASGITransport(app=srv.app))
    async with await aiki.create_client(url=BASE, _transport=HttpxTransport(counting)) as client:
        handle = await client.enqueue(new_run(1))
        waiting = asyncio.create_task(handle.wait_for_completion(timeout=20))
        await until(lambda: srv.service.parked_waits == 1)  # the wait is parked on the server
        assert not waiting.done()

        loop = asyncio.get_running_loop()
        cancelled_at = loop.time()
        await srv.service.cancel(handle.id, "enough")
        with pytest.raises(aiki.WorkflowRunCancelledError):
            await waiting
        assert loop.time() - cancelled_at < 0.5
    assert counting.paths.count("/v1/runs/wait-any") == 1, "one long-poll, no loop"


async def test_wait_honours_its_timeout_across_capped_long_polls(srv: aiki.Server) -> None:
    """The server holds each request 0.1 s at most here; the client asks again until 0.5 s."""
    counting = Counting(httpx.ASGITransport(app=create_app(srv, long_poll_cap_s=0.1)))
    async with await aiki.create_client(url=BASE, _transport=HttpxTransport(counting)) as client:
        handle = await client.enqueue(new_run(1))
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(TimeoutError, match="still pending"):
            await handle.wait_for_completion(timeout=0.5)
        elapsed = loop.time() - started
    assert 0.5 <= elapsed < 1.5
    assert 4 <= counting.paths.count("/v1/runs/wait-any") <= 7


async def test_wait_with_zero_timeout_answers_at_once(client: aiki.Client) -> None:
    handle = await client.enqueue(new_run(1))
    with pytest.raises(TimeoutError):
        await handle.wait_for_completion(timeout=0)


# --- transient failures ---------------------------------------------------------------------


class Flaky(httpx.AsyncBaseTransport):
    """Fails the first `failures` requests with `error`: before sending, or after the server
    answered (`after=True`: the reply is lost on the way back)."""

    def __init__(
        self,
        inner: httpx.AsyncBaseTransport,
        failures: int,
        error: type[httpx.TransportError] = httpx.ConnectError,
        *,
        after: bool = False,
    ) -> None:
        self.inner = inner
        self.failures = failures
        self.error = error
        self.after = after
        self.attempts = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.attempts += 1
        if self.attempts > self.failures:
            return await self.inner.handle_async_request(request)
        if self.after:
            await self.inner.handle_async_request(request)
        raise self.error("simulated network failure", request=request)


def flaky_api(srv: aiki.Server, transport: httpx.AsyncBaseTransport, retry: float) -> HttpApi:
    return HttpApi(BASE, transport=HttpxTransport(transport), retry_timeout=retry)


async def test_connect_errors_are_retried(srv: aiki.Server) -> None:
    flaky = Flaky(httpx.ASGITransport(app=srv.app), failures=3)
    async with flaky_api(srv, flaky, retry=5.0) as api:
        enqueued = await api.enqueue(new_run(1))  # not idempotent, but it never got there
    assert flaky.attempts == 4
    assert [r.id for r in await srv.service.list_runs()] == [enqueued.id]


async def test_unreachable_server_gives_server_unavailable(srv: aiki.Server) -> None:
    flaky = Flaky(httpx.ASGITransport(app=srv.app), failures=10**6)
    loop = asyncio.get_running_loop()
    async with flaky_api(srv, flaky, retry=0.3) as api:
        started = loop.time()
        with pytest.raises(aiki.ServerUnavailableError, match=r"unavailable for 0\.3 s"):
            await api.get_status(RunId("r"))
    assert 0.3 <= loop.time() - started < 1.0
    assert 3 <= flaky.attempts < 20, "backs off exponentially"


async def test_lost_reply_is_retried_only_when_safe(srv: aiki.Server) -> None:
    lost = Flaky(httpx.ASGITransport(app=srv.app), failures=1, error=httpx.ReadError, after=True)
    async with flaky_api(srv, lost, retry=5.0) as api:
        with pytest.raises(aiki.ServerUnavailableError, match="may or may not"):
            await api.enqueue(new_run("no key"))
    assert lost.attempts == 1, "an enqueue without a key is not sent twice"

    lost = Flaky(httpx.ASGITransport(app=srv.app), failures=1, error=httpx.ReadError, after=True)
    async with flaky_api(srv, lost, retry=5.0) as api:
        enqueued = await api.enqueue(new_run("keyed", key="once"))
    assert lost.attempts == 2 and not enqueued.created, "the retry found the first one's run"

    lost = Flaky(httpx.ASGITransport(app=srv.app), failures=2, error=httpx.ReadTimeout)
    async with flaky_api(srv, lost, retry=5.0) as api:
        status = await api.get_status(enqueued.id)
    assert status.id == enqueued.id and lost.attempts == 3

    assert len(await srv.service.list_runs()) == 2


async def test_a_workers_writes_are_sent_again_after_a_lost_reply_and_applied_once(
    srv: aiki.Server,
) -> None:
    run_id = (await srv.service.enqueue(new_run("x"))).id
    poll = PollRequest(
        worker_id=WORKER, workflows=(KEY,), capacity=1, lease_ms=30_000, wait_ms=0, recheck_ms=100
    )
    (claimed,) = (await srv.service.poll(poll)).claimed
    lease = Lease(run_id=run_id, revision=claimed.revision)
    address = TaskAddress(task="t", digest="d" * 64, index=0)
    writes: list[Callable[[HttpApi], Awaitable[object]]] = [
        lambda api: api.start_task(lease, TaskStart(address=address, attempt=1, worker_id=WORKER)),
        lambda api: api.finish_task(
            lease,
            TaskEnd(
                address=address,
                attempt=1,
                worker_id=WORKER,
                outcome=TaskOutcome.COMPLETED,
                duration_ms=1,
                result_json="1",
            ),
        ),
        lambda api: api.finish(lease, RunOutcome(state=aiki.RunState.COMPLETED, result_json="2")),
    ]
    for write in writes:
        lost = Flaky(
            httpx.ASGITransport(app=srv.app), failures=1, error=httpx.ReadError, after=True
        )
        async with flaky_api(srv, lost, retry=5.0) as api:
            await write(api)
        assert lost.attempts == 2, "the reply was lost, so the write was sent again"

    history = await srv.service.get_history(run_id)
    assert [e.kind.value for e in history] == [
        "run_enqueued",
        "run_claimed",
        "task_started",
        "task_completed",
        "run_completed",
    ]
    assert (await srv.service.get_status(run_id)).result == 2


class StorageHiccup(httpx.AsyncBaseTransport):
    """Answers the first `failures` requests as a server whose database connection dropped."""

    def __init__(self, inner: httpx.AsyncBaseTransport, failures: int) -> None:
        self.inner = inner
        self.failures = failures
        self.attempts = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.attempts += 1
        if self.attempts > self.failures:
            return await self.inner.handle_async_request(request)
        body = {"code": "storage_error", "message": "connection was closed"}
        return httpx.Response(503, json=body)


async def test_a_storage_error_is_retried_only_when_repeating_is_safe(srv: aiki.Server) -> None:
    hiccup = StorageHiccup(httpx.ASGITransport(app=srv.app), failures=2)
    async with flaky_api(srv, hiccup, retry=5.0) as api:
        enqueued = await api.enqueue(new_run("keyed", key="k"))
    assert hiccup.attempts == 3 and enqueued.created

    hiccup = StorageHiccup(httpx.ASGITransport(app=srv.app), failures=1)
    async with flaky_api(srv, hiccup, retry=5.0) as api:
        with pytest.raises(aiki.StorageError, match="connection was closed"):
            await api.enqueue(new_run("no key"))
    assert hiccup.attempts == 1, "an enqueue without a key may have been applied: not resent"

    hiccup = StorageHiccup(httpx.ASGITransport(app=srv.app), failures=10**6)
    async with flaky_api(srv, hiccup, retry=0.2) as api:
        with pytest.raises(aiki.StorageError):
            await api.get_status(enqueued.id)
    assert hiccup.attempts >= 2


class Gateway(httpx.AsyncBaseTransport):
    """A proxy that answers 503 while its backend is away."""

    def __init__(self, inner: httpx.AsyncBaseTransport, failures: int) -> None:
        self.inner = inner
        self.failures = failures

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.failures > 0:
            self.failures -= 1
            return httpx.Response(503, text="no healthy upstream")
        return await self.inner.handle_async_request(request)


async def test_gateway_errors_are_retried_for_idempotent_calls(srv: aiki.Server) -> None:
    async with flaky_api(srv, Gateway(httpx.ASGITransport(app=srv.app), 2), retry=5.0) as api:
        assert await api.list_runs() == []
    async with flaky_api(srv, Gateway(httpx.ASGITransport(app=srv.app), 1), retry=5.0) as api:
        with pytest.raises(aiki.ServerUnavailableError):
            await api.enqueue(new_run(1))


# --- the client object ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "base"),
    [
        ("localhost:9090", "http://localhost:9090"),
        ("127.0.0.1:9090/", "http://127.0.0.1:9090"),
        ("https://aiki.example.com/prefix/", "https://aiki.example.com/prefix"),
        (" http://h ", "http://h"),
    ],
)
async def test_scheme_less_url_means_http(url: str, base: str) -> None:
    async with await aiki.create_client(url=url) as client:
        assert isinstance(client.api, HttpApi) and client.api.url == base


@pytest.mark.parametrize("url", ["", "ftp://h", "http://", "http://:9090"])
async def test_bad_urls_are_config_errors(url: str) -> None:
    with pytest.raises(aiki.ConfigError):
        await aiki.create_client(url=url)


async def test_api_key_with_in_process_server_is_refused(srv: aiki.Server) -> None:
    with pytest.raises(aiki.ConfigError):
        await aiki.create_client(server=srv, api_key="k")


async def test_poll_and_leased_writes_over_http(srv: aiki.Server, http: HttpApi) -> None:
    """The worker protocol by hand: claim, heartbeat, finish; the result is the exact text."""
    run = await http.get_status((await http.enqueue(new_run({"n": 1}))).id)
    request = PollRequest(
        worker_id=WorkerId("hand"),
        workflows=(KEY,),
        capacity=5,
        lease_ms=10_000,
        wait_ms=0,
        recheck_ms=50,
    )
    reply = await http.poll(request)
    assert [c.run.id for c in reply.claimed] == [run.id]
    claimed = reply.claimed[0]
    assert claimed.run.payload == {"n": 1}
    lease = Lease(run_id=run.id, revision=claimed.revision)

    beat = await http.heartbeat(WorkerId("hand"), [lease], 10_000)
    assert beat.lost == () and beat.cancel_requested == ()
    await http.finish(
        lease, RunOutcome(state=aiki.RunState.COMPLETED, result_json='{"z":1,"a":[1.5]}')
    )

    done = await http.get_status(run.id)
    assert done.state is aiki.RunState.COMPLETED and done.result == {"z": 1, "a": [1.5]}
    assert (await http.heartbeat(WorkerId("hand"), [lease], 10_000)).lost == (run.id,)
