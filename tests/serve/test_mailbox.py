"""Deltas from the engine thread reach asyncio queues in order, with one wake-up of the loop per batch."""

from __future__ import annotations

import asyncio
import threading

import pytest

from homegrown.serve.mailbox import mailbox_for


def _in_thread(work) -> None:
    """Run `work` in another thread and wait: the loop cannot run meanwhile, as while an engine step posts."""
    thread = threading.Thread(target=work)
    thread.start()
    thread.join(10)


def test_a_step_of_posts_wakes_the_loop_once_and_keeps_each_queue_in_order() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        wakes = []
        schedule = loop.call_soon_threadsafe

        def counting(callback, *args):
            wakes.append(callback)
            return schedule(callback, *args)

        loop.call_soon_threadsafe = counting  # type: ignore[method-assign]
        box = mailbox_for(loop)
        assert mailbox_for(loop) is box
        a, b = asyncio.Queue(), asyncio.Queue()

        def step(first: int) -> None:
            for i in range(first, first + 5):
                box.post(a, i)
                box.post(b, -i)

        _in_thread(lambda: step(0))
        assert len(wakes) == 1
        assert [await a.get() for _ in range(5)] == [0, 1, 2, 3, 4]
        assert [await b.get() for _ in range(5)] == [0, -1, -2, -3, -4]
        _in_thread(lambda: step(5))  # the next step wakes it again
        assert len(wakes) == 2
        assert [await a.get() for _ in range(5)] == [5, 6, 7, 8, 9]

    asyncio.run(main())


def test_posting_to_a_closed_loop_raises() -> None:
    """The engine takes the error as 'the reader is gone' and stops generating for that sequence."""
    loop = asyncio.new_event_loop()
    box = mailbox_for(loop)
    queue: asyncio.Queue = asyncio.Queue()
    loop.close()
    with pytest.raises(RuntimeError):
        box.post(queue, 1)
