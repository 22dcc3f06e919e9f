"""PostgreSQL plumbing: named parameters for asyncpg, and migrations."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import asyncpg

from aiki.storage._sql_files import Migration, load_queries

# Held (per transaction) while migrations are checked and applied: two servers starting at once
# apply each migration once. Any fixed number works; this one spells "aiki".
MIGRATION_LOCK_ID = 0x61696B69

_CREATE_MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at bigint NOT NULL
)
"""

# A quoted literal (left alone) or a `:name` parameter; `::type` casts are neither.
_TOKEN = re.compile(r"'(?:[^']|'')*'|(?<![:\w]):([a-z_][a-z0-9_]*)")


@dataclass(frozen=True, slots=True)
class Query:
    """A statement with `$n` placeholders and the parameter name each one stands for."""

    sql: str
    names: tuple[str, ...]

    def args(self, params: dict[str, Any]) -> list[Any]:
        """The positional arguments for `params`, which must name every parameter."""
        return [params[name] for name in self.names]


def compile_query(text: str) -> Query:
    """Turn `:name` parameters into asyncpg's `$1, $2...`; a repeated name reuses its number."""
    names: list[str] = []

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name is None:
            return match.group(0)
        if name not in names:
            names.append(name)
        return f"${names.index(name) + 1}"

    return Query(sql=_TOKEN.sub(replace, text), names=tuple(names))


def load_postgres_queries() -> dict[str, Query]:
    """The named statements of `sql/postgres/queries.sql`, ready for asyncpg."""
    return {name: compile_query(text) for name, text in load_queries("postgres").items()}


# A connection of its own, or one borrowed from a pool.
AnyConnection: TypeAlias = "asyncpg.Connection[Any] | asyncpg.pool.PoolConnectionProxy[Any]"
Pool: TypeAlias = "asyncpg.Pool[asyncpg.Record]"


async def migrate(conn: AnyConnection, migrations: Sequence[Migration]) -> list[int]:
    """Apply the migrations not applied yet, in one transaction; return their versions.

    The transaction takes an advisory lock first, so a second server starting at the same time
    waits, then finds everything applied. PostgreSQL's DDL is transactional: a migration that
    fails leaves nothing behind.
    """
    applied: list[int] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_ID)
        await conn.execute(_CREATE_MIGRATIONS_TABLE)
        done = {row[0] for row in await conn.fetch("SELECT version FROM schema_migrations")}
        for migration in migrations:
            if migration.version in done:
                continue
            await conn.execute(migration.sql)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) "
                "VALUES ($1, $2, floor(extract(epoch FROM statement_timestamp()) * 1000))",
                migration.version,
                migration.name,
            )
            applied.append(migration.version)
    return applied
