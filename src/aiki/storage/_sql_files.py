"""Named queries and numbered migrations, read from the SQL files shipped under `storage/sql/`.

A `queries.sql` holds `-- name: NAME` blocks (statements) and `-- fragment: NAME` blocks (lists
of columns written once, such as a run's). A statement names a fragment in braces, substituted
when the file is read: `{run_columns}` as written, `{r.run_columns}` with each column qualified
by `r.`, `{cur.run_columns AS cur_*}` qualified and renamed `cur_id`, `cur_workflow`... (for a
row that holds two runs side by side).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib.resources import files
from importlib.resources.abc import Traversable

_NAME_LINE = re.compile(r"^--\s*(name|fragment):\s*([a-z_][a-z0-9_]*)\s*$")
# `{fragment}`, `{table.fragment}` or `{table.fragment AS prefix_*}`.
_FRAGMENT_USE = re.compile(
    r"\{(?:([a-z_][a-z0-9_]*)\.)?([a-z_][a-z0-9_]*)(?: AS ([a-z_][a-z0-9_]*)\*)?\}"
)
_COLUMN = re.compile(r"^[a-z_][a-z0-9_]*$")
_MIGRATION_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True, slots=True, kw_only=True)
class Migration:
    version: int
    name: str
    sql: str


def _dialect_dir(dialect: str) -> Traversable:
    return files("aiki.storage").joinpath("sql", dialect)


def parse_queries(text: str) -> dict[str, str]:
    """Split a `queries.sql` text into its `-- name: NAME` blocks, comments dropped.

    Fragments (`-- fragment: NAME` blocks) are substituted into the statements that use them
    and are not returned themselves.
    """
    blocks: dict[tuple[str, str], str] = {}
    current: tuple[str, str] | None = None
    lines: list[str] = []

    def flush() -> None:
        if current is not None:
            body = "\n".join(lines).strip().rstrip(";").strip()
            if not body:
                raise ValueError(f"{current[0]} {current[1]!r} is empty")
            blocks[current] = body

    for line in text.splitlines():
        match = _NAME_LINE.match(line.strip())
        if match:
            flush()
            current = (match.group(1), match.group(2))
            if current in blocks:
                raise ValueError(f"{current[0]} {current[1]!r} is defined twice")
            lines = []
        elif current is not None and not line.lstrip().startswith("--"):
            lines.append(line)
    flush()
    fragments = {name: body for (kind, name), body in blocks.items() if kind == "fragment"}
    return {
        name: _substitute(name, body, fragments)
        for (kind, name), body in blocks.items()
        if kind == "name"
    }


def _substitute(query: str, text: str, fragments: dict[str, str]) -> str:
    def replace(match: re.Match[str]) -> str:
        table, name, prefix = match.groups()
        if name not in fragments:
            raise ValueError(f"query {query!r} uses an unknown fragment {name!r}")
        if table is None:
            return fragments[name]
        columns = [column.strip() for column in fragments[name].split(",")]
        if not all(_COLUMN.match(column) for column in columns):
            raise ValueError(
                f"fragment {name!r} is not a plain column list: it cannot be qualified"
            )
        if prefix is None:
            return ", ".join(f"{table}.{column}" for column in columns)
        return ", ".join(f"{table}.{column} AS {prefix}{column}" for column in columns)

    return _FRAGMENT_USE.sub(replace, text)


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
