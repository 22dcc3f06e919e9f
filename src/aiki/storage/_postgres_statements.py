"""PostgreSQL statements: the named queries, the states they may change, and the batched writes.

The statements write only when their checks pass; `:allowed` parameters take the states the
state machine (`aiki._core.states`) lets each change start from, so that both dialects follow
one table.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, TypeAlias

import asyncpg

from aiki._core.models import TaskRecord
from aiki._core.states import TARGET, RunAction, RunState, allowed
from aiki.errors import StorageError
from aiki.storage._postgres_batch import WriteBatcher
from aiki.storage._postgres_schema import load_postgres_queries
from aiki.storage._records import task_record

# Strings: the stubs make these generic; asyncpg's classes are not subscriptable at run time.
Pool: TypeAlias = "asyncpg.Pool[asyncpg.Record]"
Connection: TypeAlias = "asyncpg.pool.PoolConnectionProxy[asyncpg.Record]"
Record: TypeAlias = asyncpg.Record
Executor: TypeAlias = "Pool | Connection"  # a statement runs on either

# What asyncpg raises for a failed query or a lost connection; each becomes a StorageError.
DRIVER_ERRORS = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
    TimeoutError,
)

Q = load_postgres_queries()


def _allowed_states(action: RunAction) -> list[str]:
    """The states the state machine lets `action` start from, for a statement's `:allowed`."""
    return [state.value for state in RunState if allowed(action, state)]


ALLOWED = {action: _allowed_states(action) for action in RunAction}
# The same for a batched statement, which takes them as one text per call.
ALLOWED_TEXT = {action: ",".join(states) for action, states in ALLOWED.items()}
# A pending or waiting run is cancelled at once; a running one is only flagged for its worker.
CANCEL_NOW = [state for state in ALLOWED[RunAction.CANCEL] if state != RunState.RUNNING]


def _check_fixed_states() -> None:
    """Fail at import if the state machine no longer matches the states queries.sql names.

    Claims, timers, task writes and heartbeats spell their states out ('pending', 'running',
    'waiting'): claims and timers so that the partial indexes apply, task writes and
    heartbeats on runs they found by primary key (see start_task in queries.sql); the other
    changes take `:allowed` from the state machine at run time.
    """
    fixed = {
        RunAction.CLAIM: ([RunState.PENDING], RunState.RUNNING),
        RunAction.WAKE: ([RunState.WAITING], RunState.PENDING),
        RunAction.EXPIRE_LEASE: ([RunState.RUNNING], RunState.PENDING),
    }
    for action, (sources, target) in fixed.items():
        if ALLOWED[action] != [state.value for state in sources] or TARGET[action] is not target:
            raise RuntimeError(f"queries.sql hard-codes the states of {action!r}: update it")


_check_fixed_states()


# --- batched writes -----------------------------------------------------------------------------

# The array parameters of each batched statement, in the order each call gives its values.
_ENQUEUE = ("ids", "nows", "workflows", "versions", "payloads", "idempotency_keys")
_START_TASK = ("ids", "revisions", "nows", "tasks", "digests", "indexes", "attempts", "data")
_FINISH_TASK = (
    "ids", "revisions", "nows", "tasks", "digests", "indexes", "outcomes", "attempts",
    "results", "errors", "kinds", "data", "start_data",
)  # fmt: skip
_FINISH = (
    "ids", "revisions", "nows", "allowed", "states", "kinds", "results", "errors", "reasons",
    "error_data", "ends",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Writers:
    """One `WriteBatcher` per batched write; `max_flushes` statements of each kind at once."""

    enqueue: WriteBatcher
    start_task: WriteBatcher
    finish_task: WriteBatcher
    finish: WriteBatcher

    @classmethod
    def create(cls, *, max_flushes: int) -> Writers:
        return cls(
            enqueue=WriteBatcher(Q["enqueue"], _ENQUEUE, max_flushes=max_flushes),
            start_task=WriteBatcher(Q["start_task"], _START_TASK, max_flushes=max_flushes),
            finish_task=WriteBatcher(Q["finish_task"], _FINISH_TASK, max_flushes=max_flushes),
            finish=WriteBatcher(Q["finish"], _FINISH, max_flushes=max_flushes),
        )

    async def drain(self) -> None:
        """Wait until every write handed in has run."""
        await asyncio.gather(
            self.enqueue.drain(),
            self.start_task.drain(),
            self.finish_task.drain(),
            self.finish.drain(),
        )


# --- statements ---------------------------------------------------------------------------------


async def fetch(db: Executor, name: str, **params: Any) -> list[Record]:
    query = Q[name]
    return await db.fetch(query.sql, *query.args(params))


async def fetchrow(db: Executor, name: str, **params: Any) -> Record | None:
    query = Q[name]
    return await db.fetchrow(query.sql, *query.args(params))


async def fetchval(db: Executor, name: str, **params: Any) -> Any:
    query = Q[name]
    return await db.fetchval(query.sql, *query.args(params))


async def execute(db: Executor, name: str, **params: Any) -> None:
    query = Q[name]
    await db.execute(query.sql, *query.args(params))


async def fetchone(db: Executor, name: str, **params: Any) -> Record:
    """The row of a statement that returns one row, even when it changed nothing."""
    row = await fetchrow(db, name, **params)
    if row is None:
        raise StorageError(f"PostgreSQL returned no row for {name}")
    return row


def claimed_tasks(row: Record) -> tuple[TaskRecord, ...]:
    """A claimed run's task results, which the claim returns as one array per column."""
    if row["tasks"] is None:
        return ()
    columns = ("tasks", "digests", "indexes", "outcomes", "attempts", "results", "errors")
    return tuple(
        task_record(
            task=task,
            digest=digest,
            index=index,
            outcome=outcome,
            attempts=attempts,
            result=result,
            error=error,
        )
        for task, digest, index, outcome, attempts, result, error in zip(
            *(row[column] for column in columns), strict=True
        )
    )
