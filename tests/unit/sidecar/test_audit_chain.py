"""The pure hash chain: sealing, and every kind of tampering the verifier must name."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest
from packgate_sidecar.audit.chain import (
    GENESIS,
    GENESIS_STATE,
    ChainState,
    Finding,
    SegmentData,
    VerifyResult,
    canonical,
    key_id,
    parse_line,
    seal,
    verify_lines,
    verify_segments,
)

KEY = bytes(range(32))
OTHER_KEY = b"another-audit-key-of-32-bytes!!!"
TS = "2025-03-01T12:00:00.000Z"


def build(n: int, key: bytes = KEY, tag: str = "r") -> list[bytes]:
    """A genesis header followed by n access records, as lines without newlines."""
    lines: list[bytes] = []
    line, state = seal(
        GENESIS_STATE, "segment", {"segment": "s", "prev_segment": None}, key=key, ts=TS
    )
    lines.append(line.rstrip(b"\n"))
    for i in range(n):
        line, state = seal(
            state, "access", {"request_id": f"{tag}{i}", "status": 200}, key=key, ts=TS
        )
        lines.append(line.rstrip(b"\n"))
    return lines


def check(lines: list[bytes], keys: tuple[bytes, ...] = (KEY,)) -> VerifyResult:
    data = b"".join(line + b"\n" for line in lines)
    return verify_segments([SegmentData("seg", data)], keys)


def kinds(result: VerifyResult) -> list[tuple[str, int]]:
    return [(f.kind, f.line) for f in result.findings]


def forge(template: bytes, **changes: object) -> bytes:
    """Edit fields of a sealed line and recompute its hash, as an attacker without the key can."""
    obj = json.loads(template)
    obj.update(changes)
    content = {k: v for k, v in obj.items() if k not in ("hash", "mac")}
    obj["hash"] = hashlib.sha256(canonical(content)).hexdigest()
    obj["mac"] = hashlib.sha256(b"guess").hexdigest()
    return canonical(obj)


def test_sealed_line_is_canonical_json_with_independently_checkable_hash_and_mac() -> None:
    line, state = seal(
        ChainState(7, "ab" * 32), "access", {"b": 1, "a": [True, None]}, key=KEY, ts=TS
    )
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    obj = json.loads(line)
    assert line.rstrip(b"\n") == json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    content = json.dumps(
        {k: v for k, v in obj.items() if k not in ("hash", "mac")},
        sort_keys=True,
        separators=(",", ":"),
    ).encode()
    assert obj["hash"] == hashlib.sha256(content).hexdigest()
    assert obj["mac"] == hmac.new(KEY, content, hashlib.sha256).hexdigest()
    assert (obj["seq"], obj["prev"], obj["kid"]) == (7, "ab" * 32, key_id(KEY))
    assert state == ChainState(8, obj["hash"])


def test_key_id_identifies_a_key_without_revealing_it() -> None:
    assert key_id(KEY) == key_id(bytes(KEY)) != key_id(OTHER_KEY)
    assert KEY.hex()[:16] not in key_id(KEY)


def test_parse_line_reports_why_a_line_is_not_a_record() -> None:
    env = parse_line(build(0)[0])
    assert not isinstance(env, str) and (env.seq, env.prev, env.type) == (0, GENESIS, "segment")
    assert parse_line(b"hello") == "not a JSON line"
    assert parse_line(b'{"a":1}') == "not an audit record (wrong fields)"
    bad = json.loads(build(0)[0])
    bad["seq"] = -1
    assert parse_line(canonical(bad)) == "seq is not a non-negative integer"


def test_intact_chain_verifies_and_reports_its_head() -> None:
    lines = build(5)
    result = check(lines)
    assert result.ok and result.mac_checked and result.records == 6
    assert result.head == ChainState(6, json.loads(lines[-1])["hash"])


def test_edited_field_is_reported_as_edited_on_that_line() -> None:
    lines = build(5)
    lines[3] = lines[3].replace(b'"status":200', b'"status":201')
    assert kinds(check(lines)) == [("edited", 4)]


def test_non_canonical_but_equivalent_bytes_are_reported_as_edited() -> None:
    lines = build(2)
    lines[1] = lines[1].replace(b'"status":200', b'"status":200.0')
    lines[2] = lines[2].replace(b'"v":1}', b'"v":1 }')
    assert kinds(check(lines)) == [("edited", 2), ("edited", 3)]


def test_deleted_middle_record_is_a_gap_reported_at_the_next_line() -> None:
    lines = build(5)
    del lines[3]
    result = check(lines)
    assert kinds(result) == [("deleted", 4)]
    assert "1 record(s) missing" in result.findings[0].detail


def test_deleted_first_records_are_reported() -> None:
    result = check(build(5)[2:])
    assert kinds(result) == [("deleted", 1)]
    assert "seq 0..1" in result.findings[0].detail


def test_swapped_records_are_reported_as_reordered() -> None:
    lines = build(5)
    lines[2], lines[3] = lines[3], lines[2]
    assert kinds(check(lines)) == [("reordered", 3)]


@pytest.mark.parametrize("keys", [(KEY,), ()], ids=["with-key", "hash-chain-only"])
def test_forged_record_with_recomputed_hash_is_reported_as_inserted(
    keys: tuple[bytes, ...],
) -> None:
    lines = build(5)
    genuine = json.loads(lines[2])
    forged = forge(lines[3], body={"request_id": "evil", "status": 200}, prev=genuine["hash"])
    lines.insert(3, forged)
    assert kinds(check(lines, keys)) == [("inserted", 4)]


def test_forged_record_not_linked_to_anything_is_reported_as_inserted() -> None:
    lines = build(5)
    lines.insert(3, forge(lines[3], prev="f" * 64))
    assert kinds(check(lines, ())) == [("inserted", 4)]


def test_duplicated_record_is_reported_as_inserted_copy() -> None:
    lines = build(5)
    lines.insert(5, lines[2])
    result = check(lines)
    assert kinds(result) == [("inserted", 6)]
    assert "copy of seg:3" in result.findings[0].detail


def test_resealed_record_fails_its_mac_with_the_key_and_breaks_the_chain_without() -> None:
    lines = build(5)
    lines[2] = forge(lines[2], body={"request_id": "r1", "status": 500})
    assert kinds(check(lines)) == [("bad_mac", 3)]
    result = check(lines, ())
    assert kinds(result) == [("edited", 3)] and "re-sealed" in result.findings[0].detail


def test_truncated_last_line_is_a_truncated_tail() -> None:
    lines = build(3)
    data = b"".join(line + b"\n" for line in lines)[:-40]
    result = verify_segments([SegmentData("seg", data)], [KEY])
    assert kinds(result) == [("truncated_tail", 4)]


def test_garbage_line_is_malformed_and_the_rest_still_verifies() -> None:
    lines = build(3)
    lines.insert(2, b"not json at all")
    assert kinds(check(lines)) == [("malformed", 3)]


def test_records_under_an_unknown_key_are_reported_once_per_segment() -> None:
    result = check(build(4, key=OTHER_KEY))
    assert kinds(result) == [("unknown_key", 1)] and not result.mac_checked


def test_key_rotation_verifies_with_both_keys() -> None:
    lines = build(2)
    state = ChainState(3, json.loads(lines[-1])["hash"])

    line, _ = seal(state, "access", {"request_id": "x"}, key=OTHER_KEY, ts=TS)
    lines.append(line.rstrip(b"\n"))
    assert check(lines, (KEY, OTHER_KEY)).ok
    assert kinds(check(lines, (KEY,))) == [("unknown_key", 4)]


def test_without_a_key_only_the_hash_chain_is_checked_and_a_note_says_so() -> None:
    result = check(build(2), ())
    assert result.ok and not result.mac_checked
    assert any("MACs not checked" in note for note in result.notes)


def test_verify_lines_accepts_a_stream_that_starts_mid_chain() -> None:
    assert verify_lines(build(5)[3:], [KEY]).ok
    assert not verify_lines(build(5)[3:][::-1], [KEY]).ok


def test_a_second_genesis_is_an_inserted_chain() -> None:
    lines = build(2) + build(1, tag="other")[1:]
    lines.insert(3, forge(lines[0], ts="2025-03-02T00:00:00.000Z"))
    result = check(lines)
    assert [k for k, _ in kinds(result)] == ["inserted", "inserted"]


def test_finding_prints_segment_line_and_kind() -> None:
    assert str(Finding("deleted", "a.jsonl", 3, "gone", 2)) == "a.jsonl:3: deleted: gone"
    assert GENESIS == "0" * 64
