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
chunk does not hold complete.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

__all__ = ["COMPILED", "frame_texts", "frame_texts_ref"]

# A JSON string's text that cannot end it or escape, and has no character not allowed raw.
PLAIN_TEXT = re.compile(rb'[^"\\\x00-\x1f]*')


def frame_texts_ref(data: bytes, at: int, head: bytes, tail: bytes) -> list[bytes]:
    """The texts of the run of frame events in `data` from `at` (the rule above)."""
    if at < 0 or tail[:1] != b'"':
        raise ValueError("at must be >= 0 and tail must start with a quote")
    texts: list[bytes] = []
    while data.startswith(head, at):
        start = at + len(head)
        end = PLAIN_TEXT.match(data, start).end()  # type: ignore[union-attr]  # `*` always matches
        if not data.startswith(tail + b"\n\n", end):
            break
        texts.append(data[start:end])
        at = end + len(tail) + 2
    return texts


frame_texts: Callable[[bytes, int, bytes, bytes], list[bytes]]
try:
    from ._sseframes import frame_texts

    COMPILED = True
except ImportError as exc:  # pragma: no cover - exercised only on a broken install
    frame_texts = frame_texts_ref
    COMPILED = False
    logging.getLogger("packgate.sse").warning(
        "compiled SSE frame scan unavailable (%s); using the Python reference, which is about "
        "10x slower per streamed chunk: reinstall packgate (pip install .) to build it",
        exc,
    )
