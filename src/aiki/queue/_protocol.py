"""What servers tell each other, and the `Queue` protocol that carries it.

The claim in storage is the only authority over who runs what. A queue only carries news
between server processes, so that a long-poll on one server learns at once of a run made
ready, ended or cancelled on another. News may be lost, repeated or late: a lost item
delays a worker until its next recheck of storage, a repeated one costs an empty claim.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from aiki._core.ids import RunId, WorkerId
from aiki._core.models import WorkflowKey


@dataclass(frozen=True, slots=True, kw_only=True)
class Announcement:
    """News from one server to the others.

    Attributes:
        ready: Workflow versions that have new claimable runs.
        ready_all: Runs of any workflow may have become claimable (timers, hand-backs).
        ended: Runs that reached a final state.
        cancels: Cancel requests for runs that a worker holds: (worker, run).
        missed: The queue was cut off and may have dropped news: look at storage again.
    """

    ready: frozenset[WorkflowKey] = frozenset()
    ready_all: bool = False
    ended: frozenset[RunId] = frozenset()
    cancels: frozenset[tuple[WorkerId, RunId]] = frozenset()
    missed: bool = False

    def __bool__(self) -> bool:
        return bool(self.ready or self.ready_all or self.ended or self.cancels or self.missed)

    def merge(self, other: Announcement) -> Announcement:
        """Both announcements in one."""
        return Announcement(
            ready=self.ready | other.ready,
            ready_all=self.ready_all or other.ready_all,
            ended=self.ended | other.ended,
            cancels=self.cancels | other.cancels,
            missed=self.missed or other.missed,
        )


Deliver = Callable[[Announcement], None]


class Queue(Protocol):
    """Carries announcements between the servers that share one storage."""

    @property
    def description(self) -> str:
        """What it is, for logs and `aiki server`'s banner (no secrets)."""
        ...

    @property
    def hears_every_end(self) -> bool:
        """Whether every run end announced by a server of this storage reaches this one.

        When news may have been dropped on the way, the queue delivers `missed`. True lets a
        server wait for the end of a run it created without reading storage first.
        """
        ...

    async def open(self, deliver: Deliver) -> None:
        """Start listening; `deliver` is called with what other servers announce."""
        ...

    def announce(self, news: Announcement) -> None:
        """Send `news` to the other servers; returns at once and never raises."""
        ...

    async def close(self) -> None:
        """Stop listening; news not yet sent may be dropped."""
        ...
