"""Appends sealed audit records to segment files, off the event loop, crash-safely.

Why it exists: every proxied request produces an audit record, and neither hashing nor ``fsync``
may stall the event loop. Request handlers call :meth:`AuditWriter.submit` (or ``await put``),
which only validates the record and appends it to an in-memory queue; one writer thread seals
whatever has queued up, writes the batch with a single ``os.write`` on an ``O_APPEND`` descriptor
and ``fsync``s once per batch, so throughput grows with load instead of paying one ``fsync`` per
request.

On disk: ``DIR/audit-NNNNNN-YYYYMMDD.jsonl`` segments, one sealed JSON record per line (see
``chain.py``). A segment is created atomically (header written to a temp file, fsynced, then
hard-linked into place), starts with a ``segment`` record naming the previous segment, and is
only ever appended to. A new segment starts on each writer start, each UTC day and once the
current one has reached ``max_segment_bytes`` (so a segment may overshoot by one record).

Crash safety: bytes already written are never rewritten. After ``kill -9`` mid-write the newest
segment may end in a torn line; the next start chains on from the last complete line, in a new
segment, and seals a ``recovered`` record naming the torn bytes (offset, length, SHA-256) so the
verifier can tell a crash from tampering. A record is durable once the batch holding it is
fsynced; records still queued at a crash are lost. ``await put_durable`` returns only once the
record's batch is fsynced (records queued together share one fsync: group commit), for records
that must survive a crash of the process the moment after. The stdout copy is written by the
same thread, so a stalled stdout slows the writer and, through the bounded queue, the requests,
rather than letting the two copies diverge.

Backpressure: the queue holds ``max_queue`` records (plus the batch being written). When it is
full, :meth:`submit` raises :class:`AuditQueueFull` (counted in ``stats.rejected``) so the caller
can fail the request closed, and ``await put`` waits for room (counted in ``stats.waited``),
slowing requests down to the disk's pace. Records are never dropped silently. If the disk fails,
the writer stops, every later call raises :class:`AuditWriterError`, and queued records are
counted in ``stats.lost``.

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
import os
import re
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from packgate_sidecar.audit.chain import (
    GENESIS_STATE,
    ChainState,
    JSONValue,
    RecordType,
    key_id,
    parse_line,
    seal,
)
from packgate_sidecar.audit.record import AuditRecord, utc_time

# ctx.state key under which audit-logger leaves the futures of records that must be durable
# before the gateway sends a whole response (the wait is I/O, outside any policy's time budget).
DURABLE_STATE_KEY = "audit-logger/durable"
SEGMENT_RE = re.compile(r"audit-(\d{6,})-(\d{8})\.jsonl")
_DAY = 86400.0


def segment_name(segno: int, epoch: float) -> str:
    return f"audit-{segno:06d}-{datetime.fromtimestamp(epoch, tz=UTC):%Y%m%d}.jsonl"


def list_segments(directory: Path) -> list[Path]:
    """The segment files of a log directory in chain order (by segment number)."""
    return sorted((p for p in directory.iterdir() if SEGMENT_RE.fullmatch(p.name)), key=_segno)


def _segno(path: Path) -> int:
    match = SEGMENT_RE.fullmatch(path.name)
    return int(match.group(1)) if match else -1


def read_tail(path: Path, chunk: int = 65536) -> tuple[bytes | None, bytes]:
    """The last complete line of a file (without newline) and any torn bytes after it."""
    with path.open("rb") as f:
        end = f.seek(0, os.SEEK_END)
        data, start = b"", end
        while start > 0:
            start = max(0, start - chunk)
            f.seek(start)
            data = f.read(end - start)
            cut = data.rfind(b"\n")
            if cut >= 0 and (data.rfind(b"\n", 0, cut) >= 0 or start == 0):
                break
    cut = data.rfind(b"\n")
    if cut < 0:
        return None, data
    return data[data.rfind(b"\n", 0, cut) + 1 : cut], data[cut + 1 :]


def _epoch(ts: str) -> float:
    return datetime.fromisoformat(ts).timestamp()


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
    batches: int = 0
    rejected: int = 0  # submit() refused: queue full
    waited: int = 0  # put() calls that had to wait for room
    segments: int = 0  # segments opened by this writer
    pruned: int = 0  # segments deleted by retention
    lost: int = 0  # records still queued when the writer failed
    echo_errors: int = 0  # failed writes of the stdout copy (the file copy is unaffected)


_Item = tuple[str, Any, Any]


class AuditWriter:
    def __init__(
        self,
        directory: str | os.PathLike[str],
        key: bytes,
        *,
        retention_days: int | None = None,
        max_segment_bytes: int = 64 * 1024 * 1024,
        max_queue: int = 10_000,
        fsync: bool = True,
        echo_stdout: bool = False,
        echo_stream: IO[bytes] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.directory = Path(directory)
        self.stats = AuditStats()
        self._key, self._kid = key, key_id(key)
        self._retention = retention_days
        self._max_bytes, self._max_queue, self._fsync = max_segment_bytes, max_queue, fsync
        stdout = sys.stdout.buffer if echo_stdout else None
        self._echo = echo_stream if echo_stream is not None else stdout
        self._echo_stream = echo_stream
        self._clock = clock
        self._cv = threading.Condition()
        self._pending: deque[_Item] = deque()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._thread: threading.Thread | None = None
        self._closing = False
        self._error: BaseException | None = None
        # Owned by the writer thread once it runs.
        self._state = GENESIS_STATE
        self._fd = -1
        self._segno, self._seg_name, self._day, self._size = 0, "", "", 0
        self._access_written = 0
        # Called on the writer thread after each durable batch (the shipper's wake-up).
        self.on_durable: Callable[[], None] | None = None

    @property
    def head(self) -> ChainState:
        """The state after the last sealed record (``seq`` of the next one, hash to link to)."""
        return self._state

    @property
    def segment(self) -> str:
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
                and len(self._pending) < self._max_queue
            )

    def reconfigure(self, *, retention_days: int | None, echo_stdout: bool) -> None:
        """Change retention and the stdout copy of a running writer (a config reload changed
        them; a second writer on the same directory would fork the chain)."""
        with self._cv:
            self._retention = retention_days
            self._echo = (self._echo_stream or sys.stdout.buffer) if echo_stdout else None

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
            self._segno = _segno(newest)
            if fragment:
                torn = {
                    "segment": newest.name,
                    "offset": newest.stat().st_size - len(fragment),
                    "length": len(fragment),
                    "sha256": hashlib.sha256(fragment).hexdigest(),
                    "last_seq": env.seq,
                }
        self._open_segment(now, "recovery" if torn else "start")
        if torn is not None:
            self._flush(bytearray(self._seal("recovered", torn, now)), 1, access=False)
        self._prune(now)
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
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._error is not None:
            raise AuditWriterError(f"audit writer failed: {self._error}") from self._error

    # -- producers (any thread; submit never blocks) ------------------------------------------

    def submit(self, record: AuditRecord | Mapping[str, object]) -> None:
        """Queue a record for sealing; raises :class:`AuditQueueFull` rather than block."""
        body = _body(record)
        with self._cv:
            self._check_open()
            if len(self._pending) >= self._max_queue:
                self.stats.rejected += 1
                raise AuditQueueFull(f"audit queue full ({self._max_queue} records waiting)")
            self._pending.append(("access", body, None))
            self.stats.submitted += 1
            self._cv.notify()

    async def put(self, record: AuditRecord | Mapping[str, object]) -> None:
        """Queue a record, waiting (without blocking the loop) while the queue is full."""
        body = _body(record)
        loop = asyncio.get_running_loop()
        waited = False
        while True:
            room: asyncio.Future[None] = loop.create_future()
            with self._cv:
                self._check_open()
                if len(self._pending) < self._max_queue:
                    self._pending.append(("access", body, None))
                    self.stats.submitted += 1
                    self._cv.notify()
                    return
                self._waiters.append((loop, room))
                if not waited:
                    self.stats.waited += 1
                    waited = True
            await room

    def submit_durable(
        self, record: AuditRecord | Mapping[str, object]
    ) -> concurrent.futures.Future[list[str]]:
        """Queue a record like :meth:`submit`; the returned future resolves once the record's
        batch is fsynced (records queued together share one fsync: group commit)."""
        body = _body(record)
        done: concurrent.futures.Future[list[str]] = concurrent.futures.Future()
        with self._cv:
            self._check_open()
            if len(self._pending) >= self._max_queue:
                self.stats.rejected += 1
                raise AuditQueueFull(f"audit queue full ({self._max_queue} records waiting)")
            self._pending.append(("access", body, done))
            self.stats.submitted += 1
            self._cv.notify()
        return done

    async def put_durable(self, record: AuditRecord | Mapping[str, object]) -> None:
        """Queue a record (waiting for room) and return once it is fsynced."""
        while True:
            try:
                done = self.submit_durable(record)
                break
            except AuditQueueFull:
                await self.put(record)  # waits for room, then queues (not durable-tracked)
                await self.aflush()
                return
        await asyncio.wrap_future(done)

    def prune(self, now: float | None = None) -> list[str]:
        """Delete expired segments now (through the writer thread); returns their names.
        Blocks until done: from a coroutine use :meth:`aprune`."""
        return self._command("prune", now).result()

    async def aprune(self, now: float | None = None) -> list[str]:
        return await asyncio.wrap_future(self._command("prune", now))

    def flush(self) -> None:
        """Block until every record submitted before this call is fsynced."""
        self._command("flush", None).result()

    async def aflush(self) -> None:
        await asyncio.wrap_future(self._command("flush", None))

    def _command(self, kind: str, arg: float | None) -> concurrent.futures.Future[list[str]]:
        done: concurrent.futures.Future[list[str]] = concurrent.futures.Future()
        with self._cv:
            self._check_open()
            self._pending.append((kind, arg, done))
            self._cv.notify()
        return done

    def _check_open(self) -> None:
        if self._error is not None:
            raise AuditWriterError(f"audit writer failed: {self._error}")
        if self._thread is None or self._closing:
            raise AuditWriterError("audit writer is not running")

    # -- the writer thread --------------------------------------------------------------------

    def _run(self) -> None:
        batch: deque[_Item] = deque()
        try:
            while True:
                with self._cv:
                    while not self._pending and not self._closing:
                        self._cv.wait()
                    batch, self._pending = self._pending, deque()
                    waiters, self._waiters = self._waiters, []
                _wake(waiters)
                if not batch:
                    return  # closing, and everything queued has been written
                self._write_batch(batch)
        except BaseException as exc:
            with self._cv:
                self._error = exc
                lost, self._pending = list(batch) + list(self._pending), deque()
                waiters, self._waiters = self._waiters, []
                self.stats.lost = self.stats.submitted - self._access_written
            for _, _, done in lost:
                if done is not None and not done.done():
                    done.set_exception(AuditWriterError(f"audit writer failed: {exc}"))
            _wake(waiters)

    def _write_batch(self, batch: deque[_Item]) -> None:
        buf, count = bytearray(), 0
        durable: list[concurrent.futures.Future[list[str]]] = []
        while batch:
            kind, payload, done = batch[0]
            if kind != "access":
                self._flush(buf, count)
                buf, count = bytearray(), 0
                if kind == "prune":
                    done.set_result(self._prune(self._clock() if payload is None else payload))
                else:
                    done.set_result([])
                batch.popleft()
                continue
            now = self._clock()
            # A segment may overshoot max_segment_bytes by one record: the header must come first.
            if self._day != _day(now) or self._size + len(buf) >= self._max_bytes:
                self._flush(buf, count)
                buf, count = bytearray(), 0
                self._open_segment(now, "day" if self._day != _day(now) else "size")
                self._prune(now)
            buf += self._seal("access", payload, now)
            count += 1
            if done is not None:
                durable.append(done)
            batch.popleft()
        self._flush(buf, count)
        for waiter in durable:  # written and fsynced (when fsync is on)
            waiter.set_result([])

    def _seal(self, kind: RecordType, body: Mapping[str, JSONValue], now: float) -> bytes:
        line, self._state = seal(
            self._state, kind, body, key=self._key, ts=utc_time(now), kid=self._kid
        )
        return line

    def _flush(self, buf: bytearray, count: int, *, access: bool = True) -> None:
        if not buf:
            return
        _write_all(self._fd, buf)
        if self._fsync:
            os.fsync(self._fd)
        self._size += len(buf)
        self.stats.written += count
        self._access_written += count if access else 0
        self.stats.batches += 1
        self._echo_lines(buf)
        if self.on_durable is not None:
            self.on_durable()

    def _echo_lines(self, data: bytes | bytearray) -> None:
        if self._echo is None:
            return
        try:
            self._echo.write(data)
            self._echo.flush()
        except (OSError, ValueError):
            self.stats.echo_errors += 1

    def _open_segment(self, now: float, reason: str) -> None:
        name = segment_name(self._segno + 1, now)
        header = {"segment": name, "reason": reason, "prev_segment": self._seg_name or None}
        line = self._seal("segment", header, now)
        tmp = self.directory / f".{name}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640)
        try:
            _write_all(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.link(tmp, self.directory / name)  # unlike rename, never replaces an existing segment
        tmp.unlink()
        _fsync_dir(self.directory)
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = os.open(self.directory / name, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        self._segno, self._seg_name, self._day, self._size = (
            self._segno + 1,
            name,
            _day(now),
            len(line),
        )
        self.stats.segments += 1
        self.stats.written += 1
        self._echo_lines(line)

    def _prune(self, now: float) -> list[str]:
        if self._retention is None:
            return []
        cutoff = now - self._retention * _DAY
        expired: list[tuple[Path, dict[str, JSONValue]]] = []
        for path in list_segments(self.directory):
            if path.name == self._seg_name:
                break
            last, _ = read_tail(path)
            with path.open("rb") as f:
                first = parse_line(f.readline().rstrip(b"\n"))
            env = parse_line(last) if last is not None else "empty"
            if isinstance(env, str) or isinstance(first, str) or _epoch(env.ts) >= cutoff:
                break  # only a contiguous run of the oldest, fully expired, readable segments
            info: dict[str, JSONValue] = {"name": path.name, "first_seq": first.seq}
            expired.append((path, info | {"last_seq": env.seq, "last_hash": env.hash}))
        if not expired:
            return []
        body: dict[str, JSONValue] = {
            "retention_days": self._retention,
            "segments": [info for _, info in expired],
        }
        self._flush(bytearray(self._seal("prune", body, now)), 1, access=False)
        for path, _ in expired:
            path.unlink()
        _fsync_dir(self.directory)
        self.stats.pruned += len(expired)
        return [path.name for path, _ in expired]


def _body(record: AuditRecord | Mapping[str, object]) -> dict[str, JSONValue]:
    if isinstance(record, AuditRecord):
        return record.to_body()
    return AuditRecord.from_body(record).to_body()


def _day(epoch: float) -> str:
    return f"{datetime.fromtimestamp(epoch, tz=UTC):%Y%m%d}"


def _write_all(fd: int, data: bytes | bytearray) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _wake(waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]]) -> None:
    for loop, room in waiters:
        with contextlib.suppress(RuntimeError):  # the waiting loop has been closed meanwhile
            loop.call_soon_threadsafe(_resolve, room)


def _resolve(room: asyncio.Future[None]) -> None:
    if not room.done():
        room.set_result(None)
