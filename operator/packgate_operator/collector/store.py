"""The collector's storage: one append-only copy of each pod's chain on the volume, plus the index.

Why it exists: an audit trail must outlive the pod that wrote it. Each pod's records are kept
byte for byte as the sidecar sealed them, in the same segment files (same names, same lines), so
``packgate audit verify`` checks a stored chain, or an exported copy of it, exactly as it checks
the sidecar's own log. Layout under the volume:

    pods/<namespace>/<pod>_<pod uid>/audit-NNNNNN-YYYYMMDD.jsonl   the chain (only appended to)
    pods/<namespace>/<pod>_<pod uid>/meta.json                     pack and retention of the pod
    pods/<namespace>/<pod>_<pod uid>/pruned.jsonl                  removed by retention, sealed
    quarantine/<namespace>/<pod>_<pod uid>.jsonl                   lines that failed a check
    index.sqlite3                                                  see index.py (rebuildable)

One storage thread does all writing, so a pod's chain has one writer and the event loop never
waits on a disk: request handlers hand it batches and await the result. It groups whatever has
queued up, appends each batch to its chain file and the same bytes to the write-ahead log
(``wal.py``), makes that one file durable, then acknowledges: an acknowledged record is on disk.
The chain files themselves are made durable by a checkpoint, in the background, every
``CHECKPOINT_SECONDS`` (or ``CHECKPOINT_BYTES`` of log), which then deletes the log files it
covers. (Before: each touched chain file and directory was fsynced before the acknowledgement,
one ``fdatasync`` per pod per group; not ``syncfs``, which on a volume that is a directory of the
node's disk also waits for every other process's dirty data: 5 ms typical, 1.5 s worst.)
The index rows follow on their own thread (``indexer.py``), off the acknowledgement's path;
readers wait for it to catch up, so a query sees every acknowledged record.

Recovery on start, in order: the write-ahead log is replayed (every logged append put back where
it belongs unless it is there, lost directories and files recreated), so what a crash or a power
cut took from the chain files' page cache is back; then a torn last line, which can only be bytes
never acknowledged, is cut off (the sidecar still holds those records and sends them again); then
anything the index lacks is re-read from the segments.

Retention: whole segments whose newest record is older than the pod's ``retention_days`` (from
its PolicyPack's audit-logger) are deleted, never the newest one of a chain, and named in
``pruned.jsonl`` with their last hash, sealed under the namespace's audit key (``manifest.py``),
so a verifier accepts the shortened chain and nobody without the key can excuse a deletion; a
chain whose newest record has expired is removed entirely. Nothing else ever deletes or rewrites
a record.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from packgate_sidecar.audit.chain import ChainState, JSONValue, parse_line
from packgate_sidecar.audit.envelope import Sealed, read_sealed
from packgate_sidecar.audit.segments import fsync_dir, write_all
from packgate_sidecar.audit.writer import SEGMENT_RE, list_segments, read_tail

from . import index, manifest, wal
from .indexer import Indexer, Work, sql, sql_many
from .ingest import ChainCursor, Outcome, check

log = logging.getLogger(__name__)
_DAY = 86400.0
# How much the write-ahead log may cover before the chain files are made durable themselves: one
# fdatasync per written chain file per second, off the acknowledgement's path.
CHECKPOINT_SECONDS = 1.0
CHECKPOINT_BYTES = 16 * 1024 * 1024
_INCOMPLETE = "index.incomplete"  # an index round failed: the next start re-reads every chain


@dataclass(frozen=True)
class PodKey:
    namespace: str
    pod: str
    uid: str

    @property
    def dirname(self) -> str:
        return f"{self.pod}_{self.uid}"


@dataclass
class Batch:
    pod: PodKey
    lines: Sequence[bytes]
    keys: Mapping[str, bytes] | None
    pack: str | None = None
    retention_days: int | None = None


@dataclass
class Result:
    stored: list[Outcome] = field(default_factory=list)
    duplicates: int = 0
    quarantined: list[Outcome] = field(default_factory=list)
    gaps: list[tuple[int, int]] = field(default_factory=list)
    head: ChainState | None = None


@dataclass
class _Chain:
    key: PodKey
    directory: Path
    cursor: ChainCursor
    segment: str = ""
    fd: int = -1
    size: int = 0  # of the open segment: where the next append lands (for the log)
    meta: dict[str, Any] = field(default_factory=dict)
    meta_written: bool = False


class StoreError(RuntimeError):
    pass


class Store:
    def __init__(self, root: str | os.PathLike[str], *, fsync: bool = True) -> None:
        self.root = Path(root)
        self._fsync = fsync
        self._chains: dict[str, _Chain] = {}
        self._cv = threading.Condition()
        self._jobs: list[tuple[Callable[[], Any], concurrent.futures.Future[Any]]] = []
        self._thread: threading.Thread | None = None
        self._closing = False
        self._conn: Any = None  # the index writer's, once open() has recovered
        self._rconn: Any = None  # the storage thread's view of the index (duplicates)
        self._indexer: Indexer | None = None
        # Per group: appends to log, index work to hand over after the log is durable, whether
        # the acknowledgement must wait for that work, and hashes not yet indexed.
        self._entries: list[wal.Entry] = []
        # Since the last checkpoint: chain files and directories that are not yet durable.
        self._unsynced: set[int] = set()
        self._unsynced_dirs: set[Path] = set()
        self._wal: wal.Log | None = None
        self._checkpoint: concurrent.futures.Future[None] | None = None
        self._checkpoint_at = 0.0
        self._kept_logs: set[Path] = set()  # a checkpoint failed: replay them on the next start
        self._checkpointer = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="collector-checkpoint"
        )
        self._index_work: list[Work] = []
        self._index_first = False
        self._unindexed: dict[tuple[str, int], str] = {}
        self._syncer = concurrent.futures.ThreadPoolExecutor(
            16, thread_name_prefix="collector-fsync"
        )
        self.recovered_tails = 0
        self.reindexed = 0
        self.replayed = 0  # logged appends a start had to put back into chain files
        # Seals retention's lists where no namespace key is given (verifiable by hash chain only,
        # like records sealed by a sidecar without the audit key Secret).
        self.own_key = os.urandom(32)

    @property
    def index_path(self) -> Path:
        return self.root / "index.sqlite3"

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def wal_dir(self) -> Path:
        return self.root / "wal"

    def open(self) -> None:
        (self.root / "pods").mkdir(parents=True, exist_ok=True)
        (self.root / "quarantine").mkdir(exist_ok=True)
        # First of all: what was acknowledged goes back into the chain files.
        self.replayed = wal.replay(self.root / "pods", wal.logs(self.wal_dir))
        if self._fsync:
            self._wal = wal.Log(self.wal_dir)
            self._checkpoint_at = time.monotonic()
        self._conn = index.connect(self.index_path)
        # An index round that failed left holes anywhere: re-read every chain once.
        incomplete = (self.root / _INCOMPLETE).exists()
        for ns_dir in sorted((self.root / "pods").iterdir()):
            for pod_dir in sorted(p for p in ns_dir.iterdir() if p.is_dir()):
                self._recover(ns_dir.name, pod_dir, everything=incomplete)
        self._conn.commit()
        if incomplete:
            (self.root / _INCOMPLETE).unlink()
        self._rconn = index.connect(self.index_path, readonly=True)
        self._indexer = Indexer(self._conn, on_failure=(self.root / _INCOMPLETE).touch)
        self._indexer.start()
        self._thread = threading.Thread(target=self._run, name="collector-store", daemon=True)
        self._thread.start()

    def close(self) -> None:
        with self._cv:
            self._closing = True
            self._cv.notify()
        if self._thread is not None:
            self._thread.join()
        if self._wal is not None:
            try:
                self._checkpoint_now()
                self._wal.close(remove=not self._kept_logs)
            except OSError as exc:  # the log stays: the next start replays it
                log.error("the final checkpoint failed: %s", exc)
                self._wal.close()
        if self._indexer is not None:
            self._indexer.close()
        self._checkpointer.shutdown()
        self._syncer.shutdown()
        for chain in self._chains.values():
            if chain.fd >= 0:
                os.close(chain.fd)
                chain.fd = -1
        for conn in (self._rconn, self._conn):
            if conn is not None:
                conn.close()

    def reader(self) -> Any:
        return index.connect(self.index_path, readonly=True)

    def _recover(self, namespace: str, pod_dir: Path, *, everything: bool = False) -> None:
        pod, _, uid = pod_dir.name.rpartition("_")
        key = PodKey(namespace, pod, uid)
        segments = list_segments(pod_dir)
        meta = {"namespace": namespace, "pod": pod, "uid": uid, **_read_json(pod_dir / "meta.json")}
        written = (pod_dir / "meta.json").exists()
        chain = _Chain(key, pod_dir, ChainCursor(None), meta=meta, meta_written=written)
        if segments:
            newest = segments[-1]
            last, fragment = read_tail(newest)
            if fragment:  # never acknowledged: the sidecar sends those records again
                with newest.open("r+b") as f:
                    f.truncate(newest.stat().st_size - len(fragment))
                    os.fsync(f.fileno())
                self.recovered_tails += 1
            env = parse_line(last) if last is not None else None
            if env is not None and not isinstance(env, str):
                chain.cursor.head = env.state_after
                chain.segment = newest.name
            if chain.cursor.head is not None and (
                everything or index.max_seq(self._conn, uid) < chain.cursor.head.seq - 1
            ):
                self._reindex(chain, segments, everything)
        self._chains[uid] = chain

    def _reindex(self, chain: _Chain, segments: Sequence[Path], everything: bool) -> None:
        known = -1 if everything else index.max_seq(self._conn, chain.key.uid)
        rows = []
        for path in segments:
            for raw in path.read_bytes().split(b"\n"):
                env = read_sealed(raw) if raw else "empty"
                if not isinstance(env, str) and env.seq > known:
                    rows.append(self._row(chain.key, env, False))
        before = self._conn.total_changes
        index.insert(self._conn, rows)
        self.reindexed += self._conn.total_changes - before

    # -- the API the server uses (any thread) --------------------------------------------------

    async def ingest(self, batch: Batch) -> Result:
        return await asyncio.wrap_future(self._submit(lambda: self._ingest(batch)))

    async def prune(
        self, now: float | None = None, keys: Mapping[str, bytes] | None = None
    ) -> list[str]:
        """Apply retention. ``keys`` maps a namespace to the key its list of removed segments is
        sealed with; a namespace without one keeps its segments for now (None: every namespace
        uses :attr:`own_key`)."""
        return await asyncio.wrap_future(
            self._submit(lambda: self._prune(now or time.time(), keys))
        )

    async def caught_up(self) -> None:
        """Wait until every acknowledged record is in the index (call before a query)."""
        if self._indexer is not None:
            await asyncio.wrap_future(self._indexer.submit())

    def wait_indexed(self) -> None:
        """:meth:`caught_up` for a caller outside an event loop."""
        if self._indexer is not None:
            self._indexer.submit().result()

    def head(self, uid: str) -> ChainState | None:
        chain = self._chains.get(uid)
        return None if chain is None else chain.cursor.head

    def _submit(self, job: Callable[[], Any]) -> concurrent.futures.Future[Any]:
        done: concurrent.futures.Future[Any] = concurrent.futures.Future()
        with self._cv:
            if self._closing or self._thread is None:
                raise StoreError("the store is not running")
            self._jobs.append((job, done))
            self._cv.notify()
        return done

    # -- the storage thread --------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._jobs and not self._closing:
                    self._cv.wait()
                jobs, self._jobs = self._jobs, []
                if not jobs and self._closing:
                    return
            self._entries = []
            self._index_work, self._index_first = [], False
            results: list[tuple[concurrent.futures.Future[Any], Any, BaseException | None]] = []
            for job, done in jobs:
                try:
                    results.append((done, job(), None))
                except Exception as exc:
                    results.append((done, None, exc))
            try:
                if self._wal is not None:
                    if self._entries:
                        self._wal.append(self._entries)
                    self._maybe_checkpoint()
                assert self._indexer is not None
                indexed = self._indexer.submit(self._index_work)
                self._unindexed = {}
                if self._index_first:
                    indexed.result()
            except Exception as exc:
                results = [(done, None, exc) for done, _, _ in results]
            for done, value, error in results:
                if error is not None:
                    done.set_exception(error)
                else:
                    done.set_result(value)

    def _maybe_checkpoint(self) -> None:
        """Start a checkpoint when the log covers enough and none is running."""
        assert self._wal is not None
        if self._checkpoint is not None and not self._checkpoint.done():
            return
        due = time.monotonic() - self._checkpoint_at >= CHECKPOINT_SECONDS
        if (due and self._wal.size) or self._wal.size >= CHECKPOINT_BYTES:
            self._start_checkpoint()

    def _checkpoint_now(self) -> None:
        """Make every chain file durable and drop the logs, waiting for it (retention, close)."""
        if self._wal is None:
            return
        if self._checkpoint is not None:
            with contextlib.suppress(OSError):  # logged; its logs are kept for the next start
                self._checkpoint.result()
        self._start_checkpoint().result()

    def _start_checkpoint(self) -> concurrent.futures.Future[None]:
        """Switch to a new log file, then make what the finished ones cover durable in the
        background: the files written since the last checkpoint (duplicated descriptors, so a
        segment switch may close its own) and new directories, then delete those logs."""
        assert self._wal is not None
        self._wal.rotate()
        self._checkpoint_at = time.monotonic()
        fds = [os.dup(fd) for fd in self._unsynced]
        dirs = list(self._unsynced_dirs)
        self._unsynced, self._unsynced_dirs = set(), set()
        logs = [p for p in self._wal.finished() if p not in self._kept_logs]
        self._checkpoint = self._checkpointer.submit(self._sync_and_drop, fds, dirs, logs)
        return self._checkpoint

    def _sync_and_drop(self, fds: list[int], dirs: list[Path], logs: list[Path]) -> None:
        try:
            targets: list[int | Path] = [*fds, *sorted(dirs, key=lambda p: -len(p.parts))]
            list(self._syncer.map(_sync_one, targets))
        except OSError as exc:
            self._kept_logs.update(logs)
            log.error("checkpoint failed, keeping %d log file(s) for replay: %s", len(logs), exc)
            raise
        finally:
            for fd in fds:
                os.close(fd)
        for path in logs:
            path.unlink()
        if logs:
            fsync_dir(self.wal_dir)

    def _stored_hash(self, uid: str, seq: int) -> str | None:
        """The hash stored for ``seq`` (duplicates are told from conflicts by it)."""
        found = self._unindexed.get((uid, seq)) or index.stored_hash(self._rconn, uid, seq)
        if found is None and self._indexer is not None:
            self._indexer.submit().result()  # an earlier group's rows may still be on their way
            found = index.stored_hash(self._rconn, uid, seq)
        return found

    def _chain(self, batch: Batch) -> _Chain:
        key = batch.pod
        chain = self._chains.get(key.uid)
        if chain is None or chain.key != key:
            directory = self.root / "pods" / key.namespace / key.dirname
            if not directory.parent.exists():
                self._unsynced_dirs.add(directory.parent.parent)
            directory.mkdir(parents=True, exist_ok=True)
            self._unsynced_dirs.add(directory.parent)
            chain = self._chains[key.uid] = _Chain(key, directory, ChainCursor(None))
            chain.meta = {"namespace": key.namespace, "pod": key.pod, "uid": key.uid}
        wanted = {"pack": batch.pack, "retention_days": batch.retention_days}
        wanted = {k: v for k, v in wanted.items() if v is not None}
        if any(chain.meta.get(k) != v for k, v in wanted.items()) or not chain.meta_written:
            chain.meta.update(wanted)
            _write_json(chain.directory / "meta.json", chain.meta)
            chain.meta_written = True
        return chain

    def _ingest(self, batch: Batch) -> Result:
        chain = self._chain(batch)
        uid = batch.pod.uid
        outcomes = check(chain.cursor, batch.lines, batch.keys, lambda s: self._stored_hash(uid, s))
        result = Result()
        buf = bytearray()
        for o in outcomes:
            if o.kind == "duplicate":
                result.duplicates += 1
            elif o.kind == "quarantined":
                result.quarantined.append(o)
            else:
                assert o.env is not None
                if o.gap is not None:
                    result.gaps.append(o.gap)
                if o.env.type == "segment" or chain.fd < 0:
                    self._write(chain, buf)
                    buf = bytearray()
                    self._next_segment(chain, o)
                buf += o.line + b"\n"
                self._unindexed[(uid, o.env.seq)] = o.env.hash
                result.stored.append(o)
        self._write(chain, buf)
        result.head = chain.cursor.head
        if result.stored:  # the rows are built (bodies decoded) on the index thread
            pod = batch.pod
            stored = [(o.env, o.mac_checked) for o in result.stored if o.env is not None]
            self._index_work.append(
                lambda conn: index.insert(conn, (self._row(pod, e, m) for e, m in stored))
            )
        received = _now() if result.gaps or result.quarantined else ""
        if result.gaps:
            gaps = [
                (uid, batch.pod.namespace, batch.pod.pod, a, b, received) for a, b in result.gaps
            ]
            self._index_work.append(
                sql_many(
                    "INSERT OR IGNORE INTO gaps (uid, namespace, pod, first, last, received)"
                    " VALUES (?,?,?,?,?,?)",
                    gaps,
                )
            )
            self._index_first = True  # the index is the only record of a gap
        if result.quarantined:
            self._quarantine(batch.pod, result.quarantined, received)
        return result

    def _next_segment(self, chain: _Chain, first: Outcome) -> None:
        assert first.env is not None
        name = ""
        if first.env.type == "segment":
            with contextlib.suppress(ValueError):
                name = str(first.env.body().get("segment") or "")
        if not SEGMENT_RE.fullmatch(name):
            # Mid-chain start (or an odd header): a name that sorts before the sidecar's own.
            name = chain.segment or f"audit-000000-{first.env.ts[:10].replace('-', '')}.jsonl"
        if chain.segment == name and chain.fd >= 0:
            return
        self._close(chain)
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        chain.fd = os.open(chain.directory / name, flags, 0o640)
        chain.size = os.fstat(chain.fd).st_size
        chain.segment = name
        self._unsynced_dirs.add(chain.directory)

    def _close(self, chain: _Chain) -> None:
        """Close a chain's file; what was written to it since the last checkpoint is made
        durable first (a segment switch, rare: the checkpoint will not see this descriptor)."""
        if chain.fd < 0:
            return
        if chain.fd in self._unsynced:
            os.fdatasync(chain.fd)
            self._unsynced.discard(chain.fd)
        os.close(chain.fd)
        chain.fd = -1

    def namespaces(self) -> list[str]:
        """Namespaces with a stored chain (any thread: a snapshot of the storage thread's map)."""
        return sorted({chain.key.namespace for chain in list(self._chains.values())})

    def _write(self, chain: _Chain, buf: bytearray) -> None:
        if not buf:
            return
        data = bytes(buf)
        if self._wal is not None:
            path = f"{chain.key.namespace}/{chain.key.dirname}/{chain.segment}"
            self._entries.append(wal.Entry(path, chain.size, data))
            self._unsynced.add(chain.fd)
        write_all(chain.fd, data)
        chain.size += len(data)

    def _quarantine(self, key: PodKey, items: Sequence[Outcome], received: str) -> None:
        directory = self.root / "quarantine" / key.namespace
        directory.mkdir(parents=True, exist_ok=True)
        lines, rows = [], []
        for o in items:
            text = o.line.decode("utf-8", "replace")
            seq = o.env.seq if o.env is not None else None
            lines.append(
                json.dumps({"received": received, "reason": o.reason, "seq": seq, "line": text})
                + "\n"
            )
            rows.append((key.uid, key.namespace, key.pod, seq, o.reason, received, text))
        fd = os.open(
            directory / f"{key.dirname}.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640
        )
        try:
            write_all(fd, "".join(lines).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        self._index_work.append(
            sql_many(
                "INSERT INTO quarantine (uid, namespace, pod, seq, reason, received, line)"
                " VALUES (?,?,?,?,?,?,?)",
                rows,
            )
        )
        self._index_first = True

    @staticmethod
    def _row(key: PodKey, env: Sealed, mac_checked: bool) -> index.Row:
        # Runs on the index thread: the body is decoded here, after the acknowledgement, and
        # its text kept exactly as sealed (canonical JSON) rather than encoded again.
        body: dict[str, Any] = {}
        text: str | None = None
        try:
            body, text = env.body(), env.body_bytes.decode("ascii")
        except ValueError as exc:  # sealed by a key holder, yet not what a sidecar seals
            log.error("record seq %d of pod %s has an unreadable body: %s", env.seq, key.uid, exc)
        return index.Row(
            key.uid,
            env.seq,
            env.hash,
            env.type,
            env.ts,
            key.namespace,
            key.pod,
            body,
            mac_checked,
            text,
        )

    def _prune(self, now: float, keys: Mapping[str, bytes] | None) -> list[str]:
        # No log may refer to a file about to be deleted: a replay would bring it back.
        self._checkpoint_now()
        removed: list[str] = []
        for uid, chain in list(self._chains.items()):
            days = chain.meta.get("retention_days")
            key = self.own_key if keys is None else keys.get(chain.key.namespace)
            if not isinstance(days, int) or days < 1 or key is None:
                continue
            cutoff = now - days * _DAY
            segments = list_segments(chain.directory)
            expired: list[tuple[Path, Any]] = []
            for path in segments:
                last, _ = read_tail(path)
                env = parse_line(last) if last is not None else "empty"
                if isinstance(env, str) or _epoch(env.ts) >= cutoff:
                    break
                expired.append((path, env))
            if not expired:
                continue
            if len(expired) == len(segments):  # the whole chain has expired
                self._close(chain)
                shutil.rmtree(chain.directory)
                self._index_work.append(sql("DELETE FROM records WHERE uid = ?", uid))
                self._index_first = True
                del self._chains[uid]
                removed.append(str(chain.directory.relative_to(self.root)))
                continue
            segments_body: list[JSONValue] = []
            for path, env in expired:
                with path.open("rb") as f:
                    first = parse_line(f.readline().rstrip(b"\n"))
                segments_body.append(
                    {
                        "name": path.name,
                        "first_seq": first.seq if not isinstance(first, str) else None,
                        "last_seq": env.seq,
                        "last_hash": env.hash,
                    }
                )
            body: dict[str, JSONValue] = {"retention_days": days, "segments": segments_body}
            manifest.append(chain.directory, key, body, time.time())
            for path, env in expired:
                path.unlink()
                self._index_work.append(
                    sql("DELETE FROM records WHERE uid = ? AND seq <= ?", uid, env.seq)
                )
                self._index_first = True
                removed.append(str(path.relative_to(self.root)))
            fsync_dir(chain.directory)
        return removed


def _epoch(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def _now() -> str:
    moment = datetime.now(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _write_json(path: Path, value: Mapping[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value, sort_keys=True))
    os.replace(tmp, path)


def _sync_one(target: int | Path) -> None:
    if isinstance(target, int):
        os.fdatasync(target)
    else:
        fsync_dir(target, missing_ok=True)
