"""Queues: how the servers sharing one storage tell each other that something changed."""

from aiki.queue._local import LocalQueue
from aiki.queue._open import open_queue
from aiki.queue._protocol import Announcement, Deliver, Queue

__all__ = ["Announcement", "Deliver", "LocalQueue", "Queue", "open_queue"]
