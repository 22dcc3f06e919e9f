"""Crash and restart across real processes: `aiki server` and `aiki worker`, killed for real.

The workers serve `crash_workflows`; its tasks log every call to a file, so the tests count
side effects as the outside world would see them. Heartbeats are short (250 ms, a 750 ms
lease), so a lost worker's runs move on within about a second.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest

import aiki
from aiki._core.models import NewRun
from processes import Proc, Processes, Server, SideEffects

pytestmark = pytest.mark.timeout(30)


async def enqueue(
    client: aiki.Client, workflow: str, key: str, effects: SideEffects, gate: Path
) -> aiki.RunHandle[Any]:
    payload = {"key": key, "log": str(effects.path), "gate": str(gate)}
    return await client.enqueue(
        NewRun(workflow=workflow, version="1", payload_json=json.dumps(payload))
    )


async def history_kinds(handle: aiki.RunHandle[Any]) -> list[str]:
    return [event.kind.value for event in await handle.get_history()]


async def claimed_by(handle: aiki.RunHandle[Any]) -> list[str]:
    history = await handle.get_history()
    return [e.data["worker_id"] for e in history if e.kind.value == "run_claimed"]


async def test_killed_worker_run_is_finished_by_another_worker(
    procs: Processes, effects: SideEffects, connect: Any, tmp_path: Path
) -> None:
    server = procs.server(tmp_path / "aiki.db")
    first = procs.worker(server, worker_id="worker-a")
    await procs.ready(first)
    client = await connect(server.url)
    gate = tmp_path / "gate"
    handle = await enqueue(client, "blocking", "order", effects, gate)
    await procs.until(
        lambda: effects.counts("order")["blocking-step"] == 1, "blocking-step on worker-a"
    )

    assert first.kill() == -signal.SIGKILL  # mid-task: blocking-step never reports
    second = procs.worker(server, worker_id="worker-b")
    gate.touch()  # the retried blocking-step goes through

    assert await handle.wait_for_completion(timeout=20) == ["one", "unblocked", "final"]
    counts = effects.counts("order")
    assert counts["step-one"] == 1, "a completed task never runs again"
    assert counts["blocking-step"] == 2, "the interrupted task runs again"
    assert counts["final-step"] == 1
    assert effects.pids("order", "blocking-step") == [first.pid, second.pid]
    assert effects.pids("order", "final-step") == [second.pid]
    history = await handle.get_history()
    expired = [e for e in history if e.kind.value == "lease_expired"]
    assert [e.data["worker_id"] for e in expired] == ["worker-a"]
    assert await claimed_by(handle) == ["worker-a", "worker-b"]
    assert [e.kind.value for e in history].count("run_completed") == 1
    assert (await handle.get_status()).recovery_attempts == 1


async def test_killed_server_restarts_and_every_run_completes_once(
    procs: Processes, effects: SideEffects, connect: Any, tmp_path: Path
) -> None:
    db = tmp_path / "aiki.db"
    server = procs.server(db)
    # One run at a time: the blocked run holds the worker, so the runs behind it stay pending.
    worker = procs.worker(server, worker_id="survivor", concurrency=1)
    await procs.ready(worker)
    client = await connect(server.url)
    gate = tmp_path / "gate"

    waiting = await enqueue(client, "retry-later", "waiting", effects, gate)
    await procs.until(lambda: effects.counts("waiting")["flaky-step"] == 1, "flaky attempt 1")
    running = await enqueue(client, "blocking", "running", effects, gate)
    await procs.until(lambda: effects.counts("running")["blocking-step"] == 1, "blocking-step")
    pending = [await enqueue(client, "blocking", f"pending-{i}", effects, gate) for i in range(3)]
    handles = {"waiting": waiting, "running": running} | {
        f"pending-{i}": h for i, h in enumerate(pending)
    }
    states = {key: (await h.get_status()).state.value for key, h in handles.items()}
    assert states == {
        "waiting": "waiting",
        "running": "running",
        "pending-0": "pending",
        "pending-1": "pending",
        "pending-2": "pending",
    }
    # The same client waits on every run across the crash and the restart.
    waits = {
        key: asyncio.create_task(h.wait_for_completion(timeout=25)) for key, h in handles.items()
    }

    assert server.proc.kill() == -signal.SIGKILL
    restarted_ms = int(time.time() * 1000)
    server = procs.server(db, port=server.port, name="server-restarted")

    async def worker_reconnected() -> bool:
        workers = await client.api.list_workers()
        return any(w.id == "survivor" and w.last_seen_ms > restarted_ms for w in workers)

    await procs.until_async(worker_reconnected, "the worker to reconnect")
    gate.touch()

    results = {key: await wait for key, wait in waits.items()}
    assert results["waiting"] == ["flaky", "final"]
    assert all(results[key] == ["one", "unblocked", "final"] for key in handles if key != "waiting")
    assert worker.alive(), "the worker process rode out the server's crash"
    for key, handle in handles.items():
        kinds = await history_kinds(handle)
        assert kinds.count("run_completed") == 1, key
        assert set(await claimed_by(handle)) == {"survivor"}, key
        counts = effects.counts(key)
        assert counts["final-step"] == 1, (key, counts)
        if key == "waiting":
            assert counts["flaky-step"] == 2, counts  # attempt 1 before the crash, 2 after
        else:
            assert counts["step-one"] == 1, (key, counts)
    # The blocked task was mid-flight at the crash: it may run again, once or more (its lease
    # lapses while the server is down, and may lapse again while the worker reconnects).
    assert effects.counts("running")["blocking-step"] >= 1
    assert all(effects.counts(f"pending-{i}")["blocking-step"] == 1 for i in range(3))


async def test_sigterm_finishes_what_it_can_and_hands_back_the_rest(
    procs: Processes, effects: SideEffects, connect: Any, tmp_path: Path
) -> None:
    server = procs.server(tmp_path / "aiki.db")
    stopping = procs.worker(server, worker_id="stopping", grace_ms=1_500)
    await procs.ready(stopping)
    client = await connect(server.url)
    quick_gate, slow_gate = tmp_path / "quick-gate", tmp_path / "slow-gate"
    quick = await enqueue(client, "blocking", "quick", effects, quick_gate)
    slow = await enqueue(client, "blocking", "slow", effects, slow_gate)
    await procs.until(
        lambda: all(effects.counts(k)["blocking-step"] == 1 for k in ("quick", "slow")),
        "both runs in blocking-step",
    )

    stopping.signal(signal.SIGTERM)
    other = procs.worker(server, worker_id="other")  # it comes up during the grace period
    await procs.until(lambda: "stopping (grace" in stopping.output(), "the worker to stop")
    quick_gate.touch()  # within the grace period

    assert await quick.wait_for_completion(timeout=10) == ["one", "unblocked", "final"]
    assert stopping.wait(timeout=10) == 0
    assert effects.pids("quick", "final-step") == [stopping.pid]
    await procs.until(lambda: len(effects.pids("slow", "blocking-step")) == 2, "the next claim")
    history = await slow.get_history()
    released = [e.kind.value for e in history].index("run_released")
    assert history[released].data["worker_id"] == "stopping"
    assert history[released].state is aiki.RunState.PENDING
    assert history[released + 1].kind.value == "run_claimed"
    assert "lease_expired" not in [e.kind.value for e in history]

    slow_gate.touch()
    assert await slow.wait_for_completion(timeout=15) == ["one", "unblocked", "final"]
    assert (await slow.get_status()).recovery_attempts == 0, "a hand-back is not a crash"
    assert effects.pids("slow", "blocking-step") == [stopping.pid, other.pid]
    assert effects.counts("slow")["step-one"] == 1
    assert await claimed_by(slow) == ["stopping", "other"]
    assert await claimed_by(quick) == ["stopping"]


async def pause_mid_task(
    procs: Processes, effects: SideEffects, client: aiki.Client, server: Server, gate: Path
) -> tuple[Proc, Proc, aiki.RunHandle[Any], aiki.RunHandle[Any]]:
    """Freeze a worker (SIGSTOP) mid-task until another has taken its run, then thaw it.

    Returns once the thawed worker has taken new work, so it has let the old run go.
    """
    stall = {"CRASH_WORKFLOWS_STALL_S": "0.5"}
    paused = procs.worker(server, worker_id="paused", concurrency=1, env=stall)
    await procs.ready(paused)
    handle = await enqueue(client, "blocking", "frozen", effects, gate)
    await procs.until(lambda: effects.pids("frozen", "blocking-step") == [paused.pid], "stall")
    paused.signal(signal.SIGSTOP)  # within the task's stall: its start write is not out yet

    other = procs.worker(server, worker_id="other", concurrency=1)
    await procs.until(lambda: len(effects.pids("frozen", "blocking-step")) == 2, "the takeover")
    paused.signal(signal.SIGCONT)
    # `other` is busy with the frozen run: this one can only go to the thawed worker, once it
    # has let the frozen run go.
    later = await enqueue(client, "blocking", "later", effects, gate)
    await procs.until(lambda: effects.pids("later", "step-one") == [paused.pid], "new work")
    return paused, other, handle, later


async def test_paused_worker_loses_its_lease_and_cannot_write(
    procs: Processes, effects: SideEffects, connect: Any, tmp_path: Path
) -> None:
    server = procs.server(tmp_path / "aiki.db")
    client = await connect(server.url)
    gate = tmp_path / "gate"
    paused, other, handle, later = await pause_mid_task(procs, effects, client, server, gate)
    gate.touch()

    assert await handle.wait_for_completion(timeout=10) == ["one", "unblocked", "final"]
    assert effects.pids("frozen", "blocking-step") == [paused.pid, other.pid]
    assert effects.pids("frozen", "final-step") == [other.pid]
    assert await claimed_by(handle) == ["paused", "other"]
    history = await handle.get_history()
    expired = [e.kind.value for e in history].index("lease_expired")
    assert history[expired].data["worker_id"] == "paused"
    # The thawed worker's start write for blocking-step was refused: nothing of it is stored.
    assert {e.data["worker_id"] for e in history[expired:] if "task" in e.data} == {"other"}
    assert await later.wait_for_completion(timeout=10) == ["one", "unblocked", "final"]
    assert await claimed_by(later) == ["paused"]


async def test_paused_worker_lets_its_lost_run_go_without_error_output(
    procs: Processes, effects: SideEffects, connect: Any, tmp_path: Path
) -> None:
    server = procs.server(tmp_path / "aiki.db")
    paused = procs.worker(
        server, worker_id="paused", concurrency=1, env={"CRASH_WORKFLOWS_STALL_S": "0.5"}
    )
    await procs.ready(paused)
    client = await connect(server.url)
    gate = tmp_path / "gate"
    handle = await enqueue(client, "blocking", "frozen", effects, gate)
    await procs.until(lambda: effects.pids("frozen", "blocking-step") == [paused.pid], "stall")
    paused.signal(signal.SIGSTOP)  # within the task's stall: its start write is not out yet

    async def lease_expired() -> bool:
        return "lease_expired" in await history_kinds(handle)

    await procs.until_async(lease_expired, "the lease to expire")
    paused.signal(signal.SIGCONT)
    # Thawed, it lets the run go, and takes it again as a new claim.
    await procs.until(lambda: len(effects.pids("frozen", "blocking-step")) == 2, "the new claim")
    gate.touch()
    assert await handle.wait_for_completion(timeout=10) == ["one", "unblocked", "final"]
    paused.signal(signal.SIGTERM)
    assert paused.wait(timeout=10) == 0

    assert "Traceback" not in paused.output()


# --- stopping promptly ---


async def test_server_sigterm_with_a_connected_worker_exits_promptly(
    procs: Processes, tmp_path: Path
) -> None:
    """Open long-polls are answered at once, not cut off by uvicorn's graceful timeout (5 s)."""
    server = procs.server(tmp_path / "aiki.db")
    worker = procs.worker(server, worker_id="idle")
    await procs.ready(worker)  # long-polling for work

    server.proc.signal(signal.SIGTERM)
    assert server.proc.wait(timeout=3) == 0
    assert "Traceback" not in server.proc.output()
    assert "HTTP 500" not in worker.output()
    worker.kill()  # not under test; a graceful stop would wait out its unregister call


async def test_worker_sigterm_while_the_server_is_down_exits_promptly(
    procs: Processes, tmp_path: Path
) -> None:
    server = procs.server(tmp_path / "aiki.db")
    worker = procs.worker(server, worker_id="orphan", grace_ms=0)
    await procs.ready(worker)
    server.proc.kill()

    worker.signal(signal.SIGTERM)
    assert worker.wait(timeout=5) == 0, "unregistering is given up on, not retried for 30 s"
