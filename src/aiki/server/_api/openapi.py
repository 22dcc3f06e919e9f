"""The OpenAPI 3.1 document of the API, built from the endpoints and their JSON bodies' schemas."""

from __future__ import annotations

import re
from collections.abc import Sequence
from importlib import metadata
from typing import Any

from aiki._http.bodies import HealthBody
from aiki._http.codec import Codec, json_schemas
from aiki._http.errors import ERROR_CODES, ErrorBody
from aiki.server._api._base import Endpoint

ERROR = Codec(ErrorBody)
HEALTH = Codec(HealthBody)

_REF = "#/components/schemas/{name}"
_PATH_PARAM = re.compile(r"{(\w+)}")

# Sent by any endpoint, whatever it does.
_ALWAYS = {
    "401": "`unauthorized`: the server has an API key and the request lacks it",
    "503": "`storage_error`: the storage backend failed; try again later",
}


def build_openapi(endpoints: Sequence[Endpoint], *, secured: bool) -> dict[str, Any]:
    """The OpenAPI document listing every endpoint, `/health` and `/openapi.json` itself."""
    schemas = _schemas(endpoints)
    paths: dict[str, dict[str, Any]] = {
        "/health": {
            "get": {
                "operationId": "health",
                "summary": "Liveness check (never needs the API key)",
                "tags": ["meta"],
                "security": [],
                "responses": {"200": _json_reply("The server is up", HEALTH)},
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document",
                "tags": ["meta"],
                "responses": {"200": {"description": "The OpenAPI document"}},
            }
        },
    }
    for endpoint in endpoints:
        paths.setdefault(endpoint.path, {})[endpoint.method.lower()] = _operation(endpoint, schemas)
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "Aiki",
            "version": _version(),
            "description": (
                "Durable workflow engine. Every error reply is an `ErrorBody` with a stable "
                "`code`. Payloads and results travel as their canonical JSON text, in string "
                "fields named `*_json` (`payload_json`, `result_json`, `data_json`); the server "
                "stores and returns that text as it is."
            ),
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
    if secured:
        document["security"] = [{"bearer": []}]
    return document


def _version() -> str:
    try:
        return metadata.version("aiki")
    except metadata.PackageNotFoundError:
        return "0"


def _schemas(endpoints: Sequence[Endpoint]) -> dict[str, Any]:
    seen: dict[str, Codec[Any]] = {ERROR.name: ERROR, HEALTH.name: HEALTH}
    for endpoint in endpoints:
        for codec in (endpoint.body, endpoint.query, endpoint.reply):
            if codec is not None:
                seen[codec.name] = codec
    return json_schemas([codec.kind for codec in seen.values()], ref_template=_REF)


def _ref(codec: Codec[Any]) -> dict[str, str]:
    return {"$ref": _REF.format(name=codec.name)}


def _json_reply(description: str, schema: Codec[Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(schema)}}}


def _operation(endpoint: Endpoint, schemas: dict[str, Any]) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "operationId": endpoint.name,
        "summary": endpoint.summary,
        "tags": [endpoint.tag],
    }
    parameters = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in _PATH_PARAM.findall(endpoint.path)
    ]
    if endpoint.query is not None:
        query = schemas[endpoint.query.name]
        required = set(query.get("required", ()))
        parameters += [
            {"name": name, "in": "query", "required": name in required, "schema": prop}
            for name, prop in query.get("properties", {}).items()
        ]
    if parameters:
        operation["parameters"] = parameters
    if endpoint.body is not None:
        operation["requestBody"] = {
            "required": endpoint.name != "cancel",
            "content": {"application/json": {"schema": _ref(endpoint.body)}},
        }
    operation["responses"] = _responses(endpoint)
    return operation


def _responses(endpoint: Endpoint) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    if endpoint.reply is None:
        responses["204"] = {"description": "Done"}
    else:
        responses[str(endpoint.status)] = _json_reply("Success", endpoint.reply)
        if endpoint.name == "enqueue":
            responses["200"] = _json_reply(
                "The run this idempotency key already names", endpoint.reply
            )
    codes: dict[str, list[str]] = {}
    for code in endpoint.errors:
        codes.setdefault(str(ERROR_CODES[code]), []).append(code)
    if endpoint.body is not None:
        codes.setdefault("400", []).append("invalid_request")
        codes.setdefault("413", []).append("payload_too_large")
    if endpoint.body is not None or endpoint.query is not None:
        codes.setdefault("422", []).append("invalid_request")
    for status, names in sorted(codes.items()):
        unique = ", ".join(f"`{n}`" for n in dict.fromkeys(names))
        responses[status] = _json_reply(unique, ERROR)
    for status, description in _ALWAYS.items():
        responses[status] = _json_reply(description, ERROR)
    return responses
