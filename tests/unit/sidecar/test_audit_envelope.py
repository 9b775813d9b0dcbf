"""The collector's fast envelope reader agrees with the full parser on every line it accepts."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from packgate_sidecar.audit.chain import GENESIS_STATE, Envelope, parse_line, seal
from packgate_sidecar.audit.envelope import HEAD, Sealed, read_sealed

KEY = bytes(range(32))
TS = "2025-03-01T12:00:00.000Z"


def same(fast: Sealed, full: Envelope) -> None:
    assert (fast.seq, fast.ts, fast.type, fast.kid, fast.prev, fast.hash, fast.mac) == (
        full.seq,
        full.ts,
        full.type,
        full.kid,
        full.prev,
        full.hash,
        full.mac,
    )
    assert fast.content == full.content and fast.exact == full.exact
    assert fast.body() == full.body


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(body=st.dictionaries(st.text(max_size=10), json_values, max_size=6), ts=st.text(max_size=30))
def test_any_sealed_line_reads_the_same_as_the_full_parser(body: dict[str, Any], ts: str) -> None:
    # Bodies with nested "hash"/"kid" keys and quotes, and timestamps the fast pattern does not
    # take (those go through parse_line): either way, the same envelope.
    body = {**body, "nested": {"hash": '","hash":"' + "a" * 64, "kid": "x"}}
    line, _ = seal(GENESIS_STATE, "access", body, key=KEY, ts=ts)
    raw = line.rstrip(b"\n")
    full = parse_line(raw)
    assert not isinstance(full, str)
    fast = read_sealed(raw)
    assert isinstance(fast, Sealed)
    same(fast, full)


def test_a_non_canonical_envelope_is_left_to_the_full_parser() -> None:
    line, _ = seal(GENESIS_STATE, "access", {"a": 1}, key=KEY, ts=TS)
    raw = line.rstrip(b"\n")
    spaced = raw.replace(b'"seq":0', b'"seq": 0')
    fast, full = read_sealed(spaced), parse_line(spaced)
    assert isinstance(fast, Sealed) and not isinstance(full, str)
    assert not fast.exact  # and so the collector quarantines it as edited
    same(fast, full)
    assert read_sealed(b"not json") == parse_line(b"not json")


def test_a_body_that_is_not_json_is_read_but_refuses_to_decode() -> None:
    # The hash and MAC cover the body's bytes; whether they are JSON is asked separately.
    line, _ = seal(GENESIS_STATE, "access", {"a": 1}, key=KEY, ts=TS)
    raw = line.rstrip(b"\n")
    broken = HEAD + b"{oops" + raw[raw.rindex(b',"hash":"') :]
    fast = read_sealed(broken)
    assert isinstance(fast, Sealed) and fast.body_bytes == b"{oops"
    assert isinstance(parse_line(broken), str)
    try:
        fast.body()
    except ValueError:
        pass
    else:
        raise AssertionError("a body that is not JSON decoded")
