"""StreamRedactor: chunked output equals redacting the whole text, and memory stays bounded."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from packgate_sidecar.detect.anonymize import Action, anonymize
from packgate_sidecar.detect.pii import BUILTIN_ENTITIES, PiiDetector, open_tail
from packgate_sidecar.detect.pii_stream import _PLAIN, StreamRedactor

DET = PiiDetector(BUILTIN_ENTITIES)


def stream(redactor: StreamRedactor, chunks: list[str]) -> str:
    return "".join(redactor.feed(c) for c in chunks) + redactor.flush()


def test_entity_split_across_deltas_is_redacted() -> None:
    chunks = ["Sure! Call me at +1 650 2", "53 00", "00 or mail ja", "ne@exam", "ple.com today."]
    out = stream(StreamRedactor(DET, "redact"), chunks)
    assert out == "Sure! Call me at <PHONE> or mail <EMAIL> today."


def test_trailing_context_word_in_a_later_delta() -> None:
    # "416 60 039" is only a phone number because "office" follows it.
    out = stream(StreamRedactor(DET, "redact"), ["Numbers: 416 60 039", " office, 12 000 visitors"])
    assert out == "Numbers: <PHONE> office, 12 000 visitors"


def test_prose_is_released_as_it_arrives_less_its_last_word() -> None:
    r = StreamRedactor(DET, "redact")
    assert r.feed("Thanks,") == "Thanks,"  # the first delta goes out at once
    assert r.feed(" I have") == " I "  # "have" could still be the start of an e-mail address
    assert r.feed(" the details.") == "have the "  # "details." could be a domain's start
    assert r.feed(" Call 415") == "details. Call "  # a number is held while it could grow
    assert r.feed("-555-2671 now") == ""  # a phone number waits for a trailing context word
    assert r.flush() == "<PHONE> now"


def test_custom_patterns_hold_a_fixed_window() -> None:
    # A custom regex may match anything, so its open tail is unknown: the last `holdback`
    # characters are held instead.
    det = PiiDetector(["EMAIL"], custom_patterns=[("TICKET", r"TCK-\d+")])
    r = StreamRedactor(det, "redact", holdback=64)
    text = "The quick brown fox jumps over the lazy dog. " * 10
    released = r.feed(text)
    assert released == text[: 450 - 64]
    assert r.feed("x") == text[450 - 64]  # one more character in, one character out
    assert r.flush() == text[450 - 63 :] + "x"


def test_flush_resets_for_reuse() -> None:
    r = StreamRedactor(DET, "mask")
    assert stream(r, ["id a@b.io"]) == "id ******"
    assert stream(r, ["no pii"]) == "no pii"


def test_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="holdback"):
        StreamRedactor(DET, "redact", holdback=8)
    with pytest.raises(ValueError, match="unknown PII action"):
        StreamRedactor(DET, "erase")  # type: ignore[arg-type]


def test_memory_is_bounded_even_when_a_match_never_ends() -> None:
    # A custom pattern that keeps matching as long as letters arrive would hold everything back
    # if the redactor waited for the candidate to end.
    det = PiiDetector([], custom_patterns=[("WORDS", r"[a-z]{8,}")])
    r = StreamRedactor(det, "mask", holdback=32, max_pending=512)  # mask keeps lengths
    fed = out = 0
    for _ in range(400):
        fed += 20
        released = r.feed("abcdefghij" * 2)
        assert set(released) <= {"*"}
        out += len(released)
        assert fed - out <= 512 + 20
    assert set(r.flush()) <= {"*"}


def test_memory_is_bounded_for_one_endless_word() -> None:
    # A word could always still become an e-mail's local part; it is released past max_pending.
    r = StreamRedactor(DET, "redact", max_pending=512)
    fed = out = 0
    for _ in range(200):
        fed += 20
        out += len(r.feed("abcdefghij" * 2))
        assert fed - out <= 512 + 20
    assert out + len(r.flush()) == fed


PII = [
    "jane.doe@example.com", "+44 20 7946 0958", "415-555-2671", "(415) 555-2671",
    "416 60 039 office", "Phone: 0490 75 40 81", "call me at 9472 7916", "078-05-1120",
    "4111 1111 1111 1111", "5555555555554444", "GB82 WEST 1234 5698 7654 32",
    "DE89370400440532013000", "10.1.2.3", "2001:db8::8a2e:370:7334", "+1-903-140-4508x769",
    # obfuscated: invisible characters, fullwidth forms, an unseparated SSN after its word
    "john.doe\u200b@example.com", "\uff4a\uff41\uff4e\uff45\uff20example.com",
    "078\x00-05-1120", "SSN 078051120", "social security number is 219099999",
]  # fmt: skip
FILLER = [
    "Hello", "the order 12345678", "in 2023", "at $1,299.99", "see RFC 2616", "on 2024-03-15",
    "ok", "Fax:", "office", "call", "x", "12", "a@", "::", "3.14",
]  # fmt: skip
SEPARATORS = [" ", ", ", ". ", "\n", " and "]


@st.composite
def texts_and_chunks(draw: st.DrawFn) -> tuple[str, list[str]]:
    parts = draw(st.lists(st.sampled_from(PII + FILLER), min_size=1, max_size=25))
    seps = draw(st.lists(st.sampled_from(SEPARATORS), min_size=len(parts), max_size=len(parts)))
    text = "".join(p + s for p, s in zip(parts, seps, strict=True))
    sizes = draw(st.lists(st.integers(1, 24), min_size=1, max_size=len(text)))
    chunks, i, k = [], 0, 0
    while i < len(text):
        n = sizes[k % len(sizes)]
        chunks.append(text[i : i + n])
        i, k = i + n, k + 1
    return text, chunks


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    texts_and_chunks(),
    st.sampled_from(["redact", "mask", "hash"]),
    st.sampled_from([32, 48, 64, 100]),
)
def test_chunked_output_equals_whole_text_redaction(
    case: tuple[str, list[str]], action: Action, holdback: int
) -> None:
    text, chunks = case
    expected = anonymize(text, DET.find(text), action)
    assert stream(StreamRedactor(DET, action, holdback=holdback), chunks) == expected


class _AlwaysScanned(StreamRedactor):
    """The reference for `flush`: the detector judges the held-back rest every time."""

    def flush(self) -> str:
        out = self._release(final=True) if self._pending else ""
        self._context, self._clean = "", True
        return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.text(st.sampled_from("ab.-@ 1\n"), max_size=40) | st.sampled_from(PII + FILLER),
        min_size=1,
        max_size=12,
    ),
    st.sampled_from([None, 80, 200]),
)
def test_flush_releases_a_plain_rest_as_the_detector_would(
    chunks: list[str], max_pending: int | None
) -> None:
    # Small max_pending forces cuts inside long candidates (the rest is then not clean).
    fast = StreamRedactor(DET, "redact", holdback=32, max_pending=max_pending)
    full = _AlwaysScanned(DET, "redact", holdback=32, max_pending=max_pending)
    assert stream(fast, chunks) == stream(full, chunks)


class _TailAlwaysComputed(StreamRedactor):
    """The reference for `feed`'s shortcuts: the detector judges every delta that is not plain
    text, and the open tail is computed for every plain one, also when it continues a word."""

    def feed(self, delta: str) -> str:
        self._pending += delta
        pending = self._pending
        if self._clean and len(pending) <= self._max_pending and _PLAIN.fullmatch(pending):
            window, base = self._context + pending, len(self._context)
            cut = open_tail(window)
            return self._emit(window, base, cut, []) if cut > base else ""
        return self._release(final=False)


# Pieces of words, e-mail addresses and numbers (ASCII and not: "\u00bc" is a word character
# that normalisation turns into "1\u20444"), and the characters that end a run.
RUN_PIECES = st.sampled_from(
    [
        "bil", "ling", "a", "Z", " ", " the", ".", ", ", "x-y", "(", "_", "jor", "dan.",
        "s@ex", "ampl", "e.or", "g", " 482", "13", "555", "-26", "71", ":", "#", "\u00bc",
        "\u00e9", "\u200b", "\uff10",
    ]
)  # fmt: skip


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(RUN_PIECES | st.sampled_from(PII + FILLER), min_size=1, max_size=30),
    st.sampled_from([None, 40, 80]),
)
def test_each_delta_releases_what_the_detector_and_open_tail_release(
    chunks: list[str], max_pending: int | None
) -> None:
    # Not only the whole output: each delta's release (how long text is held) is unchanged,
    # and so is whether the last cut is clean (which later deltas' shortcuts depend on).
    fast = StreamRedactor(DET, "redact", holdback=32, max_pending=max_pending)
    full = _TailAlwaysComputed(DET, "redact", holdback=32, max_pending=max_pending)
    for chunk in chunks:
        assert (fast.feed(chunk), fast._clean) == (full.feed(chunk), full._clean)
    assert fast.flush() == full.flush()
    assert fast.counts == full.counts
