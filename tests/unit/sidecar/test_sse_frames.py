"""The compiled frame-run scan says exactly what its Python reference says, on runs of frame
events with texts that may hold quotes, escapes or control characters, events in another frame,
and chunks cut anywhere."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from packgate_sidecar import sse_frames
from packgate_sidecar.sse_frames import frame_texts, frame_texts_ref

# Bytes that make a text not plain, mixed with ordinary ones (and the frame's own bytes).
pieces = st.sampled_from([b"a", b" ", b"\xc3\xa9", b'"', b"\\", b"\n", b"\x00", b"\x1f", b"}"])
texts = st.lists(pieces, max_size=6).map(b"".join)
heads = st.sampled_from([b'data: {"c":"', b"H", b"", b'data: {"id":"x","d":{"content":"'])
tails = st.sampled_from([b'"', b'"}', b'"}]}', b'"\\'])


def test_the_extension_is_built() -> None:
    assert sse_frames.COMPILED  # `pip install` builds it: a missing one is a broken install


@settings(max_examples=500, deadline=None)
@given(heads, tails, st.lists(st.tuples(texts, st.booleans()), max_size=8), st.data())
def test_compiled_scan_equals_the_reference(
    head: bytes, tail: bytes, events: list[tuple[bytes, bool]], data: st.DataObject
) -> None:
    # Each event in the frame or in another one (its head changed); then cut the chunk anywhere.
    chunk = b"".join((head if framed else b"X" + head) + text + tail + b"\n\n"
                     for text, framed in events)  # fmt: skip
    chunk = chunk[: data.draw(st.integers(0, len(chunk)))]
    at = data.draw(st.integers(0, len(chunk)))
    assert frame_texts(chunk, at, head, tail) == frame_texts_ref(chunk, at, head, tail)


def test_a_run_ends_at_the_first_event_that_is_not_in_the_frame() -> None:
    chunk = b'H1"T\n\nH22"T\n\nH3\\"T\n\nH4"T\n\n'
    assert frame_texts(chunk, 0, b"H", b'"T') == [b"1", b"22"]
    assert frame_texts(chunk, 6, b"H", b'"T') == [b"22"]
    assert frame_texts(chunk[:-1], 21, b"H", b'"T') == []  # incomplete: no blank line yet


@pytest.mark.parametrize("scan", [frame_texts, frame_texts_ref])
def test_a_tail_that_does_not_close_the_text_is_refused(scan: object) -> None:
    with pytest.raises(ValueError):
        scan(b'H1"T\n\n', 0, b"H", b"T")  # type: ignore[operator]
