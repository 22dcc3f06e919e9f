"""Payloads enqueued by name, checked against the JSON Schema their worker registered.

An application enqueueing through its `aiki.workflow` checks the payload with the workflow's
own pydantic type before sending. A run enqueued by name (the CLI, `POST /v1/runs` from any
language) has only the JSON Schema the workers registered to go by: checked here, a payload
the workflow cannot take is refused at once instead of failing later on a worker.

Formats (`date-time`, `email`) are not asserted: pydantic reads them more leniently than a
strict format check would, and the worker's own validation has the last word.
"""

from __future__ import annotations

import json
from functools import lru_cache

from jsonschema import Draft202012Validator
from jsonschema.exceptions import relevance
from jsonschema.protocols import Validator
from jsonschema.validators import validator_for

from aiki._core.serde import JSONValue
from aiki.errors import PayloadError

_SHOWN_ERRORS = 3


def check_payload(value: JSONValue, schema_json: str, *, what: str) -> None:
    """Refuse `value` unless it matches the registered schema.

    Raises:
        PayloadError: names where the payload differs from the schema, and how.
    """
    errors = sorted(_validator(schema_json).iter_errors(value), key=relevance)
    if not errors:
        return
    reasons = "; ".join(f"{error.json_path}: {error.message}" for error in errors[:_SHOWN_ERRORS])
    more = len(errors) - _SHOWN_ERRORS
    if more > 0:
        reasons += f"; and {more} more"
    raise PayloadError(f"{what} does not match the schema its worker registered: {reasons}")


@lru_cache(maxsize=256)
def _validator(schema_json: str) -> Validator:
    """The validator of one schema text, built once: building it costs far more than a check."""
    schema = json.loads(schema_json)
    validator: Validator = validator_for(schema, default=Draft202012Validator)(schema)
    return validator
