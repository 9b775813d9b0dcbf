"""scrub: registered secret values never leave the process."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st
from packgate_sidecar import scrub
from packgate_sidecar._scrubscan import contains


def test_registered_values_are_replaced_in_bytes_and_text() -> None:
    scrub.register(["sk-unit-abcdefghijkl", "short"])
    assert scrub.scrub_bytes(b'{"m":"key sk-unit-abcdefghijkl!"}') == b'{"m":"key [REDACTED]!"}'
    assert scrub.scrub_text("x sk-unit-abcdefghijkl y") == "x [REDACTED] y"
    # Too short to be a key: replacing it would mangle ordinary text.
    assert scrub.scrub_text("a short text") == "a short text"


def test_a_longer_secret_containing_a_shorter_one_is_replaced_whole() -> None:
    scrub.register(["sk-unit-inner-123", "sk-unit-inner-123-outer"])
    assert scrub.scrub_text("sk-unit-inner-123-outer") == "[REDACTED]"


_KEYS = ("sk-unit-stream-0123456789", "sk-unit-stream-0123456789-longer", "pk-unit-other-xyz")
_PIECES = st.sampled_from(
    [*_KEYS, "sk-", "sk-unit-", "stream", "0123", "data: ", "\n\n", '"}', "s", "k", "-", "x y"]
)


@given(pieces=st.lists(_PIECES, max_size=25), cuts=st.lists(st.integers(0, 400), max_size=8))
def test_a_stream_scrubs_like_its_whole_text_wherever_the_chunks_are_cut(
    pieces: list[str], cuts: list[int]
) -> None:
    scrub.register(_KEYS)
    whole = "".join(pieces).encode()
    bounds = sorted({min(c, len(whole)) for c in cuts} | {0, len(whole)})
    scrubber = scrub.StreamScrubber()
    out = b"".join(scrubber.feed(whole[a:b]) for a, b in itertools.pairwise(bounds))
    out += scrubber.end()
    assert not any(key.encode() in out for key in _KEYS)
    # Only a stream that stops inside a key differs: that start is redacted too.
    if not any(k.startswith(t) for k in _KEYS for t in _tails(whole.decode(), 8)):
        assert out == scrub.scrub_bytes(whole)


def _tails(text: str, shortest: int) -> list[str]:
    return [text[i:] for i in range(len(text) - shortest + 1)]


def test_a_tail_that_cannot_start_a_key_is_not_held_back() -> None:
    scrub.register(_KEYS)
    scrubber = scrub.StreamScrubber()
    assert scrubber.feed(b'data: {"x":"y"}\n\n') == b'data: {"x":"y"}\n\n'
    assert scrubber.feed(b"a sk-unit-str") == b"a "
    assert scrubber.feed(b"eam-0123456789 ok\n\n") == b"[REDACTED] ok\n\n"
    assert scrubber.feed(b"cut off in sk-unit-stream-01") == b"cut off in "
    assert scrubber.end() == b"[REDACTED]"


@given(st.binary(max_size=64) | st.text("ab-\n", max_size=64).map(str.encode),
       st.binary(max_size=6) | st.text("ab-\n", max_size=6).map(str.encode))  # fmt: skip
def test_the_compiled_search_answers_as_in_does(data: bytes, needle: bytes) -> None:
    assert contains(data, needle) == (needle in data)
    assert contains(data + needle, needle) and contains(needle + data, needle)
