"""Payload and result JSON: what is accepted, what is refused, canonical text and decoding."""

import datetime
import decimal
import math
from typing import Any, Optional

import pydantic
import pytest

from aiki._core.serde import (
    DEFAULT_MAX_PAYLOAD_BYTES,
    Decoder,
    JSONValue,
    digest,
    dumps,
    encode,
    loads,
    to_json_value,
)
from aiki.errors import PayloadError, PayloadTooLargeError

WHAT = "workflow 'checkout' payload"


class Item(pydantic.BaseModel):
    sku: str
    quantity: int


class Order(pydantic.BaseModel):
    order_id: int
    items: list[Item]
    placed_at: datetime.datetime | None = None


class Measurement(pydantic.BaseModel):
    value: float


ORDER = Order(order_id=42, items=[Item(sku="tea", quantity=2)])
ORDER_JSON: dict[str, JSONValue] = {
    "order_id": 42,
    "items": [{"sku": "tea", "quantity": 2}],
    "placed_at": None,
}


# --- to_json_value: accepted ------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        False,
        0,
        -7,
        2**70,
        1.5,
        "",
        "grüße ☕",
        [],
        {},
        [1, "two", 3.0, None, True],
        {"a": {"b": [{"c": None}]}},
    ],
)
def test_json_values_pass_through_unchanged(value: JSONValue) -> None:
    assert to_json_value(value, what=WHAT) == value


def test_a_pydantic_model_becomes_its_json_dump() -> None:
    assert to_json_value(ORDER, what=WHAT) == ORDER_JSON


def test_pydantic_model_fields_are_dumped_in_json_mode() -> None:
    placed = Order(order_id=1, items=[], placed_at=datetime.datetime(2026, 1, 2, 3, 4, 5))
    assert to_json_value(placed, what=WHAT) == {
        "order_id": 1,
        "items": [],
        "placed_at": "2026-01-02T03:04:05",
    }


def test_pydantic_models_nested_in_dicts_and_lists_are_dumped() -> None:
    value = {"orders": [ORDER], "first": ORDER}
    assert to_json_value(value, what=WHAT) == {"orders": [ORDER_JSON], "first": ORDER_JSON}


# --- to_json_value: refused -------------------------------------------------------------------


class Opaque:
    pass


@pytest.mark.parametrize(
    ("value", "type_name"),
    [
        ({1, 2}, "set"),
        (frozenset({1}), "frozenset"),
        ((1, 2), "tuple"),
        (b"bytes", "bytes"),
        (bytearray(b"x"), "bytearray"),
        (datetime.datetime(2026, 1, 1), "datetime"),
        (datetime.date(2026, 1, 1), "date"),
        (decimal.Decimal("1.5"), "Decimal"),
        (Opaque(), "Opaque"),
        (object(), "object"),
        (len, "builtin_function_or_method"),
    ],
)
def test_non_json_values_are_refused_naming_what_and_the_type(
    value: object, type_name: str
) -> None:
    with pytest.raises(PayloadError) as raised:
        to_json_value(value, what=WHAT)
    message = str(raised.value)
    assert WHAT in message
    assert type_name in message
    assert "top level" in message


def test_a_refused_value_deep_inside_names_its_path() -> None:
    value = {"order": {"lines": [{"sku": "tea"}, {"tags": {"a", "b"}}]}}
    with pytest.raises(PayloadError) as raised:
        to_json_value(value, what=WHAT)
    message = str(raised.value)
    assert WHAT in message
    assert "set" in message
    assert "order.lines[1].tags" in message


def test_a_tuple_inside_a_list_is_refused_with_its_index() -> None:
    with pytest.raises(PayloadError, match=r"tuple at \[2\]"):
        to_json_value([1, 2, (3, 4)], what=WHAT)


@pytest.mark.parametrize(("key", "type_name"), [(1, "int"), ((1, 2), "tuple"), (None, "NoneType")])
def test_non_str_dict_keys_are_refused_naming_the_key_type(key: object, type_name: str) -> None:
    with pytest.raises(PayloadError) as raised:
        to_json_value({"outer": {key: "v"}}, what=WHAT)
    message = str(raised.value)
    assert WHAT in message
    assert type_name in message
    assert "outer" in message


@pytest.mark.parametrize("number", [math.nan, math.inf, -math.inf])
def test_non_finite_floats_are_refused_naming_the_path(number: float) -> None:
    with pytest.raises(PayloadError) as raised:
        to_json_value({"reading": [1.0, number]}, what=WHAT)
    message = str(raised.value)
    assert WHAT in message
    assert repr(number) in message
    assert "reading[1]" in message


@pytest.mark.parametrize("number", [math.nan, math.inf])
def test_non_finite_floats_inside_a_pydantic_model_are_refused(number: float) -> None:
    # A model's JSON-mode dump keeps nan/inf as floats, and `dumps` would then write the
    # non-JSON tokens NaN / Infinity.
    with pytest.raises(PayloadError, match=WHAT):
        to_json_value(Measurement(value=number), what=WHAT)


def test_non_finite_floats_inside_a_nested_pydantic_model_are_refused() -> None:
    with pytest.raises(PayloadError, match=WHAT):
        to_json_value({"readings": [Measurement(value=math.inf)]}, what=WHAT)


def test_a_self_referencing_list_is_refused_with_a_payload_error() -> None:
    loop: list[object] = []
    loop.append(loop)
    with pytest.raises(PayloadError, match=WHAT):
        to_json_value(loop, what=WHAT)


def test_payload_errors_are_type_errors_too() -> None:
    with pytest.raises(TypeError):
        to_json_value({1, 2}, what=WHAT)


# --- canonical text and digests ---------------------------------------------------------------


def test_dumps_is_independent_of_key_order() -> None:
    left: JSONValue = {"b": 1, "a": {"y": [1, 2], "x": None}}
    right: JSONValue = {"a": {"x": None, "y": [1, 2]}, "b": 1}
    assert dumps(left) == dumps(right)


def test_dumps_is_compact_and_sorted() -> None:
    assert dumps({"b": [1, 2], "a": "x"}) == '{"a":"x","b":[1,2]}'


def test_dumps_keeps_list_order() -> None:
    assert dumps([2, 1]) != dumps([1, 2])


def test_dumps_writes_non_ascii_text_as_is() -> None:
    assert dumps({"drink": "café"}) == '{"drink":"café"}'


def test_loads_reverses_dumps() -> None:
    value: JSONValue = {"a": [1, 2.5, "x", None, True], "b": {}}
    assert loads(dumps(value)) == value


def test_digest_is_the_sha256_hex_of_the_text() -> None:
    assert digest("{}") == "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"


def test_digest_is_stable_across_key_orders() -> None:
    assert digest(dumps({"a": 1, "b": 2})) == digest(dumps({"b": 2, "a": 1}))


def test_digest_differs_for_different_payloads() -> None:
    assert digest(dumps({"a": 1})) != digest(dumps({"a": 2}))


def test_equal_model_and_dict_payloads_have_the_same_encoding() -> None:
    assert encode(ORDER, what=WHAT) == encode(ORDER_JSON, what=WHAT)


def test_a_lone_surrogate_never_escapes_as_a_unicode_error() -> None:
    # A str may hold a lone surrogate that UTF-8 cannot encode; it must be refused as a
    # PayloadError up front (or written escaped), never crash later when hashed or stored.
    try:
        text = encode({"note": "\ud800"}, what=WHAT)
    except PayloadError:
        return
    assert len(digest(text)) == 64
    text.encode()


# --- encode and the size limit ----------------------------------------------------------------


def test_encode_returns_canonical_text() -> None:
    assert encode({"b": 1, "a": [ORDER]}, what=WHAT) == dumps({"a": [ORDER_JSON], "b": 1})


def test_encode_refuses_what_to_json_value_refuses() -> None:
    with pytest.raises(PayloadError, match=WHAT):
        encode({"when": datetime.date(2026, 1, 1)}, what=WHAT)


def test_encode_within_the_limit_is_accepted() -> None:
    text = encode("x" * 8, what=WHAT, limit=10)  # '"xxxxxxxx"' is exactly 10 bytes
    assert len(text.encode()) == 10


def test_encode_over_the_limit_raises_with_size_and_limit() -> None:
    with pytest.raises(PayloadTooLargeError) as raised:
        encode("x" * 9, what=WHAT, limit=10)
    assert raised.value.size == 11
    assert raised.value.limit == 10
    assert WHAT in str(raised.value)


def test_the_limit_counts_utf8_bytes_not_characters() -> None:
    # Four characters, but "☕" is three bytes of UTF-8: 2 quotes + 4 * 3 = 14 bytes.
    with pytest.raises(PayloadTooLargeError) as raised:
        encode("☕" * 4, what=WHAT, limit=13)
    assert raised.value.size == 14


def test_payload_too_large_is_a_payload_error_and_a_value_error() -> None:
    with pytest.raises(PayloadTooLargeError) as raised:
        encode([0] * 100, what=WHAT, limit=16)
    assert isinstance(raised.value, PayloadError)
    assert isinstance(raised.value, ValueError)


def test_limit_none_skips_the_size_check() -> None:
    big = "x" * (DEFAULT_MAX_PAYLOAD_BYTES + 1)
    assert len(encode(big, what=WHAT, limit=None)) == DEFAULT_MAX_PAYLOAD_BYTES + 3


def test_the_default_limit_applies_when_none_is_given() -> None:
    with pytest.raises(PayloadTooLargeError) as raised:
        encode("x" * DEFAULT_MAX_PAYLOAD_BYTES, what=WHAT)
    assert raised.value.limit == DEFAULT_MAX_PAYLOAD_BYTES


# --- Decoder ----------------------------------------------------------------------------------


def test_decoder_builds_a_pydantic_model() -> None:
    assert Decoder(Order).decode(loads(encode(ORDER, what=WHAT))) == ORDER


def test_decoder_builds_a_list_of_models() -> None:
    decoded = Decoder(list[Item]).decode([{"sku": "a", "quantity": 1}, {"sku": "b", "quantity": 2}])
    assert decoded == [Item(sku="a", quantity=1), Item(sku="b", quantity=2)]


def test_decoder_builds_a_dict_of_models() -> None:
    decoded = Decoder(dict[str, Item]).decode({"x": {"sku": "a", "quantity": 1}})
    assert decoded == {"x": Item(sku="a", quantity=1)}


@pytest.mark.parametrize(
    "annotation",
    [
        pytest.param(Item | None, id="union"),
        pytest.param(Optional[Item], id="Optional"),  # noqa: UP045 (the spelling under test)
    ],
)
def test_decoder_handles_optional_models(annotation: Any) -> None:
    decoder = Decoder(annotation)
    assert decoder.decode(None) is None
    assert decoder.decode({"sku": "a", "quantity": 1}) == Item(sku="a", quantity=1)


@pytest.mark.parametrize(
    ("annotation", "value"),
    [
        (Any, {"a": [1, 2]}),
        (None, None),
        (int, 3),
        (str, "x"),
        (float, 1.5),
        (bool, True),
        (dict[str, Any], {"a": [1, {"b": None}]}),
        (list[int], [1, 2, 3]),
    ],
)
def test_decoder_passes_plain_json_through(annotation: Any, value: JSONValue) -> None:
    assert Decoder(annotation).decode(value) == value


def test_decoder_round_trips_a_model_through_encode() -> None:
    text = encode({"order": ORDER}, what=WHAT)
    assert Decoder(dict[str, Order]).decode(loads(text)) == {"order": ORDER}


def test_decoder_refuses_json_that_does_not_fit_the_model() -> None:
    with pytest.raises(pydantic.ValidationError):
        Decoder(Item).decode({"sku": "a"})
