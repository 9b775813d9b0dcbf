"""PII normalisation: obfuscated data is found, and redaction covers the whole original span."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from packgate_sidecar.detect.anonymize import anonymize
from packgate_sidecar.detect.pii import BUILTIN_ENTITIES, Finding, PiiDetector
from packgate_sidecar.detect.pii_normalize import _SPECIAL, Normalized, plain

DET = PiiDetector(BUILTIN_ENTITIES)


def redact(text: str) -> str:
    return anonymize(text, DET.find(text), "redact")


def test_plain_ascii_is_not_copied_or_mapped() -> None:
    norm = Normalized("jane@example.com")
    assert not norm.changed and norm.text == "jane@example.com"
    assert norm.span(0, 4) == (0, 4)


def test_fullwidth_and_invisible_characters_are_normalised_with_a_map_back() -> None:
    text = "mail: \uff4a\uff41\u200bne\uff20example.com!"
    norm = Normalized(text)
    assert norm.text == "mail: jane@example.com!"
    # The normalised e-mail maps back to the original span, the zero-width space included.
    start = norm.text.index("jane")
    assert norm.span(start, start + len("jane@example.com")) == (6, len(text) - 1)


def test_an_expanding_character_maps_back_whole() -> None:
    norm = Normalized("a\ufb01b")  # the "fi" ligature becomes two characters
    assert norm.text == "afib"
    assert norm.span(1, 2) == (1, 2)  # half of the expansion still covers the ligature
    assert norm.span(2, 4) == (1, 3)


def test_zero_width_characters_inside_an_email_are_redacted_with_it() -> None:
    assert redact("write to john.doe\u200b@example.com today") == "write to <EMAIL> today"
    assert redact("write to j\u200do\u2060hn@exa\ufeffmple.com") == "write to <EMAIL>"


def test_fullwidth_at_sign_and_digits() -> None:
    assert redact("mail jane\uff20example.com") == "mail <EMAIL>"
    assert redact("card \uff14\uff11\uff11\uff11 1111 1111 1111 ok") == "card <CREDIT_CARD> ok"


def test_nul_bytes_between_digits() -> None:
    assert redact("ssn 078-05\x00-1120.") == "ssn <SSN>."
    assert redact("call +1 650\x00 253\x00 0000") == "call <PHONE>"


def test_unseparated_ssn_needs_a_context_word() -> None:
    assert redact("My SSN is 078051120.") == "My SSN is <SSN>."
    assert redact("social security number: 219099999") == "social security number: <SSN>"
    assert redact("ssn#078051120") == "ssn#<SSN>"
    # Without the word nine digits are an order number; unissued numbers are never SSNs.
    assert redact("order 078051120 shipped") == "order 078051120 shipped"
    assert redact("SSN 000051120 and SSN 666051120") == "SSN 000051120 and SSN 666051120"


def test_text_that_normalises_unchanged_keeps_its_offsets() -> None:
    text = "Grüße, ruf an: +49 30 901820, oder jane@example.com"
    found = DET.find(text)
    assert [text[f.start : f.end] for f in found] == ["+49 30 901820", "jane@example.com"]


invisible = st.sampled_from(["\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00ad", "\x00"])


@given(st.lists(st.tuples(st.integers(0, 18), invisible), max_size=6))
def test_invisible_characters_anywhere_inside_keep_the_email_found_whole(
    inserts: list[tuple[int, str]],
) -> None:
    email = "jane.doe@example.com"
    chars = list(email)
    for at, ch in sorted(inserts, reverse=True):
        chars.insert(at + 1, ch)  # strictly inside: after the first, before the last
    obfuscated = "".join(chars)
    text = f"Contact {obfuscated} now"
    assert DET.find(text) == [Finding("EMAIL", 8, 8 + len(obfuscated))]


@given(st.text(alphabet=st.characters(max_codepoint=0x10F), max_size=40))
def test_plain_text_is_text_without_a_special_character(text: str) -> None:
    # The fast byte check that lets plain text through as is agrees with the character class.
    assert plain(text) == (_SPECIAL.search(text) is None)
