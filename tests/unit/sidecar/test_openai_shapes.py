"""Where the text is in OpenAI bodies and streams: every position a policy must see."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from packgate_sidecar import shapes
from packgate_sidecar.shapes import (
    CHAT,
    COMPLETIONS,
    EMBEDDINGS,
    RESPONSES,
    ShapeError,
    request_texts,
    response_texts,
)
from packgate_sidecar.sse import StreamRewriter
from packgate_sidecar.sse_wire import UnreadableEvent, split_events
from packgate_sidecar.stream_shapes import STREAM_SHAPES


def texts(route: str, body: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {slot.path: (slot.role, slot.get()) for slot in request_texts(route, body)}


def test_chat_request_every_role_and_content_form() -> None:
    body = {
        "model": "m",
        "messages": [
            {"role": "system", "content": "sys"},
            {"role": "developer", "content": [{"type": "text", "text": "dev"}]},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "u1"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                    {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
                    {"type": "text", "text": "u2"},
                ],
            },
            {
                "role": "assistant",
                "content": None,
                "refusal": "no",
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "f", "arguments": '{"a": "args"}'},
                    },
                ],
                "function_call": {"name": "g", "arguments": "legacy"},
            },
            {"role": "tool", "tool_call_id": "c1", "content": "tool result"},
            {"role": "tool", "tool_call_id": "c2", "content": [{"type": "text", "text": "tr2"}]},
            {"role": "function", "name": "g", "content": "fn result"},
        ],
        "tools": [{"type": "function", "function": {"name": "f", "description": "tool doc"}}],
        "prediction": {"type": "content", "content": "predicted"},
    }
    assert texts(CHAT, body) == {
        "messages[0].content": ("system", "sys"),
        "messages[1].content[0].text": ("developer", "dev"),
        "messages[2].content[0].text": ("user", "u1"),
        "messages[2].content[3].text": ("user", "u2"),
        "messages[3].refusal": ("assistant", "no"),
        "messages[3].tool_calls[0].function.arguments": ("assistant", '{"a": "args"}'),
        "messages[3].function_call.arguments": ("assistant", "legacy"),
        "messages[4].content": ("tool", "tool result"),
        "messages[5].content[0].text": ("tool", "tr2"),
        "messages[6].content": ("function", "fn result"),
        "messages[6].name": ("function", "g"),
        "prediction.content": ("user", "predicted"),
        "tools[0].type": ("tool_definition", "function"),
        "tools[0].function.name": ("tool_definition", "f"),
        "tools[0].function.description": ("tool_definition", "tool doc"),
    }


def test_rewriting_a_slot_changes_the_body_and_leaves_images_alone() -> None:
    image = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
    body = {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, image]}]}
    for slot in request_texts(CHAT, body):
        slot.set(slot.get().upper())
    assert body["messages"][0]["content"] == [{"type": "text", "text": "A"}, image]


@pytest.mark.parametrize(
    ("route", "body", "param"),
    [
        (CHAT, {"messages": "hello"}, "messages"),
        (CHAT, {}, "messages"),
        (CHAT, {"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        (
            CHAT,
            {"messages": [{"role": "user", "content": [{"type": "video", "v": 1}]}]},
            "messages[0].content[0]",
        ),
        (
            CHAT,
            {"messages": [{"role": "user", "content": [{"type": "text", "text": 1}]}]},
            "messages[0].content[0].text",
        ),
        (CHAT, {"messages": [{"content": "no role"}]}, "messages[0].role"),
        (COMPLETIONS, {"prompt": [1, 2, 3]}, "prompt"),
        (COMPLETIONS, {"prompt": [[1, 2]]}, "prompt"),
        (EMBEDDINGS, {"input": [[1, 2]]}, "input"),
        (RESPONSES, {"input": [{"type": "brand_new_item", "text": "hidden"}]}, "input[0]"),
        (RESPONSES, {"input": [{"role": "user", "content": [{"type": "input_text"}]}]}, None),
        (RESPONSES, {"input": 7}, "input"),
    ],
)
def test_shapes_the_chain_cannot_see_are_refused(
    route: str, body: dict[str, Any], param: str | None
) -> None:
    if param is None:  # a part without its text is fine: there is nothing to hide
        request_texts(route, body)
        return
    with pytest.raises(ShapeError) as raised:
        request_texts(route, body)
    assert raised.value.param == param


def test_completions_and_embeddings_strings_and_lists() -> None:
    assert texts(COMPLETIONS, {"prompt": "p", "suffix": "s"}) == {
        "prompt": ("user", "p"),
        "suffix": ("user", "s"),
    }
    assert texts(COMPLETIONS, {"prompt": ["a", "b"]}) == {
        "prompt[0]": ("user", "a"),
        "prompt[1]": ("user", "b"),
    }
    assert texts(EMBEDDINGS, {"input": "e"}) == {"input": ("user", "e")}
    assert texts(EMBEDDINGS, {"input": ["e1", "e2"]}) == {
        "input[0]": ("user", "e1"),
        "input[1]": ("user", "e2"),
    }


def test_responses_input_string_and_items() -> None:
    assert texts(RESPONSES, {"input": "hi", "instructions": "be nice"}) == {
        "instructions": ("developer", "be nice"),
        "input": ("user", "hi"),
    }
    body = {
        "input": [
            {"role": "user", "content": "easy message"},
            {
                "type": "message",
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "part"},
                    {"type": "input_image", "image_url": "https://example.com/x.png"},
                    {"type": "input_file", "file_id": "file-1"},
                ],
            },
            {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "earlier answer"}],
            },
            {"type": "function_call", "call_id": "c", "name": "f", "arguments": '{"q": 1}'},
            {"type": "function_call_output", "call_id": "c", "output": "result"},
            {
                "type": "function_call_output",
                "call_id": "d",
                "output": [{"type": "input_text", "text": "result part"}],
            },
            {"type": "reasoning", "id": "r", "summary": [{"type": "summary_text", "text": "why"}]},
            {"type": "item_reference", "id": "msg_1"},
        ],
        "tools": [{"type": "function", "name": "f", "description": "does f"}],
    }
    assert texts(RESPONSES, body) == {
        "input[0].content": ("user", "easy message"),
        "input[1].content[0].text": ("user", "part"),
        "input[2].content[0].text": ("assistant", "earlier answer"),
        "input[3].arguments": ("assistant", '{"q": 1}'),
        "input[4].output": ("tool", "result"),
        "input[5].output[0].text": ("tool", "result part"),
        "input[6].summary[0].text": ("assistant", "why"),
        "tools[0].type": ("tool_definition", "function"),
        "tools[0].name": ("tool_definition", "f"),
        "tools[0].description": ("tool_definition", "does f"),
    }


def test_response_bodies() -> None:
    chat = {
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "answer",
                    "tool_calls": [
                        {
                            "id": "c",
                            "type": "function",
                            "function": {"name": "f", "arguments": "{}"},
                        }
                    ],
                },
            },
            {"index": 1, "message": {"role": "assistant", "content": None, "refusal": "nope"}},
        ]
    }
    assert [s.get() for s in response_texts(CHAT, chat)] == ["answer", "{}", "nope"]
    completion = {"choices": [{"index": 0, "text": "done"}]}
    assert [s.get() for s in response_texts(COMPLETIONS, completion)] == ["done"]
    responses = {
        "output": [
            {"type": "reasoning", "summary": [{"type": "summary_text", "text": "thought"}]},
            {
                "type": "message",
                "role": "assistant",
                "content": [
                    {"type": "output_text", "text": "hello", "annotations": []},
                    {"type": "refusal", "refusal": "cannot"},
                ],
            },
            {"type": "function_call", "name": "f", "arguments": '{"x": 1}', "call_id": "c"},
            {"type": "some_future_item", "text": "left alone"},
        ]
    }
    found = [s.get() for s in response_texts(RESPONSES, responses)]
    assert found == ["thought", "hello", "cannot", '{"x": 1}']
    assert response_texts(EMBEDDINGS, {"data": [{"embedding": [0.1]}]}) == []


# --- streams --------------------------------------------------------------------------------


class Upper:
    """Stands in for StreamPolicies: upper-cases every delta, holding nothing back."""

    def __init__(self, hold: int = 0) -> None:
        self.hold = hold
        self.pending: dict[Any, str] = {}
        self.oneshots = 0

    def feed(self, channel: Any, text: str) -> str:
        buffer = self.pending.get(channel, "") + text.upper()
        cut = max(len(buffer) - self.hold, 0)
        self.pending[channel] = buffer[cut:]
        return buffer[:cut]

    def finish(self, channel: Any) -> str:
        return self.pending.pop(channel, "")

    def oneshot(self, text: str) -> str:
        self.oneshots += 1
        return text.upper()

    def open_channels(self) -> list[Any]:
        return list(self.pending)


def _ctx() -> Any:
    from packgate_sidecar.policy import RequestContext

    return RequestContext("rid", CHAT)


def sse(data: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data)}\n\n".encode()


def run_stream(route: str, events: list[bytes], hold: int, split: int = 7) -> list[Any]:
    """Feed `events` in `split`-byte chunks; return the events the client would receive."""
    ctx = _ctx()
    rewriter = StreamRewriter(STREAM_SHAPES[route], Upper(hold), ctx)  # type: ignore[arg-type]
    stream = b"".join(events)
    out = b""
    for start in range(0, len(stream), split):
        out += rewriter.feed(stream[start : start + split])
    out += rewriter.end()
    blocks, rest = split_events(out)
    assert rest == b""
    parsed = []
    for block in blocks:
        data = block.split(b"data: ", 1)[1].decode()
        parsed.append(data if data == "[DONE]" else json.loads(data))
    return parsed


def chat_chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    return sse(
        {
            "id": "c",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
    )


def test_chat_stream_held_back_text_is_flushed_before_the_finish_chunk() -> None:
    events = [
        chat_chunk({"role": "assistant", "content": ""}),
        chat_chunk({"content": "hello "}),
        chat_chunk({"content": "world"}),
        chat_chunk({}, "stop"),
        b"data: [DONE]\n\n",
    ]
    out = run_stream(CHAT, events, hold=4)
    contents = [e["choices"][0]["delta"].get("content") for e in out[:-1] if e["choices"]]
    assert "".join(c or "" for c in contents) == "HELLO WORLD"
    finish_at = next(
        i for i, e in enumerate(out) if e != "[DONE]" and e["choices"][0].get("finish_reason")
    )
    assert "".join(c or "" for c in contents[:finish_at]) == "HELLO WORLD"
    assert out[-1] == "[DONE]"


def test_chat_stream_tool_call_arguments_are_a_channel_of_their_own() -> None:
    events = [
        chat_chunk(
            {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "x",
                        "type": "function",
                        "function": {"name": "f", "arguments": ""},
                    }
                ]
            }
        ),
        chat_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"a": "b'}}]}),
        chat_chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'cd"}'}}]}),
        chat_chunk({}, "tool_calls"),
        b"data: [DONE]\n\n",
    ]
    out = run_stream(CHAT, events, hold=3, split=5)
    arguments = "".join(
        call["function"].get("arguments", "")
        for event in out
        if event != "[DONE]"
        for call in event["choices"][0]["delta"].get("tool_calls", [])
    )
    assert arguments == '{"A": "BCD"}'


def test_completions_stream() -> None:
    def chunk(text: str, finish: str | None = None) -> bytes:
        return sse(
            {
                "id": "x",
                "object": "text_completion",
                "choices": [{"index": 0, "text": text, "finish_reason": finish}],
            }
        )

    out = run_stream(COMPLETIONS, [chunk("abc"), chunk("def"), chunk("", "length")], hold=2)
    assert "".join(e["choices"][0]["text"] for e in out) == "ABCDEF"
    assert out[-1]["choices"][0]["finish_reason"] == "length"


def test_responses_stream_snapshots_repeat_what_was_streamed() -> None:
    item = {
        "id": "m",
        "type": "message",
        "role": "assistant",
        "content": [{"type": "output_text", "text": "hi there"}],
    }
    base = {"item_id": "m", "output_index": 0, "content_index": 0}
    events = [
        sse({"type": "response.created", "response": {"output": []}}, "response.created"),
        sse(
            {
                "type": "response.content_part.added",
                **base,
                "part": {"type": "output_text", "text": ""},
            },
            "response.content_part.added",
        ),
        sse(
            {"type": "response.output_text.delta", **base, "delta": "hi "},
            "response.output_text.delta",
        ),
        sse(
            {"type": "response.output_text.delta", **base, "delta": "there"},
            "response.output_text.delta",
        ),
        sse(
            {"type": "response.output_text.done", **base, "text": "hi there"},
            "response.output_text.done",
        ),
        sse(
            {
                "type": "response.content_part.done",
                **base,
                "part": {"type": "output_text", "text": "hi there"},
            },
            "response.content_part.done",
        ),
        sse(
            {"type": "response.output_item.done", "output_index": 0, "item": item},
            "response.output_item.done",
        ),
        sse(
            {
                "type": "response.completed",
                "response": {"output": [item], "usage": {"input_tokens": 1, "output_tokens": 2}},
            },
            "response.completed",
        ),
    ]
    out = run_stream(RESPONSES, events, hold=3)
    deltas = "".join(e["delta"] for e in out if e["type"] == "response.output_text.delta")
    assert deltas == "HI THERE"
    done = next(e for e in out if e["type"] == "response.output_text.done")
    assert done["text"] == "HI THERE"
    part = next(e for e in out if e["type"] == "response.content_part.done")
    assert part["part"]["text"] == "HI THERE"
    final = next(e for e in out if e["type"] == "response.completed")
    assert final["response"]["output"][0]["content"][0]["text"] == "HI THERE"
    # The flushed tail came as a delta event before `.done`.
    kinds = [e["type"] for e in out]
    assert kinds.index("response.output_text.done") > max(
        i for i, k in enumerate(kinds) if k == "response.output_text.delta"
    )


def test_responses_snapshot_without_deltas_is_filtered_whole() -> None:
    item = {"type": "function_call", "name": "f", "arguments": "secret args"}
    events = [sse({"type": "response.output_item.done", "output_index": 0, "item": item})]
    out = run_stream(RESPONSES, events, hold=0)
    assert out[0]["item"]["arguments"] == "SECRET ARGS"


def test_stream_usage_is_captured_and_unchanged_events_pass_byte_for_byte() -> None:
    ctx = _ctx()
    rewriter = StreamRewriter(STREAM_SHAPES[CHAT], None, ctx)
    usage_chunk = sse({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4}})
    stream = chat_chunk({"content": "abc"}) + b": keep-alive\n\n" + usage_chunk
    # A comment stays a keep-alive, but its text is not passed on.
    expected = stream.replace(b": keep-alive", b":")
    assert rewriter.feed(stream) + rewriter.end() == expected
    assert ctx.usage == {"prompt_tokens": 3, "completion_tokens": 4}
    assert ctx.output_chars == 3


def test_a_stream_event_that_is_not_json_cannot_pass() -> None:
    rewriter = StreamRewriter(STREAM_SHAPES[CHAT], Upper(), _ctx())  # type: ignore[arg-type]
    with pytest.raises(UnreadableEvent):
        rewriter.feed(b"data: {not json\n\n")


def test_crlf_events_are_understood() -> None:
    blocks, rest = split_events(b"data: 1\r\n\r\ndata: 2\r")
    assert blocks == [b"data: 1"]
    blocks, rest = split_events(rest + b"\n\r\n")
    assert blocks == [b"data: 2"] and rest == b""


def test_issue_13_fields_roles_and_files() -> None:
    import base64

    from packgate_sidecar.shapes import DataUrlSlot, KeySlot

    encoded = base64.b64encode(b"note: call me").decode()
    body = {
        "model": "m",
        "messages": [
            {
                "role": "user",
                "name": "n",
                "content": [
                    {"type": "file", "file": {"file_data": f"data:text/plain;base64,{encoded}"}},
                    {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBER"}},
                ],
            }
        ],
        "response_format": {"type": "json_schema", "json_schema": {"schema": {"properties": {}}}},
        "metadata": {"k": "v"},
    }
    slots = request_texts(CHAT, body)
    by_path = {slot.path: slot for slot in slots}
    file_slot = by_path["messages[0].content[0].file.file_data"]
    assert isinstance(file_slot, DataUrlSlot) and file_slot.get() == "note: call me"
    file_slot.set("note: [gone]")
    data = body["messages"][0]["content"][0]["file"]["file_data"]  # type: ignore[index]
    assert base64.b64decode(data.split(",", 1)[1]) == b"note: [gone]"
    assert "messages[0].content[1].file.file_data" not in by_path  # binary: passed
    assert by_path["messages[0].name"].role == "user"
    assert by_path["metadata.k"].role == "metadata"
    key = by_path["metadata.k (key)"]
    assert isinstance(key, KeySlot)
    with pytest.raises(TypeError):
        key.set("other")
    for bad, param in (
        ({"role": "User", "content": "x"}, "messages[0].role"),
        ({"role": "user", "content": "x", "extra": 1}, "messages[0].extra"),
    ):
        with pytest.raises(ShapeError) as caught:
            request_texts(CHAT, {"model": "m", "messages": [bad]})
        assert caught.value.param == param
    with pytest.raises(ShapeError) as caught:
        request_texts(CHAT, {"model": "m", "messages": [], "surprise": 1})
    assert caught.value.param == "surprise"


_VALUES = st.one_of(
    st.none(),
    st.sampled_from(["user", "assistant", "system", "tool", "nobody", ""]),
    st.text(max_size=5),
    st.integers(),
    st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": st.text(max_size=3)})),
    st.dictionaries(st.sampled_from(["arguments", "name"]), st.text(max_size=3), max_size=2),
)
_ROLES = st.sampled_from(["user", "assistant", "system", "developer", "tool", "function", "x"])
_MESSAGES = st.one_of(
    st.dictionaries(
        st.sampled_from(["role", "content", "name", "refusal", "tool_calls", "annotations", "x"]),
        _VALUES,
        max_size=4,
    ),
    # The shape the shortcuts take, and its near misses.
    st.fixed_dictionaries({"role": _ROLES, "content": _VALUES}),
    st.fixed_dictionaries({"role": _ROLES, "content": st.text(max_size=3), "refusal": _VALUES}),
)


def _outcome(build: Any) -> Any:
    try:
        slots = build()
    except ShapeError as exc:
        return ("error", str(exc), exc.param)
    return [(type(s), s.path, s.role, s.key, id(s.parent), s.tokens) for s in slots]


@settings(max_examples=500, deadline=None)
@given(st.lists(st.one_of(_MESSAGES, st.integers(), st.none()), min_size=1, max_size=3))
def test_plain_chat_messages_read_as_by_the_full_rules(messages: list[Any]) -> None:
    """The shortcut for {"role", "content": str} messages yields what the full rules do."""
    body = {"model": "m", "messages": messages}

    def reference() -> list[shapes.TextSlot]:
        out: list[shapes.TextSlot] = []
        for index, message in enumerate(messages):
            shapes._chat_message(out, message, index)
        return out

    assert _outcome(lambda: request_texts(CHAT, body)) == _outcome(reference)


@settings(max_examples=500, deadline=None)
@given(_MESSAGES)
def test_plain_answers_read_as_by_every_spec(message: dict[str, Any]) -> None:
    def reference() -> list[shapes.TextSlot]:
        out: list[shapes.TextSlot] = []
        for spec in shapes._ANSWER_SPECS:
            shapes._walk(out, message, spec, "assistant", "choices[0].message", False)
        return out

    def fast() -> list[shapes.TextSlot]:
        out: list[shapes.TextSlot] = []
        shapes._chat_answer(out, message, "choices[0].message")
        return out

    assert _outcome(fast) == _outcome(reference)
