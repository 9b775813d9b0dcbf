"""Scanning only the digit windows finds exactly what scanning the whole text finds.

`pii_regions.digit_windows` is a speed-up whose correctness rests on a proof about the patterns
(every digit of a match in one cluster, bounded reach before and after it): these property
tests hold every windowed pattern, the SSN context rule and the whole detector (`find` and the
streaming `find_partial`) to their whole-text versions, on texts built from the pieces that
stress the window edges (phone prefixes "(+", extensions, separator runs, IBAN letters,
non-ASCII digits, invisible characters).
"""

from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from packgate_sidecar.detect import pii, pii_patterns, pii_phone, pii_regions
from packgate_sidecar.detect.pii import BUILTIN_ENTITIES, PiiDetector
from packgate_sidecar.detect.pii_normalize import Normalized

PATTERNS = {
    "ssn-ipv4-card": pii_patterns._TOKEN,
    "iban": pii_patterns._IBAN,
    "phone": pii_phone._PHONE,
}
# The four patterns `_TOKEN` joins, as they were written before it.
SEPARATE = {
    "SSN": re.compile(r"\d(?<![\w\-.]\d)\d\d([- .])\d\d\1\d{4}(?![\w\-]|\.\d)"),
    "SSN_BARE": re.compile(r"\d(?<![\w\-.+]\d)\d{8}(?![\w\-]|\.\d)"),
    "IP_ADDRESS": re.compile(r"\d(?<![\w.]\d)\d{0,2}\.\d{1,3}\.\d{1,3}\.\d{1,3}(?!\w|\.\d)"),
    "CREDIT_CARD": re.compile(
        r"\d(?<![\w+\-.]\d)(?<!\d \d)(?:\d{11,18}|\d{3}([ \-])\d{4,6}(?:\1\d{3,6}){1,3})"
        r"(?![\w\-]|\.\d)"
    ),
}

PIECES = st.sampled_from(
    [
        " ", "  ", "\n", "\t", ", ", ". ", "-", "--", ".", "(", ")", "()", "+", "(+", "/", ":",
        "#", "x", "X", "ext", "ext.", "EXTENSION", " extension ", " ext. ", "x ", "@", "a", "GB",
        "de", "Z", "_", "1", "7", "0", "12", "415", "2023", "555-2671", "650 253 0000",
        "+1 650-253-0000", "(650) 253-0000", "(+44) 20 7946 0958", "0049 30 901820",
        "4111 1111 1111 1111", "4111-1111-1111-1111", "378282246310005", "GB82WEST12345698765432",
        "GB82 WEST 1234 5698 7654 32", "DE89370400440532013000", "10.0.0.1", "192.168.000.1",
        "078-05-1120", "078 05 1120", "078051120", "123456789", "fe80::1:2:3", "a@b.io",
        "ssn", "SSN#", "social security", "social-security number is", "phone:", "call me at",
        "office", "order", "\u0663\u0664\u0665", "\uff11\uff12", "\u200b", "\u017f", "\u0130",
        "\u00b2", "\u00e9", " - ( ) . . -- () ",
    ]
)  # fmt: skip
TEXTS = st.lists(PIECES, max_size=48).map("".join)


def whole(text: str) -> list[tuple[int, int]]:
    # As a digit window around the whole text reads it (`re` clamps pos and endpos).
    return [(-pii_regions.BEFORE, len(text) + pii_regions.AFTER)]


def spans(pattern: re.Pattern[str], text: str, windows: list[tuple[int, int]]) -> list[str]:
    return [
        f"{m.start()}:{m.end()}" for pos, end in windows for m in pattern.finditer(text, pos, end)
    ]


@settings(max_examples=1500, deadline=None)
@given(TEXTS)
def test_windows_hold_every_match_of_every_digit_pattern(text: str) -> None:
    # Also as non-ASCII text (the generic cluster scan): a line break and a no-break space at
    # the end change no match, as no match holds a line break.
    for variant in (text, text + "\n\u00a0"):
        windows = pii_regions.digit_windows(variant)
        for a, b in itertools.pairwise(windows):
            assert a[0] < a[1] < b[0] < b[1]  # sorted and disjoint
        for name, pattern in PATTERNS.items():
            assert spans(pattern, variant, windows) == spans(pattern, variant, whole(variant)), name


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet="0123456789 ().-+x#eEtnsioa:\n", max_size=80))
def test_ascii_cluster_scan_matches_the_unicode_one(text: str) -> None:
    assert text.isascii()
    generic = [m.span() for m in pii_regions._CLUSTER.finditer(text)]
    fast = [
        m.span()
        for m in pii_regions._CLUSTER_ASCII.finditer(text.encode().translate(pii_regions._MAP))
    ]
    assert fast == generic


@settings(max_examples=1500, deadline=None)
@given(st.one_of(TEXTS, st.text(alphabet="0123456789 GBDEaz_-.", max_size=40)))
def test_iban_heads_are_where_the_iban_pattern_matches(text: str) -> None:
    text = text.encode("ascii", "ignore").decode()
    want = [m.start() for m in pii_patterns._IBAN.finditer(text)]
    assert pii_regions.iban_heads(text) == want


def _bare_ssns_word_first(text: str) -> list[tuple[int, int]]:
    """The bare-SSN rule as it was written before windows: from each context word forwards."""
    out = []
    done = 0
    for word in re.finditer(r"ssn|social", text, re.IGNORECASE):
        last = word.end() + pii_patterns.SSN_CONTEXT_BEFORE
        for m in SEPARATE["SSN_BARE"].finditer(
            text, max(done, word.end()), min(len(text), last + 11)
        ):
            start = m.start()
            if start > last:
                break
            if pii_patterns._issued(
                pii_patterns._ascii_digits(m.group())
            ) and pii_patterns._SSN_CONTEXT.search(
                text, max(0, start - pii_patterns.SSN_CONTEXT_BEFORE), start
            ):
                out.append((start, m.end()))
                done = m.end()
    return out


@settings(max_examples=800, deadline=None)
@given(TEXTS)
def test_bare_ssn_rule_is_the_word_first_rule(text: str) -> None:
    found: list[pii_patterns.Candidate] = []
    pii_patterns.token_scanner(["SSN"])(text, found, False, pii_regions.digit_windows(text))
    bare = [(s, e) for _, s, e, _ in found if text[s:e].isdecimal()]
    assert bare == _bare_ssns_word_first(text)


@settings(max_examples=3000, deadline=None)
@given(st.one_of(TEXTS, st.text(alphabet="0123456789 -.+_a", max_size=60)))
def test_one_token_pattern_finds_what_the_four_separate_ones_found(text: str) -> None:
    joined = sorted(
        (m.start(), m.end(), str(m.lastgroup)) for m in pii_patterns._TOKEN.finditer(text)
    )
    separate = sorted(
        (m.start(), m.end(), kind) for kind, rx in SEPARATE.items() for m in rx.finditer(text)
    )
    assert joined == separate


DETECTOR = PiiDetector(BUILTIN_ENTITIES, phone_regions=("US", "GB", "DE"))


@settings(max_examples=800, deadline=None)
@given(TEXTS)
def test_detector_finds_the_same_as_with_one_whole_text_window(text: str) -> None:
    windowed = (DETECTOR.find(text), DETECTOR.find_partial(text))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pii, "digit_windows", whole)
        assert (DETECTOR.find(text), DETECTOR.find_partial(text)) == windowed


def test_a_phone_number_opening_with_its_prefix_or_extension_is_found_whole() -> None:
    # The window edges at their tightest: "(+" before the first digit, " extension " between
    # the last two digit groups, the lookahead right after the last digit.
    text = "phone: (+44) 20 7946 0958 extension 12, 4111 1111 1111 1111."
    found = [(f.entity, text[f.start : f.end]) for f in DETECTOR.find(text)]
    assert found == [
        ("PHONE", "(+44) 20 7946 0958 extension 12"),
        ("CREDIT_CARD", "4111 1111 1111 1111"),
    ]


def _scan_as_written_before(
    detector: PiiDetector, norm: Normalized, partial: bool
) -> list[pii_patterns.Candidate]:
    """`PiiDetector._scan` as written before the windows answered the trigger test and the
    phone rule worked out the claimed spans itself: a regex trigger, spans claimed up front."""
    cands: list[pii_patterns.Candidate] = []
    if detector.builtin_only and not norm.changed and not re.search(r"[\d@:]", norm.text):
        return cands
    windows = pii_regions.digit_windows(norm.text)
    for scan in detector._scanners:
        scan(norm.text, cands, partial, windows)
    if detector._phone is not None:
        claimed = pii_phone.claimed_spans(cands)
        detector._phone.scan(norm.text, cands, partial, windows, claimed)
    return cands


# Texts with no digit but an '@' or ':' (an IPv6 address of hex letters), non-ASCII digits and
# invisible characters, and cards that are also phone-shaped runs (a 15-digit Amex after "call").
TRIGGER_PIECES = st.sampled_from(
    ["a@b.io", "fe::ab:cd:ef", "::", "@", ":", "\u0663", "\uff11", "\u200b", "call ", "x"]
)


@settings(max_examples=1500, deadline=None)
@given(st.one_of(TEXTS, st.lists(st.one_of(PIECES, TRIGGER_PIECES), max_size=24).map("".join)))
def test_detector_scans_as_with_a_regex_trigger_and_spans_claimed_up_front(text: str) -> None:
    for detector in (DETECTOR, PiiDetector(["EMAIL", "PHONE", "SSN", "CREDIT_CARD"])):
        for partial in (False, True):
            norm = Normalized(text)
            want = _scan_as_written_before(detector, norm, partial)
            assert detector._scan(norm, partial) == want


@settings(max_examples=500, deadline=None)
@given(st.one_of(TEXTS, st.text(max_size=40)))
def test_digit_windows_exist_exactly_when_the_text_holds_a_digit(text: str) -> None:
    assert bool(pii_regions.digit_windows(text)) == bool(re.search(r"\d", text))


# The shortest token and phone runs: 7 characters from the first digit to the last.
SHORT_RUNS = st.sampled_from(
    ["1234567", "1.2.3.4", "(+1234567", "+1234567", "(1)-()-2", "(+1)--()2", "12-3456", " ", "x"]
)


@settings(max_examples=1500, deadline=None)
@given(st.one_of(TEXTS, st.lists(st.one_of(PIECES, SHORT_RUNS), max_size=24).map("".join)))
def test_no_token_or_phone_run_lies_in_a_window_shorter_than_the_shortest(text: str) -> None:
    # The token and phone scanners skip windows shorter than SHORTEST_WINDOW.
    for variant in (text, text + "\n\u00a0"):
        windows = pii_regions.digit_windows(variant)
        for pattern in (pii_patterns._TOKEN, pii_phone._PHONE):
            for m in pattern.finditer(variant):
                (window,) = [(s, e) for s, e in windows if s <= m.start() and m.end() <= e]
                assert window[1] - window[0] >= pii_regions.SHORTEST_WINDOW, m
