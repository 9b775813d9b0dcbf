"""Scrub configured secret values from every byte the sidecar returns or logs.

Why it exists: the sidecar holds provider keys, and providers (or a hostile base URL) can echo a
key back: a 401 body quoting the Authorization header, a debug field, a model told to repeat its
request headers. Nothing the sidecar writes to a client or a log may carry one. Keys are
registered here when a config is resolved; responses, error bodies and log lines pass through
`scrub_bytes`/`scrub_text`, which replace each value with `[REDACTED]`. Keys are long random
tokens made of `[A-Za-z0-9_-]`, so a plain substring replace is exact and keeps JSON valid.

Every returned byte is searched for every key: `_scrubscan.c` does the search with libc's memmem
(~3x quicker than `in` on a streamed answer), `in` when it is not built.

A stream is scrubbed chunk by chunk, and a chunk boundary can fall inside a key;
`StreamScrubber` holds back a chunk's tail while it could still be the start of one.

The set only grows (a key rotated out may still be echoed by a slow provider); values shorter
than `MIN_SECRET` characters are not registered because replacing them would mangle ordinary text.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable

from . import compiled

MIN_SECRET = 8
REDACTED = "[REDACTED]"

_lock = threading.Lock()
_texts: tuple[str, ...] = ()
_bytes: tuple[bytes, ...] = ()
_alphabet = b""  # every byte some secret contains: a tail without them cannot start one


def register(values: Iterable[str]) -> None:
    """Add secret values to scrub from everything the process returns or logs."""
    global _texts, _bytes, _alphabet
    fresh = {v for v in values if len(v) >= MIN_SECRET} - set(_texts)
    if not fresh:
        return
    with _lock:
        # Longest first, so a key that contains another is replaced whole.
        _texts = tuple(sorted({*_texts, *fresh}, key=len, reverse=True))
        _bytes = tuple(t.encode() for t in _texts)
        _alphabet = bytes(sorted({byte for secret in _bytes for byte in secret}))


def _contains_ref(data: bytes, needle: bytes) -> bool:
    return needle in data


_contains: Callable[[bytes, bytes], bool]
try:
    from ._scrubscan import contains as _contains
except ImportError as exc:  # pragma: no cover - exercised only on a broken install
    _contains = _contains_ref
    compiled.missing("secret search", exc, "bytes are searched with `in`, ~3x slower")


def scrub_bytes(data: bytes) -> bytes:
    for secret in _bytes:
        if _contains(data, secret):
            data = data.replace(secret, REDACTED.encode())
    return data


def scrub_text(text: str) -> str:
    for secret in _texts:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


class StreamScrubber:
    """Scrubs one relayed stream whose chunks may split a secret anywhere.

    A chunk's tail is held back only while it could still be the start of a secret: when it is
    made of secrets' bytes and some secret starts with it. An SSE chunk ends in a newline, which
    no key contains, so the usual cost is one `rstrip` and nothing is delayed.
    """

    __slots__ = ("_held",)

    def __init__(self) -> None:
        self._held = b""

    def feed(self, data: bytes) -> bytes:
        """What of the stream so far may go out, scrubbed; the rest waits for the next bytes."""
        if self._held:
            data, self._held = self._held + data, b""
        if not _bytes:
            return data
        cut = _hold_from(data)
        if cut < len(data):
            data, self._held = data[:cut], data[cut:]
        return scrub_bytes(data)

    def end(self) -> bytes:
        """The held tail once the stream is over. A stream cut off inside a key would still hand
        out its first part, so a held start of a secret that is itself secret-sized goes too."""
        held, self._held = self._held, b""
        cut = _hold_from(held) if _bytes else len(held)
        tail = held[cut:]
        if len(tail) >= MIN_SECRET:
            tail = REDACTED.encode()
        return scrub_bytes(held[:cut]) + tail


def _hold_from(data: bytes) -> int:
    """Where the tail a secret may continue begins (len(data): nothing to hold)."""
    run = len(data) - len(data.rstrip(_alphabet))
    if not run:
        return len(data)
    cut = len(data)
    for start in range(len(data) - min(run, len(_bytes[0]) - 1), len(data)):
        tail = data[start:]
        if any(secret.startswith(tail) for secret in _bytes):
            cut = start
            break
    else:
        return cut
    # A whole secret that reaches past the cut must stay in one piece with the tail.
    moved = True
    while moved:
        moved = False
        for secret in _bytes:
            found = data.find(secret, max(0, cut - len(secret) + 1))
            if -1 < found < cut:
                cut, moved = found, True
    return cut
