"""Named fragments in queries.sql, and the run columns each dialect lists once."""

from __future__ import annotations

from importlib.resources import files

import pytest

from aiki.storage._records import RUN_COLUMNS
from aiki.storage._sql_files import parse_queries


def test_fragments_are_substituted_as_written_qualified_or_renamed() -> None:
    text = """
-- fragment: cols
a, b
-- name: plain
SELECT {cols} FROM t;
-- name: qualified
SELECT {t.cols}, {u.cols AS u_*} FROM t JOIN u ON true;
"""
    assert parse_queries(text) == {
        "plain": "SELECT a, b FROM t",
        "qualified": "SELECT t.a, t.b, u.a AS u_a, u.b AS u_b FROM t JOIN u ON true",
    }
    with pytest.raises(ValueError, match="unknown fragment"):
        parse_queries("-- name: a\nSELECT {nothing};\n")
    with pytest.raises(ValueError, match="twice"):
        parse_queries("-- fragment: a\nx\n-- fragment: a\ny\n")
    with pytest.raises(ValueError, match="plain column list"):
        parse_queries("-- fragment: f\ncount(*)\n-- name: a\nSELECT {t.f};\n")


@pytest.mark.parametrize("dialect", ["sqlite", "postgres"])
def test_each_dialect_lists_the_run_columns_run_from_row_reads(dialect: str) -> None:
    text = files("aiki.storage").joinpath("sql", dialect, "queries.sql").read_text("utf-8")
    probe = parse_queries(f"{text}\n-- name: probe\n{{run_columns}}\n")["probe"]
    assert tuple(column.strip() for column in probe.split(",")) == RUN_COLUMNS
