"""The pii-detector policy: what a request, a response and a stream look like after it."""

from __future__ import annotations

import json
import re
import threading
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from packgate_policy import PiiDetector
from packgate_sidecar.detect.anonymize import anonymize
from packgate_sidecar.policies.common import OFFLOAD_CHARS
from packgate_sidecar.policies.pii_detector import PiiDetectorPolicy
from packgate_sidecar.policy import (
    ALLOW,
    Blocked,
    Decision,
    PolicyRuntime,
    RequestContext,
    TextItem,
)

EMAIL, PHONE, SSN, CARD = (
    "jane.doe@example.com",
    "+1 650-253-0000",
    "078-05-1120",
    "4111 1111 1111 1111",
)
PROMPT = f"Mail {EMAIL}, call {PHONE}, SSN {SSN}, card {CARD}."


def policy(**settings: object) -> PiiDetectorPolicy:
    return PiiDetectorPolicy(PiiDetector.model_validate(settings), PolicyRuntime())


def ctx() -> RequestContext:
    return RequestContext("req", "/v1/chat/completions")


def user(text: str, role: str = "user") -> TextItem:
    return TextItem(text, role, "messages[0].content")


async def test_redact_replaces_each_entity_with_its_marker() -> None:
    decision = await policy().on_request(ctx(), [user(PROMPT)])
    assert decision.action == "rewrite"
    assert decision.rewrites[0] == "Mail <EMAIL>, call <PHONE>, SSN <SSN>, card <CREDIT_CARD>."
    assert decision.reason == "pii:CREDIT_CARD,EMAIL,PHONE,SSN"
    assert dict(decision.details) == {"EMAIL": 1, "PHONE": 1, "SSN": 1, "CREDIT_CARD": 1}


async def test_reason_and_details_never_hold_the_values() -> None:
    decision = await policy(action="block").on_request(ctx(), [user(PROMPT)])
    recorded = decision.reason + repr(dict(decision.details))
    for value in (EMAIL, PHONE, SSN, CARD, "jane", "0000", "1120"):
        assert value not in recorded


async def test_every_role_is_scanned_and_only_texts_with_pii_are_rewritten() -> None:
    texts = [user(f"system knows {EMAIL}", "system"), user("nothing here"), user(SSN, "tool")]
    decision = await policy().on_request(ctx(), texts)
    assert dict(decision.rewrites) == {0: "system knows <EMAIL>", 2: "<SSN>"}


async def test_mask_keeps_the_layout_and_hash_hides_the_value() -> None:
    masked = (await policy(action="mask").on_request(ctx(), [user(f"to {EMAIL}!")])).rewrites[0]
    assert masked == "to " + "*" * len(EMAIL) + "!"
    first = (await policy(action="hash").on_request(ctx(), [user(f"to {EMAIL}")])).rewrites[0]
    again = (await policy(action="hash").on_request(ctx(), [user(f"cc {EMAIL}")])).rewrites[0]
    assert EMAIL not in first
    assert re.fullmatch(r"to [0-9a-f]{64}", first)
    assert first[3:] == again[3:]  # the same value hashes the same, so it stays correlatable


async def test_block_refuses_with_entity_types() -> None:
    decision = await policy(action="block").on_request(ctx(), [user(f"mail {EMAIL}")])
    assert decision.action == "block"
    assert decision.reason == "pii:EMAIL"
    assert not decision.rewrites


async def test_only_configured_entities_and_custom_patterns() -> None:
    chosen = policy(
        entities=["SSN"], detect_patterns=[{"label": "EMPLOYEE_ID", "regex": r"\bEMP-\d{6}\b"}]
    )
    decision = await chosen.on_request(ctx(), [user(f"{EMAIL} EMP-123456 {SSN}")])
    assert decision.rewrites[0] == f"{EMAIL} <EMPLOYEE_ID> <SSN>"


async def test_clean_text_is_allowed_and_findings_are_kept_for_scan() -> None:
    context = ctx()
    assert (await policy().on_request(context, [user("order 12345 ships in 2025")])).action == (
        "allow"
    )
    assert "pii-detector" not in context.state
    await policy().on_request(context, [user(f"a {EMAIL}")])
    (finding,) = context.state["pii-detector"]["findings"][0]
    assert (finding.entity, finding.start, finding.end) == ("EMAIL", 2, 2 + len(EMAIL))


async def test_responses_are_redacted_unless_scan_responses_is_off() -> None:
    answer = [user(f"Her address is {EMAIL}", "assistant")]
    assert (await policy().on_response(ctx(), answer)).rewrites[0] == "Her address is <EMAIL>"
    off = policy(scan_responses=False)
    assert (await off.on_response(ctx(), answer)).action == "allow"
    assert off.stream_filter(ctx()) is None


def run_stream(chunks: list[str], **settings: object) -> tuple[list[str], str]:
    stream = policy(**settings).stream_filter(ctx())
    assert stream is not None
    sent = [stream.feed(chunk) for chunk in chunks]
    sent.append(stream.finish())
    summary = stream.summary()
    return sent, summary.reason if summary else ""


def test_stream_redacts_an_email_split_across_deltas() -> None:
    sent, reason = run_stream(["Write to jane.d", "oe@exam", "ple.com about it", " today."])
    assert "".join(sent) == "Write to <EMAIL> about it today."
    assert reason == "pii:EMAIL"
    assert not any("jane" in piece for piece in sent)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 20), min_size=1, max_size=12))
def test_stream_output_equals_whole_text_redaction_for_any_chunking(cuts: list[int]) -> None:
    text = f"Hi! {PROMPT} Thanks, bye. Reach me at {EMAIL} tomorrow."
    chunks, at = [], 0
    for size in cuts:
        chunks.append(text[at : at + size])
        at += size
    chunks.append(text[at:])
    sent, _ = run_stream(chunks)
    expected = text
    for value, marker in (
        (EMAIL, "<EMAIL>"),
        (PHONE, "<PHONE>"),
        (SSN, "<SSN>"),
        (CARD, "<CREDIT_CARD>"),
    ):
        expected = expected.replace(value, marker)
    assert "".join(sent) == expected


def test_stream_block_ends_before_any_of_the_entity_is_sent() -> None:
    stream = policy(action="block").stream_filter(ctx())
    assert stream is not None
    sent = []
    with pytest.raises(Blocked) as blocked:
        for chunk in ["Sure, the address ", "is jane.d", "oe@example.com and", " more text " * 10]:
            sent.append(stream.feed(chunk))
        sent.append(stream.finish())
    assert blocked.value.reason == "pii:EMAIL"
    assert "jane" not in "".join(sent)


def test_stream_block_catches_an_entity_in_the_held_back_tail() -> None:
    stream = policy(action="block").stream_filter(ctx())
    assert stream is not None
    assert stream.feed(f"short {SSN}") == "short "  # the SSN could still grow: held back
    with pytest.raises(Blocked):
        stream.finish()


async def test_tool_call_arguments_are_redacted_value_by_value_and_stay_json() -> None:
    # json.dumps escapes "À" as \u00c0, whose last digit would glue onto the card number.
    arguments = json.dumps({"to": "Zoë", "note": f"À {CARD}", "mail": EMAIL, "n": 3})
    path = "messages[1].tool_calls[0].function.arguments"
    decision = await policy().on_request(ctx(), [TextItem(arguments, "assistant", path)])
    assert json.loads(decision.rewrites[0]) == {
        "to": "Zoë",
        "note": "À <CREDIT_CARD>",
        "mail": "<EMAIL>",
        "n": 3,
    }
    assert dict(decision.details) == {"CREDIT_CARD": 1, "EMAIL": 1}


async def test_arguments_that_are_not_json_are_scanned_as_text() -> None:
    path = "input[0].arguments"
    decision = await policy().on_request(ctx(), [TextItem(f"{{broken {EMAIL}", "assistant", path)])
    assert decision.rewrites[0] == "{broken <EMAIL>"


@pytest.mark.parametrize("phase", ["request", "response"])
async def test_a_large_phase_is_scanned_in_a_worker_thread_with_the_same_result(
    phase: str,
) -> None:
    """Over common.OFFLOAD_CHARS the scan leaves the event loop (other requests keep moving)
    and finds the same entities; small phases stay inline."""
    scanner = policy(scan_responses=True)
    threads: list[int] = []
    scan = scanner.scan

    def recording(texts: list[TextItem]) -> object:
        threads.append(threading.get_ident())
        return scan(texts)

    scanner.scan = recording  # type: ignore[method-assign,assignment]
    hook = scanner.on_request if phase == "request" else scanner.on_response
    large = PROMPT + " filler" * (OFFLOAD_CHARS // 7)
    decision = await hook(ctx(), [user(large)])
    assert decision.reason == "pii:CREDIT_CARD,EMAIL,PHONE,SSN"
    assert decision.rewrites[0].startswith("Mail <EMAIL>, call <PHONE>")
    await hook(ctx(), [user(PROMPT)])
    assert threads[0] != threading.get_ident() and threads[1] == threading.get_ident()


PIECES = st.sampled_from(
    [" ", ", ", "Mail ", "call ", "SSN ", EMAIL, PHONE, SSN, CARD, "10.0.0.1", "x", "\u200b"]
)
POLICIES = {action: policy(action=action) for action in ("redact", "mask", "hash", "block")}


@settings(max_examples=150, deadline=None)
@given(st.lists(PIECES, max_size=14).map("".join), st.sampled_from(sorted(POLICIES)))
def test_a_remembered_verdict_rewrites_and_counts_as_a_fresh_scan(text: str, action: str) -> None:
    # The verdict cache keeps a rewrite as its replacements and splices them in again on every
    # hit: the first scan (a miss) and the next (a hit) agree with redacting from scratch.
    pol = POLICIES[action]
    findings = pol.detector.find(text)
    expected = text if action == "block" else anonymize(text, findings, action)
    counts: dict[str, int] = {}
    for finding in findings:
        counts[finding.entity] = counts.get(finding.entity, 0) + 1
    for _ in range(2):
        scanned = pol.scan([user(text)])
        assert scanned.rewrites.get(0, text) == expected
        assert (0 in scanned.rewrites) == (expected != text)
        assert scanned.counts == counts
        assert scanned.findings.get(0, []) == findings


def test_the_verdict_cache_keeps_no_copy_of_a_redacted_text() -> None:
    pol = policy()
    text = PROMPT + " " + "filler words " * 80
    item = pol._scan_plain(text)
    held = [value for value in (item.rewritten, *item.replaced) if value]
    assert held and all(len(value) < 32 for value in held)
    assert item.rewrite(text) == anonymize(text, pol.detector.find(text), "redact")


def _reference_decision(pol: PiiDetectorPolicy, texts: list[TextItem]) -> tuple[Decision, dict]:
    """A phase's decision from per-text scans without the verdict cache, as the policy made it
    before its hit path was written out inline: counts in text order (details keep it)."""
    counts: dict[str, int] = {}
    rewrites: dict[int, str] = {}
    findings: dict[int, list[Any]] = {}
    for index, item in enumerate(texts):
        if not item.text:
            continue
        arguments = item.path.endswith(".arguments") and item.text.lstrip()[:1] in ("{", "[")
        scanned = pol._scan_text(item.text, arguments)
        for entity, count in scanned.counts:
            counts[entity] = counts.get(entity, 0) + count
        for finding in scanned.findings:
            counts[finding.entity] = counts.get(finding.entity, 0) + 1
        if scanned.findings:
            findings[index] = list(scanned.findings)
        rewritten = scanned.rewrite(item.text)
        if rewritten is not None:
            rewrites[index] = rewritten
    if not counts:
        return ALLOW, findings
    reason = "pii:" + ",".join(sorted(counts))
    if pol.config.action == "block":
        return Decision.block(reason, **counts), findings
    return Decision.rewrite(rewrites, reason, **counts), findings


_ARGUMENTS = st.builds(
    lambda value: json.dumps({"to": value, "n": 1}), st.lists(PIECES, max_size=5).map("".join)
)
_PHASE_TEXTS = st.lists(
    st.one_of(
        st.builds(
            user, st.lists(PIECES, max_size=8).map("".join), st.sampled_from(["user", "system"])
        ),
        st.builds(
            lambda text: TextItem(
                text, "assistant", "messages[1].tool_calls[0].function.arguments"
            ),
            _ARGUMENTS | st.lists(PIECES, max_size=4).map("".join),
        ),
    ),
    max_size=5,
)


@settings(max_examples=150, deadline=None)
@given(_PHASE_TEXTS, st.sampled_from(sorted(POLICIES)))
async def test_a_phase_decides_as_per_text_scans_do_on_a_miss_and_on_a_hit(
    texts: list[TextItem], action: str
) -> None:
    pol = POLICIES[action]
    expected, findings = _reference_decision(pol, texts)
    for _ in range(2):  # the first may compute verdicts, the second finds them all cached
        fresh = [TextItem(item.text, item.role, item.path) for item in texts]
        context = ctx()
        decision = await pol.on_request(context, fresh)
        assert decision.action == expected.action and decision.reason == expected.reason
        assert dict(decision.rewrites) == dict(expected.rewrites)
        assert list(decision.details.items()) == list(expected.details.items())
        assert context.state.get("pii-detector", {}).get("findings", {}) == findings
        response = await pol.on_response(ctx(), fresh)
        assert (response.action, response.reason, dict(response.rewrites)) == (
            expected.action,
            expected.reason,
            dict(expected.rewrites),
        )
