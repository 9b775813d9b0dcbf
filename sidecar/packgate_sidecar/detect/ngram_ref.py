"""The pure-Python reference of the compiled scoring core (`_ngramcore.c`), same API.

Why this exists: the C core is what the sidecar runs, but C is easy to get subtly wrong, so the
definition of the hashed model lives here in plain Python, written from the feature *strings*
(the way a reader thinks about them) rather than from the C code's streaming loops. A test scores
every shipped-dataset text with both and requires agreement to 1e-6; the sidecar also falls back
to this module (slowly, with a warning) when the extension was not built. See `injection.py` for
the model-format contract both implement.
"""

from __future__ import annotations

import math
import re
from array import array
from collections.abc import Iterable, Sequence
from itertools import pairwise

from .segments import segments, window_count

__all__ = [
    "FNV_BASIS",
    "CharClasses",
    "Lexicon",
    "Scorer",
    "Translator",
    "count_tokens",
    "features",
    "fmix64",
    "fnv1a",
    "lower",
    "signals",
]

FNV_BASIS = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3
_M64 = (1 << 64) - 1
_WORD = re.compile(r"\w+")
_SENTENCE_END = re.compile(r"[.!?:]\s+|\n+")


def fnv1a(seed: int, text: str) -> int:
    """FNV-1a over the code points of `text` (one code point per step), from state `seed`."""
    h = seed
    for c in text:
        h = ((h ^ ord(c)) * _FNV_PRIME) & _M64
    return h


def fmix64(k: int) -> int:
    """MurmurHash3's 64-bit finaliser: spreads FNV's weak low bits over the whole word."""
    k ^= k >> 33
    k = (k * 0xFF51AFD7ED558CCD) & _M64
    k ^= k >> 33
    k = (k * 0xC4CEB9FE1A85EC53) & _M64
    return k ^ (k >> 33)


def features(lowered: str, char_sizes: Sequence[int]) -> tuple[set[str], set[str], set[str]]:
    """The (words, chars, tail) feature strings of one lower-cased, normalised text.

    words: every token, every pair of adjacent tokens joined by a space, and "^" + the first
    token of each sentence; chars: the character n-grams of " " + " ".join(tokens) + " ";
    tail: the tokens and token pairs of the last sentence when there is more than one.
    """
    tokens = _WORD.findall(lowered)
    words = set(tokens)
    words.update(map(" ".join, pairwise(tokens)))
    sentences = _SENTENCE_END.split(lowered.strip())
    for sentence in sentences:
        first = _WORD.search(sentence)
        if first:
            words.add("^" + first.group(0))
    joined = f" {' '.join(tokens)} "
    chars: set[str] = set()
    for n in char_sizes:
        chars.update(joined[i : i + n] for i in range(len(joined) - n + 1))
    tail: set[str] = set()
    if len(sentences) > 1:
        last = _WORD.findall(sentences[-1])
        tail.update(last)
        tail.update(map(" ".join, pairwise(last)))
    return words, chars, tail


class Scorer:
    """Hashed n-gram features over a float32 weight table (the reference of `_ngramcore`)."""

    def __init__(
        self, weights: array[float], char_sizes: Sequence[int], seeds: tuple[int, int, int]
    ) -> None:
        n = len(weights)
        if weights.typecode != "f" or n < 2 or n & (n - 1):
            raise ValueError("weights must be a float32 buffer whose length is a power of two")
        self.weights = weights
        self.mask = n - 1
        self.char_sizes = tuple(char_sizes)
        self.seeds = seeds

    def _buckets(self, text: str, start: int, end: int | None) -> list[list[int]]:
        groups = features(text[start:end], self.char_sizes)
        out = []
        for seed, members in zip(self.seeds, groups, strict=True):
            out.append(sorted({fmix64(fnv1a(seed, f)) & self.mask for f in members}))
        return out

    def buckets(
        self, text: str, start: int = 0, end: int | None = None
    ) -> tuple[list[int], list[int], list[int]]:
        """Distinct bucket ids of the words, chars and tail groups (sorted here)."""
        words, chars, tail = self._buckets(text, start, end)
        return words, chars, tail

    def logit(self, text: str, start: int = 0, end: int | None = None) -> float:
        """Sum over groups of (sum of distinct buckets' weights) / sqrt(distinct buckets)."""
        z = 0.0
        for group in self._buckets(text, start, end):
            if group:
                z += sum(self.weights[b] for b in group) / math.sqrt(len(group))
        return z

    def max_logit(self, text: str, spans: Sequence[tuple[int, int]]) -> float:
        """The highest `logit(text, start, end)` over `spans`."""
        if not spans:
            raise ValueError("max_logit needs at least one span")
        return max(self.logit(text, start, end) for start, end in spans)

    def pooled_logit(self, text: str, base: str | None = None) -> float:
        """`max_logit(text, segments(text))`: the n-gram part of one lower-cased variant.

        With `base`, the spans that are also spans of `segments(base)` over the same characters
        are left out (-inf when all are): a variant decoded from `base` need not rescore them.
        """
        spans = segments(text)
        if base is not None:
            # A window is matched with a window, a sentence with a sentence (the compiled
            # core's search; by content either would do).
            b_spans = segments(base)
            b_windows = window_count(len(base))
            windows = window_count(len(text))
            parts = (set(b_spans[:b_windows]), set(b_spans[b_windows:]))

            def unchanged(k: int, s: int, e: int) -> bool:
                return (s, e) in parts[k >= windows] and text[s:e] == base[s:e]

            spans = [(s, e) for k, (s, e) in enumerate(spans) if not unchanged(k, s, e)]
            if not spans:
                return -math.inf
        return self.max_logit(text, spans)


class Lexicon:
    """Exact, case-sensitive lookups of \\w+ tokens in a fixed word list.

    An entry ending in "*" is a prefix: `where` reports every token that starts with it
    (`found` and `count` look at the word entries only).
    """

    def __init__(self, words: Iterable[str]) -> None:
        entries = frozenset(words)
        for word in entries:
            key = word[:-1] if len(word) > 1 and word.endswith("*") else word
            if not _WORD.fullmatch(key) or (key != word and len(key) >= 64):
                raise ValueError(f"lexicon entries must be single \\w+ words, got {word!r}")
        self.size = len(entries)
        self.words = frozenset(w for w in entries if not (len(w) > 1 and w.endswith("*")))
        self.prefixes = tuple(sorted(w[:-1] for w in entries - self.words))

    def __len__(self) -> int:
        return self.size

    def found(self, text: str, start: int = 0, end: int | None = None) -> set[str]:
        return set(self.words.intersection(_WORD.findall(text[start:end])))

    def count(self, text: str, start: int = 0, end: int | None = None) -> int:
        return sum(map(self.words.__contains__, _WORD.findall(text[start:end])))

    def where(self, text: str) -> dict[str, list[int]]:
        """Each entry's token start offsets, for the entries that occur."""
        out: dict[str, list[int]] = {}
        for match in _WORD.finditer(text):
            token = match.group(0)
            if token in self.words:
                out.setdefault(token, []).append(match.start())
            for prefix in self.prefixes:
                if token.startswith(prefix):
                    out.setdefault(prefix + "*", []).append(match.start())
        return out


class CharClasses:
    """Which of up to eight character classes (lists of inclusive code point ranges) occur."""

    def __init__(self, classes: Sequence[Sequence[tuple[int, int]]]) -> None:
        if len(classes) > 8:
            raise ValueError("at most 8 character classes")
        self.classes = [tuple(ranges) for ranges in classes]

    def _mask(self, c: str) -> int:
        code = ord(c)
        return sum(
            1 << k
            for k, ranges in enumerate(self.classes)
            if any(lo <= code <= hi for lo, hi in ranges)
        )

    def which(self, text: str) -> int:
        mask = 0
        for c in set(text):
            mask |= self._mask(c)
        return mask

    def tokens(self, text: str, need: int) -> list[tuple[int, int]]:
        return [m.span() for m in _WORD.finditer(text) if self.which(m.group(0)) & need == need]

    def drop_runs(self, text: str, run: int, after: int) -> str:
        out: list[str] = []
        before, dropping = 0, False
        for c in text:
            mask = self._mask(c)
            if mask & run:
                if not before & run:  # a run starts here
                    dropping = bool(before & after)
            else:
                dropping = False
            if not dropping:
                out.append(c)
            before = mask
        return "".join(out)

    def follows(self, text: str, run: int, after: int) -> bool:
        return any(self._mask(c) & run and self._mask(b) & after for b, c in pairwise(text))

    def runs(self, text: str, need: int, gap: int) -> list[tuple[int, int]]:
        out: list[tuple[int, int]] = []
        i = 0
        while i < len(text):
            if not self._mask(text[i]) & need:
                i += 1
                continue
            j = i + 1
            while j < len(text) and self._mask(text[j]) & need:
                j += 1
            start = max(i - 1, 0)
            if out and start - out[-1][1] < gap:
                out[-1] = (out[-1][0], j)
            else:
                out.append((start, j))
            i = j
        return out


class Translator:
    """`str.translate` for a table mapping code points to one character or None."""

    def __init__(self, table: dict[int, str | None]) -> None:
        for key, value in table.items():
            if not (isinstance(key, int) and 0 < key <= 0x10FFFF) or not (
                value is None or (isinstance(value, str) and len(value) == 1)
            ):
                raise ValueError(
                    f"a translation maps a code point > 0 to one character or None, "
                    f"got {key!r}: {value!r}"
                )
        self.table = dict(table)

    def apply_words(self, text: str, classes: CharClasses, need: int) -> str:
        """`apply` inside the tokens with characters of every class in `need`."""
        return self.apply(text, classes.tokens(text, need))

    def apply(self, text: str, spans: Sequence[tuple[int, int]] | None = None) -> str:
        """`text.translate(table)`, only inside `spans` (sorted, disjoint) when given."""
        if spans is None:
            return text.translate(self.table)
        parts: list[str] = []
        last = 0
        for start, end in spans:
            if start < last or start > end or end > len(text):
                raise ValueError(
                    f"spans must be sorted, disjoint and inside the text (length {len(text)}), "
                    f"got [{start}, {end})"
                )
            parts += (text[last:start], text[start:end].translate(self.table))
            last = end
        parts.append(text[last:])
        return "".join(parts)


def lower(text: str) -> str:
    """`text.lower()` (the compiled core's is faster on mostly-ASCII text that is not all ASCII)."""
    return text.lower()


def count_tokens(text: str, length: int) -> int:
    """How many \\w+ tokens of `text` have exactly `length` characters."""
    return sum(len(token) == length for token in _WORD.findall(text))


_B64_RUN = re.compile(r"[A-Za-z0-9+/_-]{16,}={0,2}")
_HEX_RUN = re.compile(r"[0-9A-Fa-f :]+")
_HEX_STRETCH = re.compile(r"[0-9A-Fa-f](?:[ :]?[0-9A-Fa-f]){15}")
_LEET_WORD = re.compile(
    r"(?<![\w@$!|])(?!\d+(?:st|nd|rd|th)\b)(?=[\w@$!|]{3})[\w@$!|]*[013457$][A-Za-z][\w@$!|]*"
)
_MORSE_RUN = re.compile(r"[.\- /]+")
_MORSE_GROUP = re.compile(r"[.\-]+")
# normalize._SPACED ("i g n o r e"): its matches are what the spaced-letters decoder joins.
_SPACED = re.compile(r"(?<!\S)(?:\w[ .\-_*]){4,}\w(?!\S)")

Spans = list[tuple[int, int]]


def signals(text: str) -> tuple[Spans, Spans, Spans, bool, Spans, int]:
    """Where the decoders of `normalize.py` can apply to `text`, plus its ASCII digit count.

    (base64, hex, leet, morse, spaced, digits): the maximal base64-alphabet runs of 16 or more
    with an upper-case letter and a lower-case letter or digit, and up to two `=` of padding
    after them (what `_B64_BLOB` matches and `_decode_b64` accepts); the maximal runs of hex
    digits, spaces and
    colons that hold 16 hex digits with at most one space or colon between neighbours (the only
    places `_HEX_BLOB` can match); the leetspeak words `_LEET_WORD` matches; whether a run of
    dots, dashes, spaces and slashes has 8 or more dot/dash groups; the spans `_SPACED` (spaced
    letters) matches. The base64, hex and Morse signals are necessary conditions of their
    decoders' regexes; the leetspeak and spaced spans are those regexes' matches.
    """
    b64 = [
        m.span()
        for m in _B64_RUN.finditer(text)
        if re.search("[A-Z]", m.group(0)) and re.search("[a-z0-9]", m.group(0))
    ]
    hexa = [m.span() for m in _HEX_RUN.finditer(text) if _HEX_STRETCH.search(m.group(0))]
    morse = any(len(_MORSE_GROUP.findall(run)) >= 8 for run in _MORSE_RUN.findall(text))
    return (
        b64,
        hexa,
        [m.span() for m in _LEET_WORD.finditer(text)],
        morse,
        [m.span() for m in _SPACED.finditer(text)],
        sum(map(text.count, "0123456789")),
    )
