"""JSON for payloads and results: validation, canonical form, addresses and typed decoding.

Payloads and results are JSON values or pydantic models. Everything else is refused here, before
anything is stored, with an error that names the workflow or task and the offending type.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any, TypeAlias

import pydantic

from aiki.errors import PayloadError, PayloadTooLargeError

JSONValue: TypeAlias = dict[str, "JSONValue"] | list["JSONValue"] | str | int | float | bool | None

DEFAULT_MAX_PAYLOAD_BYTES = 1024 * 1024

_SCALARS = (str, int, float, bool, type(None))


def to_json_value(value: object, *, what: str) -> JSONValue:
    """Return `value` as plain JSON data, or raise `PayloadError` naming `what` and the bad type.

    Pydantic models become their JSON-mode dump. Tuples are refused like any other non-JSON
    type: a tuple that came back as a list on replay would change the workflow's behaviour.
    """
    try:
        return _walk(value, what, "")
    except RecursionError:
        raise PayloadError(f"{what}: value is nested too deeply or contains itself") from None


def _walk(value: object, what: str, path: str) -> JSONValue:
    if isinstance(value, str | bool | int) or value is None:
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise PayloadError(f"{what}: {value!r} at {path or 'top level'} is not a JSON number")
        return value
    if isinstance(value, dict):
        out: dict[str, JSONValue] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise PayloadError(
                    f"{what}: dict key {key!r} at {path or 'top level'} is a "
                    f"{type(key).__name__}; JSON object keys must be str"
                )
            out[key] = _walk(item, what, f"{path}.{key}" if path else key)
        return out
    if isinstance(value, list):
        return [_walk(item, what, f"{path}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, pydantic.BaseModel):
        # The dump may still hold NaN or infinity: check it like any other value.
        return _walk(value.model_dump(mode="json"), what, path)
    raise PayloadError(
        f"{what}: value of type {type(value).__qualname__} at {path or 'top level'} is not "
        "JSON-serializable (use dict, list, str, int, float, bool, None or a pydantic model)"
    )


# Built once: json.dumps with options builds a new encoder on every call.
_canonical = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def dumps(value: JSONValue) -> str:
    """Canonical JSON text: sorted keys, no spaces, so equal values give equal text."""
    return _canonical.encode(value)


def loads(text: str) -> JSONValue:
    """Parse JSON text stored by `dumps`."""
    parsed: JSONValue = json.loads(text)
    return parsed


def encode(value: object, *, what: str, limit: int | None = DEFAULT_MAX_PAYLOAD_BYTES) -> str:
    """Validate `value` and return its canonical JSON text, refusing more than `limit` bytes.

    `limit=None` skips the size check, for callers that leave it to the server.
    """
    return encode_json_value(to_json_value(value, what=what), what=what, limit=limit)


def encode_json_value(value: JSONValue, *, what: str, limit: int | None) -> str:
    """`encode` for a value `to_json_value` has already checked."""
    text = dumps(value)
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError as exc:  # a lone surrogate: no UTF-8 form, so no JSON text
            raise PayloadError(f"{what}: string is not valid Unicode ({exc.reason})") from None
    if limit is not None:
        check_size(text, what=what, limit=limit)
    return text


def check_size(text: str, *, what: str, limit: int) -> None:
    """Raise `PayloadTooLargeError` if `text` is longer than `limit` bytes of UTF-8."""
    # Most payloads are far below the limit; only count bytes when characters could exceed it.
    if len(text) * 4 <= limit:
        return
    size = len(text.encode())
    if size > limit:
        raise PayloadTooLargeError(
            f"{what}: {size} bytes of JSON is over the limit of {limit} bytes (max_payload_bytes)",
            size=size,
            limit=limit,
        )


def parse_json(text: str, *, what: str) -> JSONValue:
    """The JSON value of `text`.

    Raises:
        PayloadError: not JSON text.
    """
    try:
        value: JSONValue = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise PayloadError(f"{what} is not JSON text: {exc}") from None
    return value


def canonical_json(text: str, *, what: str) -> str:
    """Check that `text` is JSON and return its canonical form (the same text, if it was).

    Raises:
        PayloadError: not JSON text, or not a JSON value Aiki stores (NaN, a lone surrogate).
    """
    return encode(parse_json(text, what=what), what=what, limit=None)


def digest(text: str) -> str:
    """SHA-256 hex digest of canonical JSON text: the payload part of a task's address."""
    return hashlib.sha256(text.encode()).hexdigest()


class Decoder:
    """Turns stored JSON back into the type a function is annotated with."""

    __slots__ = ("_adapter",)

    def __init__(self, annotation: Any) -> None:
        self._adapter: pydantic.TypeAdapter[Any] | None = (
            None if _is_plain_json(annotation) else _adapter_for(annotation)
        )

    def decode(self, value: JSONValue) -> Any:
        """Validate `value` into the annotated type (plain JSON passes through unchanged)."""
        if self._adapter is None:
            return value
        return self._adapter.validate_python(value)

    def check(self, value: JSONValue, *, what: str) -> None:
        """Refuse `value` now if decoding it would fail later (plain JSON always passes).

        Raises:
            PayloadError: the annotated type does not accept `value`; says where and why.
        """
        if self._adapter is None:
            return
        try:
            self._adapter.validate_python(value)
        except pydantic.ValidationError as exc:
            expected = _type_name(self._adapter)
            raise PayloadError(f"{what} does not match {expected}: {_reasons(exc)}") from None

    def json_schema(self) -> str | None:
        """The annotated type's JSON Schema as canonical text; None when any JSON passes.

        Workers register it so the server can check payloads enqueued by name.
        """
        if self._adapter is None:
            return None
        return dumps(self._adapter.json_schema())

    def decode_json(self, text: str | None) -> Any:
        """`decode` for JSON text: parsed once, straight into the annotated type.

        None (no result stored) decodes as the JSON value null.
        """
        if text is None:
            return self.decode(None)
        if self._adapter is None:
            return loads(text)
        return self._adapter.validate_json(text)


def _type_name(adapter: pydantic.TypeAdapter[Any]) -> str:
    title = adapter.json_schema().get("title")
    return str(title) if title else "the annotated type"


def _reasons(exc: pydantic.ValidationError, shown: int = 3) -> str:
    """The first few of pydantic's complaints, one line: `user_id: Field required; ...`."""
    errors = exc.errors(include_url=False, include_input=False)
    parts = []
    for error in errors[:shown]:
        where = ".".join(str(part) for part in error["loc"]) or "top level"
        parts.append(f"{where}: {error['msg']}")
    more = f" (and {len(errors) - shown} more)" if len(errors) > shown else ""
    return "; ".join(parts) + more


def _is_plain_json(annotation: Any) -> bool:
    if annotation is Any or annotation is None or annotation in _SCALARS:
        return True
    origin = getattr(annotation, "__origin__", None)
    return origin in (dict, list, Mapping, Sequence) and not _mentions_model(annotation)


def _mentions_model(annotation: Any) -> bool:
    if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
        return True
    return any(_mentions_model(arg) for arg in getattr(annotation, "__args__", ()))


@lru_cache(maxsize=512)
def _adapter_for(annotation: Any) -> pydantic.TypeAdapter[Any]:
    return pydantic.TypeAdapter(annotation)
