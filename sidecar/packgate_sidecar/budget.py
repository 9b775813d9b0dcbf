"""Await a policy hook within its time budget, arming a timer only if the hook has to wait.

Why it exists: the chain runs every hook of every policy under its `timeout_ms`, several times
per request. Almost every call finishes without ever suspending (the work is CPU-bound: scoring,
pattern matching, building a record), and for those `asyncio.timeout` is pure cost: a timer
object scheduled on the loop and cancelled again, several microseconds per hook. Such a call
cannot be cut short anyway (nothing interrupts CPU-bound code on the event loop); the chain
detects its overrun afterwards from the measured duration.

So `within` runs the hook's first step directly. If it completes, that is the answer. If it
suspends (a second-opinion classifier call, a large text offloaded to a thread, an audit queue
waiting for room), the rest of it runs under `asyncio.timeout` with the budget that is left, and
is cut off exactly as before.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine, Generator
from typing import Any, Generic, TypeVar, cast

_T = TypeVar("_T")


async def within(budget: float, coro: Coroutine[Any, Any, _T]) -> _T:
    """`await coro`, raising TimeoutError if it still waits after `budget` seconds in all."""
    started = time.monotonic()
    try:
        first = coro.send(None)
    except StopIteration as done:
        return cast(_T, done.value)
    return await finish_within(budget - (time.monotonic() - started), coro, first)


async def finish_within(left: float, coro: Coroutine[Any, Any, _T], first: Any) -> _T:
    """The rest of `within` for a coroutine whose first step has run and yielded `first`: the
    remainder is cut off after `left` seconds. For callers that run the first step themselves
    (the chain, saving a coroutine per hook)."""
    async with asyncio.timeout(max(0.0, left)):
        return await _Rest(coro, first)


class _Rest(Generic[_T]):
    """The remainder of a coroutine whose first step has run and yielded `first`: re-yields
    what it yields to the task driving us, and passes back what the task sends or throws (the
    delegation `await` does, picked up after the first step)."""

    __slots__ = ("coro", "first")

    def __init__(self, coro: Coroutine[Any, Any, _T], first: Any) -> None:
        self.coro = coro
        self.first = first

    def __await__(self) -> Generator[Any, Any, _T]:
        coro, value = self.coro, self.first
        while True:
            try:
                sent = yield value
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # cancellation too: the hook decides what it means
                try:
                    value = coro.throw(exc)
                except StopIteration as done:
                    return cast(_T, done.value)
                continue
            try:
                value = coro.send(sent)
            except StopIteration as done:
                return cast(_T, done.value)
