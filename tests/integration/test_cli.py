"""The `aiki` command line against real processes: a server, a worker, and the CLI itself.

One `aiki server` and one `aiki worker aiki.examples:registry` serve the whole module; each
test runs `aiki` commands as a user would and reads what they print.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from processes import Processes, Server

pytestmark = pytest.mark.timeout(30)

WORKER_ID = "cli-worker"
MORNING_RESULT = {"alarm_result": "Wake up!", "stretch_result": 300}


@pytest.fixture(scope="module")
def procs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Processes]:
    """Module-wide (overrides conftest's): one server and worker serve the whole module."""
    with Processes(tmp_path_factory.mktemp("cli")) as processes:
        yield processes


@pytest.fixture(scope="module")
def server(procs: Processes) -> Server:
    """A server with a live worker serving the example workflows."""
    srv = procs.server(procs.folder / "aiki.db")
    worker = procs.worker(srv, worker_id=WORKER_ID, target="aiki.examples:registry")
    procs.wait_ready(worker)
    return srv


def aiki(procs: Processes, server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    """Run `aiki ARGS --server URL`."""
    return procs.run_cli(*args, "--server", server.url)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}{result.stderr}"
    assert "Traceback" not in result.stderr
    return result.stdout


def failed(result: subprocess.CompletedProcess[str]) -> str:
    """The error output of a command that must fail cleanly: non-zero, a message, no traceback."""
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    assert result.stderr.strip(), "a failure says why"
    return result.stderr


def enqueue_json(procs: Processes, server: Server, *args: str) -> dict[str, Any]:
    status: dict[str, Any] = json.loads(ok(aiki(procs, server, "runs", "enqueue", *args, "--json")))
    return status


def test_enqueue_and_wait_prints_the_result(procs: Processes, server: Server) -> None:
    enqueue = ["runs", "enqueue", "morning-routine", "1.0.0", "--payload", "{}", "--wait"]
    out = ok(aiki(procs, server, *enqueue))

    first, result = out.strip().splitlines()
    assert first.startswith("run ") and first.endswith("morning-routine@1.0.0  completed")
    assert json.loads(result) == MORNING_RESULT


def test_runs_list_as_a_table_and_as_json(procs: Processes, server: Server) -> None:
    run = enqueue_json(procs, server, "morning-routine", "1.0.0", "--wait")

    as_table, as_json = procs.run_cli_many(
        ["runs", "list", "--workflow", "morning-routine", "--server", server.url],
        ["runs", "list", "--state", "completed", "--json", "--server", server.url],
    )

    table = ok(as_table).splitlines()
    headers = ["ID", "WORKFLOW", "VERSION", "STATE", "ATTEMPT", "CREATED", "UPDATED"]
    assert table[0].split() == headers
    assert set(table[1]) == {"-", " "}
    row = next(line.split() for line in table if line.startswith(run["id"]))
    assert row[1:5] == ["morning-routine", "1.0.0", "completed", "1"]
    listed = json.loads(ok(as_json))
    mine = [r for r in listed if r["id"] == run["id"]]
    assert len(mine) == 1 and mine[0]["result"] == MORNING_RESULT
    assert {r["state"] for r in listed} == {"completed"}


def test_runs_show_prints_the_timeline(procs: Processes, server: Server) -> None:
    run = enqueue_json(procs, server, "morning-routine", "1.0.0", "--wait")

    as_text, as_json = procs.run_cli_many(
        ["runs", "show", run["id"], "--server", server.url],
        ["runs", "show", run["id"], "--json", "--server", server.url],
    )

    out = ok(as_text)
    assert f"run       {run['id']}" in out
    assert "workflow  morning-routine@1.0.0" in out and "state     completed" in out
    assert json.dumps(MORNING_RESULT) in out
    timeline = out.split("timeline", 1)[1]
    kinds = [line.split(" ms ", 1)[1].split()[0] for line in timeline.strip().splitlines()]
    tasks = ["task_started", "task_completed"] * 2
    assert kinds == ["run_enqueued", "run_claimed", *tasks, "run_completed"]
    assert "ring-alarm#1 attempt 1" in timeline and f"on {WORKER_ID}" in timeline
    shown = json.loads(ok(as_json))
    assert shown["state"] == "completed" and len(shown["history"]) == 7
    # The run's record has the shape `runs list --json` prints, values not JSON strings.
    assert shown["result"] == MORNING_RESULT and "result_json" not in shown


def test_runs_cancel(procs: Processes, server: Server) -> None:
    url = ["--server", server.url]
    # No worker serves 9.9.9: refused unless asked for; then that run stays pending, and says
    # why; the other one completes.
    unknown = aiki(procs, server, "runs", "enqueue", "morning-routine", "9.9.9")
    assert failed(unknown) == (
        "Error: no worker has registered workflow 'morning-routine' version '9.9.9' (known "
        "versions: 1.0.0, 2.0.0); enqueue with allow_unknown=True (--allow-unknown) to create "
        "the run anyway\n"
    )
    parked_out, done_out = procs.run_cli_many(
        ["runs", "enqueue", "morning-routine", "9.9.9", "--allow-unknown", "--json", *url],
        ["runs", "enqueue", "morning-routine", "1.0.0", "--wait", "--json", *url],
    )
    parked, done = json.loads(ok(parked_out)), json.loads(ok(done_out))
    assert parked["state"] == "pending" and "no live worker" in parked["note"]

    cancelled, too_late = procs.run_cli_many(
        ["runs", "cancel", parked["id"], "--reason", "not needed", *url],
        ["runs", "cancel", done["id"], *url],
    )

    assert ok(cancelled).strip() == f"run {parked['id']} cancelled"
    assert ok(too_late).strip() == f"run {done['id']} had already ended: completed"
    shown = json.loads(ok(aiki(procs, server, "runs", "show", parked["id"], "--json")))
    assert shown["state"] == "cancelled"
    assert shown["cancel_reason"] == "not needed"


def test_runs_send_event(procs: Processes, server: Server) -> None:
    url = ["--server", server.url]
    # No worker serves 9.9.9: the run stays pending, and keeps the events sent to it.
    parked = enqueue_json(procs, server, "morning-routine", "9.9.9", "--allow-unknown")
    done = enqueue_json(procs, server, "morning-routine", "1.0.0", "--wait")
    keyed = ["runs", "send-event", parked["id"], "approved", "--data", '{"by": "ana"}']

    first, second, as_json, bad_data, too_late = procs.run_cli_many(
        [*keyed, "--key", "k", *url],
        [*keyed, "--key", "k", *url],  # at the same time: one of the two stores it
        ["runs", "send-event", parked["id"], "other", "--json", *url],
        ["runs", "send-event", parked["id"], "approved", "--data", "{nope", *url],
        ["runs", "send-event", done["id"], "approved", *url],
    )

    outputs = sorted([ok(first), ok(second)])
    assert outputs[0].startswith(f"event 'approved' sent to run {parked['id']} (seq ")
    assert outputs[1].startswith("event 'approved' was already sent")
    assert json.loads(ok(as_json))["created"] is True
    assert "not JSON" in failed(bad_data)
    assert "completed" in failed(too_late)
    shown = json.loads(ok(aiki(procs, server, "runs", "show", parked["id"], "--json")))
    sent = [e["data"]["name"] for e in shown["history"] if e["kind"] == "event_sent"]
    assert sorted(sent) == ["approved", "other"]
    ok(aiki(procs, server, "runs", "cancel", parked["id"]))


def test_workflows_list_shows_the_live_worker_and_counts(procs: Processes, server: Server) -> None:
    # Only this test runs user-onboarding 2.0.0, so its counts are exact.
    payload = json.dumps({"user_id": "u-9"})
    enqueue_json(procs, server, "user-onboarding", "2.0.0", "--payload", payload, "--wait")

    as_table, as_json = procs.run_cli_many(
        ["workflows", "list", "--server", server.url],
        ["workflows", "list", "--json", "--server", server.url],
    )

    table = ok(as_table).splitlines()
    states = ["PENDING", "RUNNING", "WAITING", "COMPLETED", "FAILED", "CANCELLED"]
    assert table[0].split() == ["WORKFLOW", "VERSION", "LIVE", "WORKERS", *states]
    rows = {tuple(line.split()[:2]): line.split()[2:] for line in table[2:]}
    assert rows[("user-onboarding", "2.0.0")] == [WORKER_ID, "0", "0", "0", "1", "0", "0"]
    assert rows[("user-onboarding", "1.0.0")][0] == WORKER_ID
    summaries = json.loads(ok(as_json))
    v2 = next(s for s in summaries if (s["name"], s["version"]) == ("user-onboarding", "2.0.0"))
    assert v2["live_workers"] == [WORKER_ID]
    assert v2["runs"]["completed"] == 1


def test_bad_input_fails_with_a_clear_message(procs: Processes, server: Server) -> None:
    url = ["--server", server.url]
    bad_payload, misfit, show_unknown, cancel_unknown, bad_state = procs.run_cli_many(
        ["runs", "enqueue", "morning-routine", "1.0.0", "--payload", "{bad", *url],
        ["runs", "enqueue", "user-onboarding", "2.0.0", "--payload", '{"user": 7}', *url],
        ["runs", "show", "no-such-run", "--server", server.url],
        ["runs", "cancel", "no-such-run", "--server", server.url],
        ["runs", "list", "--state", "sleepy", "--server", server.url],
    )

    message = failed(bad_payload)
    assert "--payload" in message and "not JSON" in message
    # Checked on the server against the JSON Schema the worker registered for 2.0.0.
    assert failed(misfit) == (
        "Error: workflow 'user-onboarding' payload does not match the schema its worker "
        "registered: $: 'user_id' is a required property\n"
    )
    assert "no workflow run with id 'no-such-run'" in failed(show_unknown)
    assert "no workflow run with id 'no-such-run'" in failed(cancel_unknown)
    assert "--state" in failed(bad_state)


def test_migrate_creates_and_updates_a_storage(procs: Processes, tmp_path: Path) -> None:
    db = tmp_path / "new" / "aiki.db"
    url = f"sqlite:///{db}"

    assert ok(procs.run_cli("migrate", "--storage", url)).strip() == f"storage {url} is up to date"
    assert db.exists()
    assert ok(procs.run_cli("migrate", "--storage", url)).strip() == f"storage {url} is up to date"


def test_api_key_guards_the_server(procs: Processes, tmp_path: Path) -> None:
    guarded = procs.server(tmp_path / "guarded.db", api_key="s3cret", name="guarded")
    url = guarded.url

    no_key, wrong_key, right_key = procs.run_cli_many(
        ["runs", "list", "--server", url],
        ["runs", "list", "--server", url, "--api-key", "nope"],
        ["runs", "list", "--server", url, "--api-key", "s3cret"],
    )

    assert "this server requires an API key" in failed(no_key)
    assert "the API key sent is not this server's" in failed(wrong_key)
    ok(right_key)
    ok(procs.run_cli("workflows", "list", "--server", url, env={"AIKI_API_KEY": "s3cret"}))
    assert httpx.get(f"{url}/health").status_code == 200  # needs no key


def test_worker_with_a_bad_target_fails_with_a_clear_message(procs: Processes) -> None:
    nowhere = ["--server", "http://127.0.0.1:9"]  # never reached: the target is checked first
    missing, no_attr, not_spec = procs.run_cli_many(
        ["worker", "bad.module:x", *nowhere],
        ["worker", "aiki.examples:nope", *nowhere],
        ["worker", "aiki.examples", *nowhere],
    )

    assert "cannot import module 'bad.module'" in failed(missing)
    assert "has no attribute 'nope'" in failed(no_attr)
    assert "expected MODULE:ATTR" in failed(not_spec)


def test_dev_runs_the_examples_and_exits(procs: Processes, tmp_path: Path) -> None:
    db = tmp_path / "dev" / "aiki.db"
    dev = ["dev", "--storage", f"sqlite:///{db}", "--port", "0", "--exit-when-done"]
    out = ok(procs.run_cli(*dev))

    assert out.count(" completed") == 4
    assert "HTTP API on http://127.0.0.1:" in out
    assert '"alarm_result": "Wake up!"' in out
    assert "user-onboarding@1.0.0  completed" in out and "user-onboarding@2.0.0  completed" in out
    assert "morning-routine@2.0.0  completed" in out  # after its durable coffee break
    assert db.exists()
