"""What the collector does with each shipped line: keep it, skip a duplicate, or quarantine it.

Why it exists: the collector is a second copy of each pod's chain, so it must refuse to extend a
chain with anything the sidecar did not seal. Every line is checked on arrival, before it is
acknowledged: its hash (catches edits), its MAC under the namespace's audit key (catches an edit
re-hashed without the key) and its link to the chain stored so far (``prev`` must be the hash of
the record before it). A line that fails is quarantined, not dropped, so nothing a sidecar sent
is lost and an investigator can look at it.

Delivery is at least once, so duplicates are expected: a line whose ``seq`` is already stored is
a duplicate when its hash matches the stored one and a conflict (quarantined) when it does not.
A line further ahead than the next ``seq`` starts after a gap, which is reported (the missing
records may have been pruned before they could be shipped, or quarantined), and the chain goes on
from it when its hash and MAC hold.

Each line's envelope is read without decoding its body (``envelope.py``): the hash and the MAC
are over the body's bytes, so checking them needs no JSON, and this runs on the storage thread
inside every acknowledgement. A line whose MAC is not checked (no key configured) must also hold
a JSON object as its body before it is stored; with a MAC, the body is decoded for the index
after the acknowledgement.

Pure: state in, decisions out; ``store.py`` applies them.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from packgate_sidecar.audit.chain import GENESIS, ChainState
from packgate_sidecar.audit.envelope import Sealed, read_sealed

Kind = Literal["stored", "duplicate", "quarantined"]


@dataclass(frozen=True, slots=True)
class Outcome:
    kind: Kind
    line: bytes
    env: Sealed | None = None
    reason: str = ""  # why a line was quarantined (a short code, then detail)
    gap: tuple[int, int] | None = None  # seqs missing right before this stored record
    mac_checked: bool = False


@dataclass
class ChainCursor:
    """A pod's chain as stored: the state after its last record, or None when empty."""

    head: ChainState | None


def check(
    cursor: ChainCursor,
    lines: Sequence[bytes],
    keys: Mapping[str, bytes] | None,
    stored_hash: Callable[[int], str | None],
) -> list[Outcome]:
    """Decide every line in order, advancing ``cursor`` over the ones that are kept.

    ``keys`` maps key ids to MAC keys; None means no key is configured for this namespace, so
    only hashes and links can be checked (and the records say so). ``stored_hash(seq)`` is the
    hash of an already stored record, for telling duplicates from conflicts.
    """
    out: list[Outcome] = []
    batch: dict[int, str] = {}
    for line in lines:
        out.append(_one(cursor, line, keys, lambda s: batch.get(s) or stored_hash(s)))
        last = out[-1]
        if last.kind == "stored" and last.env is not None:
            batch[last.env.seq] = last.env.hash
    return out


def _one(
    cursor: ChainCursor,
    line: bytes,
    keys: Mapping[str, bytes] | None,
    stored_hash: Callable[[int], str | None],
) -> Outcome:
    env = read_sealed(line)
    if isinstance(env, str):
        return Outcome("quarantined", line, None, f"malformed: {env}")
    if hashlib.sha256(env.content).hexdigest() != env.hash or not env.exact:
        return Outcome("quarantined", line, env, f"edited: record seq {env.seq} fails its hash")
    checked = False
    if keys is not None:
        key = keys.get(env.kid)
        if key is None:
            return Outcome("quarantined", line, env, f"unknown_key: sealed with key id {env.kid}")
        mac = hmac.digest(key, env.content, "sha256").hex()  # the one-shot C path
        if not hmac.compare_digest(mac, env.mac):
            return Outcome(
                "quarantined", line, env, f"bad_mac: record seq {env.seq} not sealed with the key"
            )
        checked = True
    else:  # nothing vouches for the body: it must be what a sidecar seals, a JSON object
        try:
            env.body()
        except ValueError:
            return Outcome("quarantined", line, env, "malformed: the body is not a JSON object")
    head = cursor.head
    expected = head.seq if head is not None else 0
    if env.seq < expected:
        known = stored_hash(env.seq)
        if known == env.hash:
            return Outcome("duplicate", line, env, mac_checked=checked)
        return Outcome(
            "quarantined",
            line,
            env,
            f"conflict: seq {env.seq} is already stored with a different hash",
        )
    gap: tuple[int, int] | None = None
    if env.seq == expected:
        link = head.prev if head is not None else GENESIS
        if env.prev != link:
            return Outcome(
                "quarantined",
                line,
                env,
                f"broken_link: seq {env.seq} does not follow the stored seq {env.seq - 1}",
            )
    else:
        gap = (expected, env.seq - 1)
    cursor.head = env.state_after
    return Outcome("stored", line, env, gap=gap, mac_checked=checked)
