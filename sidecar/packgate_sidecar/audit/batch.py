"""What the audit writer hands from its callers to the disk, and how the waiting callers learn.

Why it exists: records are sealed on the caller's thread (usually the event loop) but written
on another (the compiled syncer's, or the writer thread's). A :class:`Batch` is the unit that
crosses over: the operations to perform in seal order (lines to append, a segment to start,
expired segments to find or delete) and everyone waiting for them to be durable, grouped by
event loop so that settling costs one call into each loop however many requests wait there.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import math
from dataclasses import dataclass, field
from pathlib import Path


# What the writer thread does, in seal order: append lines, start a segment (its header already
# sealed), look for expired segments, delete them once the prune record naming them is durable.
@dataclass(slots=True)
class Write:
    data: bytearray
    records: int = 0
    access: int = 0


@dataclass(slots=True)
class Open:
    name: str
    header: bytes
    now: float


@dataclass(slots=True)
class Prune:
    now: float
    done: concurrent.futures.Future[list[str]] | None


@dataclass(slots=True)
class Unlink:
    paths: list[Path]
    done: concurrent.futures.Future[list[str]] | None


Op = Write | Open | Prune | Unlink


@dataclass(slots=True)
class Batch:
    """Everything queued since the writer thread last took a batch, and who waits for it."""

    ops: list[Op] = field(default_factory=list)
    tail: Write | None = None  # the last op, while new lines may still be added to it
    access: int = 0  # access records in ops (the queue's length)
    counted: int = 0  # of which from requests still counted by expect() (write-ahead records)
    ready: bool = False  # the writer thread may take it now
    kick_at: float = math.inf  # a loop timer will mark it ready then (time.monotonic())
    # That timer, on the loop that armed it: cancelled once the batch leaves earlier, or once
    # a record needs an earlier deadline, so that it does not wake an idle loop for nothing.
    timer: asyncio.TimerHandle | None = None
    timer_loop: asyncio.AbstractEventLoop | None = None
    loops: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = field(default_factory=dict)
    threads: list[concurrent.futures.Future[list[str]]] = field(default_factory=list)

    def waiting(self) -> bool:
        return bool(self.ops or self.loops or self.threads)

    def append(self, line: bytes, *, access: bool) -> None:
        """Add a sealed line to the run of lines at the end of ``ops``."""
        tail = self.tail
        if tail is None:
            tail = self.tail = Write(bytearray())
            self.ops.append(tail)
        tail.data += line
        tail.records += 1
        tail.access += access


def running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None  # submitted from a thread without an event loop


def settle(batch: Batch, error: BaseException | None) -> None:
    """Resolve everyone waiting for a batch: the running event loop's futures at once, one
    call into each other waiting loop, whose callback resolves all of that loop's futures."""
    here = running_loop() if batch.loops else None
    for loop, futures in batch.loops.items():
        if loop is here:
            resolve_all(futures, error)
            continue
        with contextlib.suppress(RuntimeError):  # that loop has been closed meanwhile
            loop.call_soon_threadsafe(resolve_all, futures, error)
    for done in batch.threads:
        if error is None:
            done.set_result([])
        else:
            done.set_exception(error)
    for op in batch.ops if error is not None else ():  # commands: resolved by their op if run
        if isinstance(op, Prune | Unlink) and op.done is not None and not op.done.done():
            op.done.set_exception(error)


def wake(futures: list[asyncio.Future[None]], error: BaseException | None) -> None:
    loops: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
    for future in futures:
        loops.setdefault(future.get_loop(), []).append(future)
    settle(Batch(loops=loops), error)


def resolve_all(futures: list[asyncio.Future[None]], error: BaseException | None) -> None:
    for future in futures:
        if future.done():
            continue  # cancelled: the request stopped waiting
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)
            # Marked as retrieved: a caller that does not wait for durability (the gateway with
            # --no-durable-audit) learns of the failure from the next submit, not from a
            # "Future exception was never retrieved" at garbage collection.
            future.exception()
