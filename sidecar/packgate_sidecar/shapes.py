"""Where the text is in OpenAI request and response bodies (streams: stream_shapes.py).

Why it exists: a policy is only as good as the text it sees. The OpenAI API hides text in many
places (string or content-part message content, tool-call arguments, tool results, /v1/responses
input items, prompt lists). This module is the one place that knows them all, and turns a parsed
body into a list of `TextSlot`s a policy can read and rewrite in place. It is strict on the way
in: a text-bearing position holding a shape it does not know (token arrays, unknown content-part
or input-item types) is a `ShapeError` (HTTP 400), because forwarding text the chain never saw
would let it bypass the policies. On the way out it is lenient: an unknown output item is left
alone rather than failing a paid-for completion.
"""

from __future__ import annotations

from typing import Any

Json = dict[str, Any]
# Identifies one stream of text inside a streamed response, e.g. (0, "content") for the first
# choice's content or (1, 0, "text") for a Responses output part. Tuples so a prefix names a group.
Channel = tuple[Any, ...]

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
EMBEDDINGS = "/v1/embeddings"
RESPONSES = "/v1/responses"


class ShapeError(ValueError):
    """A request whose text the chain cannot see in full; answered with 400."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class TextSlot:
    """One string inside a parsed JSON body: who wrote it, where it is, and a way to replace it."""

    __slots__ = ("key", "parent", "path", "role")

    def __init__(self, parent: Any, key: str | int, role: str, path: str) -> None:
        self.parent = parent
        self.key = key
        self.role = role
        self.path = path

    def get(self) -> str:
        value: str = self.parent[self.key]
        return value

    def set(self, text: str) -> None:
        self.parent[self.key] = text

    def __repr__(self) -> str:
        return f"TextSlot({self.path!r}, role={self.role!r})"


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def _string(out: list[TextSlot], parent: Json, key: str, role: str, path: str) -> None:
    value = parent.get(key)
    if value is None:
        return
    if not isinstance(value, str):
        where = _join(path, key)
        raise ShapeError(f"{where} must be a string", where)
    out.append(TextSlot(parent, key, role, _join(path, key)))


# Content-part type -> key of its text, or None for parts that carry no text (images, audio,
# files: passed on untouched). A type missing from the table is refused.
CHAT_PARTS: dict[str, str | None] = {
    "text": "text",
    "refusal": "refusal",
    "image_url": None,
    "input_audio": None,
    "file": None,
}
RESPONSES_PARTS: dict[str, str | None] = {
    "input_text": "text",
    "output_text": "text",
    "text": "text",
    "summary_text": "text",
    "reasoning_text": "text",
    "refusal": "refusal",
    "input_image": None,
    "input_file": None,
    "input_audio": None,
}


def _content(
    out: list[TextSlot],
    parent: Json,
    key: str,
    role: str,
    path: str,
    parts: dict[str, str | None],
) -> None:
    value = parent.get(key)
    where = _join(path, key)
    if value is None:
        return
    if isinstance(value, str):
        out.append(TextSlot(parent, key, role, where))
        return
    if not isinstance(value, list):
        raise ShapeError(f"{where} must be a string or an array of content parts", where)
    for index, part in enumerate(value):
        part_path = f"{where}[{index}]"
        if not isinstance(part, dict):
            raise ShapeError(f"{part_path} must be an object", part_path)
        kind = part.get("type")
        if kind not in parts:
            raise ShapeError(
                f"{part_path}: content part type {kind!r} is not supported by packgate, so its "
                "text could not be checked by the policy chain",
                part_path,
            )
        text_key = parts[kind]
        if text_key is not None:
            _string(out, part, text_key, role, part_path)


def _walk(out: list[TextSlot], node: Json, spec: str, role: str, path: str, strict: bool) -> None:
    """Collect the strings at `spec` under `node`: dotted keys, `name[]` iterates an array, and a
    trailing `*` accepts a string or an array of content parts."""
    head, _, rest = spec.partition(".")
    parts_ok = head.endswith("*")
    head = head.rstrip("*")
    if head.endswith("[]"):
        name = head[:-2]
        items = node.get(name)
        if items is None:
            return
        if not isinstance(items, list):
            if strict:
                raise ShapeError(f"{_join(path, name)} must be an array", _join(path, name))
            return
        for index, item in enumerate(items):
            item_path = f"{_join(path, name)}[{index}]"
            if not rest:
                if isinstance(item, str):
                    out.append(TextSlot(items, index, role, item_path))
                elif strict and item is not None:
                    raise ShapeError(f"{item_path} must be a string", item_path)
            elif isinstance(item, dict):
                _walk(out, item, rest, role, item_path, strict)
        return
    if rest:
        child = node.get(head)
        if isinstance(child, dict):
            _walk(out, child, rest, role, _join(path, head), strict)
        return
    value = node.get(head)
    if isinstance(value, str) or value is None:
        _string(out, node, head, role, path)
    elif parts_ok and isinstance(value, list):
        _content(out, node, head, role, path, RESPONSES_PARTS)
    elif strict:
        raise ShapeError(f"{_join(path, head)} must be a string", _join(path, head))


# Responses API items other than messages: (role of the text, where the text is). An input item
# type not listed here is refused; an output item type not listed is left alone.
ITEM_TEXT: dict[str, tuple[str, tuple[str, ...]]] = {
    "function_call": ("assistant", ("arguments",)),
    "function_call_output": ("tool", ("output*",)),
    "custom_tool_call": ("assistant", ("input",)),
    "custom_tool_call_output": ("tool", ("output*",)),
    "reasoning": ("assistant", ("summary[].text", "content[].text")),
    "mcp_call": ("assistant", ("arguments", "output", "error")),
    "mcp_approval_request": ("assistant", ("arguments",)),
    "mcp_approval_response": ("user", ("reason",)),
    "mcp_list_tools": ("tool_definition", ("tools[].description",)),
    "web_search_call": ("assistant", ("action.query",)),
    "file_search_call": ("assistant", ("queries[]", "results[].text")),
    "code_interpreter_call": ("assistant", ("code",)),
    "computer_call": ("assistant", ("action.text",)),
    "computer_call_output": ("tool", ()),
    "local_shell_call": ("assistant", ("action.command[]",)),
    "local_shell_call_output": ("tool", ("output",)),
    "image_generation_call": ("assistant", ()),
    "item_reference": ("user", ()),
}


def _response_item(out: list[TextSlot], item: Any, path: str, strict: bool) -> None:
    if not isinstance(item, dict):
        if strict:
            raise ShapeError(f"{path} must be an object", path)
        return
    kind = item.get("type", "message" if "role" in item else None)
    if kind == "message":
        role = item.get("role")
        if not isinstance(role, str):
            if strict:
                raise ShapeError(f"{path}.role must be a string", f"{path}.role")
            role = "assistant"
        _content(out, item, "content", role, path, RESPONSES_PARTS)
        return
    known = ITEM_TEXT.get(kind) if isinstance(kind, str) else None
    if known is None:
        if strict:
            raise ShapeError(
                f"{path}: input item type {kind!r} is not supported by packgate, so its text "
                "could not be checked by the policy chain",
                path,
            )
        return
    role, specs = known
    for spec in specs:
        _walk(out, item, spec, role, path, strict)


def _tools(out: list[TextSlot], body: Json) -> None:
    tools = body.get("tools")
    if isinstance(tools, list):
        for index, tool in enumerate(tools):
            if not isinstance(tool, dict):
                continue
            path = f"tools[{index}]"
            for holder in ("function", "custom"):
                inner = tool.get(holder)
                if isinstance(inner, dict):
                    _string(out, inner, "description", "tool_definition", f"{path}.{holder}")
            _string(out, tool, "description", "tool_definition", path)
    functions = body.get("functions")
    if isinstance(functions, list):
        for index, function in enumerate(functions):
            if isinstance(function, dict):
                _string(out, function, "description", "tool_definition", f"functions[{index}]")


def _prompt_list(out: list[TextSlot], body: Json, key: str, role: str) -> None:
    value = body.get(key)
    if value is None or isinstance(value, str):
        _string(out, body, key, role, "")
        return
    if not isinstance(value, list):
        raise ShapeError(f"{key} must be a string or an array of strings", key)
    for index, item in enumerate(value):
        if isinstance(item, str):
            out.append(TextSlot(value, index, role, f"{key}[{index}]"))
        elif isinstance(item, int | list):
            raise ShapeError(
                f"{key}[{index}]: token arrays are not supported by packgate because the policy "
                "chain cannot check them; send text",
                key,
            )
        else:
            raise ShapeError(f"{key}[{index}] must be a string", key)


# --- requests -------------------------------------------------------------------------------


def _chat_request(body: Json) -> list[TextSlot]:
    out: list[TextSlot] = []
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise ShapeError("messages is required and must be an array", "messages")
    for index, message in enumerate(messages):
        path = f"messages[{index}]"
        if not isinstance(message, dict):
            raise ShapeError(f"{path} must be an object", path)
        role = message.get("role")
        if not isinstance(role, str):
            raise ShapeError(f"{path}.role must be a string", f"{path}.role")
        _content(out, message, "content", role, path, CHAT_PARTS)
        _string(out, message, "refusal", role, path)
        calls = message.get("tool_calls")
        if calls is not None:
            if not isinstance(calls, list):
                raise ShapeError(f"{path}.tool_calls must be an array", f"{path}.tool_calls")
            for number, call in enumerate(calls):
                call_path = f"{path}.tool_calls[{number}]"
                if not isinstance(call, dict):
                    raise ShapeError(f"{call_path} must be an object", call_path)
                _walk(out, call, "function.arguments", role, call_path, True)
                _walk(out, call, "custom.input", role, call_path, True)
        _walk(out, message, "function_call.arguments", role, path, True)
    prediction = body.get("prediction")
    if isinstance(prediction, dict):
        _content(out, prediction, "content", "user", "prediction", CHAT_PARTS)
    _tools(out, body)
    return out


def _completions_request(body: Json) -> list[TextSlot]:
    out: list[TextSlot] = []
    _prompt_list(out, body, "prompt", "user")
    _string(out, body, "suffix", "user", "")
    return out


def _embeddings_request(body: Json) -> list[TextSlot]:
    out: list[TextSlot] = []
    _prompt_list(out, body, "input", "user")
    return out


def _responses_request(body: Json) -> list[TextSlot]:
    out: list[TextSlot] = []
    _string(out, body, "instructions", "developer", "")
    value = body.get("input")
    if isinstance(value, str):
        out.append(TextSlot(body, "input", "user", "input"))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _response_item(out, item, f"input[{index}]", strict=True)
    elif value is not None:
        raise ShapeError("input must be a string or an array of input items", "input")
    prompt = body.get("prompt")
    if isinstance(prompt, dict) and isinstance(prompt.get("variables"), dict):
        variables = prompt["variables"]
        for name, variable in variables.items():
            path = f"prompt.variables.{name}"
            if isinstance(variable, str):
                out.append(TextSlot(variables, name, "user", path))
            elif isinstance(variable, dict):
                _content(out, {"v": [variable]}, "v", "user", path, RESPONSES_PARTS)
    _tools(out, body)
    return out


REQUEST_SHAPES = {
    CHAT: _chat_request,
    COMPLETIONS: _completions_request,
    EMBEDDINGS: _embeddings_request,
    RESPONSES: _responses_request,
}


def request_texts(route: str, body: Json) -> list[TextSlot]:
    """Every piece of text in a request body the upstream model would read; may raise ShapeError."""
    return REQUEST_SHAPES[route](body)


# --- whole responses ------------------------------------------------------------------------


def choices_of(body: Json) -> list[tuple[int, Json]]:
    choices = body.get("choices")
    if not isinstance(choices, list):
        return []
    return [(i, c) for i, c in enumerate(choices) if isinstance(c, dict)]


def _chat_response(body: Json) -> list[TextSlot]:
    out: list[TextSlot] = []
    for index, choice in choices_of(body):
        message = choice.get("message")
        if not isinstance(message, dict):
            continue
        path = f"choices[{index}].message"
        for spec in (
            "content*",
            "refusal",
            "tool_calls[].function.arguments",
            "tool_calls[].custom.input",
            "function_call.arguments",
            "audio.transcript",
            "reasoning_content",
        ):
            _walk(out, message, spec, "assistant", path, False)
    return out


def _completions_response(body: Json) -> list[TextSlot]:
    out: list[TextSlot] = []
    for index, choice in choices_of(body):
        if isinstance(choice.get("text"), str):
            out.append(TextSlot(choice, "text", "assistant", f"choices[{index}].text"))
    return out


def _responses_response(body: Json) -> list[TextSlot]:
    out: list[TextSlot] = []
    output = body.get("output")
    if isinstance(output, list):
        for index, item in enumerate(output):
            _response_item(out, item, f"output[{index}]", strict=False)
    return out


RESPONSE_SHAPES = {
    CHAT: _chat_response,
    COMPLETIONS: _completions_response,
    EMBEDDINGS: lambda body: [],
    RESPONSES: _responses_response,
}


def response_texts(route: str, body: Json) -> list[TextSlot]:
    """Every piece of model-written text in a (non-streamed) response body."""
    return RESPONSE_SHAPES[route](body)
