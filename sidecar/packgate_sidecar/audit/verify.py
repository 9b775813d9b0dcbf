"""Read an audit log from disk and check it: the I/O half of ``packgate audit verify``.

Why it exists: the chain logic in ``chain.py`` is pure and works on bytes; this module decides
what a path means. A directory is a whole log (every segment, in segment-number order, so a
deleted first or middle segment is reported). A single file is one segment or a copy of the
stdout stream; it may legitimately begin mid-chain, so its start is not held against it.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from packgate_sidecar.audit.chain import SegmentData, VerifyResult, verify_segments
from packgate_sidecar.audit.writer import list_segments


class AuditPathError(ValueError):
    """The path is not an audit log (missing, unreadable, or a directory without segments)."""


def load_segments(path: str | Path) -> tuple[list[SegmentData], bool]:
    """The segments at ``path`` and whether the chain may start mid-way (single file)."""
    path = Path(path)
    try:
        if path.is_dir():
            files = list_segments(path)
            if not files:
                raise AuditPathError(f"{path}: no audit segments (audit-NNNNNN-YYYYMMDD.jsonl)")
            return [SegmentData(f.name, f.read_bytes()) for f in files], False
        return [SegmentData(path.name, path.read_bytes())], True
    except OSError as exc:
        raise AuditPathError(f"{path}: {exc.strerror or exc}") from None


def verify_path(path: str | Path, keys: Iterable[bytes] = ()) -> VerifyResult:
    segments, partial = load_segments(path)
    return verify_segments(segments, keys, partial_start=partial)
