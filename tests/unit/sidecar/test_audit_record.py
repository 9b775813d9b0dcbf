"""An audit record's one-pass encoding is exactly the canonical JSON that the chain seals."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from packgate_sidecar.audit.chain import canonical
from packgate_sidecar.audit.record import (
    AuditRecord,
    PolicyDecision,
    TokenUsage,
    usage_json,
    utc_time,
)

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


def utc_time_reference(epoch: float) -> str:
    """utc_time from ``datetime`` at every call: the reference it is tested against."""
    t = datetime.fromtimestamp(epoch, tz=UTC)
    return (
        f"{t.year:04d}-{t.month:02d}-{t.day:02d}T{t.hour:02d}:{t.minute:02d}:{t.second:02d}."
        f"{t.microsecond // 1000:03d}Z"
    )


@settings(max_examples=500, deadline=None)
@given(st.lists(st.floats(-62135596800.0, 253402300799.0) | st.integers(0, 2**33), max_size=6))
@example([1.9999995, 1.9999994999, 1.0, -0.0005, -1.0000005])  # rounding carries a second
@example([1700000000.9999996, 1700000000.0005, 1700000001.0])
def test_utc_time_remembering_its_second_equals_the_datetime_reference(
    epochs: list[float],
) -> None:
    # a sequence, so that the remembered second is reused, replaced and carried across calls
    assert [utc_time(e) for e in epochs] == [utc_time_reference(e) for e in epochs]


def _plain_record() -> AuditRecord:
    return AuditRecord(
        time="2025-01-31T12:00:00.000Z",
        request_id="req-1",
        endpoint="chat.completions",
        status=200,
        latency_ms=1.0,
        pod="pod-a",
        pack="chatgpt",
        model="gpt-4o",
        outcome="ok",
    )


def test_a_new_optional_token_is_checked_and_named_even_among_remembered_ones() -> None:
    ok = _plain_record()
    for field, bad in (("target", "free text"), ("outcome", "x" * 129), ("pack", 7)):
        with pytest.raises(ValueError, match=f"audit field {field}:"):
            dataclasses.replace(ok, **{field: bad})


def test_request_ids_do_not_fill_the_token_memo_that_repeating_names_live_in() -> None:
    """Request ids never repeat: remembering them would empty the memo every 4,096 requests."""
    from packgate_sidecar.audit import record as module

    module._SEEN.clear()
    base = _plain_record()
    for number in range(module._MAX_SEEN + 10):
        dataclasses.replace(base, request_id=f"req-{number}")
    assert "pod-a" in module._SEEN and "chatgpt" in module._SEEN
    assert not any(value.startswith("req-") for value in module._SEEN)
    with pytest.raises(ValueError, match="audit field request_id:"):
        dataclasses.replace(base, request_id="free text")


# Counts mostly (the direct path), then what is refused or takes the checked path.
ANY_COUNT = st.sampled_from(range(6)).flatmap(
    lambda i: st.integers(-2, 10**12) if i else st.none() | st.booleans() | st.floats(0, 10)
)


@settings(max_examples=300, deadline=None)
@given(ANY_COUNT, ANY_COUNT, ANY_COUNT, st.booleans() | st.none() | st.integers(0, 1))
@example(-1, 0, 0, False)
@example(0, -1, 0, True)
@example(0, 0, -1, False)
@example(True, 0, 0, False)
@example(0, 0, 0, 1)
@example(None, 1, None, False)
@example(1.0, 0, 1, False)
def test_usage_json_is_the_token_usages_encoding_and_refuses_what_it_refuses(
    prompt: object, completion: object, total: object, estimated: object
) -> None:
    try:
        reference: object = TokenUsage(prompt, completion, total, estimated).encode()  # type: ignore[arg-type]
    except ValueError as exc:
        reference = str(exc)
    try:
        direct: object = usage_json(prompt, completion, total, estimated)  # type: ignore[arg-type]
    except ValueError as exc:
        direct = str(exc)
    assert direct == reference
