"""A new user's first hour, with real `aiki` processes: each mistake ends in one line naming it.

A port already taken, a worker with a wrong API key, a storage URL Aiki has no backend for, a
PostgreSQL database not created yet: the command exits non-zero with one line that says what
is wrong and how to fix it, never a traceback. A worker killed outright stops counting as alive
once its lease runs out, and a client left open exits without the HTTP library's warnings.
"""

from __future__ import annotations

import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from _services import PostgresDatabase, with_database
from processes import Processes, Server, child_env

pytestmark = pytest.mark.timeout(60)


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """The error of a command that must fail cleanly: non-zero, one line, no traceback."""
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, f"one line, not:\n{result.stderr}"
    return lines[0]


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port of 127.0.0.1 something else listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_a_port_in_use_is_named(procs: Processes, taken_port: int, tmp_path: Path) -> None:
    port = str(taken_port)
    server, dev = procs.run_cli_many(
        ["server", "--storage", f"sqlite:///{tmp_path}/s.db", "--port", port],
        ["dev", "--storage", f"sqlite:///{tmp_path}/d.db", "--port", port, "--exit-when-done"],
    )
    for result in (server, dev):
        message = one_line_error(result)
        assert f"127.0.0.1:{port}" in message and "already in use" in message
        assert "--port" in message
    # Refused before storage is touched: nothing was created or migrated.
    assert not (tmp_path / "s.db").exists() and not (tmp_path / "d.db").exists()


def test_a_worker_with_a_wrong_api_key_says_so(procs: Processes, tmp_path: Path) -> None:
    server = procs.server(tmp_path / "keyed.db", api_key="s3cret")
    worker = ["worker", "aiki.examples:registry", "--server", server.url]
    wrong, missing = procs.run_cli_many([*worker, "--api-key", "nope"], worker)

    message = one_line_error(wrong)
    assert "the API key sent is not this server's" in message
    assert server.url in message and "--api-key" in message
    assert "requires an API key" in one_line_error(missing)


@pytest.mark.parametrize("command", ["server", "dev", "migrate"])
def test_an_unknown_storage_scheme_lists_the_supported_ones(procs: Processes, command: str) -> None:
    args = [command, "--storage", "mysql://root@127.0.0.1/shop"]
    if command != "migrate":
        args += ["--port", "0"]
    message = one_line_error(procs.run_cli(*args))
    assert "unknown scheme 'mysql'" in message
    assert "sqlite://" in message and "postgresql://" in message


@pytest.mark.postgres
def test_a_postgres_database_that_does_not_exist_says_how_to_create_it(
    procs: Processes, postgres_db: PostgresDatabase
) -> None:
    name = f"aiki_missing_{secrets.token_hex(4)}"
    url = with_database(postgres_db.dsn, name)
    message = one_line_error(procs.run_cli("server", "--storage", url, "--port", "0"))
    assert f'database "{name}" does not exist' in message
    assert f"createdb -h 127.0.0.1 -p 5432 -U postgres {name}" in message
    assert f'CREATE DATABASE "{name}"' in message


def _alive(server: Server) -> dict[str, bool]:
    reply = httpx.get(f"{server.url}/v1/workers", timeout=5)
    reply.raise_for_status()
    return {w["id"]: w["alive"] for w in reply.json()["workers"]}


async def test_a_killed_worker_stops_being_listed_as_live(procs: Processes, tmp_path: Path) -> None:
    server = procs.server(tmp_path / "aiki.db")
    worker = procs.worker(server, worker_id="doomed", target="aiki.examples:registry")
    await procs.ready(worker)
    assert _alive(server) == {"doomed": True}
    listed = procs.run_cli("workers", "--server", server.url)
    assert listed.returncode == 0, listed.stderr
    assert "doomed" in listed.stdout and "alive" in listed.stdout

    worker.kill()  # SIGKILL: it neither unregisters nor heartbeats again
    killed_at = time.monotonic()
    # `procs.worker` heartbeats every 250 ms: its lease, and so its life, is 750 ms.
    await procs.until(lambda: _alive(server) == {"doomed": False}, "the worker to be gone")
    assert time.monotonic() - killed_at < 5, "gone once its lease ran out, not much later"

    listed = procs.run_cli("workers", "--server", server.url)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[2].split()[:2] == ["doomed", "gone"]
    workflows = procs.run_cli("workflows", "list", "--server", server.url)
    assert "doomed" not in workflows.stdout, "no workflow counts it as a live worker"
    page = httpx.get(f"{server.url}/dashboard/workers", timeout=5).text
    assert 'class="badge gone"' in page and 'class="badge alive"' not in page
    assert worker.popen.returncode == -signal.SIGKILL


LEFT_OPEN = """
import asyncio, sys
import aiki

async def main() -> None:
    client = await aiki.create_client(url=sys.argv[1])
    print(len(await client.list_runs()))
    global kept
    kept = await aiki.create_client(url=sys.argv[1])  # outlives the event loop
    await kept.list_runs()

asyncio.run(main())
"""


def test_a_client_left_open_exits_without_warnings(procs: Processes, tmp_path: Path) -> None:
    server = procs.server(tmp_path / "aiki.db")
    script = tmp_path / "left_open.py"
    script.write_text(LEFT_OPEN, encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-W", "always::ResourceWarning", str(script), server.url],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "0"
    assert result.stderr == "", "nothing on stderr: no 'Unclosed client session'"
