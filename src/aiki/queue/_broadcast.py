"""The part shared by queues that broadcast through another service (PostgreSQL, Redis).

Sending is coalesced: at most one message is in flight per server, at most one starts per
`_SEND_INTERVAL_S`, and whatever is announced meanwhile goes out merged in the next one. The
first news after a quiet spell goes out at once; under load, many enqueues cost one message
(each message is a transaction of the database or a command of Redis), and
while the service is unreachable news is dropped, not piled up (the polling path covers it).
Receiving runs in a loop that reconnects with a capped backoff; after a reconnect the server
is told it may have missed news, so its waiters look at storage again.
"""

from __future__ import annotations

import abc
import asyncio
import json
import logging
import secrets
from collections.abc import Callable, Iterator
from typing import Any

from aiki._core.ids import RunId, WorkerId
from aiki._core.models import WorkflowKey
from aiki.queue._protocol import Announcement, Deliver

_log = logging.getLogger("aiki.queue")

_RECONNECT_FIRST_S = 0.05
_CLOSE_TIMEOUT_S = 2.0
_SEND_INTERVAL_S = 0.005
# A server that learns it is the only listener sends nothing for this long, or until another
# server speaks: each says hello when it (re)connects, so a newcomer is heard at once.
_ALONE_S = 1.0
_RECONNECT_MAX_S = 1.0
# Run ids and cancels per message: keeps each message well under PostgreSQL's 8,000-byte
# NOTIFY payload limit.
_ITEMS_PER_MESSAGE = 50
_MAX_READY_BYTES = 2_000


class Broadcast(abc.ABC):
    """A queue that publishes announcements to, and hears them from, a shared channel."""

    # What is dropped on the way is reported: a reconnect delivers `missed`.
    hears_every_end = True

    def __init__(self, description: str) -> None:
        self.description = description
        # Messages carry it so a server ignores its own (it woke its waiters already).
        self._sender = secrets.token_hex(8)
        self._deliver: Deliver | None = None
        self._pending = Announcement()
        self._has_pending: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._out_of_reach = False  # logged once per outage, not once per message
        self.listening = asyncio.Event()  # set while subscribed: news sent now is heard here
        # Set when another server's message is heard (since the last connect): from then on
        # this server knows it is not alone, and sends its news.
        self.heard_others = asyncio.Event()
        self._closing = False

    # --- what each service does ---------------------------------------------------------

    @abc.abstractmethod
    async def _publish(self, message: str) -> int | None:
        """Send one message to every listener; raise if that failed.

        Returns:
            How many listeners got it, this server's own included, where the service says.
        """

    @abc.abstractmethod
    async def _listen(
        self, on_message: Callable[[str], None], connected: Callable[[], None]
    ) -> None:
        """Connect, call `connected()`, then pass each message on until the connection ends.

        Returns or raises when the connection is lost; it is then called again.
        """

    @abc.abstractmethod
    async def _close_connections(self) -> None:
        """Release whatever the service holds (called once, on close)."""

    # --- Queue ----------------------------------------------------------------------------

    async def open(self, deliver: Deliver) -> None:
        self._deliver = deliver
        self._closing = False
        self._alone_until = 0.0
        self._hello_due = False
        self._has_pending = asyncio.Event()
        self._tasks = [
            asyncio.create_task(self._send_loop(), name="aiki queue send"),
            asyncio.create_task(self._listen_loop(), name="aiki queue listen"),
        ]

    def announce(self, news: Announcement) -> None:
        if not news or self._has_pending is None:
            return
        self._pending = self._pending.merge(news)
        self._has_pending.set()

    async def close(self) -> None:
        # The loops also stop at the flag: a client library may swallow a cancellation that
        # lands in the middle of its own call (redis-py does, during a command).
        self._closing = True
        if self._has_pending is not None:
            self._has_pending.set()
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=_CLOSE_TIMEOUT_S)
        self._has_pending = None
        self.listening.clear()
        await self._close_connections()

    # --- loops ----------------------------------------------------------------------------

    async def _send_loop(self) -> None:
        assert self._has_pending is not None
        while not self._closing:
            await self._has_pending.wait()
            self._has_pending.clear()
            news, self._pending = self._pending, Announcement()
            hello, self._hello_due = self._hello_due, False
            loop = asyncio.get_running_loop()
            if not hello and loop.time() < self._alone_until:
                continue  # nobody else would hear it
            messages = [hello_message(self._sender)] if hello else []
            if news:
                messages.extend(encode(self._sender, news))
            try:
                for message in messages:
                    listeners = await self._publish(message)
                    if listeners is not None and listeners <= 1:
                        self._alone_until = loop.time() + _ALONE_S
                        break
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the service is down: the polling path covers it
                self._lost(f"could not announce ({exc!r})")
            else:
                self._reached()
            await asyncio.sleep(_SEND_INTERVAL_S)  # news of the next few ms goes out together

    async def _listen_loop(self) -> None:
        delay = _RECONNECT_FIRST_S
        connects = 0

        def connected() -> None:
            nonlocal delay, connects
            delay = _RECONNECT_FIRST_S
            connects += 1
            self.listening.set()
            self._alone_until = 0.0  # who listens now is anyone's guess
            self.heard_others.clear()
            self._hello_due = True
            if self._has_pending is not None:
                self._has_pending.set()
            self._reached()
            if connects > 1:
                self._receive(Announcement(missed=True))

        while not self._closing:
            try:
                await self._listen(self._on_message, connected)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._lost(f"stopped listening ({exc!r})")
            else:
                self._lost("stopped listening (connection closed)")
            self.listening.clear()
            if self._closing:
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, _RECONNECT_MAX_S)

    def _on_message(self, message: str) -> None:
        try:
            sender, news = decode(message)
        except ValueError as exc:
            _log.warning("%s: ignoring a message that is not Aiki's: %s", self.description, exc)
            return
        if sender != self._sender:
            self._alone_until = 0.0  # another server is here
            self.heard_others.set()
            if news:
                self._receive(news)

    def _receive(self, news: Announcement) -> None:
        if self._deliver is not None:
            self._deliver(news)

    def _lost(self, what: str) -> None:
        if not self._out_of_reach:
            self._out_of_reach = True
            _log.warning(
                "%s: %s; workers pick up work by polling storage until it is back",
                self.description,
                what,
            )

    def _reached(self) -> None:
        if self._out_of_reach:
            self._out_of_reach = False
            _log.warning("%s: reachable again", self.description)


# --- the wire format: small JSON objects ----------------------------------------------------


def encode(sender: str, news: Announcement) -> Iterator[str]:
    """`news` as one or more messages, each small enough for any channel we use."""
    head: dict[str, Any] = {"s": sender}
    if news.ready_all or news.missed:
        head["a"] = True
    elif news.ready:
        ready = sorted([key.name, key.version] for key in news.ready)
        if len(json.dumps(ready)) > _MAX_READY_BYTES:
            head["a"] = True  # too many to name: everyone looks
        else:
            head["r"] = ready
    ended = sorted(news.ended)
    cancels = sorted(news.cancels)
    first = True
    while first or ended or cancels:
        message: dict[str, Any] = dict(head) if first else {"s": sender}
        if ended:
            message["e"], ended = ended[:_ITEMS_PER_MESSAGE], ended[_ITEMS_PER_MESSAGE:]
        if cancels:
            message["c"] = [list(pair) for pair in cancels[:_ITEMS_PER_MESSAGE]]
            cancels = cancels[_ITEMS_PER_MESSAGE:]
        first = False
        yield json.dumps(message, separators=(",", ":"))


def hello_message(sender: str) -> str:
    """What a server sends when it starts listening: no news, only that it is here."""
    return json.dumps({"s": sender, "h": True}, separators=(",", ":"))


def decode(message: str) -> tuple[str, Announcement]:
    """The sender and news of a message; `ValueError` if it is malformed."""
    try:
        data = json.loads(message)
        sender = data["s"]
        ready = frozenset(WorkflowKey(name=n, version=v) for n, v in data.get("r", ()))
        ended = frozenset(RunId(r) for r in data.get("e", ()))
        cancels = frozenset((WorkerId(w), RunId(r)) for w, r in data.get("c", ()))
        ready_all = data.get("a", False) is True
    except (TypeError, KeyError, AttributeError, ValueError) as exc:
        raise ValueError(f"{message[:80]!r}: {exc}") from None
    strings = [sender, *ended, *(x for pair in cancels for x in pair)]
    strings += [x for key in ready for x in (key.name, key.version)]
    if not all(isinstance(x, str) for x in strings):
        raise ValueError(f"{message[:80]!r}: wrong types")
    return sender, Announcement(ready=ready, ready_all=ready_all, ended=ended, cancels=cancels)
