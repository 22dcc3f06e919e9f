"""The Aiki server: `server()` builds one."""

from aiki.server._server import Server, server
from aiki.server._service import Service

__all__ = ["Server", "Service", "server"]
