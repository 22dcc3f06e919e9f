"""Options shared by several commands; each names its environment variable."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from aiki.config import DEFAULT_STORAGE_URL

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_SERVER_URL = "http://127.0.0.1:9090"


def storage_option(fn: F) -> F:
    return click.option(
        "--storage",
        default=DEFAULT_STORAGE_URL,
        show_default=True,
        envvar="AIKI_STORAGE",
        help="Storage URL [env: AIKI_STORAGE].",
    )(fn)


def server_url_option(fn: F) -> F:
    return click.option(
        "--server",
        "server_url",
        default=DEFAULT_SERVER_URL,
        show_default=True,
        envvar="AIKI_SERVER",
        help="URL of the Aiki server [env: AIKI_SERVER].",
    )(fn)


def api_key_option(fn: F) -> F:
    return click.option(
        "--api-key",
        default=None,
        envvar="AIKI_API_KEY",
        help="API key, sent as a bearer token [env: AIKI_API_KEY].",
    )(fn)


def json_option(fn: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")(
        fn
    )
