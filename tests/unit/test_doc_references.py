"""Docstrings and help texts point only at documents a checkout has."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parents[2]
SOURCES = sorted(
    path
    for pattern in ("*.py", "*.html", "*.sql", "*.lua")
    for path in (ROOT / "src" / "aiki").rglob(pattern)
)
ELSEWHERE = re.compile(r"DESIGN|STYLE\.md|concept document|docs/|see the guide", re.IGNORECASE)
DOCUMENT = re.compile(r"[\w./-]+\.(?:md|rst|txt)\b")


def test_there_are_sources_to_check() -> None:
    assert len(SOURCES) > 50


def test_no_reference_to_a_document_outside_the_repository() -> None:
    found = []
    for path in SOURCES:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            where = f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
            if ELSEWHERE.search(line):
                found.append(where)
            found += [where for name in DOCUMENT.findall(line) if not (ROOT / name).exists()]
    assert found == []
