"""The README's promises: its test example passes, and CI runs its test command."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start : None if end < 0 else end]


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


async def test_the_testing_example_passes(tmp_path: Path) -> None:
    (example,) = _python_blocks(_section("Testing your workflows"))
    namespace: dict[str, Any] = {"__name__": "readme_example"}
    exec(compile(example, "README.md", "exec"), namespace)
    await namespace["test_the_reminder_goes_out_a_day_later"](tmp_path)


def test_ci_runs_the_quick_starts_test_command() -> None:
    (commands,) = re.findall(r"```bash\n(.*?)```", _section("Quick start"), flags=re.S)
    lines = [line.split("#")[0].strip() for line in commands.strip().splitlines()]
    assert len(lines) == 2, "two commands: one starts Aiki, one runs the tests"
    start, test = lines
    assert start.endswith("uv run aiki dev")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert test in ci, f"{test!r} is a line of .ci/run"


def test_the_readme_installs_from_the_checkout() -> None:
    assert "pip install 'aiki[" not in README, "there is no package on PyPI yet"
    assert "uv sync --extra postgres" in README and "pip install '.[postgres" in README
