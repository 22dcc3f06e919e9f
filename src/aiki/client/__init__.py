"""Clients: `create_client()`, `Client` and `RunHandle`."""

from aiki.client._client import Client, create_client
from aiki.client._handles import RunHandle

__all__ = ["Client", "RunHandle", "create_client"]
