"""Queues between servers, against a real Redis and a real PostgreSQL.

Each queue here is what one server process would hold. News announced by one must reach the
others, never come back to its sender, and survive the service being cut off: after it is
back, every server is told it may have missed news.

Each test has Redis namespaces of its own, so other users of the same Redis (another test run,
another program) neither disturb it nor are disturbed; and a test announces only once the
servers have found each other (`found_each_other`), never after a guessed pause.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import asyncpg
import pytest

from _services import PostgresDatabase, RedisProcess, redis_namespace
from aiki._core.ids import RunId
from aiki._core.models import WorkflowKey
from aiki.queue import Announcement, open_queue
from aiki.queue._broadcast import Broadcast, hello_message
from helpers import until

KEY = WorkflowKey(name="morning", version="1")
WAIT_S = 10.0


class Inbox:
    """What one queue delivered, with a way to wait for the next item."""

    def __init__(self) -> None:
        self.news: list[Announcement] = []
        self._arrived = asyncio.Event()

    def deliver(self, news: Announcement) -> None:
        self.news.append(news)
        self._arrived.set()

    async def next(self) -> Announcement:
        await asyncio.wait_for(self._arrived.wait(), WAIT_S)
        self._arrived.clear()
        return self.news.pop(0) if len(self.news) == 1 else _merged(self.news)

    async def wait_for(self, matches: Callable[[Announcement], bool]) -> None:
        async with asyncio.timeout(WAIT_S):
            while not any(matches(n) for n in self.news):
                self._arrived.clear()
                await self._arrived.wait()


def _merged(news: list[Announcement]) -> Announcement:
    merged = Announcement()
    while news:
        merged = merged.merge(news.pop(0))
    return merged


@asynccontextmanager
async def listening(
    url: str | None, storage_url: str | None = None
) -> AsyncIterator[tuple[Broadcast, Inbox]]:
    queue = open_queue(url, storage_url=storage_url)
    assert isinstance(queue, Broadcast)
    inbox = Inbox()
    await queue.open(inbox.deliver)
    try:
        await asyncio.wait_for(queue.listening.wait(), WAIT_S)
        yield queue, inbox
    finally:
        await queue.close()


def redis_queue_url(redis_url: str, label: str = "test") -> str:
    """A queue URL of `redis_url` with a namespace of this test's own."""
    return f"{redis_url}?namespace={redis_namespace(label)}"


async def found_each_other(*queues: Broadcast) -> None:
    """Wait until each queue but the last, opened in this order, has heard a later one.

    A server that said hello when nobody else listened holds its news back until it hears
    another server; each newcomer's hello reaches those already listening. The last one found
    the others listening when it said hello.
    """
    async with asyncio.timeout(WAIT_S):
        for queue in queues[:-1]:
            await queue.heard_others.wait()


@pytest.fixture(
    params=[
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("postgres", marks=pytest.mark.postgres),
    ]
)
def queue_urls(request: pytest.FixtureRequest) -> tuple[str | None, str | None]:
    """(queue URL, storage URL) of one installation: Redis, or NOTIFY on PostgreSQL."""
    if request.param == "redis":
        return redis_queue_url(request.getfixturevalue("redis")), None
    database: PostgresDatabase = request.getfixturevalue("postgres_db")
    return None, database.dsn


async def test_news_reaches_the_other_servers_and_not_its_sender(
    queue_urls: tuple[str | None, str | None],
) -> None:
    url, storage_url = queue_urls
    async with (
        listening(url, storage_url) as (a, inbox_a),
        listening(url, storage_url) as (b, inbox_b),
        listening(url, storage_url) as (c, inbox_c),
    ):
        await found_each_other(a, b, c)
        news = Announcement(ready=frozenset({KEY}), ended=frozenset({RunId("run-1")}))
        a.announce(news)
        assert await inbox_b.next() == news
        assert await inbox_c.next() == news
        # The sender heard nothing of its own: B's answer is the first thing A gets.
        answer = Announcement(ended=frozenset({RunId("run-2")}))
        b.announce(answer)
        assert await inbox_a.next() == answer


@pytest.mark.redis
async def test_two_installations_sharing_one_redis_do_not_hear_each_other(redis: str) -> None:
    shop, bank = redis_queue_url(redis, "shop"), redis_queue_url(redis, "bank")
    async with (
        listening(shop) as (shop_1, _),
        listening(shop) as (shop_2, shop_2_inbox),
        listening(bank) as (bank_1, _),
        listening(bank) as (bank_2, bank_2_inbox),
    ):
        await found_each_other(shop_1, shop_2)
        await found_each_other(bank_1, bank_2)
        shop_news = Announcement(ready=frozenset({KEY}))
        shop_1.announce(shop_news)
        assert await shop_2_inbox.next() == shop_news
        # Redis has passed the shop's message on; had the bank heard it, it would come first.
        bank_news = Announcement(ended=frozenset({RunId("bank-run")}))
        bank_1.announce(bank_news)
        assert await bank_2_inbox.next() == bank_news


async def test_many_announcements_in_a_burst_are_merged(
    queue_urls: tuple[str | None, str | None],
) -> None:
    url, storage_url = queue_urls
    async with listening(url, storage_url) as (a, _), listening(url, storage_url) as (b, inbox):
        await found_each_other(a, b)
        runs = [RunId(f"run-{i}") for i in range(300)]
        for run_id in runs:  # in one go: no message is sent until the loop yields
            a.announce(Announcement(ended=frozenset({run_id})))
        await inbox.wait_for(lambda _: len(_all_ended(inbox)) == 300)
        assert _all_ended(inbox) == set(runs)
        assert len(inbox.news) <= 300 // 50 + 1  # merged, then split only by size


def _all_ended(inbox: Inbox) -> set[RunId]:
    return {run_id for n in inbox.news for run_id in n.ended}


@pytest.mark.redis
async def test_a_redis_crash_loses_nothing_but_news_and_says_so(
    redis_process: RedisProcess,
) -> None:
    url = redis_queue_url(redis_process.url)
    async with listening(url) as (a, _), listening(url) as (b, inbox):
        redis_process.kill()
        a.announce(Announcement(ready=frozenset({KEY})))  # lost with Redis; must not raise
        redis_process.start()
        await inbox.wait_for(lambda n: n.missed)  # B reconnected: it is told to look again
        await asyncio.wait_for(a.listening.wait(), WAIT_S)
        await asyncio.wait_for(b.listening.wait(), WAIT_S)
        a.announce(Announcement(ended=frozenset({RunId("after")})))
        await inbox.wait_for(lambda n: RunId("after") in n.ended)


@pytest.mark.postgres
async def test_a_terminated_notify_connection_reconnects_and_says_news_may_be_missed(
    postgres_db: PostgresDatabase,
) -> None:
    dsn = postgres_db.dsn
    async with listening(None, dsn) as (a, _), listening(None, dsn) as (b, inbox):
        conn = await asyncpg.connect(postgres_db.dsn)
        try:
            terminated = await conn.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = 'aiki-notify' AND datname = current_database()"
            )
        finally:
            await conn.close()
        assert terminated == 2
        await inbox.wait_for(lambda n: n.missed)
        await asyncio.wait_for(a.listening.wait(), WAIT_S)
        a.announce(Announcement(ended=frozenset({RunId("after")})))
        await inbox.wait_for(lambda n: RunId("after") in n.ended)
        assert b.listening.is_set()


async def test_a_server_alone_on_its_channel_sends_nothing_until_another_says_hello(
    queue_urls: tuple[str | None, str | None],
) -> None:
    url, storage_url = queue_urls
    alone = open_queue(url, storage_url=storage_url)
    assert isinstance(alone, Broadcast)
    published: list[str] = []
    publish = alone._publish

    async def counting(message: str) -> int | None:
        published.append(message)
        return await publish(message)

    alone._publish = counting  # type: ignore[method-assign]
    await alone.open(Inbox().deliver)
    try:
        # Its hello is heard by nobody but itself: from now on it believes it is alone.
        await until(lambda: len(published) == 1, timeout=WAIT_S)
        assert published == [hello_message(alone._sender)]
        for i in range(3):
            alone.announce(Announcement(ended=frozenset({RunId(f"run-{i}")})))
            # Each announcement taken by the send loop on its own, not merged with the next.
            await until(lambda: not alone._pending, timeout=WAIT_S)
        assert len(published) == 1, "no news was sent while it was alone"

        async with listening(url, storage_url) as (_, newcomer_inbox):
            # The newcomer's hello reaches the first server, which speaks again at once.
            await asyncio.wait_for(alone.heard_others.wait(), WAIT_S)
            news = Announcement(ended=frozenset({RunId("for-the-newcomer")}))
            alone.announce(news)
            assert await newcomer_inbox.next() == news
    finally:
        await alone.close()
