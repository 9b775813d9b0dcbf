"""The SSE layer: spec-conformant framing, the chat fast path agreeing with the full parse,
first bytes out early, and logprobs that would spell out replaced text dropped."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from packgate_sidecar.detect.anonymize import anonymize
from packgate_sidecar.detect.pii import BUILTIN_ENTITIES, PiiDetector
from packgate_sidecar.detect.pii_stream import StreamRedactor
from packgate_sidecar.policy import RequestContext
from packgate_sidecar.shapes import CHAT, COMPLETIONS, RESPONSES
from packgate_sidecar.sse import StreamRewriter, _shared
from packgate_sidecar.sse_wire import KEEP_ALIVE, UnreadableEvent, split_events
from packgate_sidecar.stream_shapes import STREAM_SHAPES

from tests.unit.sidecar.test_pii_stream import texts_and_chunks

COMPACT = {"separators": (",", ":"), "ensure_ascii": False}
DET = PiiDetector(BUILTIN_ENTITIES)


class Upper:
    """Stream policies stand-in: upper-cases every delta, holds nothing back."""

    def __init__(self) -> None:
        self.fed: list[tuple[Any, str]] = []

    def feed(self, channel: Any, text: str) -> str:
        self.fed.append((channel, text))
        return text.upper()

    def finish(self, channel: Any) -> str:
        return ""

    def oneshot(self, text: str) -> str:
        return text.upper()

    def joinable(self, channel: Any) -> bool:
        return True

    def open_channels(self) -> list[Any]:
        return []


def rewriter(route: str = CHAT, policies: Any = None) -> StreamRewriter:
    return StreamRewriter(STREAM_SHAPES[route], policies, RequestContext("rid", route))


def chunk(choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m", **extra,
            "choices": choices}  # fmt: skip


def events(out: bytes) -> list[Any]:
    blocks, rest = split_events(out)
    assert rest == b""
    parsed = []
    for block in blocks:
        if block.startswith(b":"):
            parsed.append(":")
            continue
        data = block.split(b"data: ", 1)[1].decode()
        parsed.append(data if data == "[DONE]" else json.loads(data))
    return parsed


# --- SSE conformance -------------------------------------------------------------------------


def test_cr_and_crlf_line_ends_even_split_between_chunks() -> None:
    body = json.dumps(chunk([{"index": 0, "delta": {"content": "hi"}}]))
    stream = f"data: {body}\r\n\r\ndata: {body}\r\rdata: [DONE]\r\n\r\n".encode()
    r = rewriter(policies=Upper())
    out = b"".join(r.feed(stream[i : i + 1]) for i in range(len(stream))) + r.end()
    parsed = events(out)
    assert [e["choices"][0]["delta"]["content"] for e in parsed[:2]] == ["HI", "HI"]
    assert parsed[2] == "[DONE]" and r.saw_done


def test_empty_data_and_data_less_blocks_dispatch_nothing() -> None:
    body = json.dumps(chunk([{"index": 0, "delta": {"content": "x"}}]), **COMPACT).encode()
    stream = b"data:\n\ndata: \n\nevent: ping\n\nid: 7\nretry: 10\n\ndata: " + body + b"\n\n"
    r = rewriter(policies=Upper())
    out = r.feed(stream) + r.end()
    assert out == b"data: " + body.replace(b'"x"', b'"X"') + b"\n\n"


def test_comments_stay_keep_alives_without_their_text() -> None:
    body = json.dumps(chunk([{"index": 0, "delta": {"content": "x"}}]), **COMPACT).encode()
    stream = b": jane@example.com is typing\n\n: a\ndata: " + body + b"\nid: 1\n\n"
    out = rewriter().feed(stream)
    assert out == KEEP_ALIVE + b"data: " + body + b"\n\n"
    assert b"jane" not in out


def test_multi_line_data_is_joined_with_newlines() -> None:
    stream = b'data: {"choices":[{"index":0,\ndata: "delta":{"content":"ab"}}]}\n\n'
    out = rewriter(policies=Upper()).feed(stream)
    assert events(out)[0]["choices"][0]["delta"]["content"] == "AB"


# --- first bytes -----------------------------------------------------------------------------


def test_first_returns_after_the_first_event_and_keeps_the_rest() -> None:
    one = json.dumps(chunk([{"index": 0, "delta": {"content": "a"}}]), **COMPACT).encode()
    stream = b"data: " + one + b"\n\n" + b"data: " + one + b"\n\ndata: [DONE]\n\n"
    r = rewriter(policies=Upper())
    first = r.feed(stream, first=True)
    assert first.count(b"data:") == 1
    rest = r.feed(b"")
    assert rest.count(b"data:") == 2 and not r.feed(b"")


def test_the_deltas_of_one_chunk_reach_a_filter_that_cannot_block_as_one_text() -> None:
    pieces = [chunk([{"index": 0, "delta": {"content": p}}]) for p in ("one ", "two ", "three")]
    stream = b"".join(b"data: " + json.dumps(p, **COMPACT).encode() + b"\n\n" for p in pieces)
    policies = Upper()
    out = rewriter(policies=policies).feed(stream)
    assert policies.fed == [((0, "content"), "one two three")]
    # Every event is kept, and together they carry what the filter released.
    assert "".join(e["choices"][0]["delta"]["content"] for e in events(out)) == "ONE TWO THREE"
    assert len(events(out)) == 3


class HoldFirst(Upper):
    """Holds the first delta back and releases it before the next one."""

    def feed(self, channel: Any, text: str) -> str:
        self.fed.append((channel, text))
        return "" if len(self.fed) == 1 else self.fed[0][1] + text if len(self.fed) == 2 else text


def test_text_released_late_is_carried_even_when_the_run_matches_it_so_far() -> None:
    pieces = [chunk([{"index": 0, "delta": {"content": p}}]) for p in ("ab", "ab", "ab")]
    events_ = [b"data: " + json.dumps(p, **COMPACT).encode() + b"\n\n" for p in pieces]
    r = rewriter(policies=HoldFirst())
    out = r.feed(events_[0]) + r.feed(events_[1] + events_[2])
    # The held "ab" comes out with the run "abab" (which starts with it): nothing is lost.
    assert "".join(e["choices"][0]["delta"]["content"] for e in events(out)) == "ababab"
    assert len(events(out)) == 3


class Releasing(Upper):
    """Releases a text the test chose for the first (joined) delta, then passes deltas on."""

    def __init__(self, released: str) -> None:
        super().__init__()
        self.released = released

    def feed(self, channel: Any, text: str) -> str:
        self.fed.append((channel, text))
        return self.released if len(self.fed) == 1 else text


# Texts a frame run carries: no quote, backslash or control character, some not ASCII.
run_texts = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc"),
                                  exclude_characters='"\\'), min_size=1, max_size=5)  # fmt: skip


@st.composite
def released_from(draw: st.DrawFn, whole: str) -> str:
    """What a filter may release for `whole`: a prefix (a held-back tail), text held from
    before and then a prefix, a stretch replaced, or any text at all."""
    cut = draw(st.integers(0, len(whole)))
    other = draw(st.text(max_size=8))
    return draw(st.sampled_from([
        whole[:cut], other + whole[:cut], whole[:cut] + other + whole[cut + 2 :], other,
    ]))  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.data(), st.lists(run_texts, min_size=2, max_size=20),
       st.lists(st.text("aZ09", max_size=16), max_size=12))  # fmt: skip
def test_a_run_carries_what_the_filters_released_as_the_rule_says(
    data: st.DataObject, run: list[str], pads: list[str]
) -> None:
    """The events of a run go out as they came while the released text starts with their
    texts; the first that differs (or the last) carries the rest, the events after it carry
    empty text (and empty padding): checked event by event against that rule spelled out."""

    def event(text: str, pad: str | None) -> bytes:
        extra = {} if pad is None else {"obfuscation": pad}  # OpenAI's last member
        body = json.dumps({**chunk([{"index": 0, "delta": {"content": text}}]), **extra}, **COMPACT)
        return b"data: " + body.encode() + b"\n\n"

    padded = [pads[i % len(pads)] for i in range(len(run))] if pads else [None] * len(run)
    whole = "".join(run)
    released = data.draw(released_from(whole))
    policies = Releasing(released)
    out = rewriter(policies=policies).feed(b"".join(map(event, run, padded)))
    assert policies.fed == [((0, "content"), whole)]  # the run went through as one text
    number = max(i for i in range(len(run)) if released.startswith("".join(run[:i])))
    before = len("".join(run[:number]))
    expected = [event(text, pad) for text, pad in zip(run[:number], padded, strict=False)]
    expected.append(event(released[before:], padded[number]))
    expected += [event("", None if pads == [] else "")] * (len(run) - number - 1)
    assert out == b"".join(expected)


@given(st.text("ab", max_size=40), st.text("ab", max_size=40))
def test_shared_is_the_length_of_the_common_start(first: str, second: str) -> None:
    # The reference: the first position where they differ, character by character.
    pairs = enumerate(zip(first, second, strict=False))
    common = next((i for i, (a, b) in pairs if a != b), None)
    assert _shared(first, second) == (min(len(first), len(second)) if common is None else common)


# --- the chat fast path agrees with the full parse -------------------------------------------

texts = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
deltas = st.fixed_dictionaries(
    {},
    optional={
        "role": st.sampled_from(["assistant", "tool"]),
        "content": texts | st.none(),
        "refusal": texts,
        "audio": st.fixed_dictionaries({"transcript": texts}),
        "tool_calls": st.just([{"index": 0, "function": {"arguments": "{}"}}]),
    },
)
choices = st.builds(
    lambda index, delta, finish, logprobs: {
        "index": index, "delta": delta, "finish_reason": finish, "logprobs": logprobs
    },
    st.integers(0, 2), deltas, st.sampled_from([None, "stop"]),
    st.sampled_from([None, {"content": [{"token": "t", "logprob": -0.1}]}]),
)  # fmt: skip


# The layout the fast path is for, so that a good share of examples reach it.
usual = st.builds(
    lambda content, role: [
        {"index": 0, "delta": {"role": "assistant", "content": content} if role
         else {"content": content}, "finish_reason": None, "logprobs": None}
    ],
    texts, st.booleans(),
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(usual, st.lists(choices, max_size=3)),
    st.sampled_from([None, {"total_tokens": 3}]),
    st.booleans(),
)
def test_fast_path_answers_exactly_as_the_full_parse_or_not_at_all(
    choice_list: list[dict[str, Any]], usage: Any, compact: bool
) -> None:
    data = chunk(choice_list, usage=usage)
    text = json.dumps(data, **COMPACT) if compact else json.dumps(data)
    block = b"data: " + text.encode()
    shape = STREAM_SHAPES[CHAT]
    fast = shape.plain_delta(block, 6)
    if fast is None:
        return
    parsed = shape.parse(None, json.loads(text))
    assert not parsed.closes and parsed.usage is None and not parsed.snapshots
    [(channel, slot)] = parsed.deltas
    assert fast[0] == channel
    assert block[fast[1] : fast[2]].decode() == slot.get()
    # And the rewritten event is the fully re-encoded one.
    slot.set(slot.get().upper())
    spliced = rewriter(policies=Upper())._event(block)
    assert events(spliced)[0] == parsed_data_with(text, slot.get())


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.one_of(usual, st.lists(choices, max_size=2)), st.booleans()),
                min_size=1, max_size=6))  # fmt: skip
def test_events_read_from_the_last_plain_frame_agree_with_the_full_parse(
    stream: list[tuple[list[dict[str, Any]], bool]],
) -> None:
    shape = STREAM_SHAPES[CHAT]
    r = rewriter(policies=Upper())
    for choice_list, compact in stream:
        data = chunk(choice_list)
        text = json.dumps(data, **COMPACT) if compact else json.dumps(data)
        block = b"data: " + text.encode()
        texts = r._frame_events(block + b"\n\n", 0)[0] if r._frame is not None else []
        if texts:  # read as the last plain event's frame around another text
            assert r._frame is not None and len(texts) == 1
            start = len(r._frame[0])
            fast: tuple[Any, int, int] | None = (r._frame[4], start, start + len(texts[0]))
        else:
            fast = r._plain_span(block)
        if fast is None:
            continue
        parsed = shape.parse(None, json.loads(text))
        assert not parsed.closes and parsed.usage is None
        [(channel, slot)] = parsed.deltas
        assert fast[0] == channel and block[fast[1] : fast[2]].decode() == slot.get()


@settings(max_examples=300, deadline=None)
@given(
    usual,
    st.one_of(usual, st.lists(choices, max_size=3)),
    st.booleans(),
    st.lists(st.text(st.sampled_from('aZ09"\\\né\x00'), max_size=6), max_size=2),
)
def test_an_event_alone_in_its_chunk_reads_as_the_full_parse_reads_it(
    before: list[dict[str, Any]],
    choice_list: list[dict[str, Any]],
    compact: bool,
    obfuscation: list[str],
) -> None:
    """The one-event chunk a trickling provider sends, after a plain event set the frame: what
    goes out is what the full parse of that event alone makes of it (every text filtered),
    with or without an `obfuscation` value that differs from the frame event's."""
    dump: Any = (lambda d: json.dumps(d, **COMPACT)) if compact else json.dumps
    pads = {"obfuscation": obfuscation[0]} if obfuscation else {}
    first = b"data: " + dump({**chunk(before), **pads}).encode() + b"\n\n"
    pads = {"obfuscation": obfuscation[-1]} if obfuscation else {}
    event = b"data: " + dump({**chunk(choice_list), **pads}).encode() + b"\n\n"
    framed = rewriter(policies=Upper())
    framed.feed(first)
    fresh = rewriter(policies=Upper())
    fresh._frame = None  # no frame: the event goes through the full parse or the plain path
    assert events(framed.feed(event)) == events(fresh._event(event[:-2]))


def parsed_data_with(text: str, content: str) -> Any:
    data = json.loads(text)
    for choice in data["choices"]:
        if isinstance(choice.get("delta"), dict) and "content" in choice["delta"]:
            choice["delta"]["content"] = content
    return data


def test_usual_openai_chunks_take_the_fast_path() -> None:
    shape = STREAM_SHAPES[CHAT]
    for delta in ({"role": "assistant", "content": ""}, {"content": " Hello"}):
        data = chunk([{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}],
                     usage=None, obfuscation="abc")  # fmt: skip
        block = b"data: " + json.dumps(data, **COMPACT).encode()
        assert shape.plain_delta(block, 6) is not None


# --- stream fields ---------------------------------------------------------------------------


def test_every_choice_and_the_audio_transcript_are_channels() -> None:
    data = chunk(
        [
            {"index": 0, "delta": {"content": "a", "audio": {"transcript": "t0"}}},
            {"index": 1, "delta": {"content": "b", "audio": {"id": "x", "transcript": "t1"}}},
        ]
    )
    policies = Upper()
    out = rewriter(policies=policies).feed(b"data: " + json.dumps(data).encode() + b"\n\n")
    assert {channel for channel, _ in policies.fed} == {(0, "content"), (0, "audio"),
                                                        (1, "content"), (1, "audio")}  # fmt: skip
    got = events(out)[0]["choices"]
    assert [c["delta"]["audio"]["transcript"] for c in got] == ["T0", "T1"]


def test_changed_text_drops_its_logprobs() -> None:
    logprobs = {"content": [{"token": "secret", "logprob": -0.1, "top_logprobs": []}]}
    data = chunk([{"index": 0, "delta": {"content": "secret"}, "logprobs": logprobs}])
    out = rewriter(policies=Upper()).feed(b"data: " + json.dumps(data).encode() + b"\n\n")
    assert events(out)[0]["choices"][0]["logprobs"] is None
    data = {"choices": [{"index": 0, "text": "secret", "logprobs": {"tokens": ["secret"]}}]}
    out = rewriter(COMPLETIONS, Upper()).feed(b"data: " + json.dumps(data).encode() + b"\n\n")
    assert events(out)[0]["choices"][0] == {"index": 0, "text": "SECRET", "logprobs": None}
    event = {"type": "response.output_text.delta", "output_index": 0, "content_index": 0,
             "delta": "secret", "logprobs": [{"token": "secret", "logprob": -0.1}]}  # fmt: skip
    out = rewriter(RESPONSES, Upper()).feed(b"data: " + json.dumps(event).encode() + b"\n\n")
    assert events(out)[0] == {**event, "delta": "SECRET", "logprobs": []}


def test_responses_audio_transcript_deltas_are_filtered() -> None:
    event = {"type": "response.audio.transcript.delta", "delta": "call me", "sequence_number": 3}
    out = rewriter(RESPONSES, Upper()).feed(b"data: " + json.dumps(event).encode() + b"\n\n")
    assert events(out)[0]["delta"] == "CALL ME"


# --- the whole stream path with the real redactor --------------------------------------------


class Redacting:
    """Stream policies with one real StreamRedactor per channel (what pii-detector installs)."""

    def __init__(self) -> None:
        self.channels: dict[Any, StreamRedactor] = {}

    def feed(self, channel: Any, text: str) -> str:
        return self.channels.setdefault(channel, StreamRedactor(DET, "redact")).feed(text)

    def finish(self, channel: Any) -> str:
        redactor = self.channels.pop(channel, None)
        return redactor.flush() if redactor is not None else ""

    def oneshot(self, text: str) -> str:
        return anonymize(text, DET.find(text), "redact")

    def joinable(self, channel: Any) -> bool:
        return True

    def open_channels(self) -> list[Any]:
        return list(self.channels)


@settings(max_examples=150, deadline=None)
@given(
    texts_and_chunks(),
    st.lists(st.booleans(), min_size=1),
    st.one_of(st.integers(1, 400), st.just(1 << 30)),  # or the whole stream in one chunk
)
def test_streamed_answer_equals_redacting_the_whole_answer(
    case: tuple[str, list[str]], compact: list[bool], split: int
) -> None:
    text, deltas = case
    stream = b""
    for number, delta in enumerate(deltas):
        data = chunk([{"index": 0, "delta": {"content": delta}, "finish_reason": None}])
        body = json.dumps(data, **COMPACT) if compact[number % len(compact)] else json.dumps(data)
        stream += b"data: " + body.encode() + b"\n\n"
    stream += (
        b"data: " + json.dumps(chunk([{"index": 0, "delta": {}, "finish_reason": "stop"}])).encode()
    )
    stream += b"\n\ndata: [DONE]\n\n"
    r = rewriter(policies=Redacting())
    out = b"".join(r.feed(stream[i : i + split]) for i in range(0, len(stream), split)) + r.end()
    parsed = events(out)
    assert parsed[-1] == "[DONE]"
    finish = next(i for i, e in enumerate(parsed) if e["choices"][0]["finish_reason"] == "stop")
    got = "".join(e["choices"][0]["delta"].get("content") or "" for e in parsed[:finish])
    assert got == anonymize(text, DET.find(text), "redact")


# OpenAI's padding is alphanumeric; quotes, escapes and non-ASCII must not fool the fast path.
pads = st.text(st.sampled_from('aZ09"\\\né\x00'), max_size=6)


@settings(max_examples=150, deadline=None)
@given(
    texts_and_chunks(),
    texts_and_chunks(),
    st.lists(st.sampled_from(["plain", "other", "logprobs", "tool"]), min_size=1),
    st.one_of(st.integers(1, 700), st.just(1 << 30), st.just(0)),  # 0: one event per chunk
    st.lists(pads),
)
def test_runs_of_frame_events_carry_every_channel_redacted_in_any_chunking(
    first: tuple[str, list[str]],
    second: tuple[str, list[str]],
    kinds: list[str],
    split: int,
    obfuscation: list[str],
) -> None:
    """Two choices' deltas interleaved with events the fast path must not take (logprobs,
    tool call arguments, a third choice), with or without OpenAI's `obfuscation` padding (a
    different value in every event): whether a chunk holds long runs of one frame, frames
    alternating, or one event at a time, each channel's text is the redacted whole."""
    streams = [list(first[1]), list(second[1])]
    stream, number = b"", 0
    while streams[0] or streams[1]:
        kind = kinds[number % len(kinds)]
        index = number % 2 if streams[number % 2] else 1 - number % 2
        choice: dict[str, Any] = {"index": index, "delta": {"content": streams[index].pop(0)}}
        if kind == "other":
            choice["delta"]["role"] = "assistant"
            choice["finish_reason"] = None
        elif kind == "logprobs":
            choice["logprobs"] = {"content": [{"token": "t", "logprob": -0.1}]}
        elif kind == "tool":
            call = {"index": 0, "function": {"arguments": "x"}}
            stream += b"data: " + json.dumps(chunk([{"index": 2, "delta": {"tool_calls": [call]}}]),
                                             **COMPACT).encode() + b"\n\n"  # fmt: skip
        event = chunk([choice])
        if obfuscation:
            event["obfuscation"] = obfuscation[number % len(obfuscation)]
        stream += b"data: " + json.dumps(event, **COMPACT).encode() + b"\n\n"
        number += 1
    stream += b"data: [DONE]\n\n"
    r = rewriter(policies=Redacting())
    if split:
        chunks = [stream[i : i + split] for i in range(0, len(stream), split)]
    else:
        chunks = [event + b"\n\n" for event in stream.split(b"\n\n")[:-1]]
    out = b"".join(r.feed(piece, first=number == 0) for number, piece in enumerate(chunks))
    out += r.end()
    got: dict[Any, str] = {}
    for event in events(out)[:-1]:
        for choice in event["choices"]:
            delta = choice["delta"]
            if "content" in delta:
                got[choice["index"]] = got.get(choice["index"], "") + delta["content"]
            for call in delta.get("tool_calls", []):
                got[2] = got.get(2, "") + call["function"]["arguments"]
    for index, (text, _) in enumerate((first, second)):
        assert got.get(index, "") == anonymize(text, DET.find(text), "redact")
    assert got.get(2, "") == "x" * stream.count(b'"tool_calls"')


@pytest.mark.parametrize("framed", [False, True])
@pytest.mark.parametrize("finish", [None, "stop"])
def test_an_event_that_is_not_utf8_outside_its_text_is_refused(
    framed: bool, finish: str | None
) -> None:
    """Invalid UTF-8 in a field no policy reads (here the model name) would reach the app as
    the provider's bytes: the stream ends instead, on the fast paths as on the full parse."""
    good = chunk([{"index": 0, "delta": {"content": "a"}, "finish_reason": None}])
    bad = json.dumps(chunk([{"index": 0, "delta": {"content": "b"}, "finish_reason": finish}]),
                     **COMPACT).encode().replace(b'"model":"m"', b'"model":"m\xff"')  # fmt: skip
    r = rewriter(policies=Upper())
    if framed:
        r.feed(b"data: " + json.dumps(good, **COMPACT).encode() + b"\n\n")
    with pytest.raises(UnreadableEvent, match="UTF-8"):
        r.feed(b"data: " + bad + b"\n\n")
