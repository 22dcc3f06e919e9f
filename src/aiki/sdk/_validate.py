"""Checks on definition names and versions, and on the arguments of `workflow_run.sleep`."""

from __future__ import annotations

import math
from datetime import timedelta

# Task names under this prefix are the engine's own records in a run's history (a sleep is
# `aiki.sleep/<name>`): a user task of that name would replay as one of them.
RESERVED_TASK_PREFIX = "aiki."

# Longer than this, a wake-up time would not fit a timestamp (timedelta's own limit).
_MAX_SLEEP_MS = timedelta.max // timedelta(milliseconds=1)


def check_name(value: object, *, kind: str) -> str:
    """A non-empty str, stripped of nothing: names are compared exactly."""
    if not isinstance(value, str):
        raise TypeError(f"{kind} name must be a str, got {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"{kind} name must not be empty")
    return value


def check_task_name(value: object) -> str:
    """A task name: as `check_name`, and outside the engine's reserved `aiki.` namespace."""
    name = check_name(value, kind="task")
    if name.startswith(RESERVED_TASK_PREFIX):
        raise ValueError(
            f"task name {name!r}: names starting with {RESERVED_TASK_PREFIX!r} are reserved "
            "for Aiki's own records (such as sleeps); choose another name"
        )
    return name


def check_version(value: object, *, workflow: str) -> str:
    if not isinstance(value, str):
        raise TypeError(
            f"workflow {workflow!r}: version must be a str such as '1.0.0', "
            f"got {type(value).__name__}"
        )
    if not value.strip():
        raise ValueError(f"workflow {workflow!r}: version must not be empty")
    return value


def sleep_duration_ms(value: object, *, what: str) -> int:
    """A sleep's duration in whole milliseconds, rounded up so a sleep never ends early.

    `value` is a `timedelta` or a number of seconds; `what` names the sleep in errors.
    """
    if isinstance(value, timedelta):
        if value < timedelta(0):
            raise ValueError(f"{what}: duration must not be negative, got {value}")
        # Exact integer arithmetic: timedelta counts microseconds.
        return -(-(value // timedelta(microseconds=1)) // 1000)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(
            f"{what}: duration must be a timedelta or a number of seconds, "
            f"got {type(value).__name__}"
        )
    if not math.isfinite(value):
        raise ValueError(f"{what}: duration must be finite, got {value}")
    if value < 0:
        raise ValueError(f"{what}: duration must not be negative, got {value} s")
    micros = round(value * 1_000_000)  # so that 1.1 s is 1100 ms, not 1101
    ms = -(-micros // 1000)
    if ms > _MAX_SLEEP_MS:
        raise ValueError(f"{what}: duration of {value} s is too long (at most {timedelta.max})")
    return ms
