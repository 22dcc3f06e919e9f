"""JSON bodies from and to records, by msgspec: the dataclasses are the schema.

msgspec reads the records' annotations (with their bounds, see `aiki._core.models`), so a body
type is written once, as a dataclass, and both sides hold exactly its shape. It was measured
against pydantic `TypeAdapter`s over the same dataclasses (`bench/wire_codecs.py`) and is two
to three times faster on the enqueue and task-finish bodies.

Payloads and results cross as their canonical JSON text (`*_json: str` fields): the codec
moves that text as a string and never parses it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Generic, TypeVar

import msgspec

T = TypeVar("T")

# One encoder for every reply and request; msgspec caches what it learns of each type.
_encoder = msgspec.json.Encoder()

BodyError = (msgspec.ValidationError, msgspec.DecodeError)
"""What `Codec.decode` and `Codec.from_query` raise for a body not of the expected shape."""


def encode(value: object) -> bytes:
    """The JSON of a record, a tuple of records, or plain JSON values."""
    return _encoder.encode(value)


class Codec(Generic[T]):
    """A body type and its strict decoder, built on first use (import stays cheap)."""

    __slots__ = ("_decoder", "kind")

    def __init__(self, kind: type[T]) -> None:
        self.kind = kind
        self._decoder: msgspec.json.Decoder[T] | None = None

    @property
    def name(self) -> str:
        return self.kind.__name__

    def decode(self, data: bytes) -> T:
        """Read JSON text strictly: a string is not a number, a float is not an int.

        Raises:
            msgspec.DecodeError: not JSON.
            msgspec.ValidationError: not of this shape; the message ends with where.
        """
        if self._decoder is None:
            self._decoder = msgspec.json.Decoder(self.kind, strict=True)
        return self._decoder.decode(data)

    def from_query(self, params: Mapping[str, str]) -> T:
        """Read query parameters, which are all strings: "10" may be an int here."""
        return msgspec.convert(dict(params), self.kind, strict=False)


# "Object missing required field `x`", or a record's own check: "`state` must be ...".
_NAMED = re.compile(r"^(?:Object missing required field )?`([^`]+)`")


def error_path(exc: msgspec.ValidationError) -> tuple[str, str | None]:
    """The reason and the offending field (`leases[0].revision`) of a validation error.

    msgspec ends its message with where (`- at `$.leases[0].revision``), and names a missing
    field in the message itself, as records' own checks do: the field is then that name,
    under where.
    """
    message = str(exc)
    reason, sep, where = message.rpartition(" - at `$")
    if not sep:
        reason, where = message, ""
    path = where.removesuffix("`").removeprefix(".")
    named = _NAMED.match(reason)
    if named is not None:
        path = f"{path}.{named[1]}" if path else named[1]
    return reason, path or None


def json_schemas(kinds: list[type[Any]], ref_template: str) -> dict[str, Any]:
    """The JSON Schemas of `kinds` and of every record they hold, by name."""
    _, components = msgspec.json.schema_components(kinds, ref_template=ref_template)
    return components
