"""Appends sealed audit records to segment files crash-safely, with ``fsync`` off the event loop.

Why it exists: every proxied request produces an audit record, and no ``fsync`` may stall the
event loop. Request handlers call :meth:`AuditWriter.submit` (or ``await put``), which validates
and seals the record on the spot (its body encoded in one pass by ``AuditRecord.encode``, or
already encoded: ``EncodedBody``; hash and MAC ~5 us, less than handing the record to another
thread costs; the chain's head and segments are ``sealer.py``) and appends the line to an
in-memory batch (``batch.py``). Each batch is written with one ``write`` on an ``O_APPEND``
descriptor and synced once, so throughput grows with load instead of paying one sync per
request. Who writes it (``drain.py``): the compiled syncer for plain lines handed over by an
event loop (``native.py``), else the writer thread, whose disk work (segments, retention, the
stdout copy, recovery at start) is ``disk.py``. This module is the producers' side: the API,
the queue's bound, and when a batch is ready.

Batches are made large when they can be: requests that will send records soon are counted
(:meth:`expect`); while others than the batch's own are counted, the batch waits up to
``linger`` (5 ms) for theirs, then a timer on the event loop hands it over. With nothing else
in flight, a record is handed over at once, so a lone request never waits. A record no answer
waits for (``lazy``: a relayed stream's outcome) hurries nobody: it goes with the next record,
or after ``linger``.

Durability: a record is durable once the batch holding it is fsynced; records still queued at
a crash are lost (a crash mid-write leaves at most a torn last line, which the next start
names in a ``recovered`` record, see ``disk.py``). :meth:`submit_durable` returns a future of
the caller's event loop that resolves only once the record's batch is fsynced (records queued
together share one fsync: group commit), for records that must survive a crash of the process
the moment after; ``await put_durable`` waits for the same. A failed write or sync stops the
writer for good (the kernel may have dropped the unsynced pages): every waiting future fails.
The stdout copy is written after the fsync (by the syncer, or by the writer thread for a
stream without a descriptor), so a stalled stdout slows the writer and, through the bounded
queue, the requests, rather than letting the two copies diverge.

Backpressure: the queue holds ``max_queue`` records (those the syncer holds included, plus the
batch the writer thread is writing). When it is full, :meth:`submit` raises :class:`AuditQueueFull`
(counted in ``stats.rejected``) so the caller can fail the request closed, and ``await put`` waits
for room (counted in ``stats.waited``), slowing requests down to the disk's pace. Records are never
dropped silently. If the disk fails, the writer stops, every waiting future and every later call
gets :class:`AuditWriterError`, and queued records are counted in ``stats.lost``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING

from packgate_sidecar.audit import native as native_mod
from packgate_sidecar.audit.batch import Batch, Prune, Unlink, running_loop
from packgate_sidecar.audit.chain import ChainState, JSONValue
from packgate_sidecar.audit.disk import SegmentDisk, recover
from packgate_sidecar.audit.drain import BatchDrain
from packgate_sidecar.audit.errors import (
    AuditQueueFull,
    AuditRecoveryError,
    AuditStats,
    AuditWriterError,
)
from packgate_sidecar.audit.native import SyncerLane, echo_fd
from packgate_sidecar.audit.record import AuditRecord, EncodedBody
from packgate_sidecar.audit.sealer import Sealer
from packgate_sidecar.audit.segments import SEGMENT_RE, list_segments, read_tail, segment_name

if TYPE_CHECKING:
    from packgate_sidecar.audit._syncer import Syncer

# ctx.state key under which audit-logger leaves the futures of records that must be durable
# before the gateway sends a whole response (the wait is I/O, outside any policy's time budget).
DURABLE_STATE_KEY = "audit-logger/durable"
# ctx.state key the forwarder sets once an answer goes out as a stream (its write-ahead records
# are durable): no answer waits for the request's outcome record, so it is submitted lazily.
STREAMED_STATE_KEY = "audit-logger/streamed"
# What the writer takes: a typed record, its body already encoded (``EncodedBody``), or a plain
# mapping (checked by ``AuditRecord.from_body``).
Record = AuditRecord | EncodedBody | Mapping[str, object]
# With this many requests about to send records, a batch waits the whole ``linger`` for them.
_FULL_LINGER = 8
# Importers of the errors and of the directory layout from here (policy, shipper, verifier,
# collector, tests) keep working.
__all__ = [
    "DURABLE_STATE_KEY",
    "SEGMENT_RE",
    "STREAMED_STATE_KEY",
    "AuditQueueFull",
    "AuditRecoveryError",
    "AuditStats",
    "AuditWriter",
    "AuditWriterError",
    "list_segments",
    "read_tail",
    "segment_name",
]


class AuditWriter(BatchDrain):
    def __init__(
        self,
        directory: str | os.PathLike[str],
        key: bytes,
        *,
        retention_days: int | None = None,
        max_segment_bytes: int = 64 * 1024 * 1024,
        max_queue: int = 10_000,
        linger: float = 0.005,
        fsync: bool = True,
        echo_stdout: bool = False,
        echo_stream: IO[bytes] | None = None,
        clock: Callable[[], float] = time.time,
        native: bool = True,
    ) -> None:
        self.directory = Path(directory)
        self.stats = AuditStats()
        self._max_queue, self._fsync = max_queue, fsync
        stdout = sys.stdout.buffer if echo_stdout else None
        echo = echo_stream if echo_stream is not None else stdout
        self._echo_stream = echo_stream
        self._echo_fd = echo_fd(echo)
        self._clock = clock
        self._linger = linger
        self._expecting = 0  # see expect()
        # ``with self._lock`` on the per-record paths: the condition's own lock, taken without
        # Condition's __enter__ and __exit__ (Python functions: 0.7% of the sidecar's samples).
        self._lock = threading.Lock()
        self._cv = threading.Condition(self._lock)
        # Guarded by _cv: the queue, and the sealing side of the chain (head, segment, size).
        self._sealer = Sealer(key, max_segment_bytes)
        self._batch = Batch()
        self._room: list[asyncio.Future[None]] = []  # put() calls waiting for room
        self._sleeping = False  # the writer thread waits for work (a submit must wake it)
        self._thread: threading.Thread | None = None
        self._closing = False
        self._error: BaseException | None = None
        # Owned by the writer thread once it runs (by start() before): the open segment file.
        self._disk = SegmentDisk(
            self.directory,
            self.stats,
            fsync=fsync,
            retention=retention_days,
            echo=echo,
            durable=self._durable,
            queue_prune=self._queue_prune,
        )
        self._access_written = 0
        # The compiled syncer (with ``native`` and the extension built), once started, and the
        # batches handed to it.
        self._want_native = native and native_mod.AVAILABLE
        self._lane = SyncerLane()
        self._busy = False  # the writer thread holds a batch: nothing goes to the syncer
        # Called after each durable batch (the shipper's wake-up), on the writer thread or on
        # the event loop that learned of it.
        self.on_durable: Callable[[], None] | None = None

    @property
    def head(self) -> ChainState:
        """The state after the last sealed record (``seq`` of the next one, hash to link to)."""
        return self._sealer.state

    @property
    def segment(self) -> str:
        """The segment records are being sealed into (the newest one)."""
        return self._sealer.segment

    @property
    def accepting(self) -> bool:
        """Whether :meth:`submit` would take a record now: running, no failure, queue not full.

        A hint for callers that must refuse work they could not audit (the answer may change
        the next moment); :meth:`submit` remains the authority.
        """
        with self._lock:
            return (
                self._error is None
                and self._thread is not None
                and not self._closing
                and self._batch.access + self._lane.flying < self._max_queue
            )

    # Read by tests: the retention in force, the segment file's descriptor, the syncer in use.
    @property
    def _retention(self) -> int | None:
        return self._disk.retention

    @property
    def _fd(self) -> int:
        return self._disk.fd

    @property
    def _native(self) -> Syncer | None:
        return self._lane.syncer

    def reconfigure(self, *, retention_days: int | None, echo_stdout: bool) -> None:
        """Change retention and the stdout copy of a running writer (a config reload changed
        them; a second writer on the same directory would fork the chain)."""
        with self._cv:
            self._disk.retention = retention_days
            echo = (self._echo_stream or sys.stdout.buffer) if echo_stdout else None
            self._disk.echo = echo
            self._echo_fd = echo_fd(echo)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Recover the chain from the directory, open a fresh segment, start the thread."""
        if self._thread is not None:
            raise AuditWriterError("audit writer already started")
        self.directory.mkdir(mode=0o750, parents=True, exist_ok=True)
        for stale in self.directory.glob(".audit-*.tmp"):
            stale.unlink()  # a segment whose creation crashed before it was linked into place
        now = self._clock()
        sealer = self._sealer
        found = recover(self.directory, sealer.key, sealer.kid)
        torn: dict[str, JSONValue] | None = None
        if found is not None:
            state, segment, segno, torn = found
            sealer.resume(state, segment, segno)
        with self._cv:
            sealer.roll(self._batch, now, "recovery" if torn else "start")
            if torn is not None:
                sealer.record(self._batch, "recovered", torn, now)
        while True:  # the header, the recovered record, then what start-up pruning queues
            with self._cv:
                batch, self._batch = self._batch, Batch()
            if not batch.ops:
                break
            self._disk.apply(batch.ops)
            self._disk.echo_out()
        if self._want_native:
            self._lane.start()
        self._thread = threading.Thread(target=self._run, name="packgate-audit", daemon=True)
        self._thread.start()

    async def astart(self) -> None:
        await asyncio.to_thread(self.start)

    def close(self) -> None:
        """Write everything queued, stop the thread; raises if the writer had failed."""
        thread = self._begin_close()
        if thread is not None:
            thread.join()
        self._end_close()

    async def aclose(self) -> None:
        thread = self._begin_close()
        if thread is not None:
            await asyncio.to_thread(thread.join)
        self._end_close()

    async def __aenter__(self) -> AuditWriter:
        await self.astart()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def _begin_close(self) -> threading.Thread | None:
        with self._cv:
            self._closing = True
            self._cv.notify()
        return self._thread

    def _end_close(self) -> None:
        self._lane.close()
        self._disk.close()
        if self._error is not None:
            raise AuditWriterError(f"audit writer failed: {self._error}") from self._error

    # -- producers (submit and submit_durable never block) -----------------------------------

    def expect(self, delta: int) -> None:
        """Count the requests in flight that will submit records: +1 when one starts, -1 when
        it has submitted its last one. While some (other than those with a record in the
        batch, see ``counted``) are counted, a batch waits up to ``linger`` for their records
        (in proportion: the whole of it from 8 such requests). A hint, kept without a lock: a
        stale value only shifts one batch."""
        self._expecting += delta

    def submit(self, record: Record) -> None:
        """Seal and queue a record (any thread); raises :class:`AuditQueueFull` rather than
        block."""
        self._enqueue(_body(record), None, None)

    async def put(self, record: Record) -> None:
        """Queue a record, waiting (without blocking the loop) while the queue is full."""
        await self._put(_body(record), None)

    def submit_durable(
        self,
        record: Record,
        *,
        counted: bool = False,
        lazy: bool = False,
    ) -> asyncio.Future[None]:
        """Queue a record like :meth:`submit` (from a running event loop); the returned future
        of that loop resolves once the record's batch is fsynced, or fails with
        :class:`AuditWriterError` if it cannot be written. ``counted``: the submitting request
        stays counted by :meth:`expect` (a stream's write-ahead record; its next record comes
        when the stream ends), so the batch does not wait for it. ``lazy``: no answer waits
        for this record (a relayed stream's outcome), so it does not hurry its batch: it goes
        with the next record that does, or after ``linger``; that saves a stream its second
        hand-off to the writer thread and its second fsync."""
        done = asyncio.get_running_loop().create_future()
        self._enqueue(_body(record), done, None, counted, lazy)
        return done

    async def put_durable(self, record: Record) -> None:
        """Queue a record (waiting for room) and return once it is fsynced."""
        done = asyncio.get_running_loop().create_future()
        await self._put(_body(record), done)
        await done

    def prune(self, now: float | None = None) -> list[str]:
        """Delete expired segments now (through the writer thread); returns their names.
        Blocks until done: from a coroutine use :meth:`aprune`."""
        return self._command(now).result()

    async def aprune(self, now: float | None = None) -> list[str]:
        return await asyncio.wrap_future(self._command(now))

    def flush(self) -> None:
        """Block until every record submitted before this call is fsynced."""
        done: concurrent.futures.Future[list[str]] = concurrent.futures.Future()
        with self._cv:
            self._check_open()
            self._batch.threads.append(done)
            self._ready()
        done.result()

    async def aflush(self) -> None:
        done = asyncio.get_running_loop().create_future()
        with self._cv:
            self._check_open()
            self._batch.loops.setdefault(done.get_loop(), []).append(done)
            self._ready()
        await done

    def _command(self, now: float | None) -> concurrent.futures.Future[list[str]]:
        done: concurrent.futures.Future[list[str]] = concurrent.futures.Future()
        with self._cv:
            self._check_open()
            self._batch.ops.append(Prune(self._clock() if now is None else now, done))
            self._ready()
        return done

    async def _put(self, body: bytes, done: asyncio.Future[None] | None) -> None:
        loop = asyncio.get_running_loop()
        waited = False
        while True:
            room = loop.create_future()
            if self._enqueue(body, done, room):
                return
            if not waited:
                waited = True
                with self._cv:
                    self.stats.waited += 1
            await room

    def _enqueue(
        self,
        body: bytes,
        done: asyncio.Future[None] | None,
        room: asyncio.Future[None] | None,
        counted: bool = False,
        lazy: bool = False,
    ) -> bool:
        """Seal the record and queue its line. With the queue full: raise AuditQueueFull, or,
        given ``room``, return False with it registered to be resolved once there is room
        (under the same lock as the check, so that wake-up cannot be missed)."""
        with self._lock:
            self._check_open()
            batch = self._batch
            if batch.access + self._lane.flying >= self._max_queue:
                if room is None:
                    self.stats.rejected += 1
                    raise AuditQueueFull(f"audit queue full ({self._max_queue} records waiting)")
                self._room.append(room)
                return False
            self._sealer.access(batch, body, self._clock())
            batch.access += 1
            batch.counted += counted
            self.stats.submitted += 1
            if done is not None:
                batch.loops.setdefault(done.get_loop(), []).append(done)
            if not batch.ready:
                loop = done.get_loop() if done is not None else running_loop()
                self._schedule(batch, loop, lazy)
            return True

    def _schedule(self, batch: Batch, loop: asyncio.AbstractEventLoop | None, lazy: bool) -> None:
        """Make the batch ready now, or, while other requests are about to send records (see
        :meth:`expect`), a moment later from a timer on the submitting loop, so that theirs
        join it: the thread is then woken once per batch, by the loop (as a submit would).
        A lazy record waits the whole ``linger`` unless a later record hurries the batch."""
        others = self._expecting - batch.counted
        full = batch.access + self._lane.flying >= self._max_queue
        if loop is None or full or (others <= 0 and not lazy):
            self._ready()
            return
        delay = self._linger if lazy else self._linger * min(others, _FULL_LINGER) / _FULL_LINGER
        due = time.monotonic() + delay
        if due < batch.kick_at:  # the earliest deadline of the batch's records wins
            batch.kick_at = due
            if batch.timer is not None and batch.timer_loop is loop:
                batch.timer.cancel()  # a later deadline: it would fire for nothing
            batch.timer, batch.timer_loop = loop.call_later(delay, self._kick, batch), loop

    def _kick(self, batch: Batch) -> None:
        with self._lock:
            batch.timer = None  # firing now
            if self._batch is batch:  # not taken meanwhile (a flush, a full queue)
                self._ready()

    def _ready(self) -> None:
        batch = self._batch
        batch.ready = True
        timer = batch.timer
        if timer is not None:  # it leaves before its timer fires (at c=1: the next request's
            # record took a stream's lazy outcome record along): that timer would only wake the
            # loop later. A timer of another loop cannot be cancelled from here; it fires and
            # finds the batch gone.
            batch.timer = None
            if batch.timer_loop is running_loop():
                timer.cancel()
        if self._native_takes(batch):
            self._dispatch(batch)
        elif self._sleeping:
            self._sleeping = False
            self._cv.notify()

    def _check_open(self) -> None:
        if self._error is not None:
            raise AuditWriterError(f"audit writer failed: {self._error}")
        if self._thread is None or self._closing:
            raise AuditWriterError("audit writer is not running")

    def _queue_prune(
        self,
        body: dict[str, JSONValue],
        now: float,
        paths: list[Path],
        done: concurrent.futures.Future[list[str]] | None,
    ) -> None:
        """(From the disk work, without _cv.) Seal the prune record naming expired segments
        and queue their deletion after it."""
        with self._cv:
            self._sealer.record(self._batch, "prune", body, now)
            self._batch.ops.append(Unlink(paths, done))
            self._batch.tail = None
            self._ready()


def _body(record: Record) -> bytes:
    """The record's body in its canonical encoding (validated on the way, see record.py)."""
    if isinstance(record, EncodedBody):
        return record
    if isinstance(record, AuditRecord):
        return record.encode()
    return AuditRecord.from_body(record).encode()
