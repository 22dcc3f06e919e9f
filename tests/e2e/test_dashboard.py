"""The dashboard, as a browser sees it: pages over the real service, storage and a worker."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

import aiki
from aiki.server._app import create_app
from aiki.testing import FakeClock, kill_worker
from conftest import WorkerFactory
from helpers import eventually, state_is

BASE = "http://aiki.test"
SAME_ORIGIN = {"Origin": BASE}


@pytest.fixture
async def client(srv: aiki.Server) -> AsyncIterator[aiki.Client]:
    """In-process only (overrides conftest's): the dashboard, not the client, is under test."""
    async with await aiki.create_client(server=srv) as c:
        yield c


def wf(name: str, version: str = "1", task: Any = None) -> aiki.Workflow[Any, Any]:
    @aiki.workflow(name=name, version=version)
    async def flow(workflow_run: aiki.WorkflowRun[Any]) -> Any:
        if task is None:
            return workflow_run.payload
        return await task.run(workflow_run, payload={"step": 1})

    return flow


def run_links(html: str) -> list[str]:
    """The run ids a runs page lists, in order."""
    return re.findall(r'href="/dashboard/runs/([0-9a-z]+)"', html)


async def page(browser: httpx.AsyncClient, url: str, status: int = 200) -> str:
    response = await browser.get(url)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("text/html")
    return response.text


# --- runs list ----------------------------------------------------------------------------------


async def test_root_leads_to_the_dashboard(browser: httpx.AsyncClient) -> None:
    root = await browser.get("/")
    assert root.status_code == 307 and root.headers["location"] == "/dashboard/"
    bare = await browser.get("/dashboard")
    assert bare.status_code == 307 and bare.headers["location"].endswith("/dashboard/")
    html = await page(browser, "/dashboard/")
    assert "<h1>Runs</h1>" in html and "No runs yet." in html
    assert (await browser.get("/dashboard/static/dashboard.css")).status_code == 200
    assert (await browser.get("/dashboard/static/dashboard.js")).status_code == 200


async def test_runs_are_listed_newest_first_with_state_and_note(
    client: aiki.Client, make_worker: WorkerFactory, browser: httpx.AsyncClient
) -> None:
    served, unserved = wf("served"), wf("unserved", "2.0")
    await make_worker(served, id="w-1")
    done = await served.enqueue(client, payload={"n": 1})
    await done.wait_for_completion(timeout=10)
    stuck = await unserved.enqueue(client, payload={"n": 2}, allow_unknown=True)

    html = await page(browser, "/dashboard/")
    assert run_links(html) == [stuck.id, done.id]
    assert 'served<span class="muted">@1</span>' in html
    assert '<span class="badge completed">completed</span>' in html
    assert '<span class="badge pending">pending</span>' in html
    assert "no live worker serves unserved@2.0" in html
    response = await browser.get("/dashboard/")
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    assert "script-src 'self'" in response.headers["content-security-policy"]
    assert response.headers["cache-control"] == "no-store"


async def test_runs_filter_by_workflow_and_state(
    client: aiki.Client, make_worker: WorkerFactory, browser: httpx.AsyncClient
) -> None:
    alpha, beta = wf("alpha"), wf("beta")
    await make_worker(alpha)
    a1 = await alpha.enqueue(client, payload=1)
    await a1.wait_for_completion(timeout=10)
    b1 = await beta.enqueue(client, payload=2, allow_unknown=True)  # no worker: stays pending

    assert run_links(await page(browser, "/dashboard/?workflow=alpha")) == [a1.id]
    assert run_links(await page(browser, "/dashboard/?workflow=beta")) == [b1.id]
    assert run_links(await page(browser, "/dashboard/?state=pending")) == [b1.id]
    assert run_links(await page(browser, "/dashboard/?workflow=alpha&state=completed")) == [a1.id]
    empty = await page(browser, "/dashboard/?workflow=alpha&state=failed")
    assert run_links(empty) == [] and "No runs match these filters." in empty
    both = await page(browser, "/dashboard/?workflow=&state=")
    assert run_links(both) == [b1.id, a1.id], "empty fields mean no filter"
    selected = await page(browser, "/dashboard/?workflow=beta")
    assert '<option value="beta" selected>beta</option>' in selected

    bad = await page(browser, "/dashboard/?state=sleepy", 400)
    assert "Unknown state &#39;sleepy&#39;" in bad
    await page(browser, "/dashboard/?limit=0", 400)


async def test_runs_pages_go_back_with_the_older_link(
    client: aiki.Client, browser: httpx.AsyncClient
) -> None:
    flow = wf("paged")
    ids = [(await flow.enqueue(client, payload=n, allow_unknown=True)).id for n in range(5)]
    newest_first = ids[::-1]

    seen: list[str] = []
    url: str | None = "/dashboard/?workflow=paged&limit=2"
    pages = 0
    while url is not None:
        html = await page(browser, url)
        listed = run_links(html)
        assert listed == newest_first[len(seen) : len(seen) + 2]
        seen += listed
        pages += 1
        older = re.search(r'<a class="older" href="([^"]+)">', html)
        url = None if older is None else older.group(1).replace("&amp;", "&")
        if url is not None:
            query = parse_qs(urlsplit(url).query)
            assert query == {"workflow": ["paged"], "limit": ["2"], "after": [listed[-1]]}
            assert "← Newest" in await page(browser, url)
    assert seen == newest_first and pages == 3


async def test_a_run_no_live_worker_serves_says_so_on_its_page_and_in_the_list(
    client: aiki.Client, make_worker: WorkerFactory, browser: httpx.AsyncClient
) -> None:
    v1, v2 = wf("alarm", "1"), wf("alarm", "2")
    await (await make_worker(v1, id="old")).stop()  # version 1 is known, and served by no one
    await make_worker(v2, id="new")
    served = await v2.enqueue(client, payload="v2")
    await served.wait_for_completion(timeout=10)
    stuck = await v1.enqueue(client, payload="v1")
    note = "no live worker serves alarm@1 (live workers serve version(s) 2)"
    assert (await stuck.get_status()).note == note, "the service's words"

    html = await page(browser, f"/dashboard/runs/{stuck.id}")
    callout = re.search(r'<p class="notice warning" role="status">(.*?)</p>', html)
    assert callout is not None and callout.group(1) == note
    assert html.index(note) < html.index('<dl class="summary">'), "above the run's details"
    served_html = await page(browser, f"/dashboard/runs/{served.id}")
    assert "notice warning" not in served_html

    listed = await page(browser, "/dashboard/")
    rows = {
        run_id: row
        for row in re.findall(r"<tr>(.*?)</tr>", listed.split("<tbody>")[1], re.S)
        for run_id in run_links(row)
    }
    assert f'<td class="note warn" title="{note}">{note}</td>' in rows[stuck.id]
    assert '<td class="note" title=""></td>' in rows[served.id]

    await make_worker(v1, id="back")
    assert await stuck.wait_for_completion(timeout=10) == "v1"
    assert "notice warning" not in await page(browser, f"/dashboard/runs/{stuck.id}")
    assert note not in await page(browser, "/dashboard/")


# --- one run ------------------------------------------------------------------------------------


async def test_run_page_shows_each_attempt_of_a_retried_task(
    client: aiki.Client, make_worker: WorkerFactory, browser: httpx.AsyncClient
) -> None:
    @aiki.task(name="flaky", retry=aiki.Retry.fixed(max_attempts=3, delay_ms=0))
    async def flaky(ctx: aiki.TaskContext[Any]) -> int:
        if ctx.attempt < 3:
            raise OSError(f"down #{ctx.attempt}")
        return ctx.attempt

    flow = wf("retries", task=flaky)
    await make_worker(flow, id="w-retry")
    handle = await flow.enqueue(client, payload={"order": 7}, idempotency_key="order-7")
    assert await handle.wait_for_completion(timeout=10) == 3

    html = await page(browser, f"/dashboard/runs/{handle.id}")
    assert f'<span class="mono">{handle.id}</span>' in html
    assert '<span class="badge completed">completed</span>' in html
    assert "order-7" in html and "&#34;order&#34;: 7" in html  # idempotency key, payload
    result = html.split("<h2>Result</h2>")[1]
    assert result.split("</pre>")[0].endswith(">3")

    tasks = html.split("<h2>Tasks</h2>")[1].split("<h2>Timeline</h2>")[0]
    assert tasks.count('<div class="task">') == 1
    assert '<span class="mono">flaky</span> <span class="muted">#1</span>' in tasks
    assert "3 attempts" in tasks
    rows = re.findall(r"<tr>\s*<td class=\"num\">(\d)</td>(.*?)</tr>", tasks, re.S)
    assert [number for number, _ in rows] == ["1", "2", "3"]
    outcomes = [re.search(r'badge (\w+)"', row).group(1) for _, row in rows]  # type: ignore[union-attr]
    assert outcomes == ["retrying", "retrying", "completed"]
    assert "OSError: down #1" in rows[0][1] and "OSError: down #2" in rows[1][1]
    assert "retry in 0 ms" in rows[0][1]
    assert all("w-retry" in row for _, row in rows)
    assert "Traceback (most recent call last)" in tasks, "each failed attempt's traceback"

    timeline = html.split("<h2>Timeline</h2>")[1]
    labels = re.findall(r'<td class="nowrap">([a-z ]+)</td>', timeline)
    assert labels == [
        "enqueued",
        "claimed",
        *["task started", "task failed"] * 2,
        "task started",
        "task completed",
        "completed",
    ]
    assert "by worker w-retry (run attempt 1)" in timeline
    # A duration is real time, not the test clock's: under load an attempt may take a ms or more.
    assert re.search(r"flaky #1 attempt 2 in \d+ ms: OSError: down #2; retry in 0 ms", timeline)
    assert "+0 ms" in timeline


async def test_calls_and_attempts_are_numbered_from_1_like_the_cli(
    client: aiki.Client, make_worker: WorkerFactory, browser: httpx.AsyncClient
) -> None:
    tries = 0

    @aiki.task(name="ring-alarm", retry=aiki.Retry.fixed(max_attempts=2, delay_ms=0))
    async def ring(ctx: aiki.TaskContext[Any]) -> int:
        nonlocal tries
        tries += 1
        if tries == 1:
            raise OSError("no bell")
        return ctx.attempt

    @aiki.workflow(name="wake-up", version="1")
    async def wake_up(workflow_run: aiki.WorkflowRun[Any]) -> list[int]:
        first = await ring.run(workflow_run, payload="bell")
        await workflow_run.sleep("snooze", 0)
        await workflow_run.sleep("snooze", 0)
        return [first, await ring.run(workflow_run, payload="bell")]

    await make_worker(wake_up)
    handle = await wake_up.enqueue(client, payload=None)
    assert await handle.wait_for_completion(timeout=10) == [2, 1]
    history = await handle.get_history()
    stored = [
        (e.data["index"], e.data["attempt"])
        for e in history
        if e.kind.value == "task_started" and e.data["task"] == "ring-alarm"
    ]
    assert stored == [(0, 1), (0, 2), (1, 1)], "stored: index from 0, attempt from 1"

    html = await page(browser, f"/dashboard/runs/{handle.id}")
    tasks = html.split("<h2>Tasks</h2>")[1].split("<h2>Sleeps</h2>")[0]
    headings = re.findall(r'<span class="mono">ring-alarm</span> <span class="muted">#(\d)', tasks)
    assert headings == ["1", "2"]
    calls = tasks.split('<div class="task">')[1:]
    attempts = [re.findall(r'<tr>\s*<td class="num">(\d)</td>', call) for call in calls]
    assert attempts == [["1", "2"], ["1"]]
    sleeps = html.split("<h2>Sleeps</h2>")[1].split("<h2>Timeline</h2>")[0]
    assert re.findall(r'snooze</span> <span class="muted">#(\d)', sleeps) == ["1", "2"]
    timeline = html.split("<h2>Timeline</h2>")[1]
    # The CLI prints these as `ring-alarm#1 attempt 1`: the same numbers.
    for call, attempt in ((1, 1), (1, 2), (2, 1)):
        assert f"ring-alarm #{call} attempt {attempt} on worker" in timeline
    assert "&#39;snooze&#39; #1 for 0 ms" in timeline and "&#39;snooze&#39; #2" in timeline
    assert "by worker" in timeline and "(run attempt 1)" in timeline
    assert "#0" not in html and "attempt 0" not in html


async def test_failed_run_shows_its_error_and_traceback(
    client: aiki.Client, make_worker: WorkerFactory, browser: httpx.AsyncClient
) -> None:
    @aiki.task(name="breaks")
    async def breaks(ctx: aiki.TaskContext[Any]) -> None:
        raise ValueError("the disk is full")

    flow = wf("doomed", task=breaks)
    await make_worker(flow)
    handle = await flow.enqueue(client, payload=None)
    with pytest.raises(aiki.WorkflowRunFailedError):
        await handle.wait_for_completion(timeout=10)

    html = await page(browser, f"/dashboard/runs/{handle.id}")
    error = html.split("<h2>Error</h2>")[1].split("</section>")[0]
    assert "<code>aiki.errors.TaskFailedError</code>" in error
    assert "ValueError: the disk is full" in error
    trace = re.search(r'<pre class="trace">(.*?)</pre>', error, re.S)
    assert trace is not None and "Traceback (most recent call last)" in trace.group(1)
    assert "raise ValueError(&#34;the disk is full&#34;)" in trace.group(1)
    assert "Cancel run" not in html, "a final run cannot be cancelled"
    assert '<span class="badge failed">failed</span>' in html.split("<h2>Tasks</h2>")[1]

    listed = await page(browser, "/dashboard/?state=failed")
    assert run_links(listed) == [handle.id]
    assert "TaskFailedError: task &#39;breaks&#39; failed" in listed


async def test_waiting_run_shows_what_it_waits_for(
    client: aiki.Client, make_worker: WorkerFactory, browser: httpx.AsyncClient, clock: FakeClock
) -> None:
    @aiki.task(name="later", retry=aiki.Retry.fixed(max_attempts=2, delay_ms=60_000))
    async def later(ctx: aiki.TaskContext[Any]) -> None:
        raise OSError("not yet")

    flow = wf("patient", task=later)
    await make_worker(flow)
    handle = await flow.enqueue(client, payload=None)
    await state_is(handle, aiki.RunState.WAITING)
    status = await handle.get_status()
    assert status.wait is not None

    html = await page(browser, f"/dashboard/runs/{handle.id}")
    assert '<span class="badge waiting">waiting</span>' in html
    assert 'retry of <span class="mono">later</span> until' in html
    assert "retry of later until" in html.split("<h2>Timeline</h2>")[1]
    assert "Cancel run" in html
    assert "retry of later until" in await page(browser, "/dashboard/?state=waiting")


async def test_run_waiting_for_an_event_shows_it_and_the_events_sent(
    client: aiki.Client, make_worker: WorkerFactory, browser: httpx.AsyncClient
) -> None:
    @aiki.workflow(name="approval", version="1")
    async def approval(workflow_run: aiki.WorkflowRun[Any]) -> Any:
        first = await workflow_run.wait_for_event("approved")
        return [first, await workflow_run.wait_for_event("approved")]

    await make_worker(approval)
    handle = await approval.enqueue(client, payload=None)
    await handle.send_event("approved", 1)

    async def waiting_again() -> bool:
        history = await handle.get_history()
        received = any(e.data.get("digest") == "received" for e in history)
        return received and history[-1].kind.value == "run_waiting"

    await eventually(waiting_again)
    html = await page(browser, f"/dashboard/runs/{handle.id}")
    assert 'event <span class="mono">approved</span></dd>' in html, "no time: no timeout"
    timeline = html.split("<h2>Timeline</h2>")[1]
    assert "event sent" in timeline and "&#39;approved&#39; seq" in timeline
    assert "wait for event" in timeline and "&#39;approved&#39; #1 received" in timeline
    assert "event of approved" in await page(browser, "/dashboard/?state=waiting")
    await handle.send_event("approved", 2)
    assert await handle.wait_for_completion(timeout=10) == [1, 2]


async def test_attempt_of_a_lost_worker_shows_interrupted(
    client: aiki.Client, make_worker: WorkerFactory, browser: httpx.AsyncClient, clock: FakeClock
) -> None:
    started, release = asyncio.Event(), asyncio.Event()

    @aiki.task(name="ship")
    async def ship(ctx: aiki.TaskContext[Any]) -> str:
        started.set()
        await release.wait()
        return "shipped"

    flow = wf("order", task=ship)
    lease = aiki.WorkflowRunConfig(heartbeat_interval_ms=1_000, lease_ms=3_000)
    first = await make_worker(flow, id="first", workflow_run=lease)
    handle = await flow.enqueue(client, payload=None)
    await started.wait()

    async def start_recorded() -> bool:
        return any(e.kind.value == "task_started" for e in await handle.get_history())

    await eventually(start_recorded)  # a long task's start is written after 50 ms
    await kill_worker(first)
    started.clear()
    await make_worker(flow, id="second", workflow_run=lease)
    await clock.advance(3_001)
    await started.wait()
    release.set()
    assert await handle.wait_for_completion(timeout=10) == "shipped"

    html = await page(browser, f"/dashboard/runs/{handle.id}")
    tasks = html.split("<h2>Tasks</h2>")[1].split("<h2>Timeline</h2>")[0]
    rows = re.findall(r"<tr>\s*<td class=\"num\">(\d)</td>(.*?)</tr>", tasks, re.S)
    assert [number for number, _ in rows] == ["1", "1"], "a crash uses no retry"
    assert 'badge interrupted">interrupted' in rows[0][1] and "first" in rows[0][1]
    assert 'badge completed">completed' in rows[1][1] and "second" in rows[1][1]
    assert "(1 after a lost worker)" in html
    timeline = html.split("<h2>Timeline</h2>")[1]
    assert "worker first went silent; interrupted: ship #1 attempt 1; recovery attempt 1" in (
        timeline
    )


async def test_unknown_run_is_a_404_page(browser: httpx.AsyncClient) -> None:
    html = await page(browser, "/dashboard/runs/no-such-run", 404)
    assert "<h1>Not found</h1>" in html and "There is no run no-such-run." in html
    weird = await page(browser, "/dashboard/runs/%3Cscript%3Ex%3C%2Fscript%3E", 404)
    assert "<script>x" not in weird and "&lt;script&gt;x" in weird
    assert "no page at" in await page(browser, "/dashboard/nothing/here", 404)
    missing = await browser.post("/dashboard/runs/no-such-run/cancel", headers=SAME_ORIGIN)
    assert missing.status_code == 400, "not a form"
    missing = await browser.post(
        "/dashboard/runs/no-such-run/cancel", data={"reason": ""}, headers=SAME_ORIGIN
    )
    assert missing.status_code == 404
    assert (await browser.delete("/dashboard/")).status_code == 405


# --- workflows and workers ----------------------------------------------------------------------


async def test_workflows_and_workers_pages(
    client: aiki.Client, make_worker: WorkerFactory, browser: httpx.AsyncClient
) -> None:
    v1, v2 = wf("shop", "1.0"), wf("shop", "2.0")
    await make_worker(v1, id="worker-a")
    for n in range(2):
        await (await v1.enqueue(client, payload=n)).wait_for_completion(timeout=10)
    await v2.enqueue(client, payload="nobody serves me", allow_unknown=True)

    html = await page(browser, "/dashboard/workflows")
    rows = re.findall(r"<tr>(.*?)</tr>", html.split("<tbody>")[1], re.S)
    assert len(rows) == 2
    first, second = rows
    assert ">1.0<" in first and "worker-a" in first
    assert '<a href="/dashboard/?workflow=shop&amp;state=completed"' in first
    assert '<span class="count completed">2</span>' in first
    assert ">2.0<" in second and '<span class="warn">none</span>' in second
    assert '<span class="count pending">1</span>' in second

    workers = await page(browser, "/dashboard/workers")
    assert "worker-a" in workers and '<span class="badge alive">alive</span>' in workers
    assert 'shop<span class="muted">@1.0</span>' in workers


async def test_stopped_worker_is_shown_gone(
    client: aiki.Client, make_worker: WorkerFactory, browser: httpx.AsyncClient
) -> None:
    worker = await make_worker(wf("brief"), id="short-lived")
    await worker.stop()
    workers = await page(browser, "/dashboard/workers")
    assert "short-lived" in workers and '<span class="badge gone">gone</span>' in workers
    assert '<span class="warn">none</span>' in await page(browser, "/dashboard/workflows")


# --- cancelling ---------------------------------------------------------------------------------


async def test_cancel_a_pending_run_from_its_page(
    client: aiki.Client, browser: httpx.AsyncClient
) -> None:
    handle = await wf("to-cancel").enqueue(client, payload=None, allow_unknown=True)
    assert "Cancel run" in await page(browser, f"/dashboard/runs/{handle.id}")

    response = await browser.post(
        f"/dashboard/runs/{handle.id}/cancel",
        data={"reason": "duplicate order"},
        headers=SAME_ORIGIN,
    )
    assert response.status_code == 303
    assert response.headers["location"] == f"/dashboard/runs/{handle.id}?cancel=done"
    html = await page(browser, response.headers["location"])
    assert "The run is cancelled." in html
    assert '<span class="badge cancelled">cancelled</span>' in html
    assert "duplicate order" in html and "Cancel run" not in html
    status = await handle.get_status()
    assert status.state is aiki.RunState.CANCELLED and status.cancel_reason == "duplicate order"

    again = await browser.post(
        f"/dashboard/runs/{handle.id}/cancel",
        data={"reason": ""},
        headers={"Referer": f"{BASE}/dashboard/"},
    )
    assert again.headers["location"].endswith("?cancel=ended"), "a same-origin Referer will do"
    assert "nothing to cancel" in await page(browser, again.headers["location"])


async def test_cancel_a_running_run_is_requested_then_done(
    client: aiki.Client, make_worker: WorkerFactory, browser: httpx.AsyncClient
) -> None:
    started = asyncio.Event()

    @aiki.task(name="endless")
    async def endless(ctx: aiki.TaskContext[Any]) -> None:
        started.set()
        await asyncio.Event().wait()

    flow = wf("busy", task=endless)
    await make_worker(flow)
    handle = await flow.enqueue(client, payload=None)
    await started.wait()

    async def start_recorded() -> bool:
        return any(e.kind.value == "task_started" for e in await handle.get_history())

    await eventually(start_recorded)  # a long task's start is written after 50 ms
    running = await page(browser, f"/dashboard/runs/{handle.id}")
    assert 'badge running">running' in running.split("<h2>Tasks</h2>")[1]
    response = await browser.post(
        f"/dashboard/runs/{handle.id}/cancel", data={"reason": ""}, headers=SAME_ORIGIN
    )
    assert response.headers["location"].endswith("?cancel=requested")
    with pytest.raises(aiki.WorkflowRunCancelledError):
        await handle.wait_for_completion(timeout=10)
    html = await page(browser, f"/dashboard/runs/{handle.id}")
    assert '<span class="badge cancelled">cancelled</span>' in html
    timeline = html.split("<h2>Timeline</h2>")[1]
    assert "cancel requested" in timeline and "(none given)" in html
    tasks = html.split("<h2>Tasks</h2>")[1].split("<h2>Timeline</h2>")[0]
    assert re.findall(r'badge (\w+)"', tasks) == ["cancelled", "cancelled"], "task, attempt"


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
        {"Referer": "http://evil.example/dashboard/"},
        {"Origin": "http://aiki.test.evil.example"},
    ],
)
async def test_cancel_is_refused_from_another_origin(
    client: aiki.Client, browser: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    handle = await wf("keep").enqueue(client, payload=None, allow_unknown=True)
    response = await browser.post(
        f"/dashboard/runs/{handle.id}/cancel", data={"reason": "csrf"}, headers=headers
    )
    assert response.status_code == 403
    assert "dashboard&#39;s own pages" in response.text
    assert (await handle.get_status()).state is aiki.RunState.PENDING


async def test_cancel_reason_length_is_limited(
    client: aiki.Client, browser: httpx.AsyncClient
) -> None:
    handle = await wf("verbose").enqueue(client, payload=None, allow_unknown=True)
    response = await browser.post(
        f"/dashboard/runs/{handle.id}/cancel", data={"reason": "x" * 1001}, headers=SAME_ORIGIN
    )
    assert response.status_code == 400
    assert (await handle.get_status()).state is aiki.RunState.PENDING


# --- escaping -----------------------------------------------------------------------------------


async def test_user_data_is_escaped_everywhere(
    client: aiki.Client, make_worker: WorkerFactory, browser: httpx.AsyncClient
) -> None:
    evil = "<script>alert(1)</script>"

    @aiki.task(name=f"task{evil}")
    async def hostile(ctx: aiki.TaskContext[Any]) -> None:
        raise ValueError(evil)

    flow = wf(f"wf{evil}", version=f"v{evil}", task=hostile)
    await make_worker(flow, id=f"worker{evil}")
    handle = await flow.enqueue(client, payload={"name": evil}, idempotency_key=evil)
    with pytest.raises(aiki.WorkflowRunFailedError):
        await handle.wait_for_completion(timeout=10)
    pending = await wf("other").enqueue(client, payload=None, allow_unknown=True)
    await client.get_handle(pending.id).cancel(evil)

    for url in (
        "/dashboard/",
        f"/dashboard/runs/{handle.id}",
        f"/dashboard/runs/{pending.id}",
        "/dashboard/workflows",
        "/dashboard/workers",
        f"/dashboard/?workflow=wf{evil}",
    ):
        html = await page(browser, url)
        assert "<script>alert" not in html, url
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html, url
    assert "<script" not in (await page(browser, "/dashboard/")).replace(
        '<script src="/dashboard/static/dashboard.js" defer></script>', ""
    )
    filtered = await page(browser, "/dashboard/?workflow=wf%3Cscript%3Ealert(1)%3C%2Fscript%3E")
    assert run_links(filtered) == [handle.id]
    workflows = await page(browser, "/dashboard/workflows")
    assert "?workflow=wf%3Cscript%3Ealert%281%29%3C/script%3E" in workflows


# --- API key ------------------------------------------------------------------------------------


@pytest.fixture
async def keyed(srv: aiki.Server) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(srv, api_key="s3cret"))
    async with httpx.AsyncClient(transport=transport, base_url=BASE) as b:
        yield b


async def test_api_key_login_flow(client: aiki.Client, keyed: httpx.AsyncClient) -> None:
    handle = await wf("locked").enqueue(client, payload=None, allow_unknown=True)
    assert (await keyed.get("/health")).status_code == 200
    assert (await keyed.get("/")).status_code == 307
    assert (await keyed.get("/dashboard/static/dashboard.css")).status_code == 200

    away = await keyed.get(f"/dashboard/runs/{handle.id}")
    assert away.status_code == 303
    login_url = away.headers["location"]
    assert login_url == f"/dashboard/login?next=%2Fdashboard%2Fruns%2F{handle.id}"
    form = await page(keyed, login_url)
    assert 'type="password"' in form and f'value="/dashboard/runs/{handle.id}"' in form
    refused = await keyed.post(f"/dashboard/runs/{handle.id}/cancel", headers=SAME_ORIGIN)
    assert refused.status_code == 401

    wrong = await keyed.post(
        "/dashboard/login", data={"key": "guess", "next": "/dashboard/"}, headers=SAME_ORIGIN
    )
    assert wrong.status_code == 401 and "not the server&#39;s API key" in wrong.text
    assert "set-cookie" not in wrong.headers
    assert (await keyed.get("/dashboard/")).status_code == 303

    cross = await keyed.post("/dashboard/login", data={"key": "s3cret"})
    assert cross.status_code == 403 and "set-cookie" not in cross.headers

    right = await keyed.post(
        "/dashboard/login",
        data={"key": "s3cret", "next": f"/dashboard/runs/{handle.id}"},
        headers=SAME_ORIGIN,
    )
    assert right.status_code == 303
    assert right.headers["location"] == f"/dashboard/runs/{handle.id}"
    cookie = right.headers["set-cookie"]
    assert cookie.startswith("aiki_dashboard=")
    assert "s3cret" not in cookie, "the cookie holds an HMAC of the key, not the key"
    for attribute in ("HttpOnly", "SameSite=strict", "Path=/dashboard/"):
        assert attribute.lower() in cookie.lower(), attribute

    html = await page(keyed, f"/dashboard/runs/{handle.id}")
    assert "Log out" in html
    for url in ("/dashboard/", "/dashboard/workflows", "/dashboard/workers"):
        await page(keyed, url)
    assert (await keyed.get("/dashboard/login")).status_code == 303, "already logged in"
    assert (await keyed.get("/v1/runs")).status_code == 401, "the cookie is no API key"

    cancelled = await keyed.post(
        f"/dashboard/runs/{handle.id}/cancel", data={"reason": "ok"}, headers=SAME_ORIGIN
    )
    assert cancelled.status_code == 303

    out = await keyed.post("/dashboard/logout", headers=SAME_ORIGIN)
    assert out.status_code == 303 and out.headers["location"] == "/dashboard/login"
    assert (await keyed.get("/dashboard/")).status_code == 303


async def test_bearer_header_opens_the_dashboard(keyed: httpx.AsyncClient) -> None:
    wrong = await keyed.get("/dashboard/", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 303
    ok = await keyed.get("/dashboard/workers", headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 200 and "<h1>Workers</h1>" in ok.text


@pytest.mark.parametrize(
    "target", ["//evil.example/", "https://evil.example/", "/v1/runs", "/dashboard\\x", ""]
)
async def test_login_only_sends_people_to_dashboard_pages(
    keyed: httpx.AsyncClient, target: str
) -> None:
    response = await keyed.post(
        "/dashboard/login", data={"key": "s3cret", "next": target}, headers=SAME_ORIGIN
    )
    assert response.status_code == 303 and response.headers["location"] == "/dashboard/"


async def test_without_api_key_login_is_not_needed(browser: httpx.AsyncClient) -> None:
    response = await browser.get("/dashboard/login")
    assert response.status_code == 303 and response.headers["location"] == "/dashboard/"
    assert "Log out" not in await page(browser, "/dashboard/")


async def test_a_page_holds_50_runs(client: aiki.Client, browser: httpx.AsyncClient) -> None:
    flow = wf("bulk")
    for n in range(51):
        await flow.enqueue(client, payload=n, allow_unknown=True)
    html = await page(browser, "/dashboard/")
    assert len(run_links(html)) == 50 and 'class="older"' in html
