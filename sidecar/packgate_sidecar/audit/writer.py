"""Appends sealed audit records to segment files crash-safely, with ``fsync`` off the event loop.

Why it exists: every proxied request produces an audit record, and no ``fsync`` may stall the
event loop. Request handlers call :meth:`AuditWriter.submit` (or ``await put``), which validates
and seals the record on the spot (its body encoded in one pass by ``AuditRecord.encode``; hash
and MAC: some 15 us, less than handing the record to another thread costs) and appends the line
to an in-memory batch. Each batch is written with one ``write`` on an ``O_APPEND`` descriptor
and synced once, so throughput grows with load instead of paying one sync per request.

Who writes a batch: the compiled syncer (``_syncer.c``), a pthread that never takes the GIL. A
ready batch's bytes are copied into its queue; it writes and ``fdatasync``s them (the data and
the file's size: all an appended line needs; batches that queued meanwhile share one), then
counts the completion in an eventfd (the stdout copy is written after that) that the event loop
which handed the batch over watches (``loop.add_reader``); the loop then resolves the batch's
futures itself. A Python writer thread doing the same must take the GIL back from the loop after
each of its system calls. Measured in-process on one pinned core (load ~5.7, c1, 2,000 records,
fsync off so that only the hand-off shows): 103 -> 83 us of CPU per record, wait p50 74 -> 61
us, context switches per request in the sidecar (bench.cpu_cost json c32) 1.6 -> 0.85. With the
fsync on, both designs cost ~450-550 us per record at c1: the kernel's fdatasync work on this VM
and the loop waking cold after it, which no hand-off design removes. The Python writer thread
stays for what is rare or needs Python: creating segments, pruning, the copy to an echo stream
without a descriptor of its own, and batches handed over by threads without an event loop (a
blocking :meth:`flush`, ``submit`` from a thread); it first waits for everything the syncer
holds, so one order holds across both. ``native=False`` (or a build without the extension)
leaves every batch to the thread, the reference the syncer is tested against byte for byte.

Batches are made large when they can be: requests that will send records soon are counted
(:meth:`expect`); while others than the batch's own are counted, the batch waits up to
``linger`` (5 ms) for theirs, then a timer on the event loop hands it over. With nothing else
in flight, a record is handed over at once, so a lone request never waits. A record no answer
waits for (``lazy``: a relayed stream's outcome) hurries nobody: it goes with the next record,
or after ``linger``.

On disk: ``DIR/audit-NNNNNN-YYYYMMDD.jsonl`` segments, one sealed JSON record per line (see
``chain.py``). A segment is created atomically (header written to a temp file, fsynced, then
hard-linked into place), starts with a ``segment`` record naming the previous segment, and is
only ever appended to. A new segment starts on each writer start, each UTC day and once the
current one has reached ``max_segment_bytes`` (so a segment may overshoot by one record).
Records are sealed, queued and written in one order (``seq``), headers and prune records included.

Crash safety: bytes already written are never rewritten. After ``kill -9`` mid-write the newest
segment may end in a torn line; the next start chains on from the last complete line, in a new
segment, and seals a ``recovered`` record naming the torn bytes (offset, length, SHA-256) so the
verifier can tell a crash from tampering. A record is durable once the batch holding it is
fsynced; records still queued at a crash are lost. :meth:`submit_durable` returns a future of the
caller's event loop that resolves only once the record's batch is fsynced (records queued
together share one fsync: group commit), for records that must survive a crash of the process
the moment after; ``await put_durable`` waits for the same. A failed write or sync stops the
writer for good (the kernel may have dropped the unsynced pages): every waiting future fails.
The stdout copy is written by the writer thread after the fsync (with it on, every batch goes
through that thread), so a stalled stdout slows the writer and, through the bounded queue, the
requests, rather than letting the two copies diverge.

Backpressure: the queue holds ``max_queue`` records (those the syncer holds included, plus the
batch the writer thread is writing). When it is full, :meth:`submit` raises :class:`AuditQueueFull`
(counted in ``stats.rejected``) so the caller can fail the request closed, and ``await put`` waits
for room (counted in ``stats.waited``), slowing requests down to the disk's pace. Records are never
dropped silently. If the disk fails, the writer stops, every waiting future and every later call
gets :class:`AuditWriterError`, and queued records are counted in ``stats.lost``.

Retention: with ``retention_days`` set, whole segments whose newest record is older than that
are deleted, oldest first and never the current one, after a ``prune`` record naming them and
their last hashes has been made durable, so the verifier still accepts the shortened chain.
Pruning runs on start, on every new segment and on demand via :meth:`prune`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import hmac
import logging
import math
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING

from packgate_sidecar.audit.chain import (
    GENESIS_STATE,
    ChainState,
    JSONValue,
    RecordType,
    key_id,
    parse_line,
    seal,
    seal_encoded,
)
from packgate_sidecar.audit.record import AuditRecord, utc_time
from packgate_sidecar.audit.segments import (
    DAY,
    SEGMENT_RE,
    create_segment,
    expired_segments,
    fsync_dir,
    list_segments,
    read_tail,
    segment_name,
    segno,
    write_all,
)

if TYPE_CHECKING:
    from packgate_sidecar.audit._syncer import Syncer
else:
    try:
        from packgate_sidecar.audit._syncer import Syncer
    except ImportError as exc:  # pragma: no cover - exercised only on a broken install
        Syncer = None
        logging.getLogger("packgate.audit").warning(
            "compiled audit syncer unavailable (%s); the writer thread writes and fsyncs, "
            "which costs the event loop GIL hand-offs: reinstall packgate (pip install .)",
            exc,
        )

# ctx.state key under which audit-logger leaves the futures of records that must be durable
# before the gateway sends a whole response (the wait is I/O, outside any policy's time budget).
DURABLE_STATE_KEY = "audit-logger/durable"
# ctx.state key the forwarder sets once an answer goes out as a stream (its write-ahead records
# are durable): no answer waits for the request's outcome record, so it is submitted lazily.
STREAMED_STATE_KEY = "audit-logger/streamed"
# With this many requests about to send records, a batch waits the whole ``linger`` for them.
_FULL_LINGER = 8
# Importers of the directory layout from here (shipper, verifier, collector) keep working.
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


class AuditWriterError(RuntimeError):
    """The writer is not running: never started, closed, or stopped by an I/O error."""


class AuditRecoveryError(AuditWriterError):
    """The existing log cannot be continued (its last complete record does not verify)."""


class AuditQueueFull(RuntimeError):
    """``submit`` found the queue full; the record was not accepted."""


@dataclass
class AuditStats:
    submitted: int = 0  # accepted into the queue
    written: int = 0  # records durable on disk (fsynced), headers and prune records included
    batches: int = 0  # fsyncs of appended records
    rejected: int = 0  # submit() refused: queue full
    waited: int = 0  # put() calls that had to wait for room
    segments: int = 0  # segments opened by this writer
    pruned: int = 0  # segments deleted by retention
    lost: int = 0  # records still queued when the writer failed
    echo_errors: int = 0  # failed writes of the stdout copy (the file copy is unaffected)


# What the writer thread does, in seal order: append lines, start a segment (its header already
# sealed), look for expired segments, delete them once the prune record naming them is durable.
@dataclass(slots=True)
class _Write:
    data: bytearray
    records: int = 0
    access: int = 0


@dataclass(slots=True)
class _Open:
    name: str
    header: bytes
    now: float


@dataclass(slots=True)
class _Prune:
    now: float
    done: concurrent.futures.Future[list[str]] | None


@dataclass(slots=True)
class _Unlink:
    paths: list[Path]
    done: concurrent.futures.Future[list[str]] | None


_Op = _Write | _Open | _Prune | _Unlink


@dataclass(slots=True)
class _Batch:
    """Everything queued since the writer thread last took a batch, and who waits for it."""

    ops: list[_Op] = field(default_factory=list)
    tail: _Write | None = None  # the last op, while new lines may still be added to it
    access: int = 0  # access records in ops (the queue's length)
    counted: int = 0  # of which from requests still counted by expect() (write-ahead records)
    ready: bool = False  # the writer thread may take it now
    kick_at: float = math.inf  # a loop timer will mark it ready then (time.monotonic())
    loops: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = field(default_factory=dict)
    threads: list[concurrent.futures.Future[list[str]]] = field(default_factory=list)

    def waiting(self) -> bool:
        return bool(self.ops or self.loops or self.threads)


@dataclass(slots=True)
class _Flight:
    """A batch handed to the compiled syncer as job ``ticket``, until it completes."""

    ticket: int
    batch: _Batch
    records: int
    access: int
    thread: bool  # no event loop watches for it: the writer thread settles it


class AuditWriter:
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
        self._key, self._kid = key, key_id(key)
        self._retention = retention_days
        self._max_bytes, self._max_queue, self._fsync = max_segment_bytes, max_queue, fsync
        stdout = sys.stdout.buffer if echo_stdout else None
        self._echo = echo_stream if echo_stream is not None else stdout
        self._echo_stream = echo_stream
        self._echo_fd = _echo_fd(self._echo)
        self._echo_errors_seen = 0  # failed copies the syncer reported, in stats.echo_errors
        self._clock = clock
        self._linger = linger
        self._expecting = 0  # see expect()
        self._cv = threading.Condition(threading.Lock())
        # Guarded by _cv: the queue, and the sealing side of the chain (head, segment, size).
        self._batch = _Batch()
        self._room: list[asyncio.Future[None]] = []  # put() calls waiting for room
        self._sleeping = False  # the writer thread waits for work (a submit must wake it)
        self._thread: threading.Thread | None = None
        self._closing = False
        self._error: BaseException | None = None
        self._state = GENESIS_STATE
        self._segno, self._seg_name, self._size = 0, "", 0
        self._day_start = self._day_end = 0.0
        # Owned by the writer thread once it runs (by start() before): the open segment file.
        self._fd, self._file_seg = -1, ""
        self._unsynced = _Write(bytearray())  # written, not yet counted as durable
        self._to_echo = bytearray()  # durable, not yet copied to stdout
        self._pruning: set[str] = set()
        self._access_written = 0
        # The compiled syncer (with ``native`` and the extension built), once started; and the
        # batches handed to it, oldest first, with the records they hold (part of the queue).
        self._want_native = native and Syncer is not None
        self._native: Syncer | None = None
        self._flights: deque[_Flight] = deque()
        self._flying = 0  # access records in _flights
        self._busy = False  # the writer thread holds a batch: nothing goes to the syncer
        self._readers: set[asyncio.AbstractEventLoop] = set()  # loops watching its eventfd
        # Called after each durable batch (the shipper's wake-up), on the writer thread or on
        # the event loop that learned of it.
        self.on_durable: Callable[[], None] | None = None

    @property
    def head(self) -> ChainState:
        """The state after the last sealed record (``seq`` of the next one, hash to link to)."""
        return self._state

    @property
    def segment(self) -> str:
        """The segment records are being sealed into (the newest one)."""
        return self._seg_name

    @property
    def accepting(self) -> bool:
        """Whether :meth:`submit` would take a record now: running, no failure, queue not full.

        A hint for callers that must refuse work they could not audit (the answer may change
        the next moment); :meth:`submit` remains the authority.
        """
        with self._cv:
            return (
                self._error is None
                and self._thread is not None
                and not self._closing
                and self._batch.access + self._flying < self._max_queue
            )

    def reconfigure(self, *, retention_days: int | None, echo_stdout: bool) -> None:
        """Change retention and the stdout copy of a running writer (a config reload changed
        them; a second writer on the same directory would fork the chain)."""
        with self._cv:
            self._retention = retention_days
            self._echo = (self._echo_stream or sys.stdout.buffer) if echo_stdout else None
            self._echo_fd = _echo_fd(self._echo)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Recover the chain from the directory, open a fresh segment, start the thread."""
        if self._thread is not None:
            raise AuditWriterError("audit writer already started")
        self.directory.mkdir(mode=0o750, parents=True, exist_ok=True)
        for stale in self.directory.glob(".audit-*.tmp"):
            stale.unlink()  # a segment whose creation crashed before it was linked into place
        segments = list_segments(self.directory)
        now = self._clock()
        torn: dict[str, JSONValue] | None = None
        if segments:
            newest = segments[-1]
            last, fragment = read_tail(newest)
            env = parse_line(last) if last is not None else "no complete record"
            if isinstance(env, str):
                raise AuditRecoveryError(f"cannot continue audit log {newest}: {env}")
            if hashlib.sha256(env.content).hexdigest() != env.hash or (
                env.kid == self._kid
                and not hmac.compare_digest(
                    env.mac, hmac.new(self._key, env.content, hashlib.sha256).hexdigest()
                )
            ):
                raise AuditRecoveryError(f"cannot continue audit log {newest}: last record altered")
            self._state, self._seg_name = env.state_after, newest.name
            self._segno = segno(newest)
            if fragment:
                torn = {
                    "segment": newest.name,
                    "offset": newest.stat().st_size - len(fragment),
                    "length": len(fragment),
                    "sha256": hashlib.sha256(fragment).hexdigest(),
                    "last_seq": env.seq,
                }
        with self._cv:
            self._roll(now, "recovery" if torn else "start")
            if torn is not None:
                self._append(self._seal("recovered", torn, now), access=False)
        while True:  # the header, the recovered record, then what start-up pruning queues
            with self._cv:
                batch, self._batch = self._batch, _Batch()
            if not batch.ops:
                break
            self._apply(batch.ops)
            self._echo_out()
        if self._want_native:
            self._native = Syncer()
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
        native = self._native
        if native is not None:
            native.close()  # drained by the writer thread already; its eventfd stays open
            here = _running_loop()
            for loop in self._readers:
                if loop is here:
                    loop.remove_reader(native.fileno())
                elif not loop.is_closed():
                    with contextlib.suppress(RuntimeError):
                        loop.call_soon_threadsafe(_unwatch, loop, native)
            self._readers.clear()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
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

    def submit(self, record: AuditRecord | Mapping[str, object]) -> None:
        """Seal and queue a record (any thread); raises :class:`AuditQueueFull` rather than
        block."""
        self._enqueue(_body(record), None, None)

    async def put(self, record: AuditRecord | Mapping[str, object]) -> None:
        """Queue a record, waiting (without blocking the loop) while the queue is full."""
        await self._put(_body(record), None)

    def submit_durable(
        self,
        record: AuditRecord | Mapping[str, object],
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

    async def put_durable(self, record: AuditRecord | Mapping[str, object]) -> None:
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
            self._batch.ops.append(_Prune(self._clock() if now is None else now, done))
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
        with self._cv:
            self._check_open()
            batch = self._batch
            if batch.access + self._flying >= self._max_queue:
                if room is None:
                    self.stats.rejected += 1
                    raise AuditQueueFull(f"audit queue full ({self._max_queue} records waiting)")
                self._room.append(room)
                return False
            now = self._clock()
            if not self._day_start <= now < self._day_end:
                self._roll(now, "day")
            elif self._size >= self._max_bytes:  # so a segment overshoots by one record at most
                self._roll(now, "size")
            line, self._state = seal_encoded(
                self._state, "access", body, key=self._key, ts=utc_time(now), kid=self._kid
            )
            self._append(line, access=True)
            batch.access += 1
            batch.counted += counted
            self.stats.submitted += 1
            if done is not None:
                batch.loops.setdefault(done.get_loop(), []).append(done)
            if not batch.ready:
                loop = done.get_loop() if done is not None else _running_loop()
                self._schedule(batch, loop, lazy)
            return True

    def _schedule(self, batch: _Batch, loop: asyncio.AbstractEventLoop | None, lazy: bool) -> None:
        """Make the batch ready now, or, while other requests are about to send records (see
        :meth:`expect`), a moment later from a timer on the submitting loop, so that theirs
        join it: the thread is then woken once per batch, by the loop (as a submit would).
        A lazy record waits the whole ``linger`` unless a later record hurries the batch."""
        others = self._expecting - batch.counted
        full = batch.access + self._flying >= self._max_queue
        if loop is None or full or (others <= 0 and not lazy):
            self._ready()
            return
        delay = self._linger if lazy else self._linger * min(others, _FULL_LINGER) / _FULL_LINGER
        due = time.monotonic() + delay
        if due < batch.kick_at:  # the earliest deadline of the batch's records wins
            batch.kick_at = due
            loop.call_later(delay, self._kick, batch)

    def _kick(self, batch: _Batch) -> None:
        with self._cv:
            if self._batch is batch:  # not taken meanwhile (a flush, a full queue)
                self._ready()

    def _ready(self) -> None:
        batch = self._batch
        batch.ready = True
        if self._native_takes(batch):
            self._dispatch(batch)
        elif self._sleeping:
            self._sleeping = False
            self._cv.notify()

    # -- the compiled syncer (with _cv held, but for _reap and _settle_native) -----------------

    def _native_takes(self, batch: _Batch) -> bool:
        """Whether the syncer writes this batch: lines only (segments and pruning are the
        writer thread's), no stdout copy to write after it, the thread holding no batch (whose
        ops come first), nothing failed."""
        return (
            self._native is not None
            and not self._busy
            and self._echo_fd is not None
            and self._error is None
            and all(isinstance(op, _Write) for op in batch.ops)
        )

    def _dispatch(self, batch: _Batch) -> None:
        """Hand a ready batch to the syncer; the event loop handing it over watches the
        syncer's eventfd from now on (the thread settles batches no loop will see to)."""
        native = self._native
        assert native is not None
        writes = [op for op in batch.ops if isinstance(op, _Write)]
        data = writes[0].data if len(writes) == 1 else b"".join(op.data for op in writes)
        try:
            echo = self._echo_fd
            assert echo is not None  # see _native_takes
            ticket = native.submit(self._fd, data, self._fsync, echo)
        except OSError as exc:  # it failed since the last completion was settled
            self._batch = _Batch()
            error = AuditWriterError(f"audit writer failed: {exc}")
            for failed in (batch, *self._fail(exc)):
                _settle(failed, error)
            room, self._room = self._room, []
            _wake(room, None)  # put() tries again and gets the error
            return
        loop = _running_loop()
        thread = loop is None or bool(batch.threads)  # a blocking flush() must not wait on a loop
        records, access = sum(op.records for op in writes), sum(op.access for op in writes)
        self._flights.append(_Flight(ticket, batch, records, access, thread))
        self._flying += batch.access
        self._batch = _Batch()
        if loop is not None and loop not in self._readers:
            loop.add_reader(native.fileno(), self._reap)
            self._readers.add(loop)
        if thread and self._sleeping:
            self._sleeping = False
            self._cv.notify()

    def _fail(self, exc: BaseException) -> list[_Batch]:
        """Stop for good after a failed write or fsync; returns the batches that now fail."""
        self._error = exc
        lost = [flight.batch for flight in self._flights] + [self._batch]
        self._flights.clear()
        self._flying = 0
        self._batch = _Batch()
        self.stats.lost = self.stats.submitted - self._access_written
        return lost

    def _reap(self) -> None:
        """The syncer's eventfd is readable: settle what it completed (on the event loop)."""
        native = self._native
        if native is not None:
            self._settle_native(*native.poll())

    def _settle_native(self, completed: int, errno: int) -> None:
        """Resolve the batches up to ``completed``; with ``errno``, fail every other one."""
        done: list[_Flight] = []
        failed: list[_Batch] = []
        with self._cv:
            flights = self._flights
            while flights and flights[0].ticket <= completed:
                flight = flights.popleft()
                done.append(flight)
                self._flying -= flight.batch.access
                if flight.records:
                    self.stats.written += flight.records
                    self._access_written += flight.access
                    self.stats.batches += 1
            if errno and self._error is None:
                failed = self._fail(OSError(errno, os.strerror(errno)))
            if done and self._echo_fd is not None and self._echo_fd >= 0:
                native = self._native
                assert native is not None
                echo_errors = native.counters()[2]  # copies of earlier batches: a hint
                self.stats.echo_errors += echo_errors - self._echo_errors_seen
                self._echo_errors_seen = echo_errors
            room: list[asyncio.Future[None]] = []
            if done or failed:
                room, self._room = self._room, []
        for flight in done:
            _settle(flight.batch, None)
        if any(flight.records for flight in done) and self.on_durable is not None:
            self.on_durable()
        if failed:
            error = AuditWriterError(f"audit writer failed: {self._error}")
            for batch in failed:
                _settle(batch, error)
        _wake(room, None)  # put() tries again: room now, or the error

    def _drain_native(self, *, orphans_only: bool = False) -> None:
        """Wait (without the GIL) for the syncer's batches, or for the last one no event loop
        watches, and settle them; raises the failure that stopped the writer, if any."""
        native = self._native
        with self._cv:
            flights = [f for f in self._flights if f.thread or not orphans_only]
        if native is not None and flights:
            self._settle_native(*native.wait(flights[-1].ticket))
        if self._error is not None:
            raise self._error

    def _check_open(self) -> None:
        if self._error is not None:
            raise AuditWriterError(f"audit writer failed: {self._error}")
        if self._thread is None or self._closing:
            raise AuditWriterError("audit writer is not running")

    # -- sealing (with _cv held) -------------------------------------------------------------

    def _seal(self, kind: RecordType, body: Mapping[str, JSONValue], now: float) -> bytes:
        line, self._state = seal(
            self._state, kind, body, key=self._key, ts=utc_time(now), kid=self._kid
        )
        return line

    def _append(self, line: bytes, *, access: bool) -> None:
        tail = self._batch.tail
        if tail is None:
            tail = self._batch.tail = _Write(bytearray())
            self._batch.ops.append(tail)
        tail.data += line
        tail.records += 1
        tail.access += access
        self._size += len(line)

    def _roll(self, now: float, reason: str) -> None:
        """Seal the header of the next segment; later lines go to it once the thread made it."""
        name = segment_name(self._segno + 1, now)
        header = {"segment": name, "reason": reason, "prev_segment": self._seg_name or None}
        line = self._seal("segment", header, now)
        self._batch.ops.append(_Open(name, line, now))
        self._batch.tail = None
        self._segno, self._seg_name, self._size = self._segno + 1, name, len(line)
        self._day_start = now - now % DAY  # POSIX time: every UTC day is 86400 s long
        self._day_end = self._day_start + DAY

    # -- the writer thread -------------------------------------------------------------------

    def _run(self) -> None:
        batch = _Batch()
        try:
            while True:
                with self._cv:
                    taken = self._take()
                    room, self._room = self._room, []
                _wake(room, None)
                if taken is None:  # the syncer's batches that no loop settles, or closing
                    self._drain_native(orphans_only=not self._closing)
                    with self._cv:
                        if self._closing and not self._flights and not self._batch.waiting():
                            return  # everything queued has been written
                    continue
                batch = taken
                self._drain_native()  # what the syncer holds comes first
                self._apply(batch.ops)
                self._echo_out()  # before the loop is woken: after, the two contend for the GIL
                _settle(batch, None)
                with self._cv:
                    self._busy = False
        except BaseException as exc:
            with self._cv:
                lost = self._fail(exc) if self._error is None else [self._batch]
                self._batch = _Batch()
                room, self._room = self._room, []
                self.stats.lost = self.stats.submitted - self._access_written
            error = AuditWriterError(f"audit writer failed: {self._error}")
            for failed in (batch, *lost):
                _settle(failed, error)
            _wake(room, None)  # put() tries again and gets the error

    def _take(self) -> _Batch | None:
        """(With _cv held.) Wait for work: a ready batch the syncer does not take (returned,
        the thread busy with it), or a syncer batch no event loop settles, or closing (None)."""
        while True:
            batch = self._batch
            if batch.ready or (self._closing and batch.waiting()):
                if self._native_takes(batch):
                    self._dispatch(batch)  # left while the thread was busy, or on close
                    continue
                self._batch = _Batch()
                self._busy = True
                return batch
            if self._closing or any(flight.thread for flight in self._flights):
                return None
            self._sleeping = True
            self._cv.wait()
            self._sleeping = False

    def _apply(self, ops: list[_Op]) -> None:
        """Write the ops in order; everything written is fsynced when this returns."""
        for op in ops:
            if isinstance(op, _Write):
                write_all(self._fd, op.data)
                self._unsynced.data += op.data
                self._unsynced.records += op.records
                self._unsynced.access += op.access
            elif isinstance(op, _Open):
                self._open_segment(op)
            elif isinstance(op, _Prune):
                self._prune(op.now, op.done)
            else:
                self._sync()  # the prune record naming them is durable before they go
                for path in op.paths:
                    path.unlink()
                fsync_dir(self.directory)
                self._pruning.difference_update(path.name for path in op.paths)
                self.stats.pruned += len(op.paths)
                if op.done is not None:
                    op.done.set_result([path.name for path in op.paths])
        self._sync()

    def _sync(self) -> None:
        done = self._unsynced
        if not done.records:
            return
        self._unsynced = _Write(bytearray())
        if self._fsync:
            os.fsync(self._fd)
        self.stats.written += done.records
        self._access_written += done.access
        self.stats.batches += 1
        if self._echo is not None:
            self._to_echo += done.data
        if self.on_durable is not None:
            self.on_durable()

    def _echo_out(self) -> None:
        """Write the stdout copy of what became durable."""
        data, self._to_echo = self._to_echo, bytearray()
        echo = self._echo
        if echo is None or not data:
            return
        try:
            echo.write(data)
            echo.flush()
        except (OSError, ValueError):
            self.stats.echo_errors += 1

    def _open_segment(self, op: _Open) -> None:
        self._sync()  # the old segment's lines are durable before the next segment exists
        fd = create_segment(self.directory, op.name, op.header)
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = fd
        self._file_seg = op.name
        self.stats.segments += 1
        self.stats.written += 1
        if self._echo is not None:
            self._to_echo += op.header
        self._prune(op.now, None)

    def _prune(self, now: float, done: concurrent.futures.Future[list[str]] | None) -> None:
        """Find the expired segments; queue the prune record naming them and their deletion
        (which waits for that record to be durable). ``done`` gets the names once deleted."""
        retention = self._retention
        expired = []
        if retention is not None:
            cutoff = now - retention * DAY
            expired = expired_segments(self.directory, self._file_seg, self._pruning, cutoff)
        if not expired:
            if done is not None:
                done.set_result([])
            return
        body: dict[str, JSONValue] = {
            "retention_days": retention,
            "segments": [info for _, info in expired],
        }
        with self._cv:
            self._append(self._seal("prune", body, now), access=False)
            self._batch.ops.append(_Unlink([path for path, _ in expired], done))
            self._batch.tail = None
            self._ready()
        self._pruning.update(path.name for path, _ in expired)


def _body(record: AuditRecord | Mapping[str, object]) -> bytes:
    """The record's body in its canonical encoding (validated on the way, see record.py)."""
    if isinstance(record, AuditRecord):
        return record.encode()
    return AuditRecord.from_body(record).encode()


def _echo_fd(echo: IO[bytes] | None) -> int | None:
    """Where the syncer writes the stdout copy: -1 for none, None if only the writer thread
    can (a stream without a descriptor of its own, such as a test's BytesIO)."""
    if echo is None:
        return -1
    try:
        echo.flush()  # what it buffered goes first; the syncer writes to the descriptor itself
        return echo.fileno()
    except (OSError, ValueError, AttributeError):
        return None


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None  # submitted from a thread without an event loop


def _settle(batch: _Batch, error: BaseException | None) -> None:
    """Resolve everyone waiting for a batch: the running event loop's futures at once, one
    call into each other waiting loop, whose callback resolves all of that loop's futures."""
    here = _running_loop() if batch.loops else None
    for loop, futures in batch.loops.items():
        if loop is here:
            _resolve_all(futures, error)
            continue
        with contextlib.suppress(RuntimeError):  # that loop has been closed meanwhile
            loop.call_soon_threadsafe(_resolve_all, futures, error)
    for done in batch.threads:
        if error is None:
            done.set_result([])
        else:
            done.set_exception(error)
    for op in batch.ops if error is not None else ():  # commands: resolved by their op if run
        if isinstance(op, _Prune | _Unlink) and op.done is not None and not op.done.done():
            op.done.set_exception(error)


def _unwatch(loop: asyncio.AbstractEventLoop, native: Syncer) -> None:
    loop.remove_reader(native.fileno())


def _wake(futures: list[asyncio.Future[None]], error: BaseException | None) -> None:
    loops: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
    for future in futures:
        loops.setdefault(future.get_loop(), []).append(future)
    _settle(_Batch(loops=loops), error)


def _resolve_all(futures: list[asyncio.Future[None]], error: BaseException | None) -> None:
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
