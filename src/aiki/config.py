"""Settings of the server and the worker, with their defaults."""

from __future__ import annotations

from dataclasses import dataclass

from aiki._core.serde import DEFAULT_MAX_PAYLOAD_BYTES

__all__ = ["ServerSettings", "SubscriberConfig", "WorkflowRunConfig"]

DEFAULT_STORAGE_URL = "sqlite:///.aiki/aiki.db"
DEFAULT_MAX_RECOVERY_ATTEMPTS = 10
# Leases last three of these: a dead worker's runs move on within 15 s.
DEFAULT_HEARTBEAT_INTERVAL_MS = 4_000
LEASE_HEARTBEATS = 3


def _positive(owner: str, **values: int | None) -> None:
    for name, value in values.items():
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{owner}.{name} must be an int, got {type(value).__name__}")
        if value <= 0:
            raise ValueError(f"{owner}.{name} must be > 0, got {value}")


@dataclass(frozen=True, slots=True, kw_only=True)
class SubscriberConfig:
    """How a worker asks for runs.

    Attributes:
        poll_interval_ms: While no work comes, how often storage is looked at again in case a
            wake-up was missed. New runs normally reach an idle worker at once (long-poll).
        max_batch_size: Most runs taken in one claim; None (the default) takes as many as the
            worker has free slots, so a worker that has room fills it in one claim.
        max_retry_delay_ms: Longest pause between tries while the server cannot be reached.
        long_poll_ms: How long one request for work may wait on the server before it returns
            empty.
    """

    poll_interval_ms: int = 100
    max_batch_size: int | None = None
    max_retry_delay_ms: int = 30_000
    long_poll_ms: int = 20_000

    def __post_init__(self) -> None:
        _positive(
            "SubscriberConfig",
            poll_interval_ms=self.poll_interval_ms,
            max_batch_size=self.max_batch_size,
            max_retry_delay_ms=self.max_retry_delay_ms,
            long_poll_ms=self.long_poll_ms,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkflowRunConfig:
    """How a worker holds the runs it executes.

    With the defaults, a worker renews its leases every 4 s and each lasts 12 s: a run whose
    worker died is taken by another worker within about 13 s (the lease, then at most the
    server's one-second look for expired leases), and the dead worker stops counting as
    alive when its last lease runs out.

    Attributes:
        heartbeat_interval_ms: How often the worker renews its leases.
        lease_ms: How long a lease lasts without a heartbeat; when it passes, another worker
            may take the run, and the worker no longer counts as alive. Three heartbeat
            intervals by default.
        max_inline_retry_delay_ms: Task retries due within this delay wait in place on the
            worker; longer ones put the run in `waiting` and free the worker.
    """

    heartbeat_interval_ms: int = DEFAULT_HEARTBEAT_INTERVAL_MS
    lease_ms: int | None = None
    max_inline_retry_delay_ms: int = 1_000

    def __post_init__(self) -> None:
        _positive(
            "WorkflowRunConfig",
            heartbeat_interval_ms=self.heartbeat_interval_ms,
            lease_ms=self.lease_ms,
        )
        inline = self.max_inline_retry_delay_ms
        if isinstance(inline, bool) or not isinstance(inline, int):
            raise TypeError(
                "WorkflowRunConfig.max_inline_retry_delay_ms must be an int, "
                f"got {type(inline).__name__}"
            )
        if inline < 0:
            raise ValueError("WorkflowRunConfig.max_inline_retry_delay_ms must be >= 0")
        if self.lease_ms is not None and self.lease_ms <= self.heartbeat_interval_ms:
            raise ValueError(
                f"WorkflowRunConfig.lease_ms ({self.lease_ms}) must be longer than "
                f"heartbeat_interval_ms ({self.heartbeat_interval_ms})"
            )

    @property
    def effective_lease_ms(self) -> int:
        """The lease duration in force."""
        return self.lease_ms or LEASE_HEARTBEATS * self.heartbeat_interval_ms


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerSettings:
    """Settings of an Aiki server.

    Attributes:
        storage: Storage URL, e.g. "sqlite:///.aiki/aiki.db".
        max_payload_bytes: Largest payload or result accepted, in bytes of JSON.
        max_recovery_attempts: How many times a run may lose its worker before it fails.
    """

    storage: str = DEFAULT_STORAGE_URL
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    max_recovery_attempts: int = DEFAULT_MAX_RECOVERY_ATTEMPTS

    def __post_init__(self) -> None:
        _positive(
            "ServerSettings",
            max_payload_bytes=self.max_payload_bytes,
            max_recovery_attempts=self.max_recovery_attempts,
        )
