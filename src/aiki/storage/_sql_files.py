"""Named queries and numbered migrations, read from the SQL files shipped under `storage/sql/`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib.resources import files
from importlib.resources.abc import Traversable

_NAME_LINE = re.compile(r"^--\s*name:\s*([a-z_][a-z0-9_]*)\s*$")
_MIGRATION_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True, slots=True, kw_only=True)
class Migration:
    version: int
    name: str
    sql: str


def _dialect_dir(dialect: str) -> Traversable:
    return files("aiki.storage").joinpath("sql", dialect)


def parse_queries(text: str) -> dict[str, str]:
    """Split a `queries.sql` text into its `-- name: NAME` blocks, comments dropped."""
    queries: dict[str, str] = {}
    name: str | None = None
    lines: list[str] = []

    def flush() -> None:
        if name is not None:
            body = "\n".join(lines).strip().rstrip(";").strip()
            if not body:
                raise ValueError(f"query {name!r} is empty")
            queries[name] = body

    for line in text.splitlines():
        match = _NAME_LINE.match(line.strip())
        if match:
            flush()
            name = match.group(1)
            if name in queries:
                raise ValueError(f"query {name!r} is defined twice")
            lines = []
        elif name is not None and not line.lstrip().startswith("--"):
            lines.append(line)
    flush()
    return queries


def load_queries(dialect: str) -> dict[str, str]:
    """The named queries of one SQL dialect."""
    return parse_queries(_dialect_dir(dialect).joinpath("queries.sql").read_text("utf-8"))


def load_migrations(dialect: str) -> list[Migration]:
    """The migrations of one SQL dialect, in version order."""
    migrations: list[Migration] = []
    for entry in _dialect_dir(dialect).joinpath("migrations").iterdir():
        match = _MIGRATION_FILE.match(entry.name)
        if match is None:
            continue
        migrations.append(
            Migration(
                version=int(match.group(1)),
                name=match.group(2),
                sql=entry.read_text("utf-8"),
            )
        )
    migrations.sort(key=lambda migration: migration.version)
    versions = [migration.version for migration in migrations]
    if len(set(versions)) != len(versions):
        raise ValueError(f"{dialect} migrations share a version number: {versions}")
    return migrations
