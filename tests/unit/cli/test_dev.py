"""`aiki dev` runs the example workflows for real on a SQLite file."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from aiki.cli._main import cli


def test_dev_runs_the_examples(tmp_path: Path) -> None:
    db = tmp_path / "dev" / "aiki.db"
    result = CliRunner().invoke(
        cli, ["dev", "--storage", f"sqlite:///{db}", "--port", "0", "--exit-when-done"]
    )

    assert result.exit_code == 0, result.output
    assert result.output.count(" completed") == 4
    assert '"alarm_result": "Wake up!"' in result.output
    assert "user-onboarding@2.0.0" in result.output
    assert db.exists()


def test_help_lists_commands() -> None:
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0 and "dev" in result.output
