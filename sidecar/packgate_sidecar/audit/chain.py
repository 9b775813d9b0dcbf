"""The audit hash chain: how a record is sealed, and how a sealed log is checked.

Why it exists: an audit log is only worth keeping if a reader can tell whether anyone edited,
deleted, reordered or inserted records after the fact. Each record is one line of canonical JSON
(sorted keys, no whitespace, ASCII only) holding an envelope

    {"v": 1, "seq": N, "ts": RFC3339, "type": segment|access|prune|recovered,
     "kid": key id, "prev": hash of record N-1, "body": {...}, "hash": ..., "mac": ...}

where ``hash`` is SHA-256 and ``mac`` HMAC-SHA256 (under the audit key) of the canonical
encoding of every other field. ``prev`` links each record to the one before it across segment
files, so the log is one chain from the genesis record (``seq`` 0, ``prev`` all zeros). The hash
catches edits; the MAC catches an attacker who edits and recomputes the hash, which only the
holder of the key can do. Without the key a reader can check the chain but not the MACs.

Everything here is pure (bytes in, findings out); the writer and the file reading live elsewhere.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from json.encoder import encode_basestring_ascii
from typing import Literal, TypeAlias

JSONValue: TypeAlias = bool | int | float | str | list["JSONValue"] | dict[str, "JSONValue"] | None
RecordType = Literal["segment", "access", "prune", "recovered"]
FindingKind = Literal[
    "edited",
    "deleted",
    "reordered",
    "inserted",
    "bad_mac",
    "unknown_key",
    "truncated_tail",
    "malformed",
]

FORMAT_VERSION = 1
GENESIS = "0" * 64
_RECORD_TYPES = frozenset({"segment", "access", "prune", "recovered"})
_ENVELOPE = frozenset({"v", "seq", "ts", "type", "kid", "prev", "body", "hash", "mac"})
_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX16 = re.compile(r"[0-9a-f]{16}")


def canonical(value: JSONValue) -> bytes:
    """The one byte encoding of a JSON value that hashes, MACs and lines are made of."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return text.encode("ascii")  # json.dumps escapes every non-ASCII character by default


def key_id(key: bytes) -> str:
    """A public fingerprint of a key, so a reader can tell which key sealed a record."""
    return hmac.new(key, b"packgate-audit-key-id/v1", hashlib.sha256).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class ChainState:
    """Where the chain stands: the ``seq`` the next record gets and the hash it must link to."""

    seq: int
    prev: str


GENESIS_STATE = ChainState(seq=0, prev=GENESIS)


def seal(
    state: ChainState,
    record_type: RecordType,
    body: Mapping[str, JSONValue],
    *,
    key: bytes,
    ts: str,
    kid: str | None = None,
) -> tuple[bytes, ChainState]:
    """Seal ``body`` as the next record: returns the line (with its newline) and the new state."""
    encoded = canonical(body if isinstance(body, dict) else dict(body))
    return seal_encoded(state, record_type, encoded, key=key, ts=ts, kid=kid)


def seal_encoded(
    state: ChainState,
    record_type: RecordType,
    encoded: bytes,
    *,
    key: bytes,
    ts: str,
    kid: str | None = None,
) -> tuple[bytes, ChainState]:
    """`seal` of a body already in its canonical encoding (``AuditRecord.encode()``); the
    caller vouches that ``encoded`` is ``canonical()`` of a JSON object."""
    # The same bytes as _Parts(...).content() and .line(), built without the intermediate
    # objects: this runs once per proxied request, on the event loop.
    kid = kid if kid is not None else key_id(key)
    tail = _tail(state.prev, state.seq, ts, record_type)
    raw = b"".join((LINE_HEAD, encoded, f',"kid":"{kid}",{tail}'.encode()))
    digest = hashlib.sha256(raw).hexdigest()
    mac = hmac.digest(key, raw, "sha256").hex()
    suffix = f',"hash":"{digest}","kid":"{kid}","mac":"{mac}",{tail}\n'.encode()
    return b"".join((LINE_HEAD, encoded, suffix)), ChainState(seq=state.seq + 1, prev=digest)


def _tail(prev: str, seq: int, ts: str, kind: str) -> str:
    """The envelope's keys after ``kid``, in sorted order (``json.dumps`` of a str is
    ``encode_basestring_ascii``: the same bytes, without its per-call set-up)."""
    ts, kind = encode_basestring_ascii(ts), encode_basestring_ascii(kind)
    return f'"prev":"{prev}","seq":{seq},"ts":{ts},"type":{kind},"v":{FORMAT_VERSION}}}'


@dataclass(frozen=True, slots=True)
class _Parts:
    """Splices an envelope's canonical encoding around its already encoded body, so the (large)
    body is encoded once when sealing and not at all when checking; the result equals
    ``canonical()`` of the whole envelope because the keys are spliced in sorted order."""

    body: bytes
    kid: str
    prev: str
    seq: int
    ts: str
    type: str

    def _tail(self) -> str:
        return _tail(self.prev, self.seq, self.ts, self.type)

    def content(self) -> bytes:
        return LINE_HEAD + self.body + f',"kid":"{self.kid}",{self._tail()}'.encode()

    def suffix(self, digest: str, mac: str) -> bytes:
        return f',"hash":"{digest}","kid":"{self.kid}","mac":"{mac}",{self._tail()}'.encode()

    def line(self, digest: str, mac: str) -> bytes:
        return LINE_HEAD + self.body + self.suffix(digest, mac)


# How every sealed line starts: its body comes first in the envelope's sorted keys.
LINE_HEAD = b'{"body":'


@dataclass(frozen=True, slots=True)
class Link:
    """A sealed line's envelope fields; ``hash``/``prev`` are as stored, which is what the links
    are made of. Read from a line by `parse_line` (`Envelope`) or by the collector's fast path
    (`envelope.Sealed`), which differ in how they hold the body."""

    seq: int
    ts: str
    type: str
    kid: str
    prev: str
    hash: str
    mac: str

    @property
    def state_after(self) -> ChainState:
        return ChainState(seq=self.seq + 1, prev=self.hash)


@dataclass(frozen=True, slots=True)
class Envelope(Link):
    """A parsed line, its body decoded."""

    body: dict[str, JSONValue]
    content: bytes  # canonical encoding of everything but hash and mac
    exact: bool  # the line is byte for byte the canonical encoding of what it parsed to


def parse_line(raw: bytes) -> Envelope | str:
    """Parse one line (without its newline); a string result says why it is not a record."""
    try:
        obj = json.loads(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return "not a JSON line"
    if not isinstance(obj, dict) or set(obj) != _ENVELOPE:
        return "not an audit record (wrong fields)"
    seq, ts, kind, body = obj["seq"], obj["ts"], obj["type"], obj["body"]
    if obj["v"] != FORMAT_VERSION or isinstance(obj["v"], bool):
        return f"unsupported format version {obj['v']!r}"
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
        return "seq is not a non-negative integer"
    if not isinstance(ts, str) or kind not in _RECORD_TYPES or not isinstance(body, dict):
        return "ts, type or body has the wrong type"
    if not isinstance(obj["kid"], str) or not _HEX16.fullmatch(obj["kid"]):
        return "kid is not a key id"
    for name in ("prev", "hash", "mac"):
        if not isinstance(obj[name], str) or not _HEX64.fullmatch(obj[name]):
            return f"{name} is not a 64-digit hex digest"
    parts = _Parts(b"", obj["kid"], obj["prev"], seq, ts, kind)
    suffix = parts.suffix(obj["hash"], obj["mac"])
    # Hash the body exactly as stored: any change to its bytes, even one that parses to the same
    # value, then fails the hash. Everything around it must be spelled canonically.
    exact = raw.startswith(LINE_HEAD) and raw.endswith(suffix)
    stored = raw[len(LINE_HEAD) : len(raw) - len(suffix)] if exact else canonical(body)
    content = _Parts(stored, obj["kid"], obj["prev"], seq, ts, kind).content()
    return Envelope(
        seq, ts, kind, obj["kid"], obj["prev"], obj["hash"], obj["mac"], body, content, exact
    )


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem a reader should look at, located by segment file and 1-based line."""

    kind: FindingKind
    segment: str
    line: int
    detail: str
    seq: int | None = None

    def __str__(self) -> str:
        return f"{self.segment}:{self.line}: {self.kind}: {self.detail}"


@dataclass(frozen=True, slots=True)
class SegmentData:
    name: str
    data: bytes


@dataclass(frozen=True)
class VerifyResult:
    findings: tuple[Finding, ...]
    notes: tuple[str, ...]
    records: int
    segments: int
    mac_checked: bool  # every record's MAC was checked against a supplied key
    head: ChainState | None  # the chain's last record, to compare with an external copy
    last_segment: str | None = None  # name of the newest segment read

    @property
    def ok(self) -> bool:
        return not self.findings


@dataclass(eq=False)
class _Entry:
    index: int
    pos: tuple[int, int]
    segment: str
    line: int
    env: Envelope
    authentic: bool  # hash, encoding and (when checkable) MAC all hold
    flagged: bool = False


@dataclass
class _Verifier:
    segments: Sequence[SegmentData]
    keyring: Mapping[str, bytes]
    partial_start: bool
    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    entries: list[_Entry] = field(default_factory=list)
    unknown: set[tuple[str, str]] = field(default_factory=set)

    def flag(self, kind: FindingKind, e: _Entry, detail: str) -> None:
        e.flagged = True
        self.findings.append(Finding(kind, e.segment, e.line, detail, e.env.seq))

    def run(self) -> VerifyResult:
        fragments: list[tuple[SegmentData, int, bytes]] = []
        for si, seg in enumerate(self.segments):
            *lines, fragment = seg.data.split(b"\n")
            if not seg.data:
                self.findings.append(Finding("deleted", seg.name, 1, "segment file is empty"))
            for n, raw in enumerate(lines, 1):
                self._read(si, seg.name, n, raw)
            if fragment:
                fragments.append((seg, len(lines) + 1, fragment))
        authentic = [e for e in self.entries if e.authentic]
        recovered: dict[object, _Entry] = {
            (e.env.body.get("segment"), e.env.body.get("offset")): e
            for e in authentic
            if e.env.type == "recovered"
        }
        for seg, n, fragment in fragments:
            self._fragment(seg, n, fragment, recovered)
        self._chain(authentic)
        inserted = {(f.segment, f.line) for f in self.findings if f.kind == "inserted"}
        findings = [
            f for f in self.findings if f.kind == "inserted" or (f.segment, f.line) not in inserted
        ]
        order = {seg.name: i for i, seg in enumerate(self.segments)}
        findings.sort(key=lambda f: (order.get(f.segment, -1), f.line))
        if not self.keyring:
            self.notes.append("MACs not checked (no key given): only the hash chain was verified")
        head = max(self.entries, key=lambda e: e.env.seq, default=None)
        return VerifyResult(
            findings=tuple(findings),
            notes=tuple(self.notes),
            records=len(self.entries),
            segments=len(self.segments),
            mac_checked=bool(self.keyring) and not self.unknown and bool(self.entries),
            head=None if head is None else head.env.state_after,
            last_segment=self.segments[-1].name if self.segments else None,
        )

    def _read(self, si: int, name: str, n: int, raw: bytes) -> None:
        env = parse_line(raw)
        if isinstance(env, str):
            self.findings.append(Finding("malformed", name, n, env))
            return
        e = _Entry(len(self.entries), (si, n), name, n, env, authentic=False)
        self.entries.append(e)
        if hashlib.sha256(env.content).hexdigest() != env.hash:
            self.flag(
                "edited", e, f"record seq {env.seq} was changed: it no longer matches its hash"
            )
        elif not env.exact:
            self.flag("edited", e, f"record seq {env.seq} was changed: bytes are not canonical")
        elif (key := self.keyring.get(env.kid)) is not None:
            mac = hmac.new(key, env.content, hashlib.sha256).hexdigest()
            e.authentic = hmac.compare_digest(mac, env.mac)
            if not e.authentic:
                self.flag("bad_mac", e, f"record seq {env.seq} was not sealed with the audit key")
        else:
            # Unverifiable: trusted only when no key was given at all (hash-chain-only mode), so
            # a record under a made-up key id cannot excuse a deleted segment or a torn tail.
            e.authentic = not self.keyring
            if self.keyring and (name, env.kid) not in self.unknown:
                self.unknown.add((name, env.kid))
                self.flag("unknown_key", e, f"sealed with key id {env.kid}, not a given key")

    def _fragment(
        self, seg: SegmentData, n: int, fragment: bytes, recovered: Mapping[object, _Entry]
    ) -> None:
        """A torn last line is a crash only if a later, genuine ``recovered`` record names it."""
        e = recovered.get((seg.name, len(seg.data) - len(fragment)))
        if (
            e is not None
            and e.env.body.get("length") == len(fragment)
            and e.env.body.get("sha256") == hashlib.sha256(fragment).hexdigest()
        ):
            self.notes.append(
                f"{seg.name}:{n}: torn tail left by a crash ({len(fragment)} bytes), "
                f"recorded by {e.segment}:{e.line}"
            )
            return
        self.findings.append(
            Finding("truncated_tail", seg.name, n, f"last line is cut off ({len(fragment)} bytes)")
        )

    def _chain(self, authentic: list[_Entry]) -> None:
        pruned: dict[str, str] = {}
        for e in authentic:
            if e.env.type == "prune" and isinstance(segs := e.env.body.get("segments"), list):
                for s in segs:
                    if isinstance(s, dict) and isinstance(s.get("last_hash"), str):
                        pruned[str(s["last_hash"])] = str(s.get("name"))
        by_hash: dict[str, list[_Entry]] = {}
        children: dict[str, list[_Entry]] = {}
        for e in self.entries:
            by_hash.setdefault(e.env.hash, []).append(e)
            children.setdefault(e.env.prev, []).append(e)
        visited: set[int] = set()
        pieces: list[list[_Entry]] = []
        for root in (e for e in self.entries if e.env.prev not in by_hash):
            piece, cur = [root], root
            visited.add(root.index)
            while cands := [c for c in children.get(cur.env.hash, ()) if c.index not in visited]:
                # A fork means one of the candidates was inserted: the genuine one carries a valid
                # MAC, and the chain goes on from it; a forgery usually has neither.
                nxt = min(cands, key=lambda c: _rank(c, cur, children, visited))
                self._edge(cur, nxt)
                visited.add(nxt.index)
                piece.append(nxt)
                cur = nxt
            pieces.append(piece)
        self._pieces(pieces, pruned)
        for e in self.entries:
            if e.index not in visited:
                twin = next((t for t in by_hash[e.env.hash] if t.index in visited), None)
                why = f"a copy of {twin.segment}:{twin.line}" if twin else "a second successor"
                self.flag("inserted", e, f"record seq {e.env.seq} is not part of the chain ({why})")

    def _edge(self, parent: _Entry, child: _Entry) -> None:
        if child.pos < parent.pos:
            where = f"{parent.segment}:{parent.line}, seq {parent.env.seq}"
            detail = f"record seq {child.env.seq} appears before the record it follows ({where})"
            self.flag("reordered", child, detail)
        elif child.env.seq != parent.env.seq + 1 and not (child.flagged or parent.flagged):
            self.flag("edited", child, f"seq {child.env.seq} does not follow {parent.env.seq}")

    def _pieces(self, pieces: list[list[_Entry]], pruned: Mapping[str, str]) -> None:
        def starts(p: list[_Entry]) -> bool:
            r = p[0].env
            return (r.prev == GENESIS and r.seq == 0) or r.prev in pruned

        start = next((p for p in pieces if starts(p)), None)
        rest = sorted(
            (p for p in pieces if p is not start), key=lambda p: (p[0].env.seq, p[0].index)
        )
        if start is None and rest and self.partial_start:
            start = rest.pop(0)
            self.notes.append(
                f"chain start not checked: this file begins at seq {start[0].env.seq}"
            )
        seen: dict[int, _Entry] = {}
        if start is not None:
            if start[0].env.prev in pruned:
                self.notes.append(f"log begins after pruned segment {pruned[start[0].env.prev]}")
            seen.update((e.env.seq, e) for e in start)
        present = {s.name for s in self.segments}
        for piece in rest:
            root = piece[0]
            if root.env.seq in seen or (root.env.prev == GENESIS and root.env.seq == 0):
                for e in piece:
                    self.flag("inserted", e, f"record seq {e.env.seq} is not linked to the chain")
                continue
            pred = _predecessor(seen, root.env.seq)
            first = 0 if pred is None else pred.env.seq + 1
            missing = root.env.seq - first
            if missing > 0:
                detail = (
                    f"{missing} record(s) missing before this one (seq {first}..{root.env.seq - 1})"
                )
                prev_seg = root.env.body.get("prev_segment") if root.env.type == "segment" else None
                if isinstance(prev_seg, str) and prev_seg not in present:
                    detail += f"; segment {prev_seg} was deleted and not pruned by retention"
                self.flag("deleted", root, detail)
            elif pred is not None and not (pred.flagged or root.flagged):
                nxt = f"{root.segment}:{root.line}"
                detail = (
                    f"record seq {pred.env.seq} was altered and re-sealed: {nxt} links elsewhere"
                )
                self.flag("edited", pred, detail)
            seen.update((e.env.seq, e) for e in piece)


def _predecessor(seen: Mapping[int, _Entry], seq: int) -> _Entry | None:
    """The seen record with the highest seq below ``seq``: walk down the gap (usually short),
    falling back to a scan so an absurd seq in a forged record cannot stall the verifier."""
    for candidate in range(seq - 1, max(-1, seq - 1 - len(seen)), -1):
        if candidate in seen:
            return seen[candidate]
    return max((e for s, e in seen.items() if s < seq), key=lambda e: e.env.seq, default=None)


def _rank(
    c: _Entry, parent: _Entry, children: Mapping[str, list[_Entry]], visited: set[int]
) -> tuple[bool, bool, bool, int]:
    """Order the candidates of a fork: authentic first, then the one the chain goes on from."""
    continues = any(g.index not in visited for g in children.get(c.env.hash, ()))
    return (not c.authentic, not continues, c.env.seq != parent.env.seq + 1, c.index)


def verify_segments(
    segments: Sequence[SegmentData], keys: Iterable[bytes] = (), *, partial_start: bool = False
) -> VerifyResult:
    """Check a whole log given as ordered segments. ``partial_start`` accepts a log that begins
    mid-chain (one file taken out of a directory) instead of reporting earlier records missing."""
    keyring = {key_id(k): k for k in keys}
    return _Verifier(segments, keyring, partial_start).run()


def verify_lines(
    lines: Iterable[bytes], keys: Iterable[bytes] = (), *, name: str = "<lines>"
) -> VerifyResult:
    """Check complete lines (no newlines) as one stream, e.g. the copy echoed to stdout."""
    data = b"".join(line + b"\n" for line in lines)
    return verify_segments([SegmentData(name, data)], keys, partial_start=True)
