"""Segment files of an audit log directory: names, order, the last line, creation, expiry.

Why it exists: the writer, the shipper, the verifier and the collector all read the same
directory layout (``DIR/audit-NNNNNN-YYYYMMDD.jsonl``, see ``writer.py``); the file-level steps
live here, apart from the writer's queueing and sealing.
"""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime
from pathlib import Path

from packgate_sidecar.audit.chain import JSONValue, parse_line

SEGMENT_RE = re.compile(r"audit-(\d{6,})-(\d{8})\.jsonl")
DAY = 86400.0


def segment_name(segno: int, epoch: float) -> str:
    return f"audit-{segno:06d}-{datetime.fromtimestamp(epoch, tz=UTC):%Y%m%d}.jsonl"


def list_segments(directory: Path) -> list[Path]:
    """The segment files of a log directory in chain order (by segment number)."""
    return sorted((p for p in directory.iterdir() if SEGMENT_RE.fullmatch(p.name)), key=segno)


def segno(path: Path) -> int:
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


def write_all(fd: int, data: bytes | bytearray) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def fsync_dir(directory: Path, *, missing_ok: bool = False) -> None:
    """Make the entries of ``directory`` (files created, renamed or removed) durable.
    ``missing_ok``: a directory that is gone already (removed by retention) is no error."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except FileNotFoundError:
        if missing_ok:
            return
        raise
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def create_segment(directory: Path, name: str, header: bytes) -> int:
    """Create segment ``name`` holding ``header`` atomically and durably; returns an
    ``O_APPEND`` descriptor for the lines that follow."""
    tmp = directory / f".{name}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640)
    try:
        write_all(fd, header)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.link(tmp, directory / name)  # unlike rename, never replaces an existing segment
    tmp.unlink()
    fsync_dir(directory)
    return os.open(directory / name, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)


def expired_segments(
    directory: Path, current: str, skip: set[str], cutoff: float
) -> list[tuple[Path, dict[str, JSONValue]]]:
    """The oldest segments whose newest record is older than ``cutoff`` (a contiguous run of
    readable ones, never ``current`` or later), each with what a prune record says of it."""
    expired: list[tuple[Path, dict[str, JSONValue]]] = []
    for path in list_segments(directory):
        if path.name == current:
            break
        if path.name in skip:
            continue  # an earlier prune record names it already
        last, _ = read_tail(path)
        with path.open("rb") as f:
            first = parse_line(f.readline().rstrip(b"\n"))
        env = parse_line(last) if last is not None else "empty"
        if isinstance(env, str) or isinstance(first, str) or _epoch(env.ts) >= cutoff:
            break
        info: dict[str, JSONValue] = {"name": path.name, "first_seq": first.seq}
        expired.append((path, info | {"last_seq": env.seq, "last_hash": env.hash}))
    return expired
