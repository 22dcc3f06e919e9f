"""Error replies: each error class's stable code and HTTP status, written once.

An error reply is an `ErrorBody`: the code, the message, and the exception's attributes by
name, from which the client rebuilds the exception the in-process service would raise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import msgspec

from aiki.errors import (
    AikiError,
    ClientError,
    EventRejectedError,
    IdempotencyConflictError,
    IllegalTransitionError,
    InvalidRequestError,
    LeaseLostError,
    PayloadError,
    PayloadTooLargeError,
    RunNotFoundError,
    StorageError,
    UnauthorizedError,
    WorkflowNotFoundError,
)


@dataclass(frozen=True, slots=True, kw_only=True)
class ErrorBody:
    """Every error reply: a stable `code`, a message, and the error's attributes."""

    code: str
    message: str
    run_id: str | None = None
    workflow: str | None = None
    version: str | None = None
    idempotency_key: str | None = None
    name: str | None = None
    revision: int | None = None
    current: str | None = None
    action: str | None = None
    size: int | None = None
    limit: int | None = None
    field: str | None = None
    known: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class _Kind:
    code: str
    status: int
    attributes: tuple[str, ...] = ()
    # Whether the constructor takes the message first; otherwise it builds it from attributes.
    takes_message: bool = True


# Subclasses are found before their bases: the lookup walks the exception's MRO.
_KINDS: Final[dict[type[AikiError], _Kind]] = {
    RunNotFoundError: _Kind("run_not_found", 404, ("run_id",), takes_message=False),
    WorkflowNotFoundError: _Kind(
        "workflow_not_found", 404, ("workflow", "version", "known"), takes_message=False
    ),
    IdempotencyConflictError: _Kind(
        "idempotency_conflict",
        409,
        ("workflow", "version", "idempotency_key", "run_id"),
        takes_message=False,
    ),
    EventRejectedError: _Kind("event_rejected", 409, ("run_id", "name", "idempotency_key")),
    LeaseLostError: _Kind("lease_lost", 409, ("run_id", "revision"), takes_message=False),
    IllegalTransitionError: _Kind(
        "illegal_transition", 409, ("run_id", "current", "action"), takes_message=False
    ),
    PayloadTooLargeError: _Kind("payload_too_large", 413, ("size", "limit")),
    PayloadError: _Kind("payload_invalid", 422),
    InvalidRequestError: _Kind("invalid_request", 422, ("field",)),
    UnauthorizedError: _Kind("unauthorized", 401),
    StorageError: _Kind("storage_error", 503),
}

# Codes the HTTP layer itself answers with, for requests no endpoint took.
ROUTING_CODES: Final[dict[str, int]] = {
    "not_found": 404,
    "method_not_allowed": 405,
    "internal_error": 500,
}

ERROR_CODES: Final[dict[str, int]] = {
    **{kind.code: kind.status for kind in _KINDS.values()},
    **ROUTING_CODES,
}
"""Every stable error code, with the HTTP status it is sent with."""

# Attributes an error may lack; any other missing one makes the body unreadable.
_MAY_BE_NULL: Final = frozenset({"idempotency_key", "field"})

_BY_CODE: Final[dict[str, tuple[type[AikiError], _Kind]]] = {
    kind.code: (cls, kind) for cls, kind in _KINDS.items()
}


def error_reply(exc: BaseException) -> tuple[int, dict[str, Any]] | None:
    """The HTTP status and body for `exc`, or None if it is not an error the API reports."""
    for cls in type(exc).__mro__:
        kind = _KINDS.get(cls)
        if kind is not None:
            status = kind.status
            if isinstance(exc, InvalidRequestError) and exc.field is None:
                status = 400  # not JSON at all: nothing to point at
            body: dict[str, Any] = {"code": kind.code, "message": str(exc)}
            for attribute in kind.attributes:
                body[attribute] = getattr(exc, attribute)
            return status, body
    return None


def plain_error(code: str, message: str) -> dict[str, Any]:
    """The body of an error no exception stands for (routing, internal errors)."""
    return {"code": code, "message": message}


_ERROR_BODY = msgspec.json.Decoder(ErrorBody)


def read_error(data: bytes) -> ErrorBody | None:
    """The error body in a reply, or None if the reply is not one of ours."""
    try:
        return _ERROR_BODY.decode(data)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None


def exception_of(body: ErrorBody) -> AikiError:
    """The exception an error body stands for: the class the in-process service raises.

    An unknown code, or a body that lacks the attributes its code needs, gives a `ClientError`
    with the server's message.
    """
    entry = _BY_CODE.get(body.code)
    if entry is not None:
        cls, kind = entry
        attributes = {name: getattr(body, name) for name in kind.attributes}
        missing = [n for n, v in attributes.items() if v is None and n not in _MAY_BE_NULL]
        if missing:
            return ClientError(f"{body.code}: {body.message}")
        try:
            if kind.takes_message:
                return cls(body.message, **attributes)
            return cls(**attributes)
        except (TypeError, ValueError):
            pass
    return ClientError(f"{body.code}: {body.message}")
