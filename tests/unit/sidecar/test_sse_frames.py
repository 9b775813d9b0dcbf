"""The compiled frame-run scan says exactly what its Python reference says, on runs of frame
events with texts (and varying values) that may hold quotes, escapes, control characters or
non-ASCII bytes, events in another frame, and chunks cut anywhere."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from packgate_sidecar import sse_frames
from packgate_sidecar.sse_frames import frame_seek, frame_seek_ref, frame_texts, frame_texts_ref

# Bytes that make a text not plain, mixed with ordinary ones (and the frame's own bytes).
pieces = st.sampled_from([b"a", b" ", b"\xc3\xa9", b'"', b"\\", b"\n", b"\x00", b"\x1f", b"}"])
texts = st.lists(pieces, max_size=6).map(b"".join)
heads = st.sampled_from([b'data: {"c":"', b"H", b"", b'data: {"id":"x","d":{"content":"'])
tails = st.sampled_from([b'"', b'"}', b'"}]}', b'"\\', b'"}],"obfuscation":"'])
suffixes = st.sampled_from([b"", b'"}', b'"'])
mids = st.sampled_from([b"", b'","item_id":"m","delta":"', b"M"])
# Integers in JSON's spelling and not: a leading zero, too many digits, none, a sign.
numbers = st.sampled_from(
    [b"0", b"7", b"42", b"01", b"00", b"1234567890123456", b"12345678901234567", b"", b"-1"]
)


def test_the_extension_is_built() -> None:
    assert sse_frames.COMPILED  # `pip install` builds it: a missing one is a broken install


@settings(max_examples=800, deadline=None)
@given(
    heads,
    tails,
    suffixes,
    mids,
    st.lists(st.tuples(texts, texts, st.booleans(), numbers), max_size=8),
    st.data(),
)
def test_compiled_scan_equals_the_reference(
    head: bytes,
    tail: bytes,
    suffix: bytes,
    mid: bytes,
    events: list[tuple[bytes, bytes, bool, bytes]],
    data: st.DataObject,
) -> None:
    # Each event in the frame or in another one (its head changed); then cut the chunk anywhere.
    chunk = b"".join(
        (head if framed else b"X" + head) + (number + mid if mid else b"") + text + tail
        + (value + suffix if suffix else b"") + b"\n\n"
        for text, value, framed, number in events
    )  # fmt: skip
    chunk = chunk[: data.draw(st.integers(0, len(chunk)))]
    at = data.draw(st.integers(0, len(chunk)))
    args = (chunk, at, head, tail, suffix) + ((mid,) if mid or data.draw(st.booleans()) else ())
    assert frame_texts(*args) == frame_texts_ref(*args)


# Texts a run carries (valid UTF-8, no quote, backslash or control character) and padding.
plain_texts = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc"),
                                    exclude_characters='"\\'), max_size=5)  # fmt: skip


@settings(max_examples=500, deadline=None)
@given(
    st.sampled_from([b'data: {"c":"', b"H", b""]),
    st.sampled_from([b'"', b'"}]}']),
    st.sampled_from([None, b'"}']),
    st.lists(st.tuples(plain_texts, st.text("aZ09", max_size=4)), min_size=1, max_size=8),
    st.data(),
)
def test_compiled_seek_equals_the_reference(
    head: bytes,
    tail: bytes,
    suffix: bytes | None,
    events: list[tuple[str, str]],
    data: st.DataObject,
) -> None:
    """Where the run's texts stop at a character offset: the same event, the same characters
    before it and the same offset, for any offset; the same refusal for too many events or a
    chunk cut short."""
    lead = data.draw(st.binary(max_size=3).filter(lambda b: b'"' not in b and b"\n" not in b))
    chunk = lead + b"".join(
        head + text.encode() + tail + (b"" if suffix is None else pad.encode() + suffix) + b"\n\n"
        for text, pad in events
    )  # fmt: skip
    total = sum(len(text) for text, _ in events)
    count = data.draw(st.integers(1, len(events) + 1))
    chars = data.draw(st.integers(0, total + 2))
    chunk = chunk[: data.draw(st.sampled_from([len(chunk), len(chunk) - 1, len(chunk) // 2]))]
    args = (chunk, len(lead), count, len(head), chars)
    try:
        expected: object = frame_seek_ref(*args)
    except ValueError:
        expected = ValueError
    if expected is ValueError:
        with pytest.raises(ValueError):
            frame_seek(*args)
    else:
        assert frame_seek(*args) == expected


def test_a_run_ends_at_the_first_event_that_is_not_in_the_frame() -> None:
    chunk = b'H1"T\n\nH22"T\n\nH3\\"T\n\nH4"T\n\n'
    assert frame_texts(chunk, 0, b"H", b'"T', b"") == ([b"1", b"22"], 13)
    assert frame_texts(chunk, 6, b"H", b'"T', b"") == ([b"22"], 13)
    assert frame_texts(chunk[:-1], 21, b"H", b'"T', b"") == ([], 21)  # no blank line yet


def test_a_varying_value_is_ascii_without_quotes_or_escapes() -> None:
    tail, suffix = b'"},"o":"', b'"}'
    chunk = b'H1"},"o":"ab"}\n\nH2"},"o":""}\n\nH3"},"o":"\xc3\xa9"}\n\nH4"},"o":"x"}\n\n'
    assert frame_texts(chunk, 0, b"H", tail, suffix) == ([b"1", b"2"], 30)


def test_a_varying_integer_is_spelled_as_json_spells_it() -> None:
    chunk = b'H12,Ma"T\n\nH0,Mb"T\n\nH1234567890123456,Mc"T\n\nH01,Md"T\n\n'
    assert frame_texts(chunk, 0, b"H", b'"T', b"", b",M") == ([b"a", b"b", b"c"], 43)
    assert frame_texts(b'H12345678901234567,Ma"T\n\n', 0, b"H", b'"T', b"", b",M") == ([], 0)
    assert frame_texts(b'H,Ma"T\n\n', 0, b"H", b'"T', b"", b",M") == ([], 0)


@pytest.mark.parametrize("scan", [frame_texts, frame_texts_ref])
def test_a_mid_that_starts_with_a_digit_is_refused(scan: object) -> None:
    with pytest.raises(ValueError):
        scan(b'H1,Ma"T\n\n', 0, b"H", b'"T', b"", b"1M")  # type: ignore[operator]


@pytest.mark.parametrize("scan", [frame_texts, frame_texts_ref])
def test_a_tail_or_suffix_that_does_not_close_a_string_is_refused(scan: object) -> None:
    with pytest.raises(ValueError):
        scan(b'H1"T\n\n', 0, b"H", b"T", b"")  # type: ignore[operator]
    with pytest.raises(ValueError):
        scan(b'H1"T\n\n', 0, b"H", b'"T', b"S")  # type: ignore[operator]
