"""Storage backends: the `Storage` protocol and `open_storage(url)`."""

from aiki.storage._open import open_storage
from aiki.storage._protocol import Storage

__all__ = ["Storage", "open_storage"]
