"""The audit writer thread's disk work: the open segment file, appends, fsyncs, new segments,
retention and the stdout copy; and, at start, where the existing chain left off.

Why it exists: the writer's callers only seal and queue; everything that touches the segment
files happens here, on the writer's thread (or in ``start`` before that thread runs), in the
order the operations were sealed. The compiled syncer appends and syncs lines too (see
``native.py``), to the descriptor this class holds; anything else is done here.

On disk: ``DIR/audit-NNNNNN-YYYYMMDD.jsonl`` segments, one sealed JSON record per line (see
``chain.py``). A segment is created atomically (header written to a temp file, fsynced, then
hard-linked into place), starts with a ``segment`` record naming the previous segment, and is
only ever appended to. A new segment starts on each writer start, each UTC day and once the
current one has reached ``max_segment_bytes`` (so a segment may overshoot by one record).
Records are sealed, queued and written in one order (``seq``), headers and prune records included.

Crash recovery: bytes already written are never rewritten. After ``kill -9`` mid-write the
newest segment may end in a torn line; the next start chains on from the last complete line
(:func:`recover`), in a new segment, and seals a ``recovered`` record naming the torn bytes
(offset, length, SHA-256) so the verifier can tell a crash from tampering.

Retention: with ``retention_days`` set, whole segments whose newest record is older than that
are deleted, oldest first and never the current one, after a ``prune`` record naming them and
their last hashes has been made durable, so the verifier still accepts the shortened chain.
Pruning runs on start, on every new segment and on demand via ``AuditWriter.prune``.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import hmac
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO

from packgate_sidecar.audit.batch import Op, Open, Prune, Write
from packgate_sidecar.audit.chain import ChainState, JSONValue, parse_line
from packgate_sidecar.audit.errors import AuditRecoveryError, AuditStats
from packgate_sidecar.audit.segments import (
    DAY,
    create_segment,
    expired_segments,
    fsync_dir,
    list_segments,
    read_tail,
    segno,
    write_all,
)

# Seals a prune record (body, time) and queues the deletion of the segments it names, in seal
# order after it; the future gets their names once deleted.
QueuePrune = Callable[
    [dict[str, JSONValue], float, list[Path], concurrent.futures.Future[list[str]] | None], None
]


def recover(
    directory: Path, key: bytes, kid: str
) -> tuple[ChainState, str, int, dict[str, JSONValue] | None] | None:
    """Where the chain in ``directory`` left off: the state after its last complete record,
    the newest segment's name and number, and the torn bytes after that record (the body of a
    ``recovered`` record), if any. None for an empty directory. Raises
    :class:`AuditRecoveryError` if the last complete record does not verify."""
    segments = list_segments(directory)
    if not segments:
        return None
    newest = segments[-1]
    last, fragment = read_tail(newest)
    env = parse_line(last) if last is not None else "no complete record"
    if isinstance(env, str):
        raise AuditRecoveryError(f"cannot continue audit log {newest}: {env}")
    if hashlib.sha256(env.content).hexdigest() != env.hash or (
        env.kid == kid
        and not hmac.compare_digest(env.mac, hmac.new(key, env.content, hashlib.sha256).hexdigest())
    ):
        raise AuditRecoveryError(f"cannot continue audit log {newest}: last record altered")
    torn: dict[str, JSONValue] | None = None
    if fragment:
        torn = {
            "segment": newest.name,
            "offset": newest.stat().st_size - len(fragment),
            "length": len(fragment),
            "sha256": hashlib.sha256(fragment).hexdigest(),
            "last_seq": env.seq,
        }
    return env.state_after, newest.name, segno(newest), torn


class SegmentDisk:
    """The open segment file and the writer thread's operations on it (see the module doc).

    ``durable(access)`` is called after each fsync of appended lines, with the number of
    access records among them; ``queue_prune`` seals and queues a prune record (on the
    caller's side of the queue). ``retention`` and ``echo`` may be changed by a reload."""

    def __init__(
        self,
        directory: Path,
        stats: AuditStats,
        *,
        fsync: bool,
        retention: int | None,
        echo: IO[bytes] | None,
        durable: Callable[[int], None],
        queue_prune: QueuePrune,
    ) -> None:
        self.directory = directory
        self.stats = stats
        self.retention = retention
        self.echo = echo
        self.fd = -1
        self._fsync = fsync
        self._durable = durable
        self._queue_prune = queue_prune
        self._segment = ""  # the segment self.fd is open on
        self._unsynced = Write(bytearray())  # written, not yet counted as durable
        self._to_echo = bytearray()  # durable, not yet copied to stdout
        self._pruning: set[str] = set()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def apply(self, ops: list[Op]) -> None:
        """Write the ops in order; everything written is fsynced when this returns."""
        for op in ops:
            if isinstance(op, Write):
                write_all(self.fd, op.data)
                self._unsynced.data += op.data
                self._unsynced.records += op.records
                self._unsynced.access += op.access
            elif isinstance(op, Open):
                self._open_segment(op)
            elif isinstance(op, Prune):
                self._prune(op.now, op.done)
            else:
                self.sync()  # the prune record naming them is durable before they go
                for path in op.paths:
                    path.unlink()
                fsync_dir(self.directory)
                self._pruning.difference_update(path.name for path in op.paths)
                self.stats.pruned += len(op.paths)
                if op.done is not None:
                    op.done.set_result([path.name for path in op.paths])
        self.sync()

    def sync(self) -> None:
        done = self._unsynced
        if not done.records:
            return
        self._unsynced = Write(bytearray())
        if self._fsync:
            os.fsync(self.fd)
        self.stats.written += done.records
        self.stats.batches += 1
        if self.echo is not None:
            self._to_echo += done.data
        self._durable(done.access)

    def echo_out(self) -> None:
        """Write the stdout copy of what became durable."""
        data, self._to_echo = self._to_echo, bytearray()
        echo = self.echo
        if echo is None or not data:
            return
        try:
            echo.write(data)
            echo.flush()
        except (OSError, ValueError):
            self.stats.echo_errors += 1

    def _open_segment(self, op: Open) -> None:
        self.sync()  # the old segment's lines are durable before the next segment exists
        fd = create_segment(self.directory, op.name, op.header)
        if self.fd >= 0:
            os.close(self.fd)
        self.fd = fd
        self._segment = op.name
        self.stats.segments += 1
        self.stats.written += 1
        if self.echo is not None:
            self._to_echo += op.header
        self._prune(op.now, None)

    def _prune(self, now: float, done: concurrent.futures.Future[list[str]] | None) -> None:
        """Find the expired segments; queue the prune record naming them and their deletion
        (which waits for that record to be durable). ``done`` gets the names once deleted."""
        retention = self.retention
        expired = []
        if retention is not None:
            cutoff = now - retention * DAY
            expired = expired_segments(self.directory, self._segment, self._pruning, cutoff)
        if not expired:
            if done is not None:
                done.set_result([])
            return
        body: dict[str, JSONValue] = {
            "retention_days": retention,
            "segments": [info for _, info in expired],
        }
        self._queue_prune(body, now, [path for path, _ in expired], done)
        self._pruning.update(path.name for path, _ in expired)
