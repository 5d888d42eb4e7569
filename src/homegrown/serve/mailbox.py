"""Hand items from the engine thread to asyncio queues on an event loop, waking the loop once per batch.

A decode step produces one delta for every running sequence. Handing each over with its own
`loop.call_soon_threadsafe` costs a wake-up of the event loop (a write to its self-pipe, a pass of the loop)
per token of every stream; with 64 streams that is 64 wake-ups per step, each also a trip for the GIL between
the engine thread and the loop. Here items wait in one list per loop, and only the item that finds the list empty
schedules a drain: a step's deltas reach their queues in one pass of the loop, in the order they were posted.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from typing import Any


class LoopMailbox:
    """Thread-safe `post(queue, item)` → `queue.put_nowait(item)` on the loop, batched."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._items: list[tuple[asyncio.Queue, Any]] = []
        self._lock = threading.Lock()

    def post(self, queue: asyncio.Queue, item: Any) -> None:
        """Deliver `item` to `queue` soon; raises RuntimeError once the loop is closed (the reader is gone)."""
        if self.loop.is_closed():
            raise RuntimeError("the event loop is closed")
        with self._lock:
            self._items.append((queue, item))
            first = len(self._items) == 1
        if first:
            try:
                self.loop.call_soon_threadsafe(self._drain)
            except RuntimeError:
                with self._lock:
                    self._items.clear()
                raise

    def _drain(self) -> None:
        with self._lock:
            items, self._items = self._items, []
        for queue, item in items:
            queue.put_nowait(item)


_mailboxes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopMailbox] = weakref.WeakKeyDictionary()
_mailboxes_lock = threading.Lock()


def mailbox_for(loop: asyncio.AbstractEventLoop) -> LoopMailbox:
    """The one mailbox of `loop` (one per loop, so that all its streams share the wake-ups)."""
    with _mailboxes_lock:
        box = _mailboxes.get(loop)
        if box is None:
            box = _mailboxes[loop] = LoopMailbox(loop)
        return box
