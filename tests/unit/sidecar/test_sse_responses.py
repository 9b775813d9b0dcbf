"""The Responses API stream fast path: every stream comes out byte for byte as the full parse
makes it, hostile events included, and the snapshots still repeat exactly what was streamed."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from packgate_sidecar.chain import StreamBlocked
from packgate_sidecar.detect.anonymize import anonymize
from packgate_sidecar.policy import RequestContext
from packgate_sidecar.shapes import RESPONSES, Channel
from packgate_sidecar.sse import StreamRewriter
from packgate_sidecar.sse_wire import UnreadableEvent
from packgate_sidecar.stream_shapes import STREAM_SHAPES, ResponsesStream

from tests.unit.sidecar.test_pii_stream import texts_and_chunks
from tests.unit.sidecar.test_sse import DET, Redacting, Upper, events

COMPACT = {"separators": (",", ":"), "ensure_ascii": False}
ITEM = "msg_68b5ebae5a708196b74b94f22ca8995e0698ecbf1b9f2704"


class Blocking(Upper):
    """Blocks the stream at the first delta holding an `@` (a filter that may block)."""

    def feed(self, channel: Any, text: str) -> str:
        if "@" in text:
            raise StreamBlocked("block", "an @ in the answer")
        return super().feed(channel, text)

    def joinable(self, channel: Any) -> bool:
        return False


class FullParse(ResponsesStream):
    """The reference: every event parsed in full (no plain delta, so no frame either)."""

    plain_events = ()

    def plain_delta(self, block: bytes, at: int) -> tuple[Channel, int, int] | None:
        return None


# How a delta event may differ from OpenAI's layout: the fast path must take only the usual
# ones, and the rest must come out exactly as the full parse makes them (or be refused alike).
VARIANTS = [
    "usual", "usual", "usual", "no event line", "no padding", "no logprobs", "logprobs",
    "null logprobs", "reordered", "spaced", "escaped", "second delta", "second type",
    "leading zero", "big number", "float index", "not utf-8 id", "not utf-8 text",
    "other event name", "event without space", "comment line", "id line", "crlf",
    "error member", "unicode escape key", "refusal", "summary", "reasoning",
    "summary by content index", "text by summary index", "audio transcript",
]  # fmt: skip
# Layouts that still mean "this text on this item's first part".
BENIGN = {
    "usual", "no event line", "no padding", "no logprobs", "logprobs", "null logprobs",
    "reordered", "spaced", "escaped", "other event name", "event without space",
    "comment line", "id line", "crlf",
}  # fmt: skip
# OpenAI's padding is alphanumeric; quotes, escapes, DEL and non-ASCII must not fool it.
pads = st.text(st.sampled_from('aZ09"\\\x7f\né\x00'), max_size=6)


def delta_event(number: int, output: int, text: str, pad: str, variant: str) -> bytes:
    data: dict[str, Any] = {
        "type": "response.output_text.delta", "sequence_number": number,
        "item_id": f"{ITEM}{output}", "output_index": output, "content_index": 0,
        "delta": text, "logprobs": [], "obfuscation": pad,
    }  # fmt: skip
    if variant == "no padding":
        del data["obfuscation"]
    elif variant == "no logprobs":
        del data["logprobs"]
    elif variant == "logprobs":
        data["logprobs"] = [{"token": text, "logprob": -0.1, "top_logprobs": []}]
    elif variant == "null logprobs":
        data["logprobs"] = None
    elif variant == "reordered":
        data = {"delta": data.pop("delta"), **data}
    elif variant == "float index":
        data["output_index"] = float(output)
    elif variant in ("refusal", "reasoning", "summary by content index", "audio transcript"):
        kind = {"summary by content index": "reasoning_summary_text", "reasoning": "reasoning_text",
                "audio transcript": "audio.transcript"}.get(variant, variant)  # fmt: skip
        data["type"] = f"response.{kind}.delta"
    elif variant in ("summary", "text by summary index"):
        if variant == "summary":
            data["type"] = "response.reasoning_summary_text.delta"
            del data["logprobs"]  # OpenAI's summary deltas have none
        data = {k if k != "content_index" else "summary_index": v for k, v in data.items()}
    body = (
        json.dumps(data)
        if variant == "spaced"
        else json.dumps(data, separators=(",", ":"), ensure_ascii=variant != "escaped")
    ).encode()
    if variant == "second delta":
        body = body[:-1] + b',"delta":"x"}'
    elif variant == "second type":
        body = body[:-1] + b',"type":"response.refusal.delta"}'
    elif variant == "leading zero":
        body = body.replace(b'"sequence_number":', b'"sequence_number":0', 1)
    elif variant == "big number":
        body = body.replace(b'"sequence_number":', b'"sequence_number":98765432109876543210', 1)
    elif variant == "not utf-8 id":
        body = body.replace(ITEM.encode(), ITEM.encode() + b"\xff", 1)
    elif variant == "not utf-8 text":
        body = body.replace(b'"delta":"', b'"delta":"\xc3', 1)
    elif variant == "error member":
        body = body[:-1] + b',"error":{"message":"x"}}'
    elif variant == "unicode escape key":
        body = body.replace(b'"delta":', b'"\\u0064elta":', 1)
    name = {"other event name": b"response.refusal.delta"}.get(variant, data["type"].encode())
    head = {
        "no event line": b"",
        "event without space": b"event:" + name + b"\n",
        "comment line": b": ping\nevent: " + name + b"\n",
        "id line": b"event: " + name + b"\nid: 7\n",
    }.get(variant, b"event: " + name + b"\n")
    event = head + b"data: " + body + b"\n\n"
    return event.replace(b"\n", b"\r\n") if variant == "crlf" else event


def named(data: dict[str, Any]) -> bytes:
    return f"event: {data['type']}\ndata: {json.dumps(data, **COMPACT)}\n\n".encode()


def responses_stream(
    answers: list[tuple[str, list[str]]], variants: list[str], pads_: list[str], order: list[int]
) -> bytes:
    """A Responses stream of one message item per answer, the deltas interleaved (`order`
    picks the next item), each delta event in a variant layout, then OpenAI's `.done` events
    and final snapshot repeating the upstream's whole texts."""
    pending = [list(deltas) for _, deltas in answers]
    number, step, out = 0, 0, b""
    for output in range(len(answers)):
        part = {"type": "output_text", "annotations": [], "logprobs": [], "text": ""}
        out += named({"type": "response.content_part.added", "sequence_number": number,
                      "item_id": f"{ITEM}{output}", "output_index": output, "content_index": 0,
                      "part": part})  # fmt: skip
        number += 1
    while any(pending):
        output = order[step % len(order)] % len(answers) if order else 0
        if not pending[output]:
            output = next(i for i, left in enumerate(pending) if left)
        text = pending[output].pop(0)
        variant = variants[step % len(variants)] if variants else "usual"
        pad = pads_[step % len(pads_)] if pads_ else "Qx9"
        out += delta_event(number, output, text, pad, variant)
        number, step = number + 1, step + 1
    items = []
    for output, (text, _) in enumerate(answers):
        where = {"item_id": f"{ITEM}{output}", "output_index": output, "content_index": 0}
        out += named({"type": "response.output_text.done", "sequence_number": number, **where,
                      "text": text, "logprobs": []})  # fmt: skip
        part = {"type": "output_text", "annotations": [], "logprobs": [], "text": text}
        out += named({"type": "response.content_part.done", "sequence_number": number + 1,
                      **where, "part": part})  # fmt: skip
        item = {"id": where["item_id"], "type": "message", "status": "completed",
                "content": [part], "role": "assistant"}  # fmt: skip
        out += named({"type": "response.output_item.done", "sequence_number": number + 2,
                      "output_index": output, "item": item})  # fmt: skip
        items.append(item)
        number += 3
    response = {"id": "resp_1", "object": "response", "status": "completed", "output": items,
                "usage": {"input_tokens": 1, "output_tokens": 2, "total_tokens": 3}}  # fmt: skip
    return out + named({"type": "response.completed", "sequence_number": number,
                        "response": response})  # fmt: skip


def relay(shape: ResponsesStream, policies: Any, chunks: list[bytes]) -> tuple[bytes, Any, int]:
    """What the rewriter sends for `chunks` (fed as forward.py feeds them, the events before
    a block included), how it ended (None, or the refusal's or block's message) and the output
    size it counted."""
    ctx = RequestContext("rid", RESPONSES)
    r = StreamRewriter(shape, policies, ctx)
    out, sent = b"", False
    try:
        for piece in chunks:
            got = r.feed(piece, first=not sent)
            out += got
            if got and not sent:
                sent = True
                out += r.feed(b"")
        out += r.end()
    except UnreadableEvent as refused:
        return out, str(refused), ctx.output_chars
    except StreamBlocked as blocked:
        return out + blocked.partial, blocked.reason, ctx.output_chars
    return out, None, ctx.output_chars


def chunked(stream: bytes, split: int) -> list[bytes]:
    if split:
        return [stream[i : i + split] for i in range(0, len(stream), split)]
    return [event + b"\n\n" for event in stream.split(b"\n\n")[:-1]]  # one event per chunk


@settings(max_examples=200, deadline=None)
@given(
    st.lists(texts_and_chunks(), min_size=1, max_size=2),
    st.lists(st.sampled_from(VARIANTS), max_size=4),
    st.lists(pads),
    st.lists(st.integers(0, 1)),
    st.one_of(st.integers(1, 700), st.just(1 << 30), st.just(0)),
    st.sampled_from(["redact", "upper", "observe", "block"]),
)
def test_responses_streams_come_out_as_the_full_parse_makes_them(
    answers: list[tuple[str, list[str]]],
    variants: list[str],
    pads_: list[str],
    order: list[int],
    split: int,
    policy: str,
) -> None:
    """Byte for byte, in any chunking, with real redaction (held-back text flushed by
    synthesized events), a filter that changes every delta, one that blocks, or only
    observing."""
    stream = responses_stream(answers, variants, pads_, order)
    chunks = chunked(stream, split)

    def policies() -> Any:
        kinds = {"redact": Redacting, "upper": Upper, "observe": lambda: None, "block": Blocking}
        return kinds[policy]()

    fast = relay(STREAM_SHAPES[RESPONSES], policies(), chunks)
    assert fast == relay(FullParse(), policies(), chunks)
    if BENIGN.issuperset(variants):
        # The provider numbered its events 0, 1, 2, ...: so do the events that go out, those
        # the rewriter added for held-back text included (a client may order or de-duplicate
        # events by their number).
        numbers = [event["sequence_number"] for event in events(fast[0]) if event != ":"]
        assert numbers == list(range(len(numbers)))
    if fast[1] is None and policy == "redact" and BENIGN.issuperset(variants):
        # And what the application reads: every snapshot repeats the redacted text streamed.
        texts: dict[int, str] = {}
        for event in events(fast[0]):
            if event["type"] == "response.output_text.delta":
                texts[event["output_index"]] = texts.get(event["output_index"], "") + event["delta"]
            elif event["type"] == "response.output_text.done":
                assert event["text"] == texts.get(event["output_index"], "")
            elif event["type"] == "response.completed":
                for output, item in enumerate(event["response"]["output"]):
                    assert item["content"][0]["text"] == texts.get(output, "")
        for output, (text, _) in enumerate(answers):
            assert texts.get(output, "") == anonymize(text, DET.find(text), "redact")


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("split", [1 << 30, 0])
def test_an_event_after_a_plain_one_is_read_as_the_full_parse_reads_it(
    variant: str, split: int
) -> None:
    """Each layout right after OpenAI's (whose bytes become the frame the next events are
    compared with), in one chunk and one event per chunk."""
    stream = responses_stream(
        [("Mail ann@example.org now", ["Mail ", "ann@exa", "mple.org", " now"])],
        ["usual", variant, "usual", variant],
        ["Qx9", "Zk0Zk0"],
        [],
    )
    chunks = chunked(stream, split)
    for policies in (Redacting, Upper, lambda: None, Blocking):
        fast = relay(STREAM_SHAPES[RESPONSES], policies(), chunks)
        assert fast == relay(FullParse(), policies(), chunks)


KEYS = ["type", "sequence_number", "item_id", "output_index", "content_index", "summary_index",
        "delta", "logprobs", "obfuscation", "error", "text"]  # fmt: skip
# Values of the right type for some member or not.
values = st.one_of(
    st.sampled_from(["response.output_text.delta", "response.refusal.delta",
                     "response.reasoning_summary_text.delta", "response.reasoning_text.delta",
                     "response.output_text.done", "response.audio.delta"]),
    st.integers(-2, 3), st.sampled_from([0.0, 1e20, None, True, [], {}, [{"token": "a"}]]),
    st.text(st.sampled_from('aZ "\\\x00é\x7f'), max_size=4),
)  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from(["output_text", "refusal", "reasoning_summary_text", "reasoning_text"]),
    st.tuples(st.integers(0, 12), st.integers(0, 2), st.integers(0, 2)),
    texts_and_chunks(),
    st.dictionaries(st.sampled_from(KEYS), values, max_size=2),  # members changed or added
    st.sets(st.sampled_from(KEYS), max_size=2),  # members dropped
    st.permutations(KEYS),
    st.booleans(),
)
def test_a_plain_event_is_one_text_delta_whose_splice_is_its_re_encoding(
    kind: str,
    numbers: tuple[int, int, int],
    text: tuple[str, list[str]],
    changed: dict[str, Any],
    dropped: set[str],
    order: list[str],
    reorder: bool,
) -> None:
    """OpenAI's text delta event with members changed, added, dropped or reordered: whatever
    plain_delta answers, parse says the same (one delta, that channel, that text, nothing
    else) and re-encoding the event with another text gives the spliced bytes."""
    number, output, index = numbers
    data: dict[str, Any] = {
        "type": f"response.{kind}.delta", "sequence_number": number, "item_id": ITEM,
        "output_index": output, "summary_index" if "summary" in kind else "content_index": index,
        "delta": text[1][0], "logprobs": [], "obfuscation": "Qx9",
    }  # fmt: skip
    data = {k: v for k, v in {**data, **changed}.items() if k not in dropped}
    if reorder:
        data = {k: data[k] for k in order if k in data}
    block = b"data: " + json.dumps(data, **COMPACT).encode()
    shape = STREAM_SHAPES[RESPONSES]
    fast = shape.plain_delta(block, 6)
    if fast is None:
        return
    obj = json.loads(block[6:])
    parsed = shape.parse(None, obj)
    assert not parsed.closes and not parsed.snapshots and parsed.usage is None
    [(channel, slot)] = parsed.deltas
    assert (channel, block[fast[1] : fast[2]].decode()) == (fast[0], slot.get())
    slot.set('new "text"\n')
    shape.drop_logprobs(obj, channel)
    spliced = block[: fast[1]] + json.dumps(slot.get(), **COMPACT)[1:-1].encode() + block[fast[2] :]
    assert spliced == b"data: " + json.dumps(obj, **COMPACT).encode()


def test_openai_text_deltas_take_the_fast_path() -> None:
    """The event as OpenAI sends it, and without its event line or padding: read without
    parsing; a layout the fast path cannot vouch for is parsed."""
    shape = STREAM_SHAPES[RESPONSES]
    channels = {"refusal": (1, 0, "refusal"), "summary": (1, "summary", 0),
                "reasoning": (1, "reasoning", 0)}  # fmt: skip
    for variant in ("usual", "no event line", "no padding", "no logprobs", *channels):
        block = delta_event(12, 1, "Hello", "japg2KaCkjNsp", variant)[:-2]
        at = block.index(b"data: ") + 6
        channel = channels.get(variant, (1, 0, "text"))
        assert shape.plain_delta(block, at) == (channel, *_span(block, b"Hello")), variant
    for variant in ("logprobs", "null logprobs", "reordered", "spaced", "second delta",
                    "second type", "leading zero", "big number", "float index",
                    "summary by content index", "text by summary index",
                    "audio transcript"):  # fmt: skip
        block = delta_event(12, 1, "Hello", "pad", variant)[:-2]
        assert shape.plain_delta(block, block.index(b"data: ") + 6) is None, variant


def _span(block: bytes, text: bytes) -> tuple[int, int]:
    start = block.index(b'"delta":"') + 9
    assert block.startswith(text, start)
    return start, start + len(text)


@pytest.mark.parametrize("variant", ["not utf-8 id", "not utf-8 text"])
def test_a_text_delta_that_is_not_utf8_is_refused(variant: str) -> None:
    good = delta_event(1, 0, "a", "p", "usual")
    bad = delta_event(2, 0, "b", "p", variant)
    r = StreamRewriter(STREAM_SHAPES[RESPONSES], Upper(), RequestContext("rid", RESPONSES))
    r.feed(good)
    with pytest.raises(UnreadableEvent, match="UTF-8"):
        r.feed(bad)
