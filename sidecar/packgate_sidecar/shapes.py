"""Where the text is in OpenAI request and response bodies (streams: stream_shapes.py).

Why it exists: a policy is only as good as the text it sees. The OpenAI API hides text in many
places (string or content-part message content, tool-call arguments, tool results, /v1/responses
input items, prompt lists). This module is the one place that knows them all, and turns a parsed
body into a list of `TextSlot`s a policy can read and rewrite in place. It is strict on the way
in: a text-bearing position holding a shape it does not know (token arrays, unknown content-part
or input-item types) is a `ShapeError` (HTTP 400), because forwarding text the chain never saw
would let it bypass the policies. On the way out it is lenient: an unknown output item is left
alone rather than failing a paid-for completion.

Every top-level request field and every chat message field is in a table (`*_FIELDS`): scanned
(its strings become slots), passed (it carries no text the model reads; the reason is in
docs/security.md) or, when not in the table, refused with a 400 naming it. A field the model may
read and packgate does not know is therefore never forwarded unchecked. Roles must be exactly one
of the known roles. docs/security.md publishes the whole table.
"""

from __future__ import annotations

import base64
import binascii
import re
from functools import cache
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
    """One string inside a parsed JSON body: who wrote it, where it is, and a way to replace it.

    `tokens` names the object whose `logprobs` spell out this text token by token, and what they
    become once the text changed (null or []): set() drops them then, because a rewrite that
    left them would still hand the client the original text (redacted PII included)."""

    __slots__ = ("key", "parent", "path", "role", "tokens")

    def __init__(self, parent: Any, key: str | int, role: str, path: str) -> None:
        self.parent = parent
        self.key = key
        self.role = role
        self.path = path
        self.tokens: tuple[Json, Any] | None = None

    def get(self) -> str:
        value: str = self.parent[self.key]
        return value

    def set(self, text: str) -> None:
        self._drop_tokens(text)
        self.parent[self.key] = text

    def _drop_tokens(self, text: str) -> None:
        if self.tokens is not None and text != self.get():
            owner, emptied = self.tokens
            if owner.get("logprobs"):
                owner["logprobs"] = emptied

    def __repr__(self) -> str:
        return f"TextSlot({self.path!r}, role={self.role!r})"


class KeySlot(TextSlot):
    """An object key the model reads (a JSON-schema property name, a metadata key). Scanned, but
    not rewritable: renaming a property changes the schema's meaning, so a policy that rewrites
    one fails, and the chain fails closed (the request is blocked)."""

    __slots__ = ()

    def get(self) -> str:
        return str(self.key)

    def set(self, text: str) -> None:
        raise TypeError(f"{self.path}: an object key cannot be rewritten")


# Media types whose bytes are text a model reads; file parts carrying them are decoded and scanned.
_TEXT_MEDIA = re.compile(
    r"text/[\w.+-]+|application/(?:json|xml|x-yaml|yaml|csv|x-ndjson|javascript|x-sh|[\w.-]+\+(?:json|xml))"
)
_DATA_URL = re.compile(r"data:([\w.+-]+/[\w.+-]+)((?:;[\w.+-]+=[\w.+-]+)*)(;base64)?,", re.I)


class DataUrlSlot(TextSlot):
    """The decoded text of a `data:text/...;base64,` file part; set() re-encodes it."""

    __slots__ = ("_text", "prefix")

    def __init__(self, parent: Any, key: str, role: str, path: str, prefix: str, text: str):
        super().__init__(parent, key, role, path)
        self.prefix = prefix
        self._text = text

    def get(self) -> str:
        return self._text

    def set(self, text: str) -> None:
        self._drop_tokens(text)
        self._text = text
        self.parent[self.key] = self.prefix + base64.b64encode(text.encode()).decode()


def _file_data(out: list[TextSlot], part: Json, key: str, role: str, path: str) -> None:
    """A file part's inline data: text media are decoded and scanned; binary media (images,
    PDFs, audio) pass (see docs/security.md); anything unreadable is refused."""
    value = part.get(key)
    where = _join(path, key)
    if value is None:
        return
    if not isinstance(value, str):
        raise ShapeError(f"{where} must be a string", where)
    match = _DATA_URL.match(value)
    if match is None:
        if value.startswith("data:"):
            raise ShapeError(f"{where}: malformed data URL", where)
        return  # raw base64 without a media type: the provider treats it as a binary document
    media, base64_flag = match.group(1).lower(), match.group(3)
    if not _TEXT_MEDIA.fullmatch(media):
        return
    if not base64_flag:
        raise ShapeError(
            f"{where}: a {media} data URL must be base64-encoded so packgate can check its text",
            where,
        )
    try:
        text = base64.b64decode(value[match.end() :], validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise ShapeError(
            f"{where}: the {media} file is not valid base64-encoded UTF-8, so its text could "
            "not be checked by the policy chain",
            where,
        ) from None
    out.append(DataUrlSlot(part, key, role, where, value[: match.end()], text))


# Below these keys, object keys are text too: JSON-schema property names the model reads.
_SCHEMA_KEYS = frozenset({"parameters", "schema", "input_schema", "properties"})


def all_strings(node: Any, role: str, path: str, keys: bool = False) -> list[TextSlot]:
    """Every string in a JSON subtree, iteratively; object keys too where `keys` is set and
    anywhere below a JSON schema (`parameters`, `schema`, ...)."""
    out: list[TextSlot] = []
    stack: list[tuple[Any, str, bool]] = [(node, path, keys)]
    while stack:
        current, where, with_keys = stack.pop()
        items = current.items() if isinstance(current, dict) else enumerate(current)
        for key, value in items:
            child = _join(where, key)
            if with_keys and isinstance(key, str):
                out.append(KeySlot(current, key, role, f"{child} (key)"))
            if isinstance(value, str):
                out.append(TextSlot(current, key, role, child))
            elif isinstance(value, dict | list):
                stack.append((value, child, with_keys or key in _SCHEMA_KEYS))
    return out


def _subtree(out: list[TextSlot], body: Json, key: str, role: str, path: str = "") -> None:
    value = body.get(key)
    where = _join(path, key)
    if isinstance(value, str):
        out.append(TextSlot(body, key, role, where))
    elif isinstance(value, dict | list):
        out.extend(all_strings(value, role, where))


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
        elif kind == "file" and isinstance(part.get("file"), dict):
            _file_data(out, part["file"], "file_data", role, f"{part_path}.file")
            _string(out, part["file"], "filename", role, f"{part_path}.file")
        elif kind == "input_file":
            if part.get("file_url") is not None:
                raise ShapeError(
                    f"{part_path}.file_url: the provider would fetch this file itself, so its "
                    "text could not be checked by the policy chain; send file_data instead",
                    f"{part_path}.file_url",
                )
            _file_data(out, part, "file_data", role, part_path)
            _string(out, part, "filename", role, part_path)


@cache
def _step(spec: str) -> tuple[str, str, bool, bool]:
    """`spec`'s first step: (key, the rest of the spec, content parts accepted, key is an
    array); parsed once per spec, as the same few specs are walked in every request and answer."""
    head, _, rest = spec.partition(".")
    parts_ok = head.endswith("*")
    head = head.rstrip("*")
    if head.endswith("[]"):
        return head[:-2], rest, parts_ok, True
    return head, rest, parts_ok, False


def _walk(out: list[TextSlot], node: Json, spec: str, role: str, path: str, strict: bool) -> None:
    """Collect the strings at `spec` under `node`: dotted keys, `name[]` iterates an array, and a
    trailing `*` accepts a string or an array of content parts."""
    head, rest, parts_ok, array = _step(spec)
    if array:
        name = head
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
        if strict and role not in RESPONSES_ROLES:
            raise _bad_role(role, f"{path}.role", RESPONSES_ROLES)
        if not isinstance(role, str):
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
    """Tool definitions: descriptions, parameter JSON schemas (property names included), custom
    tool grammars, MCP server descriptions. All of it is read by the model."""
    for key in ("tools", "functions"):
        value = body.get(key)
        if value is None:
            continue
        if not isinstance(value, list):
            raise ShapeError(f"{key} must be an array", key)
        out.extend(all_strings(value, "tool_definition", key))


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

CHAT_ROLES = ("system", "developer", "user", "assistant", "tool", "function")
RESPONSES_ROLES = ("user", "assistant", "system", "developer")

# The fields each endpoint accepts. Scanned ones are read by the shape functions below; the
# others carry no text the model reads (numbers, flags, enums, ids, stop sequences): the reason
# for each is in docs/security.md. Anything else is refused.
_COMMON = frozenset({"model", "stream", "stream_options", "user", "metadata", "safety_identifier"})
_SAMPLING = frozenset(
    {
        "temperature",
        "top_p",
        "n",
        "seed",
        "stop",
        "max_tokens",
        "presence_penalty",
        "frequency_penalty",
        "logit_bias",
        "logprobs",
        "top_logprobs",
        "service_tier",
        "store",
        "prompt_cache_key",
        "prompt_cache_retention",
    }
)
REQUEST_FIELDS: dict[str, frozenset[str]] = {
    CHAT: _COMMON
    | _SAMPLING
    | {
        "messages",
        "tools",
        "functions",
        "tool_choice",
        "function_call",
        "parallel_tool_calls",
        "response_format",
        "prediction",
        "max_completion_tokens",
        "modalities",
        "audio",
        "reasoning_effort",
        "verbosity",
        "web_search_options",
    },
    COMPLETIONS: _COMMON | _SAMPLING | {"prompt", "suffix", "echo", "best_of"},
    EMBEDDINGS: _COMMON | {"input", "dimensions", "encoding_format"},
    RESPONSES: _COMMON
    | _SAMPLING
    | {
        "input",
        "instructions",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "max_output_tokens",
        "max_tool_calls",
        "previous_response_id",
        "conversation",
        "prompt",
        "reasoning",
        "text",
        "include",
        "truncation",
        "background",
    },
}
MESSAGE_FIELDS = frozenset(
    {"role", "content", "name", "refusal", "tool_calls", "tool_call_id", "function_call", "audio"}
)


def _known(node: Json, fields: frozenset[str], path: str) -> None:
    if fields.issuperset(node):
        return
    for key in node:
        if key not in fields:
            where = _join(path, key)
            raise ShapeError(
                f"{where}: unknown field; packgate refuses fields it does not know, because the "
                "model might read them and the policy chain would not have checked them",
                where,
            )


def _bad_role(role: Any, where: str, known: tuple[str, ...]) -> ShapeError:
    return ShapeError(
        f"{where}: {role!r} is not a role; use exactly one of {', '.join(known)}", where
    )


def _metadata(out: list[TextSlot], body: Json) -> None:
    """`user`, `safety_identifier` and `metadata`: stored and shown with the conversation, and
    free text an application may fill with end-user data."""
    for key in ("user", "safety_identifier"):
        _string(out, body, key, "metadata", "")
    metadata = body.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise ShapeError("metadata must be an object", "metadata")
        out.extend(all_strings(metadata, "metadata", "metadata", keys=True))


def _chat_message(out: list[TextSlot], message: Any, index: int) -> None:
    """One chat message by the full rules (fields, role, content parts, tool calls)."""
    path = f"messages[{index}]"
    if not isinstance(message, dict):
        raise ShapeError(f"{path} must be an object", path)
    role = message.get("role")
    if role not in CHAT_ROLES:
        raise _bad_role(role, f"{path}.role", CHAT_ROLES)
    _known(message, MESSAGE_FIELDS, path)
    _content(out, message, "content", role, path, CHAT_PARTS)
    _string(out, message, "refusal", role, path)
    _string(out, message, "name", role, path)
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
    if "function_call" in message:  # the legacy form, rarely sent
        _walk(out, message, "function_call.arguments", role, path, True)


_CHAT_ROLE_SET = frozenset(CHAT_ROLES)


def _chat_request(body: Json) -> list[TextSlot]:
    out: list[TextSlot] = []
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise ShapeError("messages is required and must be an array", "messages")
    for index, message in enumerate(messages):
        # Nearly every message is {"role": <a role>, "content": "<text>"}: exactly those two
        # keys, so the full rules would yield just its content; a long conversation pays the
        # full rules per message otherwise (_chat_message, held equal by a property test).
        if type(message) is dict and len(message) == 2:
            role, content = message.get("role"), message.get("content")
            if type(content) is str and type(role) is str and role in _CHAT_ROLE_SET:
                out.append(TextSlot(message, "content", role, f"messages[{index}].content"))
                continue
        _chat_message(out, message, index)
    prediction = body.get("prediction")
    if isinstance(prediction, dict):
        _content(out, prediction, "content", "user", "prediction", CHAT_PARTS)
    _tools(out, body)
    _subtree(out, body, "response_format", "tool_definition")
    _subtree(out, body, "web_search_options", "metadata")
    _metadata(out, body)
    return out


def _completions_request(body: Json) -> list[TextSlot]:
    out: list[TextSlot] = []
    _prompt_list(out, body, "prompt", "user")
    _string(out, body, "suffix", "user", "")
    _metadata(out, body)
    return out


def _embeddings_request(body: Json) -> list[TextSlot]:
    out: list[TextSlot] = []
    _prompt_list(out, body, "input", "user")
    _metadata(out, body)
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
    text = body.get("text")
    if isinstance(text, dict):
        _subtree(out, text, "format", "tool_definition", "text")
    _metadata(out, body)
    return out


REQUEST_SHAPES = {
    CHAT: _chat_request,
    COMPLETIONS: _completions_request,
    EMBEDDINGS: _embeddings_request,
    RESPONSES: _responses_request,
}


def request_texts(route: str, body: Json) -> list[TextSlot]:
    """Every piece of text in a request body the upstream model would read; may raise ShapeError
    (an unknown field, an unknown role, text in a shape the chain cannot see)."""
    _known(body, REQUEST_FIELDS[route], "")
    return REQUEST_SHAPES[route](body)


# --- whole responses ------------------------------------------------------------------------


def choices_of(body: Json) -> list[tuple[int, Json]]:
    choices = body.get("choices")
    if not isinstance(choices, list):
        return []
    return [(i, c) for i, c in enumerate(choices) if isinstance(c, dict)]


# The keys of an answer's message that hold no text or only `content` and `refusal`.
_PLAIN_ANSWER_KEYS = frozenset({"role", "content", "refusal", "annotations"})
_ANSWER_SPECS = (
    "content*",
    "refusal",
    "tool_calls[].function.arguments",
    "tool_calls[].custom.input",
    "function_call.arguments",
    "audio.transcript",
    "reasoning_content",
)


def _chat_answer(out: list[TextSlot], message: Json, path: str) -> None:
    """One answer message's texts: the usual plain message (content and refusal each a string
    or null) directly, anything else by walking every spec (held equal by a property test)."""
    if _PLAIN_ANSWER_KEYS.issuperset(message):
        content, refusal = message.get("content"), message.get("refusal")
        if (content is None or type(content) is str) and (refusal is None or type(refusal) is str):
            if content is not None:
                out.append(TextSlot(message, "content", "assistant", path + ".content"))
            if refusal is not None:
                out.append(TextSlot(message, "refusal", "assistant", path + ".refusal"))
            return
    for spec in _ANSWER_SPECS:
        _walk(out, message, spec, "assistant", path, False)


def _chat_response(body: Json) -> list[TextSlot]:
    out: list[TextSlot] = []
    for index, choice in choices_of(body):
        message = choice.get("message")
        if not isinstance(message, dict):
            continue
        first = len(out)
        _chat_answer(out, message, f"choices[{index}].message")
        # One `logprobs` per choice covers all its texts (as in chat streams): null on any change.
        for slot in out[first:]:
            slot.tokens = (choice, None)
    return out


def _completions_response(body: Json) -> list[TextSlot]:
    out: list[TextSlot] = []
    for index, choice in choices_of(body):
        if isinstance(choice.get("text"), str):
            slot = TextSlot(choice, "text", "assistant", f"choices[{index}].text")
            slot.tokens = (choice, None)
            out.append(slot)
    return out


def _responses_response(body: Json) -> list[TextSlot]:
    out: list[TextSlot] = []
    output = body.get("output")
    if isinstance(output, list):
        for index, item in enumerate(output):
            _response_item(out, item, f"output[{index}]", strict=False)
    for slot in out:
        # An `output_text` part carries the logprobs of its own text ([] once changed, as in
        # streams).
        part = slot.parent
        if slot.key == "text" and isinstance(part, dict) and part.get("type") == "output_text":
            slot.tokens = (part, [])
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
