"""Why a PostgreSQL storage could not connect, said so that a person can fix it."""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

import asyncpg


def cannot_connect(dsn: str, exc: BaseException) -> str:
    """The reason `exc` gives, with how to fix it where Aiki knows how.

    A database that does not exist is the usual first-hour mistake: the message names the
    database and the commands that create it.
    """
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        parts = urlsplit(dsn)
        name = unquote(parts.path.lstrip("/")) or unquote(parts.username or "") or "DATABASE"
        where = []
        if parts.hostname:
            where += ["-h", parts.hostname]
        if parts.port:
            where += ["-p", str(parts.port)]
        if parts.username:
            where += ["-U", unquote(parts.username)]
        createdb = " ".join(["createdb", *where, _shell_word(name)])
        quoted = '"' + name.replace('"', '""') + '"'
        return (
            f"database {quoted} does not exist; create it with `{createdb}` "
            f"(or CREATE DATABASE {quoted}; in psql), then start again"
        )
    return str(exc)


def _shell_word(word: str) -> str:
    if word and all(c.isalnum() or c in "_-." for c in word):
        return word
    return "'" + word.replace("'", "'\\''") + "'"
