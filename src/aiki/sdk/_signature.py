"""Checks and type lookups on user functions, done once at definition time."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from typing import Any


def check_single_argument(fn: Callable[..., Any], *, what: str, argument: str) -> None:
    """Raise `TypeError` unless `fn` can be called with exactly one positional argument."""
    if not callable(fn):
        raise TypeError(f"{what}: run must be callable, got {type(fn).__name__}")
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return  # builtins without a signature: trust them
    try:
        signature.bind(object())
    except TypeError:
        raise TypeError(
            f"{what}: run function must take exactly one argument (the {argument}), "
            f"but its signature is {getattr(fn, '__name__', type(fn).__name__)}{signature}"
        ) from None


def first_argument_type(fn: Callable[..., Any]) -> Any:
    """The type parameter of the first argument's annotation (`WorkflowRun[Order]` → Order)."""
    hints = _hints(fn)
    params = [p for p in inspect.signature(fn).parameters.values() if p.name in hints]
    if not params:
        return Any
    args = typing.get_args(hints[params[0].name])
    return args[0] if args else Any


def return_type(fn: Callable[..., Any]) -> Any:
    """The annotated return type, or Any."""
    return _hints(fn).get("return", Any)


def _hints(fn: Callable[..., Any]) -> dict[str, Any]:
    try:
        return typing.get_type_hints(fn)
    except Exception:  # names defined in a local scope cannot be resolved: treat as untyped
        return {}
