"""An audit record's one-pass encoding is exactly the canonical JSON that the chain seals."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st
from packgate_sidecar.audit.chain import canonical
from packgate_sidecar.audit.record import AuditRecord, PolicyDecision, TokenUsage

TOKEN = st.text("AZaz09_.:/@+=,%-", min_size=1, max_size=20)
OPT_TOKEN = st.none() | TOKEN
NUMBER = st.none() | st.integers(0, 10**12) | st.floats(0, 1e300, allow_nan=False)
COUNT = st.none() | st.integers(0, 10**9)
TIME = st.sampled_from(
    ["2025-01-31T12:00:00.000Z", "2026-12-07T15:20:05.5Z", "1999-12-31T23:59:59Z"]
)

records = st.builds(
    AuditRecord,
    time=TIME,
    request_id=TOKEN,
    endpoint=TOKEN,
    status=st.integers(100, 599),
    latency_ms=st.integers(0, 10**6) | st.floats(0, 1e9, allow_nan=False),
    pod=OPT_TOKEN,
    namespace=OPT_TOKEN,
    pack=OPT_TOKEN,
    pack_version=OPT_TOKEN,
    config_hash=OPT_TOKEN,
    model=OPT_TOKEN,
    target=OPT_TOKEN,
    streamed=st.booleans(),
    decisions=st.lists(st.builds(PolicyDecision, TOKEN, TOKEN, OPT_TOKEN), max_size=4).map(tuple),
    usage=st.none() | st.builds(TokenUsage, COUNT, COUNT, COUNT, st.booleans()),
    cost_usd=NUMBER,
    tags=st.dictionaries(TOKEN, TOKEN, max_size=4),
    outcome=OPT_TOKEN,
)


@settings(max_examples=300, deadline=None)
@given(records)
def test_the_one_pass_encoding_is_the_canonical_json_of_the_body(record: AuditRecord) -> None:
    assert record.encode() == canonical(record.to_body())
    assert json.loads(record.encode()) == record.to_body()


def test_a_write_ahead_record_without_a_status_encodes_it_as_null() -> None:
    started = AuditRecord(
        time="2025-01-31T12:00:00.000Z",
        request_id="req-1",
        endpoint="chat.completions",
        status=None,
        latency_ms=0.0,
        streamed=True,
        outcome="started",
    )
    assert started.encode() == canonical(started.to_body())
    assert b'"status":null' in started.encode()
