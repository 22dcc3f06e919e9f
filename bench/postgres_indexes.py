"""Do PostgreSQL's indexes keep the hot operations fast when the tables are big?

Two fresh databases: one left empty, one filled (with SQL, `generate_series`) with `--finished`
ended runs and `--pending` unfinished ones. Every row is a copy of one that PostgresStorage
itself wrote: a template run of each kind is made through the storage (enqueued; claimed;
suspended; two tasks and a completed end), and the fill repeats its rows under new ids and
times. Finished runs keep their two task results and seven history events and belong to four
workflows; the unfinished ones to four versions of two other workflows (a backlog with little
history: the layout in which claims went wrong with PostgreSQL's default planner settings):
80% pending, 15% waiting (due in the next hours), 5% running (leases outlasting the benchmark).

Then each hot operation is timed through PostgresStorage, one call at a time, on both databases
(p50 and p99), and the claim, timer and worker-write statements are explained (EXPLAIN ANALYZE,
BUFFERS) with the plan the storage runs (generic, as its `plan_cache_mode` makes it), flagging
any sequential scan, or scan reading many rows to keep few, on runs, history or task_results;
also with PostgreSQL's default planner settings, which the storage's sessions change (before
and after), and claims are timed both ways. Both databases are dropped at the end.

Run: `uv run python bench/postgres_indexes.py` (1,000,000 finished and 100,000 unfinished
runs: a few minutes, about 3 GB on disk while it runs) or `--quick` (a smoke run).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import re
import secrets
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from aiki._core.ids import RunId, WorkerId
from aiki._core.models import (
    ClaimedRun,
    Lease,
    NewRun,
    RunOutcome,
    TaskAddress,
    TaskEnd,
    TaskOutcome,
    TaskStart,
    WaitInfo,
    WaitKind,
    WorkflowKey,
)
from aiki._core.serde import digest, dumps
from aiki._core.states import RunState
from aiki.storage._postgres_ops import Q
from aiki.storage.postgres import _SESSION_SETTINGS, PostgresStorage

WORKER = WorkerId("bench-worker")
LEASE_MS = 600_000
# The unfinished runs' workflow versions; claims are timed on the first one.
BACKLOG = [WorkflowKey(name=f"backlog-{i % 2}", version=str(1 + i // 2)) for i in range(4)]
FINISHED = [WorkflowKey(name=f"done-{i}", version="1") for i in range(4)]
NEW = WorkflowKey(name="bench-new", version="1")
BIG_TABLES = ("runs", "history", "task_results")
DAY_MS = 86_400_000


# --- filling ------------------------------------------------------------------------------------


async def _quick_task(storage: PostgresStorage, lease: Lease, name: str) -> None:
    address = TaskAddress(task=name, digest=digest(dumps({"i": 0})))
    end = TaskEnd(
        address=address,
        attempt=1,
        worker_id=WORKER,
        outcome=TaskOutcome.COMPLETED,
        duration_ms=1,
        result_json=dumps({"ok": True}),
        start_reported=False,  # as the worker reports a quick task: the end carries the start
    )
    await storage.finish_task(lease, end)


async def make_templates(storage: PostgresStorage) -> dict[str, RunId]:
    """One run of each kind, written by the storage: the rows the fill copies."""
    ids = {}
    for kind in ("pending", "waiting", "running", "finished"):
        key = WorkflowKey(name=f"template-{kind}", version="1")
        run = await storage.enqueue(
            NewRun(workflow=key.name, version=key.version, payload_json=dumps({"i": 0}))
        )
        ids[kind] = run.run.id
        if kind == "pending":
            continue
        (claimed,) = await storage.claim(WORKER, [key], 1, LEASE_MS)
        lease = Lease(run_id=claimed.run.id, revision=claimed.revision)
        if kind == "waiting":
            await _quick_task(storage, lease, "step-a")
            wait = WaitInfo(
                kind=WaitKind.RETRY, until_ms=claimed.now_ms + 3_600_000, detail="step-b"
            )
            await storage.suspend(lease, wait)
        elif kind == "finished":
            await _quick_task(storage, lease, "step-a")
            await _quick_task(storage, lease, "step-b")
            await storage.finish(
                lease, RunOutcome(state=RunState.COMPLETED, result_json=dumps({"i": 0}))
            )
    return ids


# Copies of one template run: `$1` the template's id, `$2` how many, `$3` the first copy's
# number, `$4` the kind (an id prefix: copies of different kinds never collide), `$5` the
# workflow names and `$6` their versions (copy g gets entry g % n), `$7` and `$8` the times
# the copies' creations spread over, `$9` when their due times (wait, lease) start and `$10`
# the span those spread over. Ids keep Aiki's shape: 12 hex digits of milliseconds, then 14
# more, here the copy's kind and number.
_COPY = """
WITH g AS (
    SELECT g, $7::bigint + (g::bigint * ($8::bigint - $7::bigint)) / $2::int AS at,
           $9::bigint + (g::bigint * $10::bigint) / $2::int AS due,
           lpad(to_hex($7::bigint + (g::bigint * ($8::bigint - $7::bigint)) / $2::int), 12, '0')
           || $4::text || lpad(to_hex($3::int + g), 13, '0') AS id
    FROM generate_series(0, $2::int - 1) AS g
),
t AS (SELECT * FROM runs WHERE id = $1::text),
runs_copied AS (
    INSERT INTO runs (id, workflow, version, state, payload, result, error, idempotency_key,
                      attempt, recovery_attempts, revision, wait_kind, wait_until, wait_detail,
                      worker_id, lease_expires_at, cancel_requested, cancel_reason, last_seq,
                      created_at, updated_at)
    SELECT g.id, ($5::text[])[1 + g.g % cardinality($5::text[])],
           ($6::text[])[1 + g.g % cardinality($6::text[])], t.state,
           ('{"i":' || g.g || '}')::json, t.result, t.error, NULL, t.attempt, t.recovery_attempts,
           t.revision, t.wait_kind, CASE WHEN t.wait_until IS NULL THEN NULL ELSE g.due END,
           t.wait_detail, t.worker_id,
           CASE WHEN t.lease_expires_at IS NULL THEN NULL ELSE g.due END,
           t.cancel_requested, t.cancel_reason, t.last_seq,
           g.at, g.at + (t.updated_at - t.created_at)
    FROM g, t
),
history_copied AS (
    INSERT INTO history (run_id, seq, at, kind, state, data)
    SELECT g.id, h.seq, g.at + (h.at - t.created_at), h.kind, h.state, h.data
    FROM g, t, history AS h
    WHERE h.run_id = t.id
)
INSERT INTO task_results (run_id, task, digest, idx, outcome, attempts, result, error,
                          updated_at)
SELECT g.id, r.task, r.digest, r.idx, r.outcome, r.attempts, r.result, r.error,
       g.at + (r.updated_at - t.created_at)
FROM g, t, task_results AS r
WHERE r.run_id = t.id
"""

_CHUNK = 100_000  # copies per statement


async def fill(dsn: str, templates: dict[str, RunId], finished: int, unfinished: int) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        now = await conn.fetchval("SELECT aiki_now_ms(NULL)")
        shares = {
            # kind: (copies, id prefix, workflows, created from .. to, due from, due span)
            "finished": (finished, "0", FINISHED, now - 30 * DAY_MS, now - DAY_MS, 0, 0),
            "pending": (unfinished * 80 // 100, "1", BACKLOG, now - DAY_MS, now - 60_000, 0, 0),
            "waiting": (
                unfinished * 15 // 100,
                "2",
                BACKLOG,
                now - DAY_MS,
                now - 60_000,
                now + 3_600_000,
                3_600_000,
            ),
            "running": (
                unfinished * 5 // 100,
                "3",
                BACKLOG,
                now - 3_600_000,
                now - 60_000,
                now + 3_600_000,
                3_600_000,
            ),
        }
        for kind, (count, prefix, keys, start, end, due, span) in shares.items():
            for first in range(0, count, _CHUNK):
                n = min(_CHUNK, count - first)
                # Each chunk takes its own slice of the creation times, so ids stay in order.
                lo = start + (end - start) * first // count
                hi = start + (end - start) * (first + n) // count
                await conn.execute(
                    _COPY,
                    templates[kind],
                    n,
                    first,
                    prefix,
                    [k.name for k in keys],
                    [k.version for k in keys],
                    lo,
                    hi,
                    due,
                    span,
                )
        await conn.execute(
            "INSERT INTO workflows (name, version, first_seen) "
            "SELECT DISTINCT workflow, version, 0 FROM runs ON CONFLICT DO NOTHING"
        )
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()


async def table_sizes(dsn: str) -> str:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT relname, n_live_tup, pg_size_pretty(pg_total_relation_size(relid)) "
            "FROM pg_stat_user_tables WHERE relname = ANY($1::text[]) ORDER BY relname",
            list(BIG_TABLES),
        )
        states = await conn.fetch("SELECT state, count(*) FROM runs GROUP BY 1 ORDER BY 1")
    finally:
        await conn.close()
    tables = ", ".join(f"{name} {count:,} rows ({size})" for name, count, size in rows)
    return tables + "; runs by state: " + ", ".join(f"{s} {n:,}" for s, n in states)


# --- timing -------------------------------------------------------------------------------------


@dataclass
class Timings:
    samples: dict[str, list[float]]

    def add(self, name: str, seconds: float) -> None:
        self.samples.setdefault(name, []).append(seconds)


def _pct(samples: Sequence[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[max(1, math.ceil(p / 100 * len(ordered))) - 1]


async def _timed(timings: Timings, name: str, call: Awaitable[Any]) -> Any:
    start = time.perf_counter()
    result = await call
    timings.add(name, time.perf_counter() - start)
    return result


def _end(name: str) -> TaskEnd:
    return TaskEnd(
        address=TaskAddress(task=name, digest=digest(dumps({"i": 0}))),
        attempt=1,
        worker_id=WORKER,
        outcome=TaskOutcome.COMPLETED,
        duration_ms=1,
        result_json=dumps({"ok": True}),
    )


async def measure(storage: PostgresStorage, reps: int, known: Sequence[RunId]) -> Timings:
    """Each hot operation `reps` times, one call at a time; `known` are run ids to read."""
    t = Timings(samples={})
    rng = random.Random(1)
    key = BACKLOG[0]
    for run_id in rng.choices(known, k=reps):
        await _timed(t, "get_run", storage.get_run(run_id))
    for i in range(reps):
        new = NewRun(workflow=NEW.name, version=NEW.version, payload_json=dumps({"i": i}))
        await _timed(t, "enqueue", storage.enqueue(new))
    singles: list[ClaimedRun] = []
    for _ in range(reps):
        singles += await _timed(t, "claim (batch 1)", storage.claim(WORKER, [key], 1, LEASE_MS))
    tens: list[list[ClaimedRun]] = []
    for _ in range(reps):
        tens.append(await _timed(t, "claim (batch 10)", storage.claim(WORKER, [key], 10, LEASE_MS)))
    assert len(singles) == reps and all(len(batch) == 10 for batch in tens), "too few to claim"
    for claimed in singles:
        lease = Lease(run_id=claimed.run.id, revision=claimed.revision)
        start = TaskStart(address=_end("a").address, attempt=1, worker_id=WORKER)
        await _timed(t, "start_task", storage.start_task(lease, start))
        await _timed(t, "finish_task", storage.finish_task(lease, _end("a")))
        outcome = RunOutcome(state=RunState.COMPLETED, result_json="1")
        await _timed(t, "finish", storage.finish(lease, outcome))
    for batch in tens:
        leases = [Lease(run_id=c.run.id, revision=c.revision) for c in batch]
        await _timed(t, "heartbeat (10 leases)", storage.heartbeat(WORKER, leases, LEASE_MS))
    for _ in range(reps):
        await _timed(t, "fire_timers (none due)", storage.fire_timers(max_recovery_attempts=3))
    for batch in tens:
        due = await storage.now_ms()
        for claimed in batch:
            lease = Lease(run_id=claimed.run.id, revision=claimed.revision)
            await storage.suspend(lease, WaitInfo(kind=WaitKind.RETRY, until_ms=due))
        report = await _timed(
            t, "fire_timers (10 due)", storage.fire_timers(max_recovery_attempts=3)
        )
        assert len(report.woken) == 10, report
    for _ in range(reps):
        await _timed(t, "list_runs (first page)", storage.list_runs())
        await _timed(t, "list_runs (pending)", storage.list_runs(state=RunState.PENDING))
        await _timed(t, "list_runs (workflow)", storage.list_runs(workflow=key.name))
    for _ in range(max(3, reps // 20)):
        await _timed(t, "list_workflows", storage.list_workflows())
    return t


async def prepare_empty(storage: PostgresStorage, reps: int) -> list[RunId]:
    """On the empty database: just the runs the measured claims take."""
    ids = []
    for i in range(reps * 11):
        run = await storage.enqueue(
            NewRun(
                workflow=BACKLOG[0].name, version=BACKLOG[0].version, payload_json=dumps({"i": i})
            )
        )
        ids.append(run.run.id)
    return ids


def print_timings(empty: Timings, scale: Timings, label: str) -> None:
    print(f"\n{'operation':<26} {'empty p50':>10} {'p99':>9} {label + ' p50':>16} {'p99':>9}  (ms)")
    for name, samples in scale.samples.items():
        base = empty.samples[name]
        print(
            f"{name:<26} {_pct(base, 50) * 1e3:>10.2f} {_pct(base, 99) * 1e3:>9.2f} "
            f"{_pct(samples, 50) * 1e3:>16.2f} {_pct(samples, 99) * 1e3:>9.2f}"
        )


# --- plans --------------------------------------------------------------------------------------


async def explain(conn: Any, name: str, params: dict[str, Any], setup: Sequence[str] = ()) -> str:
    """EXPLAIN (ANALYZE, BUFFERS) of a named query as the storage runs it: prepared, with the
    generic plan the session's plan_cache_mode asks for. Run in a transaction rolled back, after
    `setup` (statements that make something due)."""
    query = Q[name]
    await conn.execute(f"PREPARE bench_plan AS {query.sql}")
    try:
        types = await conn.fetchval(
            "SELECT parameter_types::text[] FROM pg_prepared_statements WHERE name = 'bench_plan'"
        )
        literals = [
            await conn.fetchval(f"SELECT quote_nullable($1::{type_}::text) || '::{type_}'", value)
            for type_, value in zip(types, query.args(params), strict=True)
        ]
        transaction = conn.transaction()
        await transaction.start()
        try:
            for statement in setup:
                await conn.execute(statement)
            rows = await conn.fetch(
                f"EXPLAIN (ANALYZE, BUFFERS) EXECUTE bench_plan({', '.join(literals)})"
            )
        finally:
            await transaction.rollback()
        return "\n".join(row[0] for row in rows)
    finally:
        await conn.execute("DEALLOCATE bench_plan")


_SCAN = re.compile(r"(Seq Scan|Index Scan|Index Only Scan|Bitmap Heap Scan)( using \w+)? on (\w+)")
_REMOVED = re.compile(r"Rows Removed by (?:Filter|Index Recheck): (\d+)")


def verdict(plan: str) -> str:
    """What a plan reads of the big tables, and whether that looks like it scales."""
    problems = []
    scans = []
    lines = plan.splitlines()
    for i, line in enumerate(lines):
        match = _SCAN.search(line)
        if match is None or match.group(3) not in BIG_TABLES:
            continue
        kind, index, table = match.groups()
        scans.append(f"{table}:{(index or '').removeprefix(' using ') or kind}")
        if kind == "Seq Scan":
            problems.append(f"SEQ SCAN on {table}")
        depth = len(line) - len(line.lstrip())
        for detail in lines[i + 1 :]:
            if len(detail) - len(detail.lstrip()) <= depth:
                break
            removed = _REMOVED.search(detail)
            if removed and int(removed.group(1)) > 100:
                problems.append(f"{table} scan drops {removed.group(1)} rows")
    buffers = re.search(r"Buffers: shared hit=(\d+)(?: read=(\d+))?", plan)
    pages = sum(int(n) for n in buffers.groups() if n) if buffers else 0
    return (
        f"{'PROBLEM: ' + '; '.join(problems) if problems else 'ok'} "
        f"({', '.join(dict.fromkeys(scans)) or 'no big table'}; {pages} pages)"
    )


PLAN_LABELS = (
    "claim (batch 1)",
    "claim (batch 10, 2 workflows)",
    "timers_due (nothing due)",
    "lock_expired_leases (10 expired)",
    "lock_due_waits (10 due)",
    "apply_timers (10 woken)",
    "heartbeat (10 leases)",
    "start_task (10 runs)",
    "finish_task (10 runs)",
    "finish (10 runs)",
    "enqueue (10 runs)",
    "get_run",
    "get_history",
    "list_runs (first page)",
    "list_runs (pending)",
)


async def some_running_and_waiting(storage: PostgresStorage) -> None:
    """Ten running and ten waiting runs (for the plans), where there may be none."""
    claimed = await storage.claim(WORKER, [BACKLOG[0]], 20, LEASE_MS)
    until = await storage.now_ms() + 3_600_000
    for run in claimed[10:]:
        lease = Lease(run_id=run.run.id, revision=run.revision)
        await storage.suspend(lease, WaitInfo(kind=WaitKind.RETRY, until_ms=until))


# What PostgresStorage's sessions turn off, back at PostgreSQL's defaults: the plans before.
POSTGRES_DEFAULTS = ("SET enable_seqscan = on", "SET enable_incremental_sort = on")


async def explain_all(
    storage: PostgresStorage, show: set[str], where: str, *, defaults: bool = False
) -> tuple[int, dict[str, str]]:
    """Explain the hot statements; print the plans named in `show`; count problems.

    With `defaults`, the planner settings PostgresStorage changes are PostgreSQL's defaults,
    and only the verdicts are returned (label -> verdict), not printed.
    """
    pool = storage._pool  # the storage's own session settings (plan_cache_mode)
    assert pool is not None
    async with pool.acquire() as conn:
        for statement in POSTGRES_DEFAULTS if defaults else ():
            await conn.execute(statement)
        try:
            return await _explain_cases(conn, show, where, quiet=defaults)
        finally:
            if defaults:
                for statement in ("SET enable_seqscan = off", "SET enable_incremental_sort = off"):
                    await conn.execute(statement)


async def _explain_cases(
    conn: Any, show: set[str], where: str, *, quiet: bool
) -> tuple[int, dict[str, str]]:
    now = await conn.fetchval("SELECT aiki_now_ms(NULL)")
    running = [
        row[0]
        for row in await conn.fetch(
            "SELECT id FROM runs WHERE state = 'running' ORDER BY id LIMIT 10"
        )
    ]
    revisions = [await conn.fetchval("SELECT revision FROM runs WHERE id = $1", i) for i in running]
    waiting = [
        row[0]
        for row in await conn.fetch(
            "SELECT id FROM runs WHERE state = 'waiting' ORDER BY id LIMIT 10"
        )
    ]
    ids = ", ".join(f"'{i}'" for i in running)
    wids = ", ".join(f"'{i}'" for i in waiting)
    expire = [f"UPDATE runs SET lease_expires_at = {now - 1} WHERE id IN ({ids})"]
    wake = [f"UPDATE runs SET wait_until = {now - 1} WHERE id IN ({wids})"]
    n = len(running)
    key = BACKLOG[0]
    task = _end("a")
    cases: list[tuple[str, str, dict[str, Any], list[str]]] = [
        (
            "claim (batch 1)",
            "claim",
            {
                "now": None,
                "names": [key.name],
                "versions": [key.version],
                "limit": 1,
                "worker_id": WORKER,
                "lease_ms": LEASE_MS,
            },
            [],
        ),
        (
            "claim (batch 10, 2 workflows)",
            "claim",
            {
                "now": None,
                "names": [k.name for k in BACKLOG[:2]],
                "versions": [k.version for k in BACKLOG[:2]],
                "limit": 10,
                "worker_id": WORKER,
                "lease_ms": LEASE_MS,
            },
            [],
        ),
        ("timers_due (nothing due)", "timers_due", {"now": None}, []),
        (
            "lock_expired_leases (10 expired)",
            "lock_expired_leases",
            {"now": now, "limit": 1000},
            expire,
        ),
        ("lock_due_waits (10 due)", "lock_due_waits", {"now": now, "limit": 1000}, wake),
        (
            "apply_timers (10 woken)",
            "apply_timers",
            {
                "ids": waiting,
                "states": ["pending"] * n,
                "recovered": [0] * n,
                "errors": [None] * n,
                "kinds": ["run_woken"] * n,
                "data": ["{}"] * n,
                "now": now,
            },
            wake,
        ),
        (
            "heartbeat (10 leases)",
            "heartbeat",
            {
                "now": None,
                "ids": running,
                "revisions": revisions,
                "lease_ms": LEASE_MS,
                "worker_id": WORKER,
            },
            [],
        ),
        (
            "start_task (10 runs)",
            "start_task",
            {
                "ids": running,
                "revisions": revisions,
                "nows": [None] * n,
                "tasks": ["a"] * n,
                "digests": [task.address.digest] * n,
                "indexes": [0] * n,
                "attempts": [1] * n,
                "data": ["{}"] * n,
            },
            [],
        ),
        (
            "finish_task (10 runs)",
            "finish_task",
            {
                "ids": running,
                "revisions": revisions,
                "nows": [None] * n,
                "tasks": ["a"] * n,
                "digests": [task.address.digest] * n,
                "indexes": [0] * n,
                "outcomes": ["completed"] * n,
                "attempts": [1] * n,
                "results": ["1"] * n,
                "errors": [None] * n,
                "kinds": ["task_completed"] * n,
                "data": ["{}"] * n,
                "start_data": ["{}"] * n,
            },
            [],
        ),
        (
            "finish (10 runs)",
            "finish",
            {
                "ids": running,
                "revisions": revisions,
                "nows": [None] * n,
                "allowed": ["running"] * n,
                "states": ["completed"] * n,
                "kinds": ["run_completed"] * n,
                "results": ["1"] * n,
                "errors": [None] * n,
                "reasons": [None] * n,
                "error_data": [None] * n,
            },
            [],
        ),
        (
            "enqueue (10 runs)",
            "enqueue",
            {
                "ids": [f"{i:026x}" for i in range(n)],
                "nows": [None] * n,
                "workflows": [NEW.name] * n,
                "versions": [NEW.version] * n,
                "payloads": ["{}"] * n,
                "idempotency_keys": [None] * n,
            },
            [],
        ),
        ("get_run", "get_run", {"id": running[0]}, []),
        ("get_history", "get_history", {"run_id": running[0]}, []),
        ("list_runs (first page)", "list_runs", {"after": "~", "limit": 100}, []),
        (
            "list_runs (pending)",
            "list_runs_by_state",
            {"state": "pending", "after": "~", "limit": 100},
            [],
        ),
    ]
    problems = 0
    verdicts = {}
    if not quiet:
        print(f"\nPlans {where} (generic, as the storage runs them; {n} runs for 10):")
    for label, name, params, setup in cases:
        plan = await explain(conn, name, params, setup)
        verdicts[label] = result = verdict(plan)
        problems += result.startswith("PROBLEM")
        if quiet:
            continue
        print(f"  {label:<34} {result}")
        if label in show:
            print("    " + plan.replace("\n", "\n    "))
    return problems, verdicts


def print_before(where: str, before: dict[str, str], after: dict[str, str]) -> None:
    """The plans that PostgreSQL's default planner settings would make worse."""
    worse = [label for label in before if before[label].startswith("PROBLEM")]
    print(
        f"\nPlans {where} with PostgreSQL's default planner settings (before), where they differ:"
    )
    for label in worse:
        print(f"  {label:<34} {before[label]}")
        print(f"  {'':<34} now: {after[label]}")
    if not worse:
        print("  none")


async def claim_before_after(dsn: str, reps: int) -> None:
    """Claims timed with PostgreSQL's default planner settings and with the storage's own.

    Each on a connection of its own, set up as the storage's; each claim runs in a transaction
    rolled back, so every one finds the same runs.
    """
    key = BACKLOG[0]
    query = Q["claim"]
    params = {
        "now": None,
        "names": [key.name],
        "versions": [key.version],
        "limit": 1,
        "worker_id": WORKER,
        "lease_ms": LEASE_MS,
    }
    print("\nclaim (batch 1) at scale, each rolled back:")
    for label, settings in (
        ("PostgreSQL's defaults (before)", POSTGRES_DEFAULTS),
        ("PostgresStorage's session (after)", ("SET enable_incremental_sort = off",)),
    ):
        conn = await asyncpg.connect(dsn, server_settings=_SESSION_SETTINGS)
        try:
            for statement in settings:
                await conn.execute(statement)
            samples = []
            for _ in range(reps):
                transaction = conn.transaction()
                await transaction.start()
                start = time.perf_counter()
                await conn.fetch(query.sql, *query.args(params))
                samples.append(time.perf_counter() - start)
                await transaction.rollback()
        finally:
            await conn.close()
        print(
            f"  {label:<34} p50 {_pct(samples, 50) * 1e3:.2f} ms, "
            f"p99 {_pct(samples, 99) * 1e3:.2f} ms"
        )


# --- main ---------------------------------------------------------------------------------------


def _with_database(dsn: str, database: str) -> str:
    return urlunsplit(urlsplit(dsn)._replace(path=f"/{database}"))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--dsn",
        default=os.environ.get(
            "AIKI_BENCH_POSTGRES_DSN", "postgresql://postgres@127.0.0.1/postgres"
        ),
        help="a database on the server where the benchmark may create its own",
    )
    parser.add_argument("--finished", type=int, default=1_000_000, help="ended runs")
    parser.add_argument("--pending", type=int, default=100_000, help="unfinished runs")
    parser.add_argument("--reps", type=int, default=200, help="timed calls per operation")
    parser.add_argument("--quick", action="store_true", help="20,000 + 4,000 runs, 50 calls")
    parser.add_argument(
        "--plans",
        default="claim,timers",
        help="plans printed in full: 'all', 'none', or labels' first words (claim,timers,lock,...)",
    )
    args = parser.parse_args()
    if args.quick:
        args.finished, args.pending, args.reps = 20_000, 4_000, 50
    if args.pending * 80 // 100 // len(BACKLOG) < args.reps * 11:
        parser.error("--pending is too small for --reps claims")
    tag = secrets.token_hex(3)
    scale_db, empty_db = f"bench_idx_{tag}_scale", f"bench_idx_{tag}_empty"
    admin = await asyncpg.connect(args.dsn)
    print(f"load average at start: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    try:
        for name in (scale_db, empty_db):
            await admin.execute(f'CREATE DATABASE "{name}"')
        scale_dsn, empty_dsn = (
            _with_database(args.dsn, scale_db),
            _with_database(args.dsn, empty_db),
        )
        pool = {"min_size": 2, "max_size": 2}
        async with PostgresStorage(empty_dsn, **pool) as storage:
            known = await prepare_empty(storage, args.reps)
            empty = await measure(storage, args.reps, known)
            await some_running_and_waiting(storage)
            empty_problems, empty_after = await explain_all(storage, set(), "on the empty database")
            _, empty_before = await explain_all(storage, set(), "", defaults=True)

        async with PostgresStorage(scale_dsn) as storage:  # applies the migrations
            templates = await make_templates(storage)
        start = time.perf_counter()
        await fill(scale_dsn, templates, args.finished, args.pending)
        print(f"filled in {time.perf_counter() - start:.0f} s: {await table_sizes(scale_dsn)}")
        # Write the fill out now, not during the timings (it would slow every commit).
        await admin.execute("CHECKPOINT")

        async with PostgresStorage(scale_dsn, **pool) as storage:
            assert storage._pool is not None
            known = [
                row[0]
                for row in await storage._pool.fetch(
                    "SELECT id FROM runs TABLESAMPLE SYSTEM (1) LIMIT 10000"
                )
            ]
            scale = await measure(storage, args.reps, known)
            label = f"{args.finished // 1000:,}k+{args.pending // 1000:,}k"
            print_timings(empty, scale, label)
            problems, after = await explain_all(storage, _shown(args.plans), "at scale")
            _, before = await explain_all(storage, set(), "", defaults=True)
            print_before("at scale", before, after)
            print_before("on the empty database", empty_before, empty_after)
        await claim_before_after(scale_dsn, args.reps)
        print(
            f"\n{problems} plan(s) with a problem at scale, {empty_problems} on the empty database"
        )
        print(f"load average at end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    finally:
        for name in (scale_db, empty_db):
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def _shown(spec: str) -> set[str]:
    """The plan labels `--plans` asks to print in full."""
    words = {word.strip() for word in spec.split(",")}
    if "timers" in words:
        words |= {"timers_due", "lock_expired_leases", "lock_due_waits", "apply_timers"}
    return {label for label in PLAN_LABELS if spec == "all" or label.split()[0] in words}


if __name__ == "__main__":
    asyncio.run(main())
