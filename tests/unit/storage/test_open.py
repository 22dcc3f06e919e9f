"""Storage URLs choose and configure a backend."""

from __future__ import annotations

import pytest

import aiki
from aiki._core.clock import FakeClock, SystemClock
from aiki.storage import open_storage
from aiki.storage.postgres import PostgresStorage
from aiki.storage.sqlite import SqliteStorage


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:///relative/aiki.db", "relative/aiki.db"),
        ("sqlite:////abs/aiki.db", "/abs/aiki.db"),
        ("sqlite://:memory:", ":memory:"),
        ("sqlite:///aiki.db?synchronous=normal", "aiki.db"),
    ],
)
def test_sqlite_urls(url: str, path: str) -> None:
    storage = open_storage(url)
    assert isinstance(storage, SqliteStorage) and storage.path == path


@pytest.mark.parametrize(
    "url",
    ["postgresql://aiki:secret@db.example:5433/aiki?sslmode=require", "postgres://localhost/aiki"],
)
def test_postgres_urls(url: str) -> None:
    storage = open_storage(url)
    assert isinstance(storage, PostgresStorage) and storage.dsn == url
    assert "secret" not in repr(storage)


def test_postgres_pool_sizes_come_from_the_url_and_are_not_sent_to_the_server() -> None:
    storage = open_storage("postgresql://db/aiki?sslmode=require&pool_max_size=40&pool_min_size=4")
    assert isinstance(storage, PostgresStorage)
    assert storage.pool_size == (4, 40)
    assert storage.dsn == "postgresql://db/aiki?sslmode=require"
    default = open_storage("postgresql://db/aiki")
    assert isinstance(default, PostgresStorage) and default.pool_size == (2, 10)


@pytest.mark.parametrize(
    ("query", "words"),
    [
        ("pool_max_size=many", "pool_max_size='many' is not a whole number"),
        ("pool_min_size=5&pool_max_size=2", "min_size=5, max_size=2"),
        ("pool_max_size=0", "max_size >= 1"),
    ],
)
def test_bad_pool_sizes_are_refused(query: str, words: str) -> None:
    with pytest.raises(aiki.ConfigError, match=words):
        open_storage(f"postgresql://db/aiki?{query}")


def test_postgres_reads_the_database_clock_unless_a_test_clock_is_given() -> None:
    url = "postgresql://localhost/aiki"
    for real in (None, SystemClock()):
        storage = open_storage(url, clock=real)
        assert isinstance(storage, PostgresStorage) and storage.clock is None
    fake = FakeClock()
    storage = open_storage(url, clock=fake)
    assert isinstance(storage, PostgresStorage) and storage.clock is fake


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("mysql://localhost/db", "unknown scheme 'mysql'"),
        ("sqlite://", "names no database file"),
        ("sqlite:///a.db?fsync=yes", "unknown option(s) fsync"),
        ("sqlite:///a.db?synchronous=off", "synchronous must be one of full, normal"),
    ],
)
def test_bad_urls_name_the_problem(url: str, words: str) -> None:
    with pytest.raises(aiki.ConfigError) as refused:
        open_storage(url)
    assert words in str(refused.value)
