"""The collector's ingest decisions: keep, skip a duplicate, quarantine, report a gap."""

from __future__ import annotations

import json

from packgate_operator.collector.ingest import ChainCursor, check
from packgate_sidecar.audit.chain import GENESIS_STATE, ChainState, key_id, seal

KEY = bytes(range(32))
KEYS = {key_id(KEY): KEY}
TS = "2025-03-01T12:00:00.000Z"


def chain(n: int, key: bytes = KEY, start: ChainState = GENESIS_STATE) -> list[bytes]:
    lines, state = [], start
    for i in range(n):
        line, state = seal(state, "access", {"request_id": f"r{i}", "status": 200}, key=key, ts=TS)
        lines.append(line.rstrip(b"\n"))
    return lines


def kinds(outcomes: list) -> list[str]:
    return [o.kind for o in outcomes]


def test_a_genuine_chain_is_stored_and_a_resend_is_a_duplicate() -> None:
    lines = chain(5)
    cursor = ChainCursor(None)
    first = check(cursor, lines[:3], KEYS, lambda s: None)
    assert kinds(first) == ["stored"] * 3
    assert all(o.mac_checked for o in first)
    stored = {o.env.seq: o.env.hash for o in first if o.env}
    # At-least-once: the sidecar resends from seq 1 (its ack was lost) and goes on.
    again = check(cursor, lines[1:], KEYS, stored.get)
    assert kinds(again) == ["duplicate", "duplicate", "stored", "stored"]
    assert cursor.head is not None and cursor.head.seq == 5


def test_an_altered_record_is_quarantined_and_the_rest_continues_after_a_gap() -> None:
    lines = chain(4)
    body = json.loads(lines[2])
    body["body"]["status"] = 403
    # Re-hash it as an attacker without the key could: the MAC no longer matches.
    from packgate_sidecar.audit.chain import parse_line

    env = parse_line(lines[2])
    assert not isinstance(env, str)
    forged, _ = seal(
        ChainState(env.seq, env.prev), "access", body["body"], key=b"x" * 32, ts=TS, kid=env.kid
    )
    out = check(
        ChainCursor(None),
        [lines[0], lines[1], forged.rstrip(b"\n"), lines[3]],
        KEYS,
        lambda s: None,
    )
    assert kinds(out) == ["stored", "stored", "quarantined", "stored"]
    assert out[2].reason.startswith("bad_mac")
    assert out[3].gap == (2, 2)


def test_edits_unknown_keys_broken_links_and_conflicts_are_quarantined() -> None:
    lines = chain(3)
    edited = lines[1].replace(b'"status":200', b'"status":201')
    out = check(ChainCursor(None), [lines[0], edited], KEYS, lambda s: None)
    assert out[1].kind == "quarantined" and out[1].reason.startswith("edited")

    other = chain(1, key=b"k" * 32)
    out = check(ChainCursor(None), other, KEYS, lambda s: None)
    assert out[0].reason.startswith("unknown_key")

    # A properly sealed record (the key holder) that does not link to the stored chain.
    rogue = chain(2, start=ChainState(1, "1" * 64))[0]
    cursor = ChainCursor(None)
    check(cursor, lines[:1], KEYS, lambda s: None)
    out = check(cursor, [rogue], KEYS, lambda s: None)
    assert out[0].reason.startswith("broken_link")

    # Same seq as a stored record, different content.
    other_zero = chain(1, start=GENESIS_STATE)[0].replace(b'"r0"', b'"zz"')
    out = check(cursor, [other_zero], None, lambda s: "f" * 64)
    assert out[0].kind == "quarantined"


def test_a_chain_that_starts_mid_way_reports_the_missing_start() -> None:
    lines = chain(6)
    out = check(ChainCursor(None), lines[3:], KEYS, lambda s: None)
    assert kinds(out) == ["stored"] * 3
    assert out[0].gap == (0, 2)


def test_without_a_key_hashes_and_links_are_still_checked() -> None:
    lines = chain(2, key=b"q" * 32)
    out = check(ChainCursor(None), lines, None, lambda s: None)
    assert kinds(out) == ["stored", "stored"]
    assert not any(o.mac_checked for o in out)
    out = check(ChainCursor(None), [b"not json"], None, lambda s: None)
    assert out[0].reason.startswith("malformed")


def test_without_a_key_a_body_that_is_not_json_is_quarantined() -> None:
    # Its hash holds (anyone can compute one); with no MAC to vouch for it, the body must be what
    # a sidecar seals before the chain is extended with it.
    import hashlib
    import hmac

    from packgate_sidecar.audit.chain import _Parts, key_id

    parts = _Parts(b"{oops", key_id(KEY), GENESIS_STATE.prev, 0, TS, "access")
    content = parts.content()
    mac = hmac.new(KEY, content, hashlib.sha256).hexdigest()
    line = parts.line(hashlib.sha256(content).hexdigest(), mac)
    out = check(ChainCursor(None), [line], None, lambda s: None)
    assert out[0].kind == "quarantined" and out[0].reason.startswith("malformed")
    # Sealed with the namespace's key, the same bytes are the key holder's record: kept as sealed.
    out = check(ChainCursor(None), [line], KEYS, lambda s: None)
    assert out[0].kind == "stored" and out[0].mac_checked
