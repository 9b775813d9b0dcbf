"""The SSE wire format: event blocks split, read and written as the WHATWG rules say.

Why it exists apart from sse.py: these are the format's rules (line ends, fields, comments,
JSON string content), which the rewriter applies but does not decide; kept here they can be read
and tested without the rewriter's fast paths around them.
"""

from __future__ import annotations

import json
import re
from typing import Any

KEEP_ALIVE = b":\n\n"
# Characters a JSON string must escape.
_JSON_SPECIAL = re.compile(r'["\\\x00-\x1f]')


class UnreadableEvent(ValueError):
    """An upstream event whose data is not a JSON object: it cannot be checked, so not sent."""


def lf(buffer: bytes) -> bytes:
    """`buffer` with its line ends made LF."""
    if b"\r" in buffer:
        # A CR at the very end may be the first half of a CRLF: keep it for the next chunk.
        held = buffer.endswith(b"\r")
        body = buffer[:-1] if held else buffer
        buffer = body.replace(b"\r\n", b"\n").replace(b"\r", b"\n") + (b"\r" if held else b"")
    return buffer


def split_events(buffer: bytes) -> tuple[list[bytes], bytes]:
    """Complete event blocks in `buffer` (line ends made LF) and the incomplete rest."""
    blocks = lf(buffer).split(b"\n\n")
    rest = blocks.pop()
    return [block for block in blocks if block.strip(b"\n")], rest


def parse_block(block: bytes) -> tuple[str | None, str | None]:
    """The `event` name and joined `data` of one event block (None when absent)."""
    event: str | None = None
    data: list[bytes] = []
    for line in block.split(b"\n"):
        if not line or line.startswith(b":"):
            continue
        name, _, value = line.partition(b":")
        if value.startswith(b" "):
            value = value[1:]
        if name == b"data":
            data.append(value)
        elif name == b"event":
            event = value.decode("utf-8", "replace")
    return event, (b"\n".join(data).decode("utf-8") if data else None)


def encode_event(event: str | None, data: Any) -> bytes:
    head = b"event: " + event.encode() + b"\n" if event else b""
    body = json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()
    return head + b"data: " + body + b"\n\n"


def canonical(block: bytes) -> bool:
    """Only `event:`/`data:` lines: safe to pass on as it came (no comment or id text)."""
    if b"\n" not in block:
        return block.startswith((b"data:", b"event:"))
    return all(line.startswith((b"data:", b"event:")) for line in block.split(b"\n"))


def utf8(text: bytes) -> str:
    try:
        return text.decode()
    except UnicodeDecodeError:
        raise UnreadableEvent("upstream sent an event that is not UTF-8") from None


def json_text(text: str) -> bytes:
    """`text` as the content of a JSON string (escaped where JSON requires it)."""
    if _JSON_SPECIAL.search(text):
        return json.dumps(text, ensure_ascii=False)[1:-1].encode()
    return text.encode()


def splice(block: bytes, start: int, end: int, text: str) -> bytes:
    """The event `block` with `text` in place of its JSON string content block[start:end]."""
    return block[:start] + json_text(text) + block[end:] + b"\n\n"


def reframed(event: str | None, data: str) -> bytes:
    head = b"event: " + event.encode() + b"\n" if event else b""
    lines = b"".join(b"data: " + line + b"\n" for line in data.encode().split(b"\n"))
    return head + lines + b"\n"
