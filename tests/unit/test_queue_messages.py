"""What servers tell each other: the message format and choosing a queue from settings."""

from __future__ import annotations

import json

import pytest

from aiki._core.ids import RunId, WorkerId
from aiki._core.models import WorkflowKey
from aiki.errors import ConfigError
from aiki.queue import Announcement, LocalQueue, open_queue
from aiki.queue._broadcast import decode, encode

KEY = WorkflowKey(name="morning", version="1")


def roundtrip(news: Announcement) -> tuple[list[str], Announcement]:
    messages = list(encode("me", news))
    merged = Announcement()
    for message in messages:
        sender, part = decode(message)
        assert sender == "me"
        merged = merged.merge(part)
    return messages, merged


def test_an_announcement_survives_the_wire() -> None:
    news = Announcement(
        ready=frozenset({KEY, WorkflowKey(name="other", version="2")}),
        ended=frozenset({RunId("r1"), RunId("r2")}),
        cancels=frozenset({(WorkerId("w1"), RunId("r3"))}),
    )
    messages, back = roundtrip(news)
    assert len(messages) == 1
    assert back == news


def test_missed_news_is_sent_as_ready_for_every_workflow() -> None:
    _, back = roundtrip(Announcement(missed=True))
    assert back.ready_all


def test_many_ended_runs_are_split_into_messages_under_the_notify_limit() -> None:
    ended = frozenset(RunId(f"{i:036d}") for i in range(500))
    cancels = frozenset((WorkerId("worker-1"), RunId(f"c{i:035d}")) for i in range(120))
    messages, back = roundtrip(Announcement(ready=frozenset({KEY}), ended=ended, cancels=cancels))
    assert len(messages) == 10
    assert all(len(m.encode()) < 8000 for m in messages)  # PostgreSQL's NOTIFY payload limit
    assert back.ended == ended
    assert back.cancels == cancels
    assert back.ready == {KEY}


def test_too_many_ready_versions_to_name_become_ready_for_all() -> None:
    keys = frozenset(WorkflowKey(name="x" * 50, version=str(i)) for i in range(100))
    messages, back = roundtrip(Announcement(ready=keys))
    assert back.ready_all
    assert not back.ready
    assert all(len(m.encode()) < 8000 for m in messages)


@pytest.mark.parametrize(
    "message",
    ["not json", "[]", "{}", '{"s": 1}', '{"s": "x", "e": [1]}', '{"s": "x", "r": [["a"]]}'],
)
def test_a_malformed_message_is_refused(message: str) -> None:
    with pytest.raises(ValueError):
        decode(message)


def test_an_empty_announcement_is_false() -> None:
    assert not Announcement()
    assert Announcement(ready_all=True)
    assert json.loads(next(encode("me", Announcement())))["s"] == "me"


def test_without_a_queue_url_sqlite_servers_use_storage_claims_alone() -> None:
    queue = open_queue(None, storage_url="sqlite:///x.db")
    assert isinstance(queue, LocalQueue)
    assert queue.description == "storage claims"


def test_postgres_storage_brings_notify_unless_it_is_turned_off() -> None:
    url = "postgresql://u:secret@db/aiki"
    assert open_queue(None, storage_url=url).description == "PostgreSQL LISTEN/NOTIFY"
    assert isinstance(open_queue(None, storage_url=url, notify=False), LocalQueue)
    assert isinstance(open_queue(None, storage_url=None), LocalQueue)


def test_a_redis_url_names_its_namespace_and_hides_the_password() -> None:
    queue = open_queue("redis://:hunter2@127.0.0.1:6379/3?namespace=prod", storage_url=None)
    assert "hunter2" not in queue.description
    assert "prod" in queue.description
    assert "127.0.0.1:6379/3" in queue.description
    assert "(aiki)" in open_queue("redis://127.0.0.1", storage_url=None).description


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("kafka://broker", "unknown scheme 'kafka'"),
        ("redis://127.0.0.1?namespace=", "namespace ''"),
        ("redis://127.0.0.1?namespace=a%20b", "namespace 'a b'"),
    ],
)
def test_a_bad_queue_url_is_refused_naming_the_problem(url: str, complaint: str) -> None:
    with pytest.raises(ConfigError, match=complaint):
        open_queue(url, storage_url=None)


def test_a_hello_carries_no_news() -> None:
    from aiki.queue._broadcast import hello_message

    sender, news = decode(hello_message("newcomer"))
    assert sender == "newcomer"
    assert not news
