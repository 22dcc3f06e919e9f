"""Checks on definition names and versions."""

from __future__ import annotations


def check_name(value: object, *, kind: str) -> str:
    """A non-empty str, stripped of nothing: names are compared exactly."""
    if not isinstance(value, str):
        raise TypeError(f"{kind} name must be a str, got {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"{kind} name must not be empty")
    return value


def check_version(value: object, *, workflow: str) -> str:
    if not isinstance(value, str):
        raise TypeError(
            f"workflow {workflow!r}: version must be a str such as '1.0.0', "
            f"got {type(value).__name__}"
        )
    if not value.strip():
        raise ValueError(f"workflow {workflow!r}: version must not be empty")
    return value
