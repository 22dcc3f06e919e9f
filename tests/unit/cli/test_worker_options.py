"""`aiki worker`'s options reach `aiki.worker()` as its settings."""

from __future__ import annotations

from typing import Any

import pytest
from click.testing import CliRunner

import aiki
from aiki.cli import _worker


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """What `aiki worker` would have started the worker with (nothing is started)."""
    calls: list[dict[str, Any]] = []

    async def fake_run(
        registry: aiki.Registry, server_url: str, api_key: str | None, options: dict[str, Any]
    ) -> None:
        calls.append({"server": server_url, "keys": list(registry.keys), **options})

    monkeypatch.setattr(_worker, "_run", fake_run)
    return calls


def test_subscriber_options_are_passed_on(started: list[dict[str, Any]]) -> None:
    args = ["aiki.examples:registry", "--server", "http://127.0.0.1:1", "--batch", "32"]
    args += ["--poll-interval-ms", "250", "--max-retry-delay-ms", "2000", "--heartbeat-ms", "500"]
    result = CliRunner().invoke(_worker.worker_command, args)

    assert result.exit_code == 0, result.output
    (options,) = started
    assert options["workflow_run_subscriber"] == aiki.SubscriberConfig(
        max_batch_size=32, poll_interval_ms=250, max_retry_delay_ms=2000
    )
    assert options["workflow_run"] == aiki.WorkflowRunConfig(heartbeat_interval_ms=500)


def test_defaults_are_the_libraries(started: list[dict[str, Any]]) -> None:
    result = CliRunner().invoke(_worker.worker_command, ["aiki.examples:registry"])
    assert result.exit_code == 0, result.output
    assert started[0]["workflow_run_subscriber"] == aiki.SubscriberConfig()


@pytest.mark.parametrize("option", ["--batch", "--poll-interval-ms", "--max-retry-delay-ms"])
def test_a_non_positive_value_is_refused_naming_the_option(
    started: list[dict[str, Any]], option: str
) -> None:
    result = CliRunner().invoke(_worker.worker_command, ["aiki.examples:registry", option, "0"])
    assert result.exit_code == 2
    assert option in result.output
    assert not started
