"""Real services for tests (PostgreSQL), and the one rule for when one is missing.

A test that needs PostgreSQL is skipped, with a message saying how to run it, when PostgreSQL
cannot be reached; under CI (CI=true) it fails instead, so that a CI run never passes by
skipping what it was meant to test.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from aiki.storage._postgres_schema import migrate
from aiki.storage._sql_files import load_migrations

POSTGRES_DSN_VARIABLE = "AIKI_TEST_POSTGRES_DSN"
DEFAULT_POSTGRES_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"

# Every table the migrations create but schema_migrations: emptied before each test.
_TABLES = ("runs", "task_results", "history", "workers", "workflows")


def unavailable(
    service: str, reason: str, how: str, environ: Mapping[str, str] = os.environ
) -> NoReturn:
    """Skip the test, or fail it under CI, because `service` cannot be used."""
    message = f"{service} is not available ({reason}); to run these tests, {how}"
    if environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true and {message}", pytrace=False)
    pytest.skip(message)


def postgres_admin_dsn(environ: Mapping[str, str] = os.environ) -> str:
    """A database where the tests may create (and drop) their own database."""
    return environ.get(POSTGRES_DSN_VARIABLE) or DEFAULT_POSTGRES_DSN


def with_database(dsn: str, database: str) -> str:
    """The same server and credentials, another database."""
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{database}"))


@dataclass(frozen=True, slots=True)
class PostgresDatabase:
    """A database of its own for this test session, with Aiki's migrations applied."""

    dsn: str
    name: str

    async def reset(self) -> None:
        """Empty every table: each test starts from a fresh database."""
        conn = await asyncpg.connect(self.dsn)
        try:
            await conn.execute(f"TRUNCATE {', '.join(_TABLES)}")
        finally:
            await conn.close()


async def _create(admin_dsn: str, name: str) -> PostgresDatabase:
    admin = await asyncpg.connect(admin_dsn, timeout=5)
    try:
        await admin.execute(f"CREATE DATABASE \"{name}\" ENCODING 'UTF8' TEMPLATE template0")
    finally:
        await admin.close()
    database = PostgresDatabase(dsn=with_database(admin_dsn, name), name=name)
    conn = await asyncpg.connect(database.dsn)
    try:
        await migrate(conn, load_migrations("postgres"))
    finally:
        await conn.close()
    return database


async def _drop(admin_dsn: str, name: str) -> None:
    admin = await asyncpg.connect(admin_dsn, timeout=5)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@contextmanager
def postgres_database(environ: Mapping[str, str] = os.environ) -> Iterator[PostgresDatabase]:
    """Create `aiki_test_<random>` for the session, migrated; drop it at the end.

    The set-up and tear-down run on an event loop of their own in a thread of their own: a
    session fixture may be first requested from inside a test's running loop.
    """
    admin_dsn = postgres_admin_dsn(environ)
    name = f"aiki_test_{secrets.token_hex(4)}"
    with ThreadPoolExecutor(1, thread_name_prefix="aiki-test-postgres") as thread:
        try:
            database = thread.submit(asyncio.run, _create(admin_dsn, name)).result()
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            unavailable(
                "PostgreSQL",
                f"{type(exc).__name__}: {exc}",
                "start PostgreSQL on 127.0.0.1:5432 (user postgres, trust auth) or set "
                f"{POSTGRES_DSN_VARIABLE} to a URL of a database where tests may create "
                "databases",
                environ,
            )
        try:
            yield database
        finally:
            thread.submit(asyncio.run, _drop(admin_dsn, name)).result()


# --- Redis -------------------------------------------------------------------------------------

REDIS_URL_VARIABLE = "AIKI_TEST_REDIS_URL"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def redis_url(environ: Mapping[str, str] = os.environ) -> str:
    """The shared Redis of the tests (each test uses a namespace of its own in it)."""
    url = environ.get(REDIS_URL_VARIABLE) or DEFAULT_REDIS_URL
    try:
        with socket.create_connection(_address(url), timeout=2) as conn:
            conn.sendall(b"PING\r\n")
            reply = conn.recv(64)
    except OSError as exc:
        reply = f"{type(exc).__name__}: {exc}".encode()
    if not reply.startswith(b"+PONG"):
        unavailable(
            "Redis",
            reply.decode(errors="replace").strip() or "no reply",
            f"start Redis on 127.0.0.1:6379 or set {REDIS_URL_VARIABLE}",
            environ,
        )
    return url


def redis_namespace(label: str = "test") -> str:
    """A Redis namespace of one test's own: nothing else that uses the Redis (another test
    run, another program) hears its news, nor it theirs."""
    return f"{label}-{secrets.token_hex(4)}"


def _address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 6379


class RedisProcess:
    """A private `redis-server` on a free port of 127.0.0.1, which a test may stop and restart.

    Tests of a Redis outage use it rather than the shared Redis, which other tests need.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            unavailable("redis-server", "not on PATH", "install Redis (Debian: redis-server)")
        self._process = subprocess.Popen(
            [
                binary,
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:  # until it answers; a fresh redis-server takes a few milliseconds
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline or self._process.poll() is not None:
                raise RuntimeError(f"redis-server on port {self.port} did not start")
            time.sleep(0.01)

    def kill(self) -> None:
        """SIGKILL it: what it held is gone, as after a crash."""
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None
