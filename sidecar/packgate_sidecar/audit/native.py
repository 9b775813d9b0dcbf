"""The audit writer's hand-off to its compiled syncer (``_syncer.c``) and back.

Why it exists: the batches of plain lines are written by a pthread that never takes the GIL. A
ready batch's bytes are copied into its queue; it writes and ``fdatasync``s them (the data and
the file's size: all an appended line needs; batches that queued meanwhile share one), then
counts the completion in an eventfd (the stdout copy is written after that) that the event loop
which handed the batch over watches (``loop.add_reader``); the loop then resolves the batch's
futures itself. A Python writer thread doing the same must take the GIL back from the loop after
each of its system calls. Measured in-process on one pinned core (load ~5.7, c1, 2,000 records,
fsync off so that only the hand-off shows): 103 -> 83 us of CPU per record, wait p50 74 -> 61
us, context switches per request in the sidecar (bench.cpu_cost json c32) 1.6 -> 0.85. With the
fsync on, both designs cost ~450-550 us per record at c1: the kernel's fdatasync work on this VM
and the loop waking cold after it, which no hand-off design removes.

The Python writer thread (``disk.py``) stays for what is rare or needs Python: creating
segments, pruning, the copy to an echo stream without a descriptor of its own, and batches
handed over by threads without an event loop (a blocking ``flush``, ``submit`` from a thread);
it first waits for everything the syncer holds, so one order holds across both. ``native=False``
(or a build without the extension) leaves every batch to the thread, the reference the syncer
is tested against byte for byte.

:class:`SyncerLane` keeps the bookkeeping of the batches in the syncer's hands; the
``AuditWriter`` decides, under its lock, which batches go there and settles them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING

from packgate_sidecar import compiled
from packgate_sidecar.audit.batch import Batch, Write, running_loop

if TYPE_CHECKING:
    from packgate_sidecar.audit._syncer import Syncer
else:
    try:
        from packgate_sidecar.audit._syncer import Syncer
    except ImportError as exc:  # pragma: no cover - exercised only on a broken install
        Syncer = None
        compiled.missing(
            "audit syncer", exc, "the writer thread writes and fsyncs, at GIL hand-offs' cost"
        )

AVAILABLE = Syncer is not None  # the extension is built


@dataclass(slots=True)
class Flight:
    """A batch handed to the compiled syncer as job ``ticket``, until it completes."""

    ticket: int
    batch: Batch
    records: int
    access: int
    thread: bool  # no event loop watches for it: the writer thread settles it


class SyncerLane:
    """One writer's compiled syncer (once started) and the batches handed to it, oldest first,
    with the access records they hold (``flying``: part of the writer's queue). Not locked:
    the writer calls it with its lock held, but for ``poll``/``wait`` on the syncer."""

    def __init__(self) -> None:
        self.syncer: Syncer | None = None
        self.flights: deque[Flight] = deque()
        self.flying = 0  # access records in flights
        self._readers: set[asyncio.AbstractEventLoop] = set()  # loops watching its eventfd
        self._echo_errors_seen = 0  # failed copies the syncer reported, counted by the writer

    def start(self) -> None:
        self.syncer = Syncer()

    def hand_over(
        self, fd: int, batch: Batch, fsync: bool, echo_fd: int, reap: Callable[[], None]
    ) -> Flight:
        """Copy the batch's lines into the syncer's queue (raises the ``OSError`` it failed
        with since its last completion was settled); the event loop handing it over watches
        the syncer's eventfd from now on, calling ``reap`` (the writer thread settles batches
        no loop will see to)."""
        syncer = self.syncer
        assert syncer is not None
        ops = batch.ops
        data: bytes | bytearray
        if len(ops) == 1 and type(op := ops[0]) is Write:  # the usual batch: one run of lines
            data, records, access = op.data, op.records, op.access
        else:
            writes = [op for op in ops if isinstance(op, Write)]
            data = b"".join(op.data for op in writes)
            records, access = sum(op.records for op in writes), sum(op.access for op in writes)
        ticket = syncer.submit(fd, data, fsync, echo_fd)
        loop = running_loop()
        thread = loop is None or bool(batch.threads)  # a blocking flush() must not wait on a loop
        flight = Flight(ticket, batch, records, access, thread)
        self.flights.append(flight)
        self.flying += batch.access
        if loop is not None and loop not in self._readers:
            loop.add_reader(syncer.fileno(), reap)
            self._readers.add(loop)
        return flight

    def landed(self, completed: int) -> list[Flight]:
        """Take the flights up to ticket ``completed`` (done: written and synced)."""
        done: list[Flight] = []
        flights = self.flights
        while flights and flights[0].ticket <= completed:
            flight = flights.popleft()
            done.append(flight)
            self.flying -= flight.batch.access
        return done

    def drop(self) -> list[Batch]:
        """Take every flight's batch (the writer failed: they fail too)."""
        lost = [flight.batch for flight in self.flights]
        self.flights.clear()
        self.flying = 0
        return lost

    def new_echo_errors(self) -> int:
        """Failed stdout copies the syncer counted since the last call (copies of earlier
        batches: a hint)."""
        syncer = self.syncer
        assert syncer is not None
        echo_errors = syncer.counters()[2]
        new, self._echo_errors_seen = echo_errors - self._echo_errors_seen, echo_errors
        return new

    def last_ticket(self, *, orphans_only: bool) -> int | None:
        """The newest flight's ticket, or the newest no event loop watches for."""
        flights = [f for f in self.flights if f.thread or not orphans_only]
        return flights[-1].ticket if flights else None

    def close(self) -> None:
        """Stop the syncer (drained by the writer thread already; its eventfd stays open) and
        stop watching it from every loop."""
        syncer = self.syncer
        if syncer is None:
            return
        syncer.close()
        here = running_loop()
        for loop in self._readers:
            if loop is here:
                loop.remove_reader(syncer.fileno())
            elif not loop.is_closed():
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(_unwatch, loop, syncer)
        self._readers.clear()


def echo_fd(echo: IO[bytes] | None) -> int | None:
    """Where the syncer writes the stdout copy: -1 for none, None if only the writer thread
    can (a stream without a descriptor of its own, such as a test's BytesIO)."""
    if echo is None:
        return -1
    try:
        echo.flush()  # what it buffered goes first; the syncer writes to the descriptor itself
        return echo.fileno()
    except (OSError, ValueError, AttributeError):
        return None


def _unwatch(loop: asyncio.AbstractEventLoop, syncer: Syncer) -> None:
    loop.remove_reader(syncer.fileno())
