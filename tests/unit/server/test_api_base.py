"""The HTTP layer's pure helpers: canonical JSON text and validation messages."""

from __future__ import annotations

import msgspec
import pytest

from aiki._core.serde import canonical_json, dumps
from aiki._http.bodies import HeartbeatBody, ReleaseBody
from aiki._http.codec import Codec
from aiki.errors import PayloadError
from aiki.server._api._base import invalid_request


@pytest.mark.parametrize(
    "value",
    [
        None,
        0,
        -0.0,
        1.5,
        1e16,
        2**70,
        'snow ☃ and \u2028 and \n and "quotes"',
        {"b": [1, {"d": None, "c": True}], "a": ""},
        [],
    ],
)
def test_canonical_text_is_kept_exactly(value: object) -> None:
    text = dumps(value)  # type: ignore[arg-type]
    assert canonical_json(text, what="x") == text


def test_other_json_text_is_made_canonical() -> None:
    assert canonical_json('{ "b" : 1,\n "a" : [1.0, 2] }', what="x") == '{"a":[1.0,2],"b":1}'


@pytest.mark.parametrize("text", ["", "{", "NaN", "[Infinity]", '"\\ud800"', "[" * 100_000])
def test_text_that_is_not_storable_json_is_a_payload_error(text: str) -> None:
    with pytest.raises(PayloadError, match="payload of w"):
        canonical_json(text, what="payload of w")


def test_invalid_request_names_the_first_field_with_list_indexes() -> None:
    codec = Codec(HeartbeatBody)
    body = b'{"worker_id": "w", "lease_ms": 1, "leases": [{"run_id": "r", "revision": -1}]}'
    with pytest.raises(msgspec.ValidationError) as caught:
        codec.decode(body)

    error = invalid_request(caught.value, where="body")

    assert error.field == "leases[0].revision"
    assert str(error) == "invalid request body: leases[0].revision: Expected `int` >= 0"


def test_invalid_request_names_a_missing_field() -> None:
    with pytest.raises(msgspec.ValidationError) as caught:
        Codec(HeartbeatBody).decode(b'{"worker_id": "w", "leases": []}')
    error = invalid_request(caught.value, where="body")
    assert error.field == "lease_ms" and "lease_ms" in str(error)


def test_invalid_request_names_a_missing_nested_field() -> None:
    with pytest.raises(msgspec.ValidationError) as caught:
        Codec(HeartbeatBody).decode(b'{"worker_id": "w", "lease_ms": 1, "leases": [{}]}')
    assert invalid_request(caught.value, where="body").field == "leases[0].run_id"


def test_unreadable_body_names_no_field() -> None:
    with pytest.raises(msgspec.DecodeError) as caught:
        Codec(ReleaseBody).decode(b"{oops")
    error = invalid_request(caught.value, where="body")
    assert error.field is None and str(error).startswith("request body is not valid JSON")
