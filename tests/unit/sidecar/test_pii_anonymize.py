"""anonymize(): what the user sees in place of detected PII for each action."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from packgate_sidecar.detect.anonymize import _engine, _operator, anonymize
from packgate_sidecar.detect.pii import BUILTIN_ENTITIES, Finding, PiiDetector
from presidio_anonymizer import RecognizerResult

DET = PiiDetector(BUILTIN_ENTITIES)
TEXT = "Mail jane@example.com or call +1 650 253 0000; card 4111 1111 1111 1111."


def test_redact_uses_typed_markers() -> None:
    out = anonymize(TEXT, DET.find(TEXT), "redact")
    assert out == "Mail <EMAIL> or call <PHONE>; card <CREDIT_CARD>."


def test_redact_all_entity_types() -> None:
    text = "a@b.io 078-05-1120 GB82WEST12345698765432 10.0.0.1 +44 20 7946 0958"
    assert anonymize(text, DET.find(text), "redact") == "<EMAIL> <SSN> <IBAN> <IP_ADDRESS> <PHONE>"


def test_mask_keeps_length_and_surroundings() -> None:
    out = anonymize(TEXT, DET.find(TEXT), "mask")
    assert len(out) == len(TEXT)
    assert out.startswith("Mail **************** or call ")
    assert "jane" not in out and "4111" not in out and "650" not in out
    assert out.endswith("; card *******************.")


def test_hash_is_stable_within_process_and_hides_value() -> None:
    text = "jane@example.com wrote to jane@example.com and bob@example.com"
    out = anonymize(text, DET.find(text), "hash")
    digests = re.findall(r"[0-9a-f]{64}", out)
    assert len(digests) == 3
    assert digests[0] == digests[1] != digests[2]  # same value -> same token, across calls too
    assert anonymize(text, DET.find(text), "hash") == out
    assert "jane" not in out


def test_hash_salt_changes_tokens() -> None:
    text = "jane@example.com"
    findings = DET.find(text)
    a = anonymize(text, findings, "hash", hash_salt=b"0123456789abcdef")
    b = anonymize(text, findings, "hash", hash_salt=b"fedcba9876543210")
    assert a != b
    assert a == anonymize(text, findings, "hash", hash_salt=b"0123456789abcdef")


def test_no_findings_returns_text_unchanged() -> None:
    assert anonymize("nothing here", [], "redact") == "nothing here"


def test_custom_label_marker() -> None:
    text = "badge EMP-004211"
    assert anonymize(text, [Finding("EMPLOYEE_ID", 6, 16)], "redact") == "badge <EMPLOYEE_ID>"


def test_neighbouring_findings_stay_separate() -> None:
    text = "x@y.ioz@w.io"
    findings = [Finding("EMAIL", 0, 6), Finding("EMAIL", 6, 12)]
    assert anonymize(text, findings, "redact") == "<EMAIL><EMAIL>"
    # presidio merges same-type entities separated by spaces unless told not to
    text = "a@b.io c@d.io"
    assert anonymize(text, DET.find(text), "redact") == "<EMAIL> <EMAIL>"


def test_unknown_action_rejected() -> None:
    with pytest.raises(ValueError, match="unknown PII action"):
        anonymize("a@b.io", [], "shred")  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None)
@given(
    text=st.text(min_size=1, max_size=60),
    cuts=st.lists(st.integers(min_value=0, max_value=60), max_size=8),
    action=st.sampled_from(["redact", "mask", "hash"]),
)
def test_same_text_as_presidios_engine(text: str, cuts: list[int], action: str) -> None:
    """The one-pass rebuild of disjoint spans gives exactly what presidio's engine gives (for
    hash: same salt, so same digests), and overlapping spans still go through the engine."""
    edges = sorted({min(c, len(text)) for c in cuts})
    findings = [Finding("EMAIL" if i % 2 else "SSN", a, b) for i, (a, b) in
                enumerate(zip(edges[::2], edges[1::2], strict=False)) if a < b]  # fmt: skip
    salt = b"s" * 16
    expected = (
        _engine()
        .anonymize(
            text,
            [RecognizerResult(f.entity, f.start, f.end, 1.0) for f in findings],
            {"DEFAULT": _operator(action, salt)},
            merge_entities_with_spaces=False,
        )
        .text
    )
    assert anonymize(text, findings, action, hash_salt=salt) == expected  # type: ignore[arg-type]


def test_overlapping_spans_fall_back_to_presidios_conflict_rules() -> None:
    text = "jane@example.com"
    out = anonymize(text, [Finding("EMAIL", 0, 16), Finding("EMAIL", 5, 16)], "redact")
    assert out == "<EMAIL>"


def test_the_shared_operator_config_is_never_changed() -> None:
    # `_operator` hands out one config per action and salt: neither the one-pass splice nor
    # presidio's engine (overlapping spans) may leave anything in its params.
    text = "mail a@b.io or call 415-555-2671"
    ordered = [Finding("EMAIL", 5, 11), Finding("PHONE", 20, 32)]
    overlapping = [Finding("EMAIL", 5, 11), Finding("PHONE", 8, 20)]
    salt = b"0123456789abcdef"
    for action in ("redact", "mask", "hash"):
        before = dict(_operator(action, salt).params)
        for findings in (ordered, overlapping):
            anonymize(text, findings, action, hash_salt=salt)  # type: ignore[arg-type]
        assert _operator(action, salt).params == before
        assert _operator(action, salt) is _operator(action, salt)
