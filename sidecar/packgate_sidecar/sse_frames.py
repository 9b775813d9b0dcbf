"""The texts of a run of stream events that share one frame: the compiled scan or its reference.

Why it exists: an upstream chunk of a streamed chat answer often holds dozens of delta events
that differ only in their text. sse.py reads such a run as the last plain event's bytes before
and after its text (its frame: `head`, `tail`) around other texts. Finding where each text ends
is the per-event byte work of the stream path, so `_sseframes.c` does it in one pass;
`frame_texts_ref` is the same rule event by event in Python, used when the extension is not
built (a checkout used without `pip install`, with a warning once) and by the property test
that holds the two equal.

The rule: from `at` on, each event is `head`, a text without a quote, backslash or control
character (so nothing in it can change the JSON around it), `tail` (which starts with the quote
that closes the text) and a blank line; the run ends at the first event that is not, or that the
chunk does not hold complete. With a `suffix`, each event is `head`, text, `tail`, a value, the
`suffix` and a blank line, the value printable ASCII without a quote or backslash (it is never
decoded): OpenAI ends every chat delta event with an `obfuscation` string of random padding (by
default), so no two events are alike after their text, yet their JSON differs only in two plain
strings. With a `mid`, each event is `head`, a JSON integer (`0` or up to 16 digits without a
leading zero), `mid` and then the text: the Responses API numbers its events (`sequence_number`),
so there the bytes before the text differ from event to event too.

When the filters release other text than a run brought, the run's events go out as they came up to
the one where the released text stops matching theirs: `frame_seek` finds that event, its offset
and the characters before its text in one pass (`frame_seek_ref` says the same in Python).
"""

from __future__ import annotations

import re
from collections.abc import Callable

from . import compiled

__all__ = ["COMPILED", "frame_seek", "frame_seek_ref", "frame_texts", "frame_texts_ref"]

# A JSON string's text that cannot end it or escape, and has no character not allowed raw.
PLAIN_TEXT = re.compile(rb'[^"\\\x00-\x1f]*')
# A varying value: as plain, and ASCII (it is never decoded, so this keeps it valid UTF-8).
PLAIN_VALUE = re.compile(rb'[^"\\\x00-\x1f\x80-\xff]*')
# A varying integer: JSON's spelling (no leading zero), at most 16 digits.
PLAIN_INTEGER = re.compile(rb"0|[1-9][0-9]{0,15}")


def frame_texts_ref(
    data: bytes, at: int, head: bytes, tail: bytes, suffix: bytes, mid: bytes = b""
) -> tuple[list[bytes], int]:
    """The texts of the run of frame events in `data` from `at`, and where the run ends."""
    if at < 0 or tail[:1] != b'"' or suffix[:1] not in (b"", b'"'):
        raise ValueError("at must be >= 0 and tail (and a suffix) must start with a quote")
    if mid[:1].isdigit():
        raise ValueError("mid must not start with a digit")
    texts: list[bytes] = []
    while data.startswith(head, at):
        start = at + len(head)
        if mid:
            number = PLAIN_INTEGER.match(data, start)
            if number is None or not data.startswith(mid, number.end()):
                break
            start = number.end() + len(mid)
        end = PLAIN_TEXT.match(data, start).end()  # type: ignore[union-attr]  # `*` matches
        if not data.startswith(tail, end):
            break
        after = end + len(tail)
        if suffix:
            after = PLAIN_VALUE.match(data, after).end()  # type: ignore[union-attr]
            if not data.startswith(suffix, after):
                break
            after += len(suffix)
        if not data.startswith(b"\n\n", after):
            break
        texts.append(data[start:end])
        at = after + 2
    return texts, at


def frame_seek_ref(
    data: bytes, at: int, count: int, head_len: int, chars: int
) -> tuple[int, int, int]:
    """In the run of `count` frame events at `at` (a head of `head_len` bytes, no `mid`, UTF-8
    texts): the last event whose text starts within the first `chars` characters of the texts
    joined (the first at least, the last at most), the characters before its text, its offset."""
    if at < 0 or count < 1 or head_len < 0:
        raise ValueError("at and head_len must be >= 0, count >= 1")
    before = 0
    for number in range(count):
        start = at + head_len
        end = data.index(b'"', start)  # a plain text ends at its first quote
        length = len(data[start:end].decode())
        if number == count - 1 or before + length > chars:
            return number, before, at
        before += length
        at = data.index(b"\n", end) + 2  # the event's first LF after its text: its blank line
    raise AssertionError("unreachable: the last event returns")


frame_texts: Callable[..., tuple[list[bytes], int]]
frame_seek: Callable[[bytes, int, int, int, int], tuple[int, int, int]]
try:
    from ._sseframes import frame_seek, frame_texts

    COMPILED = True
except ImportError as exc:  # pragma: no cover - exercised only on a broken install
    frame_texts, frame_seek = frame_texts_ref, frame_seek_ref
    COMPILED = False
    compiled.missing("SSE frame scan", exc, "the Python reference runs, ~10x slower per chunk")
