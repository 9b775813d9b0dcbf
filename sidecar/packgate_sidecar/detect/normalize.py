"""Text normalisation that undoes cheap obfuscation before a detector looks at a prompt.

Why this exists: attackers hide instructions from keyword and n-gram detectors with tricks that
cost them nothing — full-width or mathematical letters, zero-width and bidirectional control
characters, Cyrillic/Greek look-alike letters, invisible Unicode "tag" characters, base64/hex
blobs, rot13, leetspeak and s p a c e d letters. `normalize` folds the character-level tricks
into plain text; `variants` additionally returns decoded readings of the encoding tricks so a
detector can score each reading and keep the worst. Both are pure and cheap: plain ASCII prompts
take a fast path, and a decoded variant is produced only when the text shows a sign of that
encoding, so ordinary prompts yield a single variant. The per-character work runs in the
compiled core (`ngram.py`): one pass says which character classes a prompt holds
(`CharClasses`), tables apply with `Translator`, and `signals` finds the blobs to decode.
"""

# The look-alike letters below are the point of this module.
# ruff: noqa: RUF001, RUF003

from __future__ import annotations

import base64
import binascii
import codecs
import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from functools import cache
from urllib.parse import unquote

from .ngram import CharClasses, Lexicon, Translator, count_tokens, lower, signals

__all__ = ["iter_lowered_variants", "iter_variants", "normalize", "variants", "warm_up"]

# Zero-width characters, soft hyphen, word joiners, BOM, Mongolian vowel separator, variation
# selectors and bidirectional controls: invisible, so they only ever serve to split a keyword.
_INVISIBLE = [
    *(0x00AD, 0x034F, 0x061C, 0x115F, 0x1160, 0x17B4, 0x17B5, 0x180E, 0x3164, 0xFEFF, 0xFFA0),
    *range(0x200B, 0x2010),  # ZWSP, ZWNJ, ZWJ, LRM, RLM
    *range(0x202A, 0x202F),  # LRE, RLE, PDF, LRO, RLO
    *range(0x2060, 0x2070),  # word joiner, invisible operators, LRI/RLI/FSI/PDI, ...
    *range(0xFE00, 0xFE10),  # variation selectors
    *range(0xE0100, 0xE01F0),  # variation selectors supplement
    0xE0001,  # language tag
    0xE007F,  # cancel tag
]
_TABLE: dict[int, str | None] = dict.fromkeys(_INVISIBLE)
# Unicode tag characters mirror ASCII and render as nothing ("ASCII smuggling"): read them as
# the ASCII they encode instead of dropping them, so the hidden instruction becomes visible.
_TABLE.update({0xE0000 + c: chr(c) for c in range(0x20, 0x7F)})
# Full-width ASCII ("ｉｇｎｏｒｅ") is what NFKC makes of it, read by the table instead: NFKC
# composes the compatibility decomposition (NFKD), and a character whose NFKD is one character
# gives the same NFKD as that character, so this changes no result, only spares NFKC the
# stretches (unicodedata costs ~15 ns a character on them, the table ~1).
_TABLE.update({c: unicodedata.normalize("NFKD", chr(c)) for c in range(0xFF01, 0xFF5F)})
_UNTABLE = Translator(_TABLE)  # str.translate, compiled: a dict table costs ~100 ns a character


# Cyrillic and Greek letters that render like Latin ones. Applied only to words that are not
# genuinely Cyrillic/Greek (see _fold_homoglyphs), so Russian or Greek text keeps its meaning.
_HOMOGLYPHS: dict[str, str] = {
    # Cyrillic lower case
    "а": "a", "в": "b", "е": "e", "ё": "e", "к": "k", "м": "m", "н": "h", "о": "o", "р": "p",
    "с": "c", "т": "t", "у": "y", "х": "x", "ѕ": "s", "і": "i", "ї": "i", "ј": "j", "һ": "h",
    "ԁ": "d", "ԛ": "q", "ԝ": "w", "ӏ": "l", "ү": "y", "ь": "b", "ɡ": "g", "ı": "i",
    # Cyrillic upper case
    "А": "A", "В": "B", "Е": "E", "Ё": "E", "К": "K", "М": "M", "Н": "H", "О": "O", "Р": "P",
    "С": "C", "Т": "T", "У": "Y", "Х": "X", "Ѕ": "S", "І": "I", "Ї": "I", "Ј": "J", "Һ": "H",
    "Ү": "Y", "Ԛ": "Q", "Ԝ": "W", "Ӏ": "I",
    # Greek lower case
    "α": "a", "β": "b", "γ": "y", "ε": "e", "η": "n", "ι": "i", "κ": "k", "ν": "v", "ο": "o",
    "ρ": "p", "τ": "t", "υ": "u", "χ": "x", "ω": "w",
    # Greek upper case
    "Α": "A", "Β": "B", "Ε": "E", "Ζ": "Z", "Η": "H", "Ι": "I", "Κ": "K", "Μ": "M", "Ν": "N",
    "Ο": "O", "Ρ": "P", "Τ": "T", "Υ": "Y", "Χ": "X",
}  # fmt: skip
_FOLD = Translator({ord(k): v for k, v in _HOMOGLYPHS.items()})
_HOMOGLYPH_CHARS = "".join(_HOMOGLYPHS)
# A combining mark after a Latin letter survives NFKC only when no precomposed letter exists:
# in practice that is "Zalgo" noise laid over a keyword. Such a text is decomposed and every
# mark on a Latin letter dropped (its accents too: a price only texts that carry the noise pay).
_MARKS = "\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f"
_LATIN = "A-Za-z\u00c0-\u024f\u1e00-\u1eff"
# Marks after a Latin letter, as `(?<=[LATIN])[MARKS]+` says; written to start with the mark
# class so that `re` skips to the next mark at C speed instead of trying the look-behind at every
# position (a third of the time on 32 KB of text).
_LATIN_COMBINING = re.compile(f"[{_MARKS}](?<=[{_LATIN}][{_MARKS}])[{_MARKS}]*")


def _ranges(codes: list[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for c in sorted(set(codes)):
        if out and c == out[-1][1] + 1:
            out[-1] = (out[-1][0], c)
        else:
            out.append((c, c))
    return out


def _class(spec: str) -> list[tuple[int, int]]:
    # A regex-style class body ("a-z\u0300-\u036f") as code point ranges.
    return [
        (ord(m.group(1)), ord(m.group(2) or m.group(1))) for m in re.finditer(r"(.)(?:-(.))?", spec)
    ]


# One compiled pass over a prompt says which of these it contains (a regex scan per question
# cost 3-20 us per KB): characters of the table, combining marks, look-alike letters, Cyrillic or
# Greek letters without a Latin twin (real Russian or Greek), Latin letters.
_TABLED, _MARK, _HOMOGLYPH, _REAL_CYRILLIC_GREEK, _LATIN_LETTER = 1, 2, 4, 8, 16
_CLASSES = CharClasses(
    [
        _ranges(list(_TABLE)),
        _class(_MARKS),
        _ranges([ord(c) for c in _HOMOGLYPH_CHARS]),
        _ranges([c for c in range(0x0370, 0x0530) if chr(c) not in _HOMOGLYPHS]),
        _class(_LATIN),
    ]
)


def _fold_homoglyphs(text: str, present: int) -> str:
    # Text with Cyrillic/Greek letters that have no Latin twin is real Russian/Greek: fold only
    # mixed-script words there (a word with a Latin letter and a look-alike is always a
    # disguise), so "все" keeps its meaning. Otherwise every Cyrillic/Greek letter is a
    # look-alike in Latin text and all of them fold ("ѕау" becomes "say").
    if not present & _REAL_CYRILLIC_GREEK:
        return _FOLD.apply(text)
    return _FOLD.apply_words(text, _CLASSES, _LATIN_LETTER | _HOMOGLYPH)


# Unicode normalisation changes a text only around a few characters: those that decompose
# (compatibility forms included), combining marks, and the letters that compose with the letter
# before them. Every other character is a "boundary": a starter that NFKC, NFD and NFC leave
# alone and that never combines with its neighbours, so normalising the stretches between
# boundaries one by one gives exactly the text normalised whole (UAX #15's normalization
# boundaries). Most of a prompt is boundaries, and the normalisers cost ~15 ns a character:
# only the stretches that can change are normalised (a stretch starts one character early, at
# the boundary a mark or a jamo may compose with). Characters above the BMP all count as
# changeable. The table comes from the running Python's unicodedata, so it always matches it.
_UNSTABLE, _UNSTABLE_OR_MARK = 1, 7
_STRETCH_GAP = 64  # stretches closer than this are normalised as one (a call costs ~0.3 us)


@cache
def _boundaries() -> CharClasses:
    """1: not a boundary (see above); 2: a combining mark of _MARKS; 4: a character with a
    decomposition (the marks step decomposes accented letters and drops their accents)."""
    second = set()  # characters that compose with the one before them
    decomposing = []
    for c in range(0x80, 0x10000):
        parts = unicodedata.decomposition(chr(c)).split()
        if parts:
            decomposing.append(c)
            if len(parts) == 2 and not parts[0].startswith("<"):
                second.add(int(parts[1], 16))
    second.update(range(0x1161, 0x1176))  # Hangul vowel jamo (composed algorithmically)
    second.update(range(0x11A8, 0x11C3))  # Hangul trailing consonant jamo
    unstable = [
        c
        for c in range(0x80, 0x10000)
        if c in second
        or 0xD800 <= c <= 0xDFFF
        or unicodedata.combining(chr(c))
        or unicodedata.normalize("NFKC", chr(c)) != chr(c)
    ]
    return CharClasses(
        [[*_ranges(unstable), (0x10000, 0x10FFFF)], _class(_MARKS), _ranges(decomposing)]
    )


def warm_up() -> None:
    """Build the boundary table now rather than on the first non-ASCII text."""
    _boundaries()


def _by_stretch(text: str, need: int, convert: Callable[[str], str]) -> str:
    # `convert` applied to each stretch that holds a character of `need` (see _boundaries).
    parts: list[str] = []
    last = 0
    for start, end in _boundaries().runs(text, need, _STRETCH_GAP):
        parts += (text[last:start], convert(text[start:end]))
        last = end
    parts.append(text[last:])
    return "".join(parts)


def _nfkc(text: str) -> str:
    return unicodedata.normalize("NFKC", text)


def _drop_latin_marks(text: str) -> str:
    # _LATIN_COMBINING.sub("", text) in one compiled pass: its classes are _MARK and
    # _LATIN_LETTER (the regex's look-behind cost ~20 us per stretch of Zalgo text).
    text = unicodedata.normalize("NFD", text)
    return unicodedata.normalize("NFC", _CLASSES.drop_runs(text, _MARK, _LATIN_LETTER))


def normalize(text: str, *, every_step: bool = False) -> str:
    """Fold compatibility forms, invisible characters and look-alike letters into plain text.

    Case and whitespace are kept: callers lower-case or tokenise as they need. `every_step`
    takes the text through every step even when it is settled already (the definition the
    shortcut is tested against).
    """
    # The steps feed each other (a folded look-alike can take a stray accent, a dropped accent
    # can make a word mixed-script), so repeat until nothing changes: usually one round.
    for round_ in range(4):
        if text.isascii():
            return text
        before = text
        present = _CLASSES.which(text)
        # Settled already when no step below can act: no table character, nothing Unicode
        # normalisation changes, no mark on a Latin letter and, in the first round, no
        # look-alike. Asked up front (one compiled pass), so that text, a decoded reading of a
        # normalised text most often, is not taken through every step to find it unchanged.
        if (
            not every_step
            and not present & _TABLED
            and (round_ or not present & _HOMOGLYPH)
            and not _boundaries().which(text) & _UNSTABLE
            and not (present & _MARK and _CLASSES.follows(text, _MARK, _LATIN_LETTER))
        ):
            return text
        if present & _TABLED:
            text = _UNTABLE.apply(text)
        # NFKC, stretch by stretch (unicodedata.is_normalized would not save the work: on text
        # with combining marks its quick check answers "maybe" and it normalises the whole text).
        nfkc = _by_stretch(text, _UNSTABLE, _nfkc)
        if nfkc != text:
            # NFKC can expose new invisibles (e.g. a compatibility form of a space joiner).
            text = nfkc
            present = _CLASSES.which(text)
            if present & _TABLED:
                text = _UNTABLE.apply(text)
                present = _CLASSES.which(text)
        elif text is not before:
            present = _CLASSES.which(text)
        # A mark right after a Latin letter: what _LATIN_COMBINING finds (its classes are
        # _MARK and _LATIN_LETTER), asked without a regex scan.
        if present & _MARK and _CLASSES.follows(text, _MARK, _LATIN_LETTER):
            text = _by_stretch(text, _UNSTABLE_OR_MARK, _drop_latin_marks)
            present = _CLASSES.which(text)
        # The fold is idempotent: after one, no word holds a Latin letter and a look-alike, and
        # real Cyrillic/Greek letters stay. Past the first round it can only act when the steps
        # above changed the text.
        if round_ and text == before:
            break
        if present & _HOMOGLYPH:
            text = _fold_homoglyphs(text, present)
        if text == before:
            break
    return text


# --- decoded variants ------------------------------------------------------------------------

# Runs of base64 alphabet long enough to carry a sentence; short runs are ordinary words.
_B64_BLOB = re.compile(r"[A-Za-z0-9+/_-]{16,}={0,2}")
_HEX_BLOB = re.compile(r"(?:[0-9A-Fa-f]{2}[ :]?){7}[0-9A-Fa-f]{2}(?:[ :]?[0-9A-Fa-f]{2})*")
_PERCENT = re.compile(r"%[0-9A-Fa-f]{2}")
# Leetspeak puts digits or $/@ where letters belong, so a substitute is followed by a letter
# ("1gn0re"); "mp3", "gpt4" and plain numbers, with digits only at the end, are left alone.
# "@" and "!" decode but do not trigger, so e-mail addresses and "Hello!" cost nothing; tokens
# longer than a word are left alone (they are base64 or identifiers, handled elsewhere).
# Ordinals ("3rd", "21st") are digits before letters but never leetspeak; decoding them would
# double the scoring cost of ordinary prose with dates for nothing.
_LEET_WORD = re.compile(
    r"(?<![\w@$!|])(?!\d+(?:st|nd|rd|th)\b)(?=[\w@$!|]{3})[\w@$!|]*[013457$][A-Za-z][\w@$!|]*"
)
_LEET_MAX = 24
_LEET_TABLE = str.maketrans(
    {"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "8": "b", "@": "a", "$": "s",
     "!": "i", "|": "l"}
)  # fmt: skip
_LEET_MAP: dict[int, str | None] = dict(_LEET_TABLE)
_LEET = Translator(_LEET_MAP)
# "i g n o r e  a l l" — five or more single letters separated by single spaces.
_SPACED = re.compile(r"(?<!\S)(?:\w[ .\-_*]){4,}\w(?!\S)")
_SPACED_SEP = re.compile(r"[ .\-_*]")
# _SPACED_SEP.sub("", run) for every run at once, in one compiled pass over the text (a Python
# callback and a regex substitution per spaced word cost ~20 us on 1 KB of spaced text).
_UNSPACE = Translator(dict.fromkeys(map(ord, " .-_*")))
# Morse code: at least eight dot/dash letters in a row.
_MORSE_RUN = re.compile(r"(?:[.\-]{1,7}(?: {1,3}| ?/ ?|$)){8,}")
_MORSE_CODES = (
    ".- -... -.-. -.. . ..-. --. .... .. .--- -.- .-.. -- -. --- .--. --.- .-. ... - ..- ...- "
    ".-- -..- -.-- --.. ----- .---- ..--- ...-- ....- ..... -.... --... ---.. ----. .-.-.- "
    "--..-- ..--.. -.-.-- -..-. .----. -.--. -.--.- ---... .-.-. -....- .-..-. .--.-."
)
_MORSE = dict(
    zip(_MORSE_CODES.split(), "abcdefghijklmnopqrstuvwxyz0123456789.,?!/'():+-\"@", strict=True)
)
# Frequent English/German words plus instruction vocabulary; rot13 of ordinary text almost never
# produces them, so their appearance after rot13 says the text was rot13-encoded.
_COMMON_WORDS = (
    "the you your all and that this now are with what from have ignore previous instructions "
    "instruction prompt system forget above rules disregard tell say print reveal secret "
    "password und die der das ist nicht alle ich du vergiss ignoriere anweisungen regeln"
)
_COMMON = Lexicon(_COMMON_WORDS.split())
_ROT13_COMMON = Lexicon(codecs.encode(w, "rot13") for w in _COMMON_WORDS.split())
# codecs' rot13 is str.translate over a dict (~100 ns a character); it maps only A-Z and a-z.
_ROT13 = Translator(
    {
        ord(c): codecs.encode(c, "rot13")
        for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
    }
)


_GOOD_PUNCTUATION = " .,:;!?'\"-\n()"
_LETTERS_ASCII = bytes(c for c in range(128) if chr(c).isalpha())
_GOOD_ASCII = _LETTERS_ASCII + b"0123456789" + _GOOD_PUNCTUATION.encode()
_NON_ASCII = re.compile(r"[^\x00-\x7f]+")
_UPPER = re.compile(r"[A-Z]")
_LOWER_OR_DIGIT = re.compile(r"[a-z0-9]")


def _printable_text(raw: bytes) -> str | None:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if not text:
        return None
    # The ASCII characters are counted on the bytes at C speed (ASCII isalnum/isalpha are these
    # tables): each is one byte of the UTF-8, and every byte of a longer character is >= 0x80,
    # in neither table. The other characters, usually few, are asked one by one (none of them
    # is punctuation of the list).
    good = len(raw) - len(raw.translate(None, _GOOD_ASCII))
    letters = len(raw) - len(raw.translate(None, _LETTERS_ASCII))
    if not text.isascii():
        for c in "".join(_NON_ASCII.findall(text)):
            good += c.isalnum()
            letters += c.isalpha()
    if good < 0.85 * len(text) or letters < 0.5 * len(text):
        return None
    return text


def _decode_b64(blob: str) -> str | None:
    if not (_UPPER.search(blob) and _LOWER_OR_DIGIT.search(blob)):
        return None  # a long all-lower-case run is a word or identifier, not base64
    return _decode_b64_blob(blob)


def _decode_b64_blob(blob: str) -> str | None:
    # _decode_b64 for a blob known to hold an upper-case letter and a lower-case one or a digit
    # (every blob `signals` reports).
    padded = blob + "=" * (-len(blob) % 4)
    try:
        if "-" in blob or "_" in blob:
            raw = base64.urlsafe_b64decode(padded)
        else:
            raw = base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError):
        return None
    return _printable_text(raw)


def _decode_hex(blob: str) -> str | None:
    try:
        raw = bytes.fromhex(re.sub(r"[ :]", "", blob))
    except ValueError:
        return None
    return _printable_text(raw)


def _substitute(
    text: str, pattern: re.Pattern[str], decode: Callable[[str], str | None], pad: str = " "
) -> str | None:
    """Replace each blob that `decode` accepts; None when nothing was decoded."""
    changed = False

    def repl(match: re.Match[str]) -> str:
        nonlocal changed
        decoded = decode(match.group(0))
        if decoded is None:
            return match.group(0)
        changed = True
        return decoded if pad == "" else f"{pad}{decoded}{pad}"

    out = pattern.sub(repl, text)
    return out if changed else None


def _replace(
    text: str, spans: Iterable[tuple[int, int]], decode: Callable[[str], str | None], pad: str = " "
) -> str | None:
    """`_substitute` over blobs already found (sorted, disjoint spans): the same result."""
    parts: list[str] = []
    last = 0
    for start, end in spans:
        decoded = decode(text[start:end])
        if decoded is not None:
            parts += (text[last:start], decoded if pad == "" else f"{pad}{decoded}{pad}")
            last = end
    if not parts:
        return None
    parts.append(text[last:])
    return "".join(parts)


def _hex_blobs(text: str, regions: list[tuple[int, int]]) -> Iterator[tuple[int, int]]:
    # _HEX_BLOB matches only hex digits, spaces and colons, so every match of it lies inside one
    # of the maximal runs of those that `signals` reports: search only there.
    for start, end in regions:
        for match in _HEX_BLOB.finditer(text, start, end):
            yield match.span()


def _decode_morse(run: str) -> str | None:
    words = re.split(r" ?/ ?| {2,}", run.strip())
    decoded = " ".join("".join(_MORSE.get(c, "") for c in w.split()) for w in words)
    return decoded if sum(c.isalpha() for c in decoded) >= 5 else None


def _decode_leet(word: str) -> str | None:
    return word.translate(_LEET_TABLE) if len(word) <= _LEET_MAX else None


def variants(text: str) -> list[str]:
    """Return the normalised text followed by each decoded reading the text shows signs of.

    Decoded readings are normalised too, and duplicates are dropped, so a detector can take the
    maximum score over the list.
    """
    return list(iter_variants(text))


def iter_variants(text: str, *, reference: bool = False) -> Iterator[str]:
    """`variants`, lazily: a caller that stops early skips the remaining decoders.

    Each decoder sits behind a cheap test (a character count or a short regex) because this runs
    on every request and nearly every prompt encodes nothing. The blobs to decode come from the
    compiled core's one pass (`signals`); `reference=True` finds them with the decoders' own
    regexes instead (the definition, for checking the fast path).
    """
    return (variant for variant, _ in iter_lowered_variants(text, reference=reference))


def iter_lowered_variants(text: str, *, reference: bool = False) -> Iterator[tuple[str, str]]:
    """`iter_variants`, each variant with its `lower()` (computed once: both need it)."""
    base = normalize(text)
    lowered = lower(base)
    yield base, lowered
    # A handful of strings, compared by equality (which stops at a differing length or
    # character); a set hashed each whole text (~0.5 us a KB).
    seen = [base]
    for candidate in _decodings(base, lowered, reference):
        if candidate is not None:
            candidate = normalize(candidate)
            if candidate not in seen:
                seen.append(candidate)
                yield candidate, lower(candidate)


def _decodings(base: str, lowered: str, reference: bool) -> Iterator[str | None]:
    # One compiled pass says where each decoder can apply; a regex scan of the whole text per
    # decoder (Python's re, ~10 ns a character each) runs only for the rare Morse code.
    b64, hexa, leet, morse, spaced, digits = signals(base)
    if b64:
        if reference:
            yield _substitute(base, _B64_BLOB, _decode_b64)
        else:
            yield _replace(base, b64, _decode_b64_blob)  # blobs with their padding
    # Hex-encoded text is mostly digits: skip it unless there are plenty of them.
    if hexa and digits >= 16:
        if reference:
            yield _substitute(base, _HEX_BLOB, _decode_hex)
        else:
            yield _replace(base, _hex_blobs(base, hexa), _decode_hex)
    if "%" in base and len(_PERCENT.findall(base)) >= 2:
        yield unquote(base)
    if leet:
        if reference:
            yield _substitute(base, _LEET_WORD, _decode_leet, pad="")
        else:
            # _decode_leet maps character for character: one compiled pass over the words
            # short enough to decode is _replace(base, leet, _decode_leet, pad="").
            words = [(start, end) for start, end in leet if end - start <= _LEET_MAX]
            yield _LEET.apply(base, words) if words else None
    if morse:
        yield _substitute(base, _MORSE_RUN, _decode_morse)
    # Token checks run in the compiled core (one pass each, no token list built in Python).
    if spaced and count_tokens(lowered, 1) >= 5:
        if reference:
            if _SPACED.search(base):
                yield _SPACED.sub(lambda m: _SPACED_SEP.sub("", m.group(0)), base)
        else:
            yield _UNSPACE.apply(base, spaced)  # `spaced` holds _SPACED's matches
    # rot13 is its own inverse, so "rot13 of a token is a common word" is "the token is in the
    # rot13 of the common words": no need to encode the whole text to find out.
    rot_hits = _ROT13_COMMON.count(lowered)
    if rot_hits >= 2 and rot_hits > _COMMON.count(lowered):
        yield codecs.encode(base, "rot13") if reference else _ROT13.apply(base)
