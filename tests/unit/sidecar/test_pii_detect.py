"""PiiDetector: what gets flagged, what must not be, and that find() stays fast on hostile input."""

from __future__ import annotations

import itertools
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from packgate_sidecar.detect import pii, pii_patterns, pii_phone
from packgate_sidecar.detect.pii import BUILTIN_ENTITIES, Finding, PiiDetector, iban_ok, luhn_ok

ALL = PiiDetector(BUILTIN_ENTITIES)


def found(text: str, detector: PiiDetector = ALL) -> list[tuple[str, str]]:
    return [(f.entity, text[f.start : f.end]) for f in detector.find(text)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("write to jane.doe+news@example.co.uk.", [("EMAIL", "jane.doe+news@example.co.uk")]),
        ("Call me at 212-555-0123 please", [("PHONE", "212-555-0123")]),
        ("my cell is (415) 555-2671", [("PHONE", "(415) 555-2671")]),
        ("John Smith, 415-555-2671, London", [("PHONE", "415-555-2671")]),
        ("Phone: +44 20 7946 0958", [("PHONE", "+44 20 7946 0958")]),
        ("office +41 (0)44 668 18 00", [("PHONE", "+41 (0)44 668 18 00")]),
        ("+46 (0)8 928 571 38 fax", [("PHONE", "+46 (0)8 928 571 38")]),
        ("desk: +1 (650) 253-0000 ext. 123", [("PHONE", "+1 (650) 253-0000 ext. 123")]),
        ("from abroad dial 0049 30 901820", [("PHONE", "0049 30 901820")]),
        ("Mobile: 0490 75 40 81", [("PHONE", "0490 75 40 81")]),
        ("0612 345 678 mobile", [("PHONE", "0612 345 678")]),
        ("Fax: 9498777106", [("PHONE", "9498777106")]),
        ("SSN 078-05-1120.", [("SSN", "078-05-1120")]),
        ("card 4111 1111 1111 1111 exp 12/25", [("CREDIT_CARD", "4111 1111 1111 1111")]),
        ("amex 3782 822463 10005", [("CREDIT_CARD", "3782 822463 10005")]),
        ("pay with 5555555555554444", [("CREDIT_CARD", "5555555555554444")]),
        ("IBAN GB82 WEST 1234 5698 7654 32 thanks", [("IBAN", "GB82 WEST 1234 5698 7654 32")]),
        ("iban de89370400440532013000.", [("IBAN", "de89370400440532013000")]),
        ("host 192.168.1.10, port 22", [("IP_ADDRESS", "192.168.1.10")]),
        ("v6 2001:db8::8a2e:370:7334 here", [("IP_ADDRESS", "2001:db8::8a2e:370:7334")]),
    ],
)
def test_finds_entity(text: str, expected: list[tuple[str, str]]) -> None:
    assert found(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "Order 12345678 shipped",
        "Your order 2125551234 is ready",  # a valid US number shape, but a bare id without context
        "Please call about order 12345678",  # a phone word, but the number is named an order
        "In 2023 we sold 1,299 units at $1,299.99 each",
        "The price is 1 299 000 EUR",
        "Meeting on 2024-03-15 at 10:30:00, see 15.03.2024",
        "ISBN 978-3-16-148410-0 and zip 94103-1234",
        "pi is 3.14159265358979; timestamp 1699999999123",
        "numbers 12 34 56 78 90 and RFC 2616, 7231",
        "uuid 123e4567-e89b-12d3-a456-426614174000",
        "MAC 00:1A:2B:3C:4D:5E, port 8080:443, time 12:20:39",
        "std::vector and a::b::c are C++",
        "card 4111-1111-1111-1112 fails Luhn",
        "bad IBAN GB82 WEST 1234 5698 7654 33",
        "SSNs are never 000-12-3456, 666-12-3456 or 912-12-3456",
        "not addresses: 999.1.1.1 and 10.0.0.256 and 1.2.3.4.5",
        "@handle and a@b and foo\n@bar.com",
        "row\n" + " ".join(str(n) for n in range(100, 400, 7)),  # a table of numbers
    ],
)
def test_ignores_ordinary_text(text: str) -> None:
    assert found(text) == []


def test_valid_in_configured_region_only() -> None:
    text = "London office 020 7946 0018 downstairs"  # no + prefix: national UK format
    assert found("numbers: 020 7946 0018") == []
    uk = PiiDetector(["PHONE"], phone_regions=["GB"])
    assert found("numbers: 020 7946 0018", uk) == [("PHONE", "020 7946 0018")]
    assert found(text, uk) == [("PHONE", "020 7946 0018")]


def test_permissive_numbering_plans_do_not_swallow_addresses() -> None:
    de = PiiDetector(["PHONE"], phone_regions=["DE"])
    # Valid in DE, written with the trunk 0: found without any phone word.
    assert found("ruf an: 030 901820", de) == [("PHONE", "030 901820")]
    assert found("send it to 99449 18 McPherson Road", de) == []
    assert found("my driver's license number is 2270-66-1551", de) == []


def test_only_configured_entities_are_reported() -> None:
    text = "mail a.b@example.com or call +1 650 253 0000"
    assert found(text, PiiDetector(["EMAIL"])) == [("EMAIL", "a.b@example.com")]
    assert found(text, PiiDetector(["PHONE"])) == [("PHONE", "+1 650 253 0000")]
    assert PiiDetector([]).find(text) == []


def test_adjacent_numbers_are_separated() -> None:
    assert found("Call 555-123-4567 2023 report") == [("PHONE", "555-123-4567")]
    assert found("Order 12345678 415-555-2671") == [("PHONE", "415-555-2671")]


def test_overlap_resolution_prefers_validated_identifiers() -> None:
    # A Luhn-valid card after a phone word: one CREDIT_CARD finding, not a PHONE inside it.
    assert found("call 4111111111111111 now") == [("CREDIT_CARD", "4111111111111111")]
    # Digits inside an e-mail address are part of the e-mail.
    assert found("mail 2125550123@example.com") == [("EMAIL", "2125550123@example.com")]
    # An IP address is also a phone-shaped dotted run; only the IP is reported.
    assert found("call 10.20.30.40 now") == [("IP_ADDRESS", "10.20.30.40")]


def test_custom_patterns() -> None:
    det = PiiDetector(["EMAIL"], custom_patterns=[("EMPLOYEE_ID", r"\bEMP-\d{6}\b"), ("E", "x*")])
    assert found("badge EMP-004211 and a@b.io", det) == [
        ("EMPLOYEE_ID", "EMP-004211"),
        ("EMAIL", "a@b.io"),
    ]
    assert "EMPLOYEE_ID" in det.entities


def test_invalid_custom_regex_names_the_label() -> None:
    with pytest.raises(ValueError, match="TICKET"):
        PiiDetector([], custom_patterns=[("TICKET", r"TK-(\d+")])
    with pytest.raises(ValueError, match="label"):
        PiiDetector([], custom_patterns=[("bad label", r"x")])


def test_unknown_entity_and_region_are_rejected() -> None:
    with pytest.raises(ValueError, match="PASSPORT"):
        PiiDetector(["EMAIL", "PASSPORT"])
    with pytest.raises(ValueError, match="XX"):
        PiiDetector(["PHONE"], phone_regions=["US", "XX"])


def test_checksums() -> None:
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    assert iban_ok("GB82WEST12345698765432") and not iban_ok("GB82WEST12345698765433")
    assert not iban_ok("GB82WEST1234569876543")  # wrong length for GB


def test_non_ascii_digits_are_not_a_bypass() -> None:
    fullwidth = "".join(chr(0xFF10 + int(d)) for d in "4111111111111111")
    assert found(f"card {fullwidth}") == [("CREDIT_CARD", fullwidth)]


TOKENS = st.sampled_from(
    [
        " ", "\n", ", ", ". ", "call", "Phone:", "office", "fax", "order", "x", "@", ":", "::",
        "-", "+", "(", ")", "1", "12", "415", "555-2671", "2023", "+44 20 7946 0958",
        "a@b.io", "4111 1111 1111 1111", "GB82 WEST 1234 5698 7654 32", "10.0.0.1",
        "078-05-1120", "fe80::1:2:3", "0490 75 40 81",
    ]
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.lists(TOKENS, max_size=40).map("".join))
def test_findings_are_sorted_disjoint_and_in_bounds(text: str) -> None:
    findings = ALL.find(text)
    for f in findings:
        assert isinstance(f, Finding)
        assert 0 <= f.start < f.end <= len(text)
        assert f.entity in BUILTIN_ENTITIES
    for a, b in itertools.pairwise(findings):
        assert a.end <= b.start


@pytest.mark.parametrize(
    "text",
    [
        "1 " * 16384,
        "a@" * 16384,
        "1." * 16384,
        "1:" * 16384,
        "(1) " * 8192,
        "GB12 " * 6500,
        "-".join(["123"] * 8192),
        "0123456789" * 3277,
    ],
    ids=["digits", "ats", "dots", "colons", "parens", "iban-heads", "dashes", "digit-run"],
)
def test_hostile_input_stays_linear(text: str) -> None:
    # Generous bound for a loaded CI box; a quadratic scan takes seconds here.
    t0 = time.perf_counter()
    ALL.find(text)
    assert time.perf_counter() - t0 < 0.5


def _context_on_the_text(text: str, start: int, end: int) -> bool:
    """The phone-context rule as a case-insensitive search of the text itself (the reference
    for `_phone_context`, which searches lower-cased ASCII with a plain pattern)."""
    before = pii_phone._BEFORE.search(text, max(0, start - pii_phone.CONTEXT_BEFORE), start)
    if before is not None and not pii_phone._NOT_PHONE_WORDS.intersection(
        pii_phone._WORD.findall(before.group("gap").lower())
    ):
        return True
    return pii_phone._AFTER.match(text, end, end + pii_phone.CONTEXT_AFTER) is not None


CONTEXT_PIECES = st.sampled_from(
    [
        " ", ", ", ": ", "-", "\n", "x", "Phone", "PHONE:", "call", "Called", "me", "at", "tel",
        "Office:", "t:", "T :", "whats app", "order", "Account", "no.", "is", "my", "cellphones",
        "reach", "xphone", "phonex", "_", "1", "555-0134", "\u0130", "\u017f", "\u212a",
        "\u00e9", "SMS", "ext", " " * 20,
    ]
)  # fmt: skip


@settings(max_examples=1500, deadline=None)
@given(st.lists(CONTEXT_PIECES, max_size=24).map("".join), st.integers(0, 120), st.integers(0, 8))
def test_phone_context_is_the_case_insensitive_search(text: str, at: int, width: int) -> None:
    start = min(at, len(text))
    end = min(start + width, len(text))
    assert pii_phone._phone_context(text, start, end, False) == _context_on_the_text(
        text, start, end
    )


def test_phone_context_sees_the_word_the_48_character_window_cuts_into() -> None:
    # Where the window starts inside "xphone", "phone" is not a word there (a long gap of spaces
    # lets the rule reach it): both searches agree for every cut, so for the character before
    # the window that `\b` reads.
    for pad in range(60):
        for text in (
            "y" * pad + "xphone:" + " " * 44 + "5" * 9,
            "y" * pad + " Phone, me:" + " " * 40,
        ):
            for start in range(len(text) + 1):
                assert pii_phone._phone_context(text, start, start, False) == _context_on_the_text(
                    text, start, start
                ), (text, start)


def _resolve_by_trust(cands: list[tuple[int, int, int, str]]) -> list[tuple[int, int, str]]:
    """Overlap resolution as written before its no-overlap shortcut (the reference)."""
    from bisect import bisect_left

    ranked = sorted((c for c in cands if c[3]), key=lambda c: (c[0], c[1] - c[2], c[1]))
    starts: list[int] = []
    kept: list[tuple[int, int, int, str]] = []
    for cand in ranked:
        i = bisect_left(starts, cand[1])
        if (i > 0 and kept[i - 1][2] > cand[1]) or (i < len(kept) and kept[i][1] < cand[2]):
            continue
        starts.insert(i, cand[1])
        kept.insert(i, cand)
    return [(start, end, entity) for _, start, end, entity in kept]


CANDIDATE = st.tuples(
    st.sampled_from([0, 1, 2, 3, 99]),
    st.integers(0, 40),
    st.integers(1, 12),
    st.sampled_from("ABC"),
).map(lambda c: (c[0], c[1], c[1] + c[2], "" if c[0] == 99 else c[3]))


@settings(max_examples=1000, deadline=None)
@given(st.lists(CANDIDATE, max_size=12))
def test_overlap_resolution_is_the_trust_ordered_rule(
    cands: list[tuple[int, int, int, str]],
) -> None:
    assert pii._resolve(list(cands)) == _resolve_by_trust(cands)


LOCAL_PIECES = st.sampled_from(
    ["a", "Z", "0", "_", ".", "%", "+", "-", " ", ",", "\u00e9", "\u0663", "@", "x" * 30, "b" * 63]
)


@settings(max_examples=1500, deadline=None)
@given(st.lists(LOCAL_PIECES, max_size=30).map("".join), st.integers(0, 200))
def test_email_local_part_is_the_pattern_searched_before_the_at(text: str, at: int) -> None:
    # `_email_local` reads the run before the "@" leftwards; the reference is the pattern
    # searched over the 64 characters before it (runs of 63-65 and glued starts included).
    at = min(at, len(text))
    local = pii_patterns.EMAIL_LOCAL.search(text, max(0, at - 64), at)
    assert pii_patterns._email_local(text, at) == (local.start() if local else -1)


def _luhn_by_loop(digits: str) -> bool:
    """The Luhn check as first written (the reference for `luhn_ok`)."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


@settings(max_examples=2000, deadline=None)
@given(st.text(alphabet="0123456789", max_size=24))
def test_luhn_is_the_loop_over_the_digits(digits: str) -> None:
    assert luhn_ok(digits) == _luhn_by_loop(digits)


QUAD_PIECES = st.sampled_from(
    [
        "1", "10", "203", "999", "0", ".", " ", "-", "(", ")", "+", "x", "ext 12", "call ",
        "\u0663", "10.1.2.3", "415-555-2671", "10.1.2.34",
    ]
)  # fmt: skip


@settings(max_examples=2000, deadline=None)
@given(st.lists(QUAD_PIECES, max_size=24).map("".join))
def test_a_dotted_quad_run_is_one_the_phone_rule_rejects(text: str) -> None:
    # PhoneRule.scan skips such runs before `_accept`, which would reject them whole: no phone
    # number and no piece split off (the run holds no space).
    rule = pii_phone.PhoneRule(["US", "DE"])
    for m in pii_phone._PHONE.finditer(text):
        if pii_phone._dotted_quad_run(text, m.start(), m.end()):
            assert " " not in m.group()
            for partial in (False, True):
                assert rule._accept(text, m.start(), m.end(), partial) == 0
