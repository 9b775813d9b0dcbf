"""Event numbers of a rewritten Responses stream: an event the rewriter adds for held-back text
takes its place in the numbering, and a text that only looks like a number member keeps its
bytes."""

from __future__ import annotations

import json

from packgate_sidecar.policy import RequestContext
from packgate_sidecar.shapes import RESPONSES
from packgate_sidecar.sse import StreamRewriter
from packgate_sidecar.sse_numbers import number_of, numbered, renumber
from packgate_sidecar.stream_shapes import STREAM_SHAPES

from tests.unit.sidecar.test_sse import Redacting, events
from tests.unit.sidecar.test_sse_responses import delta_event, named


def test_a_number_spelled_inside_a_string_is_not_an_event_number() -> None:
    data = {"type": "x", "sequence_number": 4, "delta": 'say "sequence_number":9 and \\"'}
    event = f"data: {json.dumps(data)}\n\n".encode()
    moved = renumber(event, 3)
    assert json.loads(moved[6:])["sequence_number"] == 7
    assert json.loads(moved[6:])["delta"] == data["delta"]
    assert number_of(numbered(event, 11)) == 11
    assert numbered(b"data: {}\n\n", 11) == b"data: {}\n\n"


def test_text_held_back_when_the_provider_stops_early_goes_out_with_the_next_number() -> None:
    """No `.done` event came: the rewriter's end flushes the held-back tail (a number that may
    still grow into a phone number) as an event numbered after the last one sent."""
    rewriter = StreamRewriter(STREAM_SHAPES[RESPONSES], Redacting(), RequestContext("r", RESPONSES))
    stream = named({"type": "response.created", "sequence_number": 0, "response": {}})
    for number, text in enumerate(["Call me at", " +1 415 555"], start=1):
        stream += delta_event(number, 0, text, "Qx9", "usual")
    out = rewriter.feed(stream) + rewriter.end()
    sent = [event for event in events(out) if event != ":"]
    assert [event["sequence_number"] for event in sent] == [0, 1, 2, 3]
    assert "".join(event.get("delta", "") for event in sent) == "Call me at +1 415 555"
