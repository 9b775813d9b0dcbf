"""Words for validation errors: what a person should read instead of pydantic's message.

Why apart from `loading`: loading says *where* a problem is (path, line); this module says
*what* it is, in the words of a YAML author ("should be true or false", "unknown key; did you
mean "action"?"), and suggests the key that was meant by walking the models along the path.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic_core import ErrorDetails

from .models import (
    CONFIG_KEY,
    DNS_LABEL,
    DNS_SUBDOMAIN,
    ENTITY_LABEL,
    ENV_NAME,
    TAG_KEY,
    PolicyConfig,
)

Loc = tuple[str | int, ...]

# Which word names the thing a bad enum value was meant to be, by the field that holds it.
_NOUNS = {
    "entities": "entity",
    "chain": "policy kind",
    "categories": "category",
    "action": "action",
    "provider": "provider",
}
_PATTERNS = {
    DNS_LABEL: "must be a DNS label: lowercase letters, digits and '-'",
    DNS_SUBDOMAIN: "must be a DNS subdomain: lowercase letters, digits, '-' and '.'",
    ENV_NAME: "must be an environment variable name",
    ENTITY_LABEL: "must be UPPER_SNAKE_CASE, like EMPLOYEE_ID",
    TAG_KEY: "must be letters, digits, '-', '_' or '.'",
    CONFIG_KEY: "must be letters, digits, '-', '_' or '.'",
}
# pydantic's words for a wrong type, in the words of a YAML author.
_TYPES = {
    "model_type": "should be a mapping (key: value)",
    "dict_type": "should be a mapping (key: value)",
    "list_type": "should be a list",
    "string_type": "should be a string",
    "bool_type": "should be true or false",
    "int_type": "should be a whole number",
    "float_type": "should be a number",
}


def message_for(error: ErrorDetails, loc: Loc) -> str:
    """The words for one pydantic error at `loc` (the path with any "[key]" marker removed)."""
    kind, value, ctx = error["type"], error.get("input"), error.get("ctx") or {}
    if kind == "extra_forbidden":
        return "unknown key" + _suggest(loc)
    if kind == "missing":
        return "required key is missing"
    if kind == "literal_error":
        field_name = next((part for part in reversed(loc) if isinstance(part, str)), "")
        noun = _NOUNS.get(field_name, "value")
        expected = str(ctx.get("expected", "")).replace("'", "").replace(" or ", ", ")
        return f'unknown {noun} "{value}"; expected one of {expected}'
    if kind == "value_error":
        return str(error["msg"]).removeprefix("Value error, ")
    if kind == "string_pattern_mismatch":
        rule = _PATTERNS.get(str(ctx.get("pattern")), f"must match {ctx.get('pattern')}")
        return f"{shown(value)} {rule}"
    if kind in _TYPES:
        return f"{_TYPES[kind]}, got {shown(value)}"
    if kind in ("too_short", "too_long") and isinstance(value, list | dict):
        bound = "at least" if kind == "too_short" else "at most"
        limit = ctx.get("min_length" if kind == "too_short" else "max_length")
        items = "item" if limit == 1 else "items"
        return f"needs {bound} {limit} {items}, got {len(value)}"
    message = str(error["msg"])
    for noun in ("Input ", "String ", "Value "):
        message = message.removeprefix(noun)
    return f"{message}, got {shown(value)}"


def shown(value: object) -> str:
    """A value as the user wrote it, cut short so one long line cannot flood the output."""
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    text = (
        json.dumps(value)
        if isinstance(value, str | int | float | bool) or value is None
        else repr(value)
    )
    return text if len(text) <= 80 else f"{text[:60]}... ({len(text)} characters)"


def _suggest(loc: Loc) -> str:
    """'; did you mean "action"?' for a misspelt key, from the keys the model allows there."""
    allowed = _keys_at(loc[:-1])
    if not allowed or not isinstance(loc[-1], str):
        return ""
    word = _folded(loc[-1])
    distance, best = min((_edits(word, _folded(key)), key) for key in allowed)
    # One slip per four letters: catches actoin, treshold, secretKeyRef; not namespace -> name.
    if distance <= max(1, len(word) // 4):
        return f'; did you mean "{best}"?'
    return f"; expected one of {', '.join(allowed)}"


def _folded(key: str) -> str:
    """secretKeyRef, secret-key-ref and secret_key_ref are one key to a person."""
    return key.lower().replace("-", "").replace("_", "")


def _edits(a: str, b: str) -> int:
    """Insertions, deletions, substitutions and swaps of neighbours that turn a into b."""
    rows = [list(range(len(b) + 1))]
    for i, char_a in enumerate(a, start=1):
        row = [i] + [0] * len(b)
        for j, char_b in enumerate(b, start=1):
            row[j] = min(
                rows[-1][j] + 1,
                row[j - 1] + 1,
                rows[-1][j - 1] + (char_a != char_b),
            )
            if i > 1 and j > 1 and char_a == b[j - 2] and a[i - 2] == char_b:
                row[j] = min(row[j], rows[-2][j - 2] + 1)
        rows.append(row)
    return rows[-1][-1]


def _keys_at(loc: Loc) -> list[str]:
    """The keys allowed in the mapping at `loc`, by walking the models along the path."""
    current: Any = PolicyConfig
    for part in loc:
        current = _unwrap(current)
        if isinstance(part, int):
            args = get_args(current)
            if get_origin(current) is not list or not args:
                return []
            current = args[0]
        elif isinstance(current, type) and issubclass(current, BaseModel):
            fields = {(f.alias or name): f for name, f in current.model_fields.items()}
            if part not in fields:
                return []
            current = fields[part].annotation
        elif get_origin(current) is dict:
            current = get_args(current)[1]
        else:
            return []
    current = _unwrap(current)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return [f.alias or name for name, f in current.model_fields.items()]
    return []


def _unwrap(annotation: Any) -> Any:
    """`X | None` and `Annotated[X, ...]` -> X."""
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin in (Union, UnionType):
            rest = [arg for arg in get_args(annotation) if arg is not type(None)]
            if len(rest) != 1:
                return annotation
            annotation = rest[0]
        else:
            return annotation
