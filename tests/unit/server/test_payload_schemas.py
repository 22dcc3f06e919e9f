"""Payloads enqueued by name, checked against the JSON Schema a worker registered."""

from __future__ import annotations

from typing import Any

import pydantic
import pytest

from aiki._core.serde import Decoder, JSONValue
from aiki.errors import PayloadError
from aiki.server._payload_schemas import check_payload


class Address(pydantic.BaseModel):
    city: str
    zip_code: str


class Customer(pydantic.BaseModel):
    name: str
    age: int = pydantic.Field(ge=0)
    address: Address  # nested: the schema refers to it through `$defs`
    tags: list[str] = []


def schema_of(annotation: Any) -> str:
    schema = Decoder(annotation).json_schema()
    assert schema is not None
    return schema


def refused(value: Any, annotation: Any = Customer) -> str:
    with pytest.raises(PayloadError) as error:
        check_payload(value, schema_of(annotation), what="workflow 'crm' payload")
    return str(error.value)


def test_plain_json_types_register_no_schema() -> None:
    assert Decoder(dict[str, Any]).json_schema() is None
    assert Decoder(Any).json_schema() is None


def test_a_payload_that_fits_passes() -> None:
    fits: JSONValue = {"name": "Ada", "age": 36, "address": {"city": "London", "zip_code": "N1"}}
    check_payload(fits, schema_of(Customer), what="payload")
    Customer.model_validate(fits)  # and the worker would take it


def test_errors_name_the_place_in_the_payload_and_nested_models_are_followed() -> None:
    message = refused({"name": "Ada", "age": -1, "address": {"city": 7}})
    assert message.startswith(
        "workflow 'crm' payload does not match the schema its worker registered: "
    )
    assert "$.age: -1 is less than the minimum of 0" in message
    assert "$.address.city: 7 is not of type 'string'" in message
    assert "$.address: 'zip_code' is a required property" in message


def test_only_the_first_few_errors_are_listed() -> None:
    message = refused({"name": 1, "age": "x", "address": [], "tags": [1, 2, 3]})
    assert message.count("$") == 3
    assert message.endswith("; and 3 more")


def test_the_schema_text_is_canonical_so_equal_types_register_equal_text() -> None:
    assert schema_of(Customer) == schema_of(Customer)
    assert schema_of(list[Customer]) != schema_of(Customer)
    refused([{"name": "Ada"}], list[Customer])
