"""Worker and server settings: defaults, and refusal of values that cannot work."""

import dataclasses
import re

import pytest

from aiki import ServerSettings, SubscriberConfig, WorkflowRunConfig

SUBSCRIBER_FIELDS = ["poll_interval_ms", "max_batch_size", "max_retry_delay_ms", "long_poll_ms"]


def test_subscriber_defaults() -> None:
    config = SubscriberConfig()
    assert (config.poll_interval_ms, config.max_batch_size, config.max_retry_delay_ms) == (
        100,
        None,
        30_000,
    )


@pytest.mark.parametrize("field", SUBSCRIBER_FIELDS)
@pytest.mark.parametrize("value", [0, -1])
def test_subscriber_refuses_non_positive_values(field: str, value: int) -> None:
    with pytest.raises(ValueError, match=re.escape(f"SubscriberConfig.{field} must be > 0")):
        SubscriberConfig(**{field: value})


@pytest.mark.parametrize("field", SUBSCRIBER_FIELDS)
@pytest.mark.parametrize("value", [1.5, "100", True])
def test_subscriber_refuses_non_int_values(field: str, value: object) -> None:
    with pytest.raises(TypeError, match=re.escape(f"SubscriberConfig.{field} must be an int")):
        SubscriberConfig(**{field: value})  # type: ignore[arg-type]


def test_subscriber_accepts_the_documented_example() -> None:
    config = SubscriberConfig(poll_interval_ms=100, max_batch_size=10, max_retry_delay_ms=30_000)
    assert config.max_batch_size == 10


def test_settings_are_frozen() -> None:
    config = WorkflowRunConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.heartbeat_interval_ms = 1  # type: ignore[misc]  # the refusal under test


def test_lease_defaults_to_three_heartbeats() -> None:
    assert WorkflowRunConfig().heartbeat_interval_ms == 4_000
    assert WorkflowRunConfig().effective_lease_ms == 12_000
    assert WorkflowRunConfig(heartbeat_interval_ms=1_000).effective_lease_ms == 3_000


def test_explicit_lease_is_used() -> None:
    config = WorkflowRunConfig(heartbeat_interval_ms=1_000, lease_ms=1_001)
    assert config.effective_lease_ms == 1_001


@pytest.mark.parametrize("value", [0, -30_000])
def test_workflow_run_config_refuses_a_non_positive_heartbeat(value: int) -> None:
    with pytest.raises(
        ValueError, match=re.escape("WorkflowRunConfig.heartbeat_interval_ms must be > 0")
    ):
        WorkflowRunConfig(heartbeat_interval_ms=value)


@pytest.mark.parametrize("value", [0, -1])
def test_workflow_run_config_refuses_a_non_positive_lease(value: int) -> None:
    with pytest.raises(ValueError, match=re.escape("WorkflowRunConfig.lease_ms must be > 0")):
        WorkflowRunConfig(lease_ms=value)


@pytest.mark.parametrize("lease_ms", [500, 999, 1_000])
def test_lease_must_be_longer_than_the_heartbeat(lease_ms: int) -> None:
    with pytest.raises(ValueError, match=r"lease_ms \(\d+\) must be longer than heartbeat"):
        WorkflowRunConfig(heartbeat_interval_ms=1_000, lease_ms=lease_ms)


def test_lease_check_uses_the_default_heartbeat() -> None:
    with pytest.raises(ValueError, match="must be longer than heartbeat_interval_ms"):
        WorkflowRunConfig(lease_ms=4_000)


def test_non_int_heartbeat_is_refused() -> None:
    with pytest.raises(TypeError, match="heartbeat_interval_ms must be an int"):
        WorkflowRunConfig(heartbeat_interval_ms=1.5)  # type: ignore[arg-type]


def test_inline_retry_delay_may_be_zero() -> None:
    assert WorkflowRunConfig(max_inline_retry_delay_ms=0).max_inline_retry_delay_ms == 0


def test_negative_inline_retry_delay_is_refused() -> None:
    with pytest.raises(ValueError, match="max_inline_retry_delay_ms must be >= 0"):
        WorkflowRunConfig(max_inline_retry_delay_ms=-1)


@pytest.mark.parametrize("value", [1.5, "1000", True])
def test_non_int_inline_retry_delay_is_refused_naming_the_field(value: object) -> None:
    with pytest.raises(TypeError, match="max_inline_retry_delay_ms"):
        WorkflowRunConfig(max_inline_retry_delay_ms=value)  # type: ignore[arg-type]


def test_server_settings_refuse_a_non_positive_payload_limit() -> None:
    with pytest.raises(ValueError, match=re.escape("ServerSettings.max_payload_bytes must be > 0")):
        ServerSettings(max_payload_bytes=0)


def test_server_settings_refuse_non_positive_recovery_attempts() -> None:
    with pytest.raises(ValueError, match=re.escape("ServerSettings.max_recovery_attempts")):
        ServerSettings(max_recovery_attempts=0)
