"""Read an audit log from disk and check it: the I/O half of ``packgate audit verify``.

Why it exists: the chain logic in ``chain.py`` is pure and works on bytes; this module decides
what a path means. A directory is a whole log (every segment, in segment-number order, so a
deleted first or middle segment is reported). A single file is one segment or a copy of the
stdout stream; it may legitimately begin mid-chain, so its start is not held against it. A
directory without segments but with chains below it (the audit collector's store, or an export
of it) is checked chain by chain; a chain the collector shortened by retention names the
removed segments in ``pruned.jsonl``, and one starting where that list ends is not held to the
genesis record. That list is sealed like a log of its own (``prune`` records under the audit
key): it is verified first, its problems are reported with the chain's, and it excuses a missing
start only when it verifies (a cut-off last line aside), so an edited or forged list excuses
nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path

from packgate_sidecar.audit.chain import (
    Finding,
    SegmentData,
    VerifyResult,
    parse_line,
    verify_segments,
)
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


# How findings group for a reader of a store: someone changed records, records are missing, or a
# write was cut short (a crash, or a copy taken mid-write).
TAMPERING = frozenset({"edited", "reordered", "inserted", "bad_mac", "unknown_key", "malformed"})
GAPS = frozenset({"deleted"})
TORN = frozenset({"truncated_tail"})


def category(kind: str) -> str:
    return "gap" if kind in GAPS else "torn_tail" if kind in TORN else "tampering"


def chain_dirs(path: str | Path) -> list[Path]:
    """Every directory at or below ``path`` that holds segments (one chain each), sorted."""
    path = Path(path)
    if not path.is_dir():
        raise AuditPathError(f"{path}: not a directory")
    found = sorted({p.parent for p in path.rglob("audit-*.jsonl") if list_segments(p.parent)})
    if not found:
        raise AuditPathError(f"{path}: no audit segments in it or below it")
    return found


PRUNED = "pruned.jsonl"


def verify_chain_dir(path: Path, keys: Iterable[bytes] = ()) -> VerifyResult:
    keys = list(keys)
    segments, _ = load_segments(path)
    listed, findings = _pruned(path / PRUNED, keys)
    first = parse_line(segments[0].data.split(b"\n", 1)[0])
    partial = not isinstance(first, str) and first.prev in listed
    result = verify_segments(segments, keys, partial_start=partial)
    if not findings:
        return result
    return dataclasses.replace(result, findings=findings + result.findings)


def _pruned(path: Path, keys: list[bytes]) -> tuple[set[str], tuple[Finding, ...]]:
    """The last hashes of the segments retention removed, as the sealed list names them, and the
    list's own problems. A list that does not verify names nothing."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return set(), ()
    except OSError as exc:
        raise AuditPathError(f"{path}: {exc.strerror or exc}") from None
    result = verify_segments([SegmentData(PRUNED, data)], keys)
    if any(f.kind != "truncated_tail" for f in result.findings):
        return set(), result.findings
    listed = set()
    for raw in data.split(b"\n"):
        env = parse_line(raw) if raw else "empty"
        if isinstance(env, str) or env.type != "prune":
            continue
        segments = env.body.get("segments")
        for segment in segments if isinstance(segments, list) else []:
            if isinstance(segment, dict) and isinstance(segment.get("last_hash"), str):
                listed.add(str(segment["last_hash"]))
    return listed, result.findings
