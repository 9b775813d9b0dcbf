"""Phone numbers: a cheap candidate regex, then Google's libphonenumber rules on candidates only.

Why: `phonenumbers.PhoneNumberMatcher` scans at about 0.2 MB/s, far too slow for every request.
So a maximal run of digits and phone separators is found by one regex, and only runs that can
still be a phone number reach `phonenumbers`. A run is a phone number when it is written in
international form (leading `+`/`00`, checked with `is_possible_number`, the leniency of
`Leniency.POSSIBLE`), when a phone word stands next to it ("Phone:", "call me at", "... fax"),
or when it is formatted (separators or parentheses) and `is_valid_number` holds in one of the
configured regions (the leniency of `Leniency.VALID`). Bare digit runs without context are never
phones, and a number named as an order, account, licence... is not one either: that is how order
ids, years and prices stay untouched. A dotted quad (`198.51.100.7`) is the IP detector's
business, never handed to `phonenumbers` (it was most of the validation work on real text).
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Sequence

import phonenumbers

from .pii_patterns import RANK, Candidate, hold
from .pii_regions import SHORTEST_WINDOW, Region

Span = tuple[int, int]

# A maximal run (7+ characters, as phone numbers have 7+ digits) of digits joined by single
# spaces, dots, dashes and parentheses, plus an optional extension; `PhoneRule` decides which
# part of it, if any, is a phone number. Runs are taken whole so that a table of numbers costs
# one rejection, not one `phonenumbers` call per window.
_PHONE = re.compile(
    r"[+(\d](?<![\w+/.\-].)(?<!\d:.)(?:(?<=\()\+?\d|(?<=\+)\d|(?<=\d))[\d().\- ]{5,}\d"
    r"(?i:[ ]?(?:x|ext\.?|extension|\#)[ ]?\d{1,6})?(?!\w|[.\-]\d|:\d)"
)
_MAX_RUN = 80
_PIECE = re.compile(r"[^ ]+")
_DASH_OR_DOT = re.compile(r"[.\-]")
_EXTENSION = re.compile(r"[ ]?(?:x|ext\.?|extension|#)[ ]?\d{1,6}$", re.IGNORECASE)
_BAD_SEPARATORS = re.compile(r"[ .\-]{2,}")
_PAREN_GROUP = re.compile(r"\(\+?\d{1,5}\)")
_DOTTED_QUAD = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}")
_DATE = re.compile(r"\d{4}([-./ ])\d{1,2}\1\d{1,2}|\d{1,2}([-./ ])\d{1,2}\2(?:\d{2}|\d{4})")
# A phone word, then up to three short words ("call me at", "phone number is"), then punctuation.
_BEFORE = re.compile(
    r"(?:\b(?:phones?|telephones?|tel|mobiles?|mob|cell(?:phone)?s?|fax(?:es)?|landlines?"
    r"|hotlines?|whats ?app|sms|texts?|texting|call(?:s|ed|ing)?|ring|dial(?:led|ing)?|reach"
    r"|contact(?:ed)?|messages?|messaging|answer(?:s|ed|ing)?)\b"
    r"|\b(?:desk|office|home|work|direct|main|ph|t|m|f)\s*:)"
    r"(?P<gap>(?:\W+[^\W\d]{1,12}){0,3}\W*)\Z",
    re.IGNORECASE,
)
# The same on lower-cased ASCII, where case-insensitive matching is plain matching: `re` can then
# skip the alternatives by their first letter, which halves a search.
_BEFORE_ASCII = re.compile(_BEFORE.pattern)
_AFTER = re.compile(
    r"\W{0,3}(?:office|fax|mobile|mob|cell|phone|tel|home|work|desk|direct|landline)\b",
    re.IGNORECASE,
)
# Words that turn "call about order 12345678" back into an ordinary number.
_NOT_PHONE_WORDS = frozenset(
    {
        "order", "account", "invoice", "ticket", "case", "ref", "reference", "id", "booking",
        "tracking", "transaction", "customer", "member", "policy", "claim", "serial", "pin",
        "code", "card", "iban", "ssn", "zip", "postcode", "license", "licence", "passport", "vat",
        "tax", "routing", "isbn",
    }
)  # fmt: skip
_MIN_PHONE_DIGITS, _MAX_PHONE_DIGITS = 7, 15
_MERGED = -1
# How far the phone rule reads around a candidate for context words; callers that cut text into
# pieces (the stream redactor) keep at least this much on either side of a cut.
CONTEXT_BEFORE, CONTEXT_AFTER = 48, 24
_NON_DIGIT = re.compile(r"\D")
_GROUPS = re.compile(r"\d+")
_WORD = re.compile(r"[^\W\d]+")
_LAST_DIGIT = re.compile(r"\d")


def _phone_context(text: str, start: int, end: int, partial: bool) -> bool:
    since = max(0, start - CONTEXT_BEFORE)
    near = text[max(0, since - 1) : start]  # with the character the first \b looks back at
    if near.isascii():
        before = _BEFORE_ASCII.search(near.lower(), since - max(0, since - 1))
    else:
        before = _BEFORE.search(text, since, start)
    if before is not None and not _NOT_PHONE_WORDS.intersection(
        _WORD.findall(before.group("gap").lower())
    ):
        return True
    if partial and end + CONTEXT_AFTER > len(text):
        return True  # the "... office" that would make it a phone may still be on its way
    return _AFTER.match(text, end, end + CONTEXT_AFTER) is not None


class PhoneRule:
    """Decides whether a phone-shaped candidate is a phone number (see the module docstring)."""

    __slots__ = ("_regions",)

    def __init__(self, regions: Sequence[str]) -> None:
        unknown = [r for r in regions if r.upper() not in phonenumbers.SUPPORTED_REGIONS]
        if unknown:
            raise ValueError(f"unknown phone region(s): {', '.join(unknown)}")
        # (region, min digits, max digits): parsing costs ~0.1 ms, so candidates whose digit count
        # cannot be a valid number of the region (national prefix, country or IDD code included)
        # are rejected before `phonenumbers` sees them.
        regions_ = []
        for region in dict.fromkeys(r.upper() for r in regions):
            md = phonenumbers.PhoneMetadata.metadata_for_region(region)
            assert md is not None and md.general_desc is not None
            lengths = md.general_desc.possible_length
            extra = max(len(md.national_prefix or ""), len(str(md.country_code)) + 3)
            regions_.append((region, min(lengths), max(lengths) + extra))
        self._regions = tuple(regions_)

    def scan(
        self,
        text: str,
        out: list[Candidate],
        partial: bool,
        windows: Sequence[Region],
        claimed: Sequence[Span] | None = None,
    ) -> None:
        """Append phone numbers (and, if `partial`, holds) to `out`.

        Runs are looked for inside `windows` only (the text's `pii_regions.digit_windows`).
        `claimed` (sorted, non-overlapping) are spans that a more trusted entity surely keeps
        (see `claimed_spans`): a run inside one cannot be kept as a phone number, so it is not
        validated at all. On prose with cards, IPs and SSNs that is most runs. None means
        `claimed_spans(out)`, worked out at the first run that needs it (most texts have none):
        what this scan appends (phone numbers and holds) does not change it.
        """
        starts = [] if claimed is None else [span[0] for span in claimed]
        runs = (
            m
            for pos, endpos in windows
            if endpos - pos >= SHORTEST_WINDOW
            for m in _PHONE.finditer(text, pos, endpos)
        )
        for m in runs:
            start, end = m.span()
            if partial:
                # Whether a part of a run is a phone number depends on the whole run (a merged
                # run is split, an overlong one dropped), so a stream must not cut inside one.
                out.append(hold(start, end))
            if end - start > _MAX_RUN:
                continue  # a table or list of numbers, not one phone number
            if claimed is None:
                claimed = claimed_spans(out)
                starts = [span[0] for span in claimed]
            i = bisect_right(starts, start) - 1
            if i >= 0 and claimed[i][1] >= end:
                continue
            if _dotted_quad_run(text, start, end):
                continue  # an IPv4 address IP_ADDRESS does not claim: `_accept` rejects it last
            found = self._accept(text, start, end, partial)
            if found > 0:
                self._found(text, start, found, partial, out)
            elif found == _MERGED or (" " in m.group() and _DASH_OR_DOT.search(m.group())):
                # Several numbers in a row ("Order 12345678 555-123-4567", "10.1.2.3
                # 415-555-2671"): try each self-contained formatted piece on its own.
                for piece in _PIECE.finditer(text, start, end):
                    p = piece.group()
                    if ("-" in p or "." in p) and p[-1].isdigit():
                        found = self._accept(text, piece.start(), piece.end(), partial)
                        if found > 0:
                            self._found(text, piece.start(), found, partial, out)

    @staticmethod
    def _found(text: str, start: int, end: int, partial: bool, out: list[Candidate]) -> None:
        out.append((RANK["PHONE"], start, end, "PHONE"))
        if partial and end + CONTEXT_AFTER > len(text):
            # Found perhaps only because its trailing context word may still come: a streaming
            # caller must hold it (and what follows) until that is decided.
            out.append(hold(start, len(text) + 1))

    def _accept(self, text: str, start: int, end: int, partial: bool) -> int:
        """The end of the phone number that starts at `start`, 0 if none, _MERGED if too long."""
        cand = text[start:end]
        ext = _EXTENSION.search(cand)
        body = cand[: ext.start()] if ext else cand
        while not ext and " " in body and ("-" in body or "." in body):
            # One number keeps one separator style: "555-123-4567 2023" ends before the year.
            last = max(body.rfind("-"), body.rfind("."), body.rfind(" "))
            if body[last] != " ":
                break
            body = cand = body[:last]
            end = start + last
        unparenthesised = _PAREN_GROUP.sub("", body)
        if _BAD_SEPARATORS.search(body) or "(" in unparenthesised or ")" in unparenthesised:
            return 0
        digits = _NON_DIGIT.sub("", body.replace("(0)", ""))
        if len(digits) > _MAX_PHONE_DIGITS:
            return _MERGED
        if len(digits) < _MIN_PHONE_DIGITS or _DATE.fullmatch(body):
            return 0
        if body.count(".") == 1 and body.replace(".", "").isdigit():
            return 0  # a decimal number
        if _DOTTED_QUAD.fullmatch(body):
            return 0  # an IPv4 address
        if body.startswith(("+", "(+")) or (body.startswith("00") and len(digits) >= 10):
            intl = "+" + digits[2:] if body.startswith("00") else cand
            return end if _possible(intl) else 0
        if _phone_context(text, start, end, partial):
            return end
        if body.isdigit():
            return 0  # bare digit runs need context: order ids, amounts, timestamps
        # Formatted but without context: the number must be valid in a configured region. Some
        # numbering plans (DE: 5 to 15 digits) accept almost anything, so also demand a phone's
        # look: two groups only with a trunk "0" or an area code in parentheses ("030 901820",
        # not the "3536 1659" of a street address), and no identifier named just before it.
        if len(_GROUPS.findall(body)) == 2 and body[0] not in "0(":
            return 0
        words_before = _WORD.findall(_LAST_DIGIT.split(text[max(0, start - 32) : start])[-1])
        if _NOT_PHONE_WORDS.intersection(w.lower() for w in words_before[-3:]):
            return 0
        n = len(digits)
        return end if any(lo <= n <= hi and _valid(cand, r) for r, lo, hi in self._regions) else 0


def _dotted_quad_run(text: str, start: int, end: int) -> bool:
    """Whether the run is one dotted quad: `_accept` returns 0 for it (no extension, no space
    to trim or split at, too few digits to be merged), after all its other steps."""
    return _DOTTED_QUAD.fullmatch(text, start, end) is not None


def claimed_spans(cands: Sequence[Candidate]) -> list[Span]:
    """Spans of candidates that outrank a phone number and overlap no candidate of their rank or
    better: overlap resolution keeps each of them, so no phone number inside one survives."""
    strong = sorted((c[1], c[2]) for c in cands if c[3] and c[0] < RANK["PHONE"] - 1)
    out: list[Span] = []
    reach = -1  # furthest end of the strong spans before the current one
    for i, (start, end) in enumerate(strong):
        clear_after = i + 1 == len(strong) or strong[i + 1][0] >= end
        if start >= reach and clear_after:
            out.append((start, end))
        reach = max(reach, end)
    return out


def _possible(number: str) -> bool:
    try:
        return bool(phonenumbers.is_possible_number(phonenumbers.parse(number, None)))
    except phonenumbers.NumberParseException:
        return False


def _valid(number: str, region: str) -> bool:
    try:
        return bool(phonenumbers.is_valid_number(phonenumbers.parse(number, region)))
    except phonenumbers.NumberParseException:
        return False
