"""The collector's write-ahead log: one file and one ``fdatasync`` per group commit.

Why it exists: an acknowledgement promises the records are on disk. Making each pod's chain file
durable before every acknowledgement cost one ``fdatasync`` per pod per group: with 100 shipping
pods, 100 calls per group, about 8 ms of CPU (mostly the kernel's) and 8-10 ms of waiting per
group on the development machine, against 2 ms and 1-3 ms for one file holding the same bytes
(measured side by side). So a group's appends go to the chain files as before (into the page
cache, where readers and ``packgate audit verify`` see them at once) and, in the same order, to
this log, which is the one file made durable before the acknowledgement. Every second or so the
store makes the chain files durable themselves in the background (a checkpoint, ``store.py``)
and only then deletes the log files that cover them.

On disk: ``wal/wal-NNNNNNNNNN.log`` under the store, each a sequence of entries

    {"crc":C,"len":L,"off":O,"path":"<namespace>/<pod>_<uid>/<segment>"}\\n<L bytes>

saying that the chain file ``pods/<path>`` holds those L bytes (complete sealed lines) at offset
O; C is their CRC-32. Replay (on start, before anything else reads the store) writes every
entry's bytes where they belong unless they are already there, creating lost directories and
files, makes the files durable and removes the logs. It is idempotent, so a crash during replay
is harmless. An entry cut short or failing its CRC ends the file: it was never acknowledged.
"""

from __future__ import annotations

import json
import os
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from packgate_sidecar.audit.segments import fsync_dir, write_all

_NAME = re.compile(r"wal-(\d{10})\.log")


@dataclass(frozen=True, slots=True)
class Entry:
    path: str  # "<namespace>/<pod>_<uid>/<segment>", relative to the store's pods/
    offset: int
    data: bytes

    def encode(self) -> bytes:
        head = json.dumps(
            {
                "crc": zlib.crc32(self.data),
                "len": len(self.data),
                "off": self.offset,
                "path": self.path,
            },
            sort_keys=True,
            separators=(",", ":"),
        )
        return head.encode() + b"\n" + self.data


class Log:
    """The file a group's entries are appended to; owned by the storage thread."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._number = max((_number(p) for p in logs(directory)), default=0)
        self._fd = -1
        self.size = 0
        self.rotate()

    @property
    def path(self) -> Path:
        return self.directory / f"wal-{self._number:010d}.log"

    def append(self, entries: list[Entry]) -> None:
        """Write ``entries`` and make them durable (one write, one fdatasync)."""
        data = b"".join(e.encode() for e in entries)
        self.size += len(data)
        write_all(self._fd, data)
        os.fdatasync(self._fd)

    def rotate(self) -> Path | None:
        """Start a new file; returns the finished one (None if there was none). The new file's
        directory entry is made durable first: a crash must not lose the file an acknowledged
        entry is in."""
        old = self.path if self._fd >= 0 else None
        if self._fd >= 0:
            os.close(self._fd)
        self._number += 1
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        self._fd = os.open(self.path, flags, 0o640)
        self.size = 0
        fsync_dir(self.directory)
        return old

    def close(self, *, remove: bool = False) -> None:
        """Close the current file; ``remove`` it too once a checkpoint has made it redundant."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            if remove:
                self.path.unlink()
                fsync_dir(self.directory)

    def finished(self) -> list[Path]:
        """Every log file on disk but the current one, oldest first."""
        return [p for p in logs(self.directory) if p != self.path]


def logs(directory: Path) -> list[Path]:
    """The log files in ``directory``, oldest first."""
    if not directory.is_dir():
        return []
    return sorted((p for p in directory.iterdir() if _NAME.fullmatch(p.name)), key=_number)


def _number(path: Path) -> int:
    m = _NAME.fullmatch(path.name)
    return int(m.group(1)) if m else -1


def entries(path: Path) -> Iterator[Entry]:
    """The complete, intact entries of one log file, in order."""
    data = path.read_bytes()
    at = 0
    while at < len(data):
        end = data.find(b"\n", at)
        if end < 0:
            return
        try:
            head = json.loads(data[at:end])
            length, offset, crc, rel = int(head["len"]), int(head["off"]), head["crc"], head["path"]
        except (ValueError, KeyError, TypeError):
            return
        body = data[end + 1 : end + 1 + length]
        if len(body) < length or zlib.crc32(body) != crc or not _safe(rel):
            return
        yield Entry(str(rel), offset, body)
        at = end + 1 + length


def _safe(rel: object) -> bool:
    parts = str(rel).split("/")
    return isinstance(rel, str) and len(parts) == 3 and all(p not in ("", ".", "..") for p in parts)


def replay(pods: Path, files: list[Path]) -> int:
    """Put every logged entry's bytes into its chain file and make them durable; returns how
    many entries had to be written (the rest were on disk already). Removes the logs after."""
    written = 0
    fds: dict[Path, int] = {}
    dirs: set[Path] = set()
    try:
        for log in files:
            for entry in entries(log):
                target = pods / entry.path
                if target not in fds:
                    if not target.parent.exists():
                        target.parent.mkdir(parents=True)
                        dirs.update((target.parent.parent, target.parent.parent.parent))
                    if not target.exists():
                        dirs.add(target.parent)
                    fds[target] = os.open(target, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
                fd = fds[target]
                if os.pread(fd, len(entry.data), entry.offset) != entry.data:
                    os.pwrite(fd, entry.data, entry.offset)
                    written += 1
        for fd in fds.values():
            os.fdatasync(fd)
    finally:
        for fd in fds.values():
            os.close(fd)
    for directory in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
        fsync_dir(directory)
    for log in files:
        log.unlink()
    if files:
        fsync_dir(files[0].parent)
    return written
