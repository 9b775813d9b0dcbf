"""One reading of a request body: parse strictly, then forward the serialisation of that reading.

Why it exists: a gateway that checks one interpretation of the bytes and forwards the bytes
themselves is open to parser differentials. With `{"messages": [...clean...], "messages":
[...attack...]}` Python keeps the last copy while another parser may keep the first; `NaN`,
lone surrogates and absurd nesting are read differently (or not at all) by different JSON
libraries. So the sidecar refuses every body on which parsers may disagree, and what goes
upstream is always `dumps(the object the chain checked)`, never the client's bytes.

A provider's whole answer is read the same way (forward.py): it is relayed as the provider's own
bytes when no policy rewrote it, so an answer with `"content"` twice would be checked by the
response policies (last copy) while the application's parser might read the first. Such an
answer is refused with a 502 instead of being relayed.

Refused, each with a message naming the problem and where it is:
- a duplicate key in any object;
- `NaN`, `Infinity`, `-Infinity` (not JSON, RFC 8259 section 6), and numbers too large for a
  double (`1e400`: Python reads infinity, other parsers an error or the largest double);
- a lone UTF-16 surrogate in any string or key (`"\\ud800"`): not a Unicode scalar value, so not
  encodable as UTF-8, and parsers replace, keep or reject it differently;
- nesting deeper than `MAX_DEPTH` arrays/objects;
- bytes that are not UTF-8, or not JSON at all.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterator
from typing import Any

import orjson

from . import compiled

# Deeper than any OpenAI request needs (JSON schemas included), far below the recursion limit.
MAX_DEPTH = 64
# An escape that decodes to a UTF-16 surrogate (paired or not).
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89abcdefABCDEF]")


class JsonRefused(ValueError):
    """The body is not one unambiguous JSON document; `code` names the kind of problem."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class _Duplicate(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _Duplicate(key)
            seen.add(key)
    return out


def _constant(name: str) -> Any:
    raise JsonRefused("invalid_json_number", f"{name} is not a JSON number; send a finite number")


def _float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise JsonRefused(
            "invalid_json_number",
            f"The number {text[:40]} is too large for a 64-bit float; send a finite number",
        )
    return value


def loads(raw: bytes, what: str = "The request body") -> Any:
    """Parse `raw` or raise JsonRefused naming what makes it ambiguous; messages name the
    document as `what` (a provider's answer is read as strictly as a client's request).

    Most documents are read by orjson (1 us for a chat body against 6.7 us for the standard
    library with the hooks below) and proven free of duplicate keys, wide integers and deep
    nesting by one compiled pass over the bytes (`_jsonscan.unambiguous`; `_quick_ref` counts
    colons instead where the extension is missing); whatever that cannot prove unambiguous is
    read again by the standard library with the hooks, which also words the error."""
    value = _quick(raw)
    if value is not _UNSURE:
        return value
    return _strict(raw, what)


_UNSURE: Any = object()
# What orjson's reading cannot vouch for: an escape that decodes to a UTF-16 surrogate (checked
# by the tree walk) and an escaped colon (the decoded strings hold a colon the raw bytes do not
# show as one).
_QUICK_UNSURE = re.compile(rb"\\u(?:[dD][89abcdefABCDEF]|003[aA])")
# orjson reads an integer beyond 64 bits as a float; the standard library keeps it exact.
_WIDE = float(2**63)


class _Unsure(Exception):
    """Raised by the walk: nested too deep, or a float that may have been a wide integer."""


def _quick_compiled(raw: bytes) -> Any:
    """orjson's reading of `raw` when `_jsonscan.unambiguous` proves it the strict one, else
    `_UNSURE` (see _jsonscan.c for what it proves)."""
    if not unambiguous(raw, MAX_DEPTH):
        return _UNSURE
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return _UNSURE


def _quick_ref(raw: bytes) -> Any:
    """orjson's reading of `raw` when it is provably the strict one, else `_UNSURE`.

    orjson refuses NaN/Infinity, numbers beyond a double, lone surrogates, invalid UTF-8 and a
    BOM, but keeps the last of duplicate keys silently. Every key is followed by exactly one
    colon outside any string, and a colon inside a string is a colon in its decoded text
    unless written `\\u003a`. So without that escape, every object kept all of its keys
    (no object has a key twice) exactly when the keys plus the colons in the decoded keys and
    strings are all the colons of the document."""
    if _QUICK_UNSURE.search(raw) is not None:
        return _UNSURE
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return _UNSURE
    try:
        counted = value.count(":") if type(value) is str else _keys_and_colons(value, 0)
    except _Unsure:
        return _UNSURE
    return value if counted == raw.count(b":") else _UNSURE


_quick: Callable[[bytes], Any]
try:
    from ._jsonscan import unambiguous

    _quick = _quick_compiled
except ImportError as exc:  # pragma: no cover - exercised only on a broken install
    _quick = _quick_ref
    compiled.missing("JSON scan", exc, "bodies are proven unambiguous in Python, ~2 us more per KB")


def _keys_and_colons(node: Any, depth: int) -> int:
    """Keys in `node` plus the colons in its keys and strings; raises _Unsure below
    MAX_DEPTH (so the recursion stays shallow) and at a float of 2**63 or more, which may have
    been written as an integer."""
    items: Any
    if type(node) is dict:
        count = len(node)
        for key in node:
            if ":" in key:
                count += key.count(":")
        items = node.values()
    elif type(node) is list:
        count = 0
        items = node
    else:
        if type(node) is float and not -_WIDE < node < _WIDE:
            raise _Unsure
        return 0
    if depth >= MAX_DEPTH:
        raise _Unsure
    for child in items:
        kind = type(child)
        if kind is str:
            if ":" in child:
                count += child.count(":")
        elif kind is dict or kind is list or kind is float:
            count += _keys_and_colons(child, depth + 1)
    return count


def _strict(raw: bytes, what: str) -> Any:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise JsonRefused(
            "invalid_encoding", f"{what} is not valid UTF-8 (byte offset {exc.start})"
        ) from None
    try:
        value = json.loads(
            text, object_pairs_hook=_pairs, parse_constant=_constant, parse_float=_float
        )
    except _Duplicate as dup:
        raise JsonRefused(
            "duplicate_key",
            f"{what} has the key {dup.key!r} more than once in one object; send each key once",
        ) from None
    except RecursionError:
        raise _too_deep(what) from None
    except ValueError as exc:
        if isinstance(exc, JsonRefused):
            raise
        raise JsonRefused("invalid_json", f"{what} is not valid JSON: {exc}") from None
    if _may_hide_problems(raw):
        _check_tree(value, what)
    return value


# The standard encoder, built once, for what orjson refuses.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def dumps(value: Any) -> bytes:
    """The bytes forwarded upstream: compact, UTF-8, no NaN (a rewritten body is still JSON).

    orjson writes the same JSON twenty times faster than the standard library (1.5 KB chat
    body: 0.6 us against 12 us, twice per request when a policy rewrote the answer). What it
    refuses is written by the standard encoder, which writes it (integers beyond 64 bits) or
    raises as before (lone surrogates). It would write a non-finite float as `null`; `loads`
    refuses those, and the policies only ever put strings into a body.
    """
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:
        return _ENCODER.encode(value).encode()


def _may_hide_problems(raw: bytes) -> bool:
    """Whether the parsed body needs the tree walk. Strictly decoded UTF-8 holds no surrogate,
    so one can only come from a `\\uD800`-`\\uDFFF` escape; and a document with at most
    MAX_DEPTH brackets cannot nest deeper. Most bodies have neither and skip the walk."""
    return _SURROGATE_ESCAPE.search(raw) is not None or (
        raw.count(b"[") + raw.count(b"{") > MAX_DEPTH
    )


def _too_deep(what: str) -> JsonRefused:
    return JsonRefused(
        "json_too_deep", f"{what} nests arrays/objects deeper than {MAX_DEPTH} levels"
    )


def _children(node: Any) -> Iterator[tuple[str | int, Any]]:
    if isinstance(node, dict):
        return iter(node.items())
    return enumerate(node)


def _check_tree(root: Any, what: str) -> None:
    """Depth and lone surrogates, in one iterative walk (no recursion to exhaust)."""
    stack: list[tuple[Any, str, int]] = [(root, "", 0)]
    while stack:
        node, path, depth = stack.pop()
        if isinstance(node, str):
            _check_string(node, path or "(body)")
            continue
        if not isinstance(node, dict | list):
            continue
        if depth >= MAX_DEPTH:
            raise _too_deep(what)
        for key, child in _children(node):
            if isinstance(key, str):
                where = f"{path}.{key}" if path else key
                _check_string(key, f"a key in {path or '(body)'}")
            else:
                where = f"{path}[{key}]"
            if isinstance(child, dict | list | str):
                stack.append((child, where, depth + 1))


def _check_string(text: str, where: str) -> None:
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise JsonRefused(
            "lone_surrogate",
            f"{where}: lone UTF-16 surrogate \\u{ord(text[exc.start]):04x} at character "
            f"{exc.start}; send valid Unicode",
        ) from None
