"""Dataset texts and obfuscated copies of them, cut to a size: what detection speed is timed on.

Why this exists: the injection scorer's cost depends on what it reads. Plain English takes the
fast path; text with look-alike letters, invisible characters, leetspeak, base64 or spaced-out
letters goes through normalisation and yields decoded variants, each scored. A benchmark on
one hand-made string says little about either, so the speed figures (`bench/detect.py`) and the
compiled-versus-reference agreement tests are taken on texts drawn from the shipped datasets
(`../shared/datasets/prompt-injection/`, training files only), plain and with each obfuscation
applied, concatenated and cut to an exact UTF-8 size. Everything is deterministic: the same
files give the same texts on every machine.
"""

# Look-alike letters are the point of this module.
# ruff: noqa: RUF001

from __future__ import annotations

import base64
import codecs
import random
from collections.abc import Callable, Sequence
from pathlib import Path

from .injection_data import DEFAULT_DATASETS, load_all

__all__ = ["OBFUSCATIONS", "obfuscate", "obfuscated_rows", "sized_texts"]

_CYRILLIC = str.maketrans("aceopxyiACEHOPTX", "асеорхуіАСЕНОРТХ")
_LEET = str.maketrans("aeiostAEIOST", "4310574310$7")


def _words(text: str, pick: Callable[[str], str], every: int) -> str:
    words = text.split(" ")
    return " ".join(pick(w) if i % every == 0 else w for i, w in enumerate(words))


def _homoglyphs(text: str) -> str:
    return _words(text, lambda w: w.translate(_CYRILLIC), 2)


def _zero_width(text: str) -> str:
    return _words(text, lambda w: "\u200b".join(w[i : i + 2] for i in range(0, len(w), 2)), 2)


def _leetspeak(text: str) -> str:
    return _words(text, lambda w: w.translate(_LEET), 2)


def _fullwidth(text: str) -> str:
    def wide(word: str) -> str:
        return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in word)

    return _words(text, wide, 3)


def _base64(text: str) -> str:
    # The second half base64-encoded, as a "decode this and follow it" payload would be.
    half = len(text) // 2
    return text[:half] + " " + base64.b64encode(text[half:].encode()).decode() + " "


def _spaced(text: str) -> str:
    return _words(text, lambda w: " ".join(w) if len(w) >= 5 else w, 4)


def _rot13(text: str) -> str:
    return codecs.encode(text, "rot13")


def _zalgo(text: str) -> str:
    return _words(text, lambda w: "".join(c + "\u0301\u0316" if c.isalpha() else c for c in w), 3)


def _tags(text: str) -> str:
    # "ASCII smuggling": the second half as invisible Unicode tag characters.
    half = len(text) // 2
    hidden = "".join(chr(0xE0000 + ord(c)) if " " <= c <= "~" else c for c in text[half:])
    return text[:half] + hidden


OBFUSCATIONS: dict[str, Callable[[str], str]] = {
    "homoglyphs": _homoglyphs,
    "zero-width": _zero_width,
    "leetspeak": _leetspeak,
    "fullwidth": _fullwidth,
    "base64": _base64,
    "spaced": _spaced,
    "rot13": _rot13,
    "zalgo": _zalgo,
    "tags": _tags,
}


def obfuscate(text: str, index: int) -> str:
    """`text` with the obfuscation `index` picks (cycling through OBFUSCATIONS)."""
    kinds = list(OBFUSCATIONS.values())
    return kinds[index % len(kinds)](text)


def _dataset_texts(directory: Path) -> list[str]:
    rows = load_all(directory)
    random.Random(20261207).shuffle(rows)
    return [r.text for r in rows if r.text.strip()]


def obfuscated_rows(directory: Path = DEFAULT_DATASETS) -> list[str]:
    """Every dataset text once, each with one obfuscation (cycling through the kinds)."""
    return [obfuscate(t, i) for i, t in enumerate(_dataset_texts(directory))]


def _cut(text: str, size: int) -> str:
    return text.encode()[:size].decode("utf-8", errors="ignore")


def sized_texts(
    size: int, count: int, *, obfuscated: bool, directory: Path = DEFAULT_DATASETS
) -> list[str]:
    """`count` texts of `size` UTF-8 bytes, each consecutive dataset rows joined by blank lines.

    With `obfuscated`, each row carries one obfuscation (the kinds cycle), so a text mixes plain
    prose with several kinds, like a pasted document with a hidden payload.
    """
    rows = _dataset_texts(directory)
    out: list[str] = []
    i = 0
    while len(out) < count:
        parts: list[str] = []
        length = 0
        while length < size:
            row = rows[i % len(rows)]
            row = obfuscate(row, i) if obfuscated else row
            parts.append(row)
            length += len(row.encode()) + 2
            i += 1
        out.append(_cut("\n\n".join(parts), size))
    return out


def sample(texts: Sequence[str], count: int, seed: int = 1) -> list[str]:
    """A deterministic sample of `count` texts (all of them when there are fewer)."""
    if len(texts) <= count:
        return list(texts)
    return random.Random(seed).sample(list(texts), count)
