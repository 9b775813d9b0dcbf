"""Scrub configured secret values from every byte the sidecar returns or logs.

Why it exists: the sidecar holds provider keys, and providers (or a hostile base URL) can echo a
key back: a 401 body quoting the Authorization header, a debug field, a model told to repeat its
request headers. Nothing the sidecar writes to a client or a log may carry one. Keys are
registered here when a config is resolved; responses, error bodies and log lines pass through
`scrub_bytes`/`scrub_text`, which replace each value with `[REDACTED]`. Keys are long random
tokens made of `[A-Za-z0-9_-]`, so a plain substring replace is exact and keeps JSON valid.

The set only grows (a key rotated out may still be echoed by a slow provider); values shorter
than `MIN_SECRET` characters are not registered because replacing them would mangle ordinary text.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

MIN_SECRET = 8
REDACTED = "[REDACTED]"

_lock = threading.Lock()
_texts: tuple[str, ...] = ()
_bytes: tuple[bytes, ...] = ()


def register(values: Iterable[str]) -> None:
    """Add secret values to scrub from everything the process returns or logs."""
    global _texts, _bytes
    fresh = {v for v in values if len(v) >= MIN_SECRET} - set(_texts)
    if not fresh:
        return
    with _lock:
        # Longest first, so a key that contains another is replaced whole.
        _texts = tuple(sorted({*_texts, *fresh}, key=len, reverse=True))
        _bytes = tuple(t.encode() for t in _texts)


def scrub_bytes(data: bytes) -> bytes:
    for secret in _bytes:
        if secret in data:
            data = data.replace(secret, REDACTED.encode())
    return data


def scrub_text(text: str) -> str:
    for secret in _texts:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


def longest() -> int:
    """Length of the longest registered secret (how much a stream scrubber must hold back)."""
    return len(_texts[0]) if _texts else 0
