"""Retry policies for tasks."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from enum import StrEnum


class RetryKind(StrEnum):
    NEVER = "never"
    FIXED = "fixed"
    EXPONENTIAL = "exponential"
    JITTERED = "jittered"


# The longest wait a policy can produce, so huge exponents never overflow: 30 days.
_MAX_DELAY_MS = 30 * 24 * 3600 * 1000


def _check(max_attempts: int, **delays: int | float | None) -> None:
    if isinstance(max_attempts, bool) or not isinstance(max_attempts, int):
        raise TypeError(f"max_attempts must be an int, got {type(max_attempts).__name__}")
    if max_attempts < 1:
        raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
    for name, value in delays.items():
        if value is None and name == "max_delay_ms":
            continue
        _check_number(name, value, minimum=0)


def _check_number(name: str, value: object, *, minimum: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum:g}, got {value}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Retry:
    """How often a failed task is tried again, and how long to wait in between.

    Build one with `Retry.never()`, `Retry.fixed(...)`, `Retry.exponential(...)` or
    `Retry.jittered(...)`; `max_attempts` counts the first try.
    """

    kind: RetryKind
    max_attempts: int = 1
    delay_ms: int = 0
    factor: float = 2.0
    max_delay_ms: int | None = None

    @classmethod
    def never(cls) -> Retry:
        """One attempt only (the default)."""
        return cls(kind=RetryKind.NEVER)

    @classmethod
    def fixed(cls, max_attempts: int, delay_ms: int) -> Retry:
        """Up to `max_attempts` tries, `delay_ms` apart."""
        _check(max_attempts, delay_ms=delay_ms)
        return cls(kind=RetryKind.FIXED, max_attempts=max_attempts, delay_ms=int(delay_ms))

    @classmethod
    def exponential(
        cls,
        max_attempts: int,
        base_delay_ms: int,
        factor: float = 2,
        max_delay_ms: int | None = None,
    ) -> Retry:
        """Up to `max_attempts` tries; the n-th retry waits `base_delay_ms * factor**(n-1)`."""
        _check(max_attempts, base_delay_ms=base_delay_ms, max_delay_ms=max_delay_ms)
        _check_number("factor", factor, minimum=1)
        return cls(
            kind=RetryKind.EXPONENTIAL,
            max_attempts=max_attempts,
            delay_ms=int(base_delay_ms),
            factor=float(factor),
            max_delay_ms=None if max_delay_ms is None else int(max_delay_ms),
        )

    @classmethod
    def jittered(
        cls,
        max_attempts: int,
        base_delay_ms: int,
        factor: float = 2,
        max_delay_ms: int | None = None,
    ) -> Retry:
        """Like `exponential`, but each wait is drawn uniformly from zero to that delay.

        Full jitter spreads out retries of many runs that failed together.
        """
        base = cls.exponential(max_attempts, base_delay_ms, factor, max_delay_ms)
        return cls(
            kind=RetryKind.JITTERED,
            max_attempts=base.max_attempts,
            delay_ms=base.delay_ms,
            factor=base.factor,
            max_delay_ms=base.max_delay_ms,
        )

    def delay_after(self, attempt: int) -> int | None:
        """Milliseconds to wait after failed attempt number `attempt`, or None if none are left."""
        if attempt >= self.max_attempts:
            return None
        if self.kind is RetryKind.FIXED:
            return self.delay_ms
        try:
            delay = self.delay_ms * self.factor ** (attempt - 1)
        except OverflowError:
            delay = math.inf
        delay = min(delay, _MAX_DELAY_MS if self.max_delay_ms is None else self.max_delay_ms)
        if self.kind is RetryKind.JITTERED:
            delay = random.uniform(0, delay)
        return int(delay)
