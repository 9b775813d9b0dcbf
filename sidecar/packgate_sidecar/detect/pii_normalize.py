"""Normalise text for PII detection and map offsets in the result back to the original.

Why: the detector's patterns are ASCII (`@`, digits, `-`), so the same personal data written with
fullwidth forms (`jane\uff20example.com`), with zero-width or other invisible format
characters inside (`john.doe\u200b@example.com`), or with NUL bytes between the digits would
pass undetected while every reader (and every model) still sees it. So detection runs on a
normalised copy: each character is replaced by its NFKC form, and invisible format characters
(Unicode category Cf: zero-width spaces and joiners, bidi controls, soft hyphens, tag characters)
and C0 control characters other than tab and line breaks are removed.

Redaction must still rewrite the text the user sent, so `Normalized` maps a span found in the
normalised text back to the original: the original span runs from the character that produced
the first normalised character to the one that produced the last, so it covers every invisible
character inside the entity as well.

Normalisation is per character (not whole-string NFKC) so every output character has one source
character; compositions across characters (a letter plus a combining accent) are left alone,
which does not matter for the ASCII-shaped entities detected here. Text that is plain printable
ASCII (almost all traffic) is returned as is, without building a map.
"""

from __future__ import annotations

import re
import unicodedata
from bisect import bisect_right
from functools import lru_cache

# Characters that may change: anything outside printable ASCII, tab and line breaks.
_SPECIAL = re.compile(r"[^\t\n\r\x20-\x7e]")
_KEPT_ASCII = bytes([0x09, 0x0A, 0x0D, *range(0x20, 0x7F)])


def plain(text: str) -> bool:
    """Whether `text` holds no `_SPECIAL` character: ASCII from which deleting the kept bytes
    leaves nothing (one C pass, several times faster than searching for `_SPECIAL`)."""
    return text.isascii() and not text.encode("ascii").translate(None, _KEPT_ASCII)


_DROP_CONTROLS = frozenset(chr(c) for c in [*range(0x09), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F])


@lru_cache(maxsize=4096)
def _replacement(ch: str) -> str:
    if ch in _DROP_CONTROLS or unicodedata.category(ch) == "Cf":
        return ""
    return unicodedata.normalize("NFKC", ch)


class Normalized:
    """The normalised text plus the pieces that map it back to the original.

    `_norm[i]`/`_orig[i]`/`_width[i]` describe piece i: it starts at normalised offset
    `_norm[i]` and original offset `_orig[i]`; width 0 means a run where both advance together,
    width 1 means one original character that became the normalised characters up to the next
    piece.
    """

    __slots__ = ("_norm", "_orig", "_width", "original", "text")

    def __init__(self, original: str) -> None:
        self.original = original
        self._norm: list[int] = []
        self._orig: list[int] = []
        self._width: list[int] = []
        if plain(original):
            self.text = original
            return
        # Decide per distinct character (few, even in long non-Latin text), then visit only the
        # positions of characters that change.
        changes = {}
        for ch in set(original):
            if _SPECIAL.match(ch):
                new = _replacement(ch)
                if new != ch:
                    changes[ch] = new
        if not changes:
            self.text = original
            return
        pattern = re.compile("[" + "".join(map(re.escape, changes)) + "]")
        out: list[str] = []
        norm = done = 0  # normalised length so far; original offset copied up to
        for match in pattern.finditer(original):
            at = match.start()
            new = changes[original[at]]
            if at > done:  # an unchanged run
                self._piece(norm, done, 0)
                out.append(original[done:at])
                norm += at - done
            if new:
                self._piece(norm, at, 1)
                out.append(new)
                norm += len(new)
            done = at + 1
        if not self._norm:
            self.text = original
            return
        if done < len(original):
            self._piece(norm, done, 0)
            out.append(original[done:])
        self.text = "".join(out)

    def _piece(self, norm: int, orig: int, width: int) -> None:
        self._norm.append(norm)
        self._orig.append(orig)
        self._width.append(width)

    @property
    def changed(self) -> bool:
        return bool(self._norm)

    def start(self, position: int) -> int:
        """The original offset of the character that produced normalised `position`."""
        if not self._norm:
            return position
        if position >= len(self.text):
            return len(self.original)
        i = bisect_right(self._norm, position) - 1
        if self._width[i]:
            return self._orig[i]
        return self._orig[i] + position - self._norm[i]

    def span(self, start: int, end: int) -> tuple[int, int]:
        """The original span of the normalised span `start:end` (non-empty)."""
        if not self._norm:
            return start, end
        last = end - 1
        i = bisect_right(self._norm, last) - 1
        stop = self._orig[i] + (1 if self._width[i] else last - self._norm[i] + 1)
        return self.start(start), stop
