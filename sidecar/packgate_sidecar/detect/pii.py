"""Find personal data in text so the pii-detector policy can redact it before it leaves the pod.

Why our own detector instead of presidio-analyzer: the analyzer needs spaCy models (hundreds of MB
and seconds of start-up) and runs far below the sidecar's latency budget. Structured identifiers
(cards, IBANs, SSNs, e-mail and IP addresses) are better served by precompiled regexes plus the
checksums and parsers that make them trustworthy (Luhn, mod-97, `ipaddress`), and phone numbers by
Google's libphonenumber rules (`phonenumbers`).

`PhoneNumberMatcher` itself scans at about 0.2 MB/s, so phone numbers are found by a cheap
candidate regex and only the candidates are handed to `phonenumbers`. A candidate is a phone number
when it is written in international form (leading `+`/`00`, checked with `is_possible_number`,
the leniency of `Leniency.POSSIBLE`), when a phone word stands next to it ("Phone:", "call me at",
"... fax"), or when it is formatted (separators or parentheses) and `is_valid_number` holds in one
of the configured regions (the leniency of `Leniency.VALID`). Bare digit runs without context are
never phones, and a number named as an order, account, licence... is not one either: that is how
order ids, years and prices stay untouched.

Overlaps are resolved by trust, then length: checksum-validated cards and IBANs first, then
e-mail, IP and SSN, then custom patterns, then phone numbers.
"""

from __future__ import annotations

import ipaddress
import re
from bisect import bisect_left
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import phonenumbers

BUILTIN_ENTITIES = ("EMAIL", "PHONE", "SSN", "CREDIT_CARD", "IBAN", "IP_ADDRESS")

# Overlap resolution: checksum-validated identifiers are the most trustworthy, phone numbers (the
# loosest rule) the least; within a rank the longer span wins.
_RANK = {"CREDIT_CARD": 0, "IBAN": 0, "EMAIL": 1, "IP_ADDRESS": 1, "SSN": 1, "PHONE": 3}
_CUSTOM_RANK = 2
_LABEL = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")


@dataclass(frozen=True, slots=True)
class Finding:
    """One detected entity: `text[start:end]` (0-based, end exclusive) is an `entity`."""

    entity: str
    start: int
    end: int


_Candidate = tuple[int, int, int, str]  # (rank, start, end, entity)


def _hold(start: int, end: int) -> _Candidate:
    """Not a finding: a span a streaming caller must not cut (entity "" is never reported)."""
    return (99, start, end, "")


# (text, out, partial): `partial` means more text may follow the end of `text` (streaming).
_Scanner = Callable[[str, list[_Candidate], bool], None]

# Speed note: every pattern starts with a character class and puts its "not glued to the previous
# token" lookbehind after that first character. `re` can then skip ahead in C to characters that
# can start a match; a leading lookbehind would make it try every position of the text.

# --- e-mail, SSN, IP -----------------------------------------------------------------------------

# Found from the "@" outwards: scanning for local parts would start a match at every letter.
_EMAIL_DOMAIN = re.compile(
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}(?![\w\-])"
)
_EMAIL_LOCAL = re.compile(r"(?<![\w.%+\-])[A-Za-z0-9_%+\-][A-Za-z0-9_.%+\-]{0,63}\Z")
# The same separator twice; the issuing rules are checked in `_scan_ssn`.
_SSN = re.compile(r"\d(?<![\w\-.]\d)\d\d([- .])\d\d\1\d{4}(?![\w\-]|\.\d)")
_IPV4 = re.compile(r"\d(?<![\w.]\d)\d{0,2}\.\d{1,3}\.\d{1,3}\.\d{1,3}(?!\w|\.\d)")
# IPv6: found from two colons at most four hex digits apart (a fast literal scan, where starting
# at every hex letter a-f of English text is not), then the hex/colon/dot run around them is
# handed to `ipaddress`.
_IPV6_HINT = re.compile(r":[0-9A-Fa-f]{0,4}:")
_IPV6 = re.compile(r"(?<![\w:.])[0-9A-Fa-f:]+(?:\.[0-9]+)*(?![\w:])")
_HEX_BEFORE = re.compile(r"[0-9A-Fa-f]{0,4}\Z")

# --- payment cards and IBANs ---------------------------------------------------------------------

# Either a bare 12-19 digit run or 4-digit-led groups with one consistent separator
# (4-4-4-4, 4-6-5 Amex, 4-6-4 Diners); loose grouping would swallow phone numbers.
_CARD = re.compile(
    r"\d(?<![\w+\-.]\d)(?<!\d \d)(?:\d{11,18}|\d{3}([ \-])\d{4,6}(?:\1\d{3,6}){1,3})(?![\w\-]|\.\d)"
)
# Card networks live under major industry identifiers 2-6; 1800 (JCB) and 0604 (Maestro) are old.
_CARD_PREFIX = re.compile(r"[2-6]|1800|0604")

# Country code -> IBAN length (SWIFT IBAN registry).
_IBAN_LENGTHS = dict(
    AD=24, AE=23, AL=28, AT=20, AZ=28, BA=20, BE=16, BG=22, BH=22, BI=27, BR=29, BY=28, CH=21,
    CR=22, CY=28, CZ=24, DE=22, DJ=27, DK=18, DO=28, EE=20, EG=29, ES=24, FI=18, FK=18, FO=18,
    FR=27, GB=22, GE=22, GI=23, GL=18, GR=27, GT=28, HN=28, HR=21, HU=28, IE=22, IL=23, IQ=23,
    IS=26, IT=27, JO=30, KW=30, KZ=20, LB=28, LC=32, LI=21, LT=20, LU=20, LV=21, LY=25, MC=27,
    MD=24, ME=22, MK=19, MN=20, MR=27, MT=31, MU=30, NI=28, NL=18, NO=15, OM=23, PK=24, PL=28,
    PS=29, PT=25, QA=29, RO=24, RS=22, RU=33, SA=24, SC=31, SD=18, SE=24, SI=19, SK=24, SM=27,
    SO=23, ST=25, SV=28, TL=23, TN=24, TR=26, UA=29, VA=22, VG=24, XK=20, YE=30,
)  # fmt: skip
# The two check digits after a country code (digits are rarer than letters, so the scan is
# cheaper from here); the IBAN starts two characters earlier. Then the country's length decides
# the rest: unbroken, or printed in groups of four.
_IBAN = re.compile(r"\d(?<=[A-Za-z]{2}\d)(?<![A-Za-z0-9]..\d)\d")
_IBAN_REST = {
    length: re.compile(
        rf"(?:[A-Za-z0-9]{{{length - 4}}}|(?: [A-Za-z0-9]{{4}}){{{(length - 4) // 4}}}"
        + (rf" [A-Za-z0-9]{{{(length - 4) % 4}}}" if (length - 4) % 4 else "")
        + r")(?![A-Za-z0-9])"
    )
    for length in set(_IBAN_LENGTHS.values())
}


def _ascii_digits(s: str) -> str:
    """Regex digits include other scripts (e.g. fullwidth), a cheap way to dodge ASCII rules."""
    return s if s.isascii() else "".join(str(int(c)) if c.isdecimal() else c for c in s)


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_ok(iban: str) -> bool:
    """ISO 13616 check: country length and mod-97 of the rearranged, letter-expanded string."""
    iban = iban.upper()
    if _IBAN_LENGTHS.get(iban[:2]) != len(iban) or not (iban.isascii() and iban.isalnum()):
        return False
    moved = iban[4:] + iban[:4]
    return int("".join(str(int(ch, 36)) for ch in moved)) % 97 == 1


# --- phone numbers -------------------------------------------------------------------------------

# A maximal run (7+ characters, as phone numbers have 7+ digits) of digits joined by single
# spaces, dots, dashes and parentheses, plus an optional extension; `_PhoneRule` decides which
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
    before = _BEFORE.search(text, max(0, start - CONTEXT_BEFORE), start)
    if before is not None and not _NOT_PHONE_WORDS.intersection(
        _WORD.findall(before.group("gap").lower())
    ):
        return True
    if partial and end + CONTEXT_AFTER > len(text):
        return True  # the "... office" that would make it a phone may still be on its way
    return _AFTER.match(text, end, end + CONTEXT_AFTER) is not None


class _PhoneRule:
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

    def scan(self, text: str, out: list[_Candidate], partial: bool) -> None:
        rank = _RANK["PHONE"]
        for m in _PHONE.finditer(text):
            start, end = m.span()
            if partial:
                # Whether a part of a run is a phone number depends on the whole run (a merged
                # run is split, an overlong one dropped), so a stream must not cut inside one.
                out.append(_hold(start, end))
            if end - start > _MAX_RUN:
                continue  # a table or list of numbers, not one phone number
            found = self._accept(text, start, end, partial)
            if found > 0:
                out.append((rank, start, found, "PHONE"))
            elif found == _MERGED or (" " in m.group() and _DASH_OR_DOT.search(m.group())):
                # Several numbers in a row ("Order 12345678 555-123-4567", "10.1.2.3
                # 415-555-2671"): try each self-contained formatted piece on its own.
                for piece in _PIECE.finditer(text, start, end):
                    p = piece.group()
                    if ("-" in p or "." in p) and p[-1].isdigit():
                        found = self._accept(text, piece.start(), piece.end(), partial)
                        if found > 0:
                            out.append((rank, piece.start(), found, "PHONE"))

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


# --- scanners ------------------------------------------------------------------------------------


def _scan_email(text: str, out: list[_Candidate], _partial: bool) -> None:
    at = text.find("@")
    while at != -1:
        domain = _EMAIL_DOMAIN.match(text, at) if at else None
        if domain is not None:
            local = _EMAIL_LOCAL.search(text, max(0, at - 64), at)
            if local is not None:
                out.append((_RANK["EMAIL"], local.start(), domain.end(), "EMAIL"))
        at = text.find("@", at + 1)


def _scan_ssn(text: str, out: list[_Candidate], _partial: bool) -> None:
    for m in _SSN.finditer(text):
        s = _ascii_digits(m.group())
        # Area 000, 666 and 9xx, group 00 and serial 0000 are never issued.
        if s[0] == "9" or s[:3] in ("000", "666") or s[4:6] == "00" or s[7:] == "0000":
            continue
        out.append((_RANK["SSN"], m.start(), m.end(), "SSN"))


def _scan_ip(text: str, out: list[_Candidate], _partial: bool) -> None:
    rank = _RANK["IP_ADDRESS"]
    if "." in text:
        for m in _IPV4.finditer(text):
            try:
                ipaddress.IPv4Address(m.group())
            except ValueError:
                continue
            out.append((rank, m.start(), m.end(), "IP_ADDRESS"))
    done = 0
    for hint in _IPV6_HINT.finditer(text):
        if hint.start() < done:
            continue
        before = _HEX_BEFORE.search(text, max(0, hint.start() - 4), hint.start())
        v6 = _IPV6.match(text, before.start() if before else hint.start())
        if v6 is None:
            continue
        done = v6.end()
        s = v6.group()
        # "a::b" or "std::x" style tokens are valid addresses but almost never meant as one.
        if sum(1 for g in s.split(":") if g) + ("." in s) < 3:
            continue
        try:
            ipaddress.IPv6Address(s)
        except ValueError:
            continue
        out.append((rank, v6.start(), v6.end(), "IP_ADDRESS"))


def _scan_card(text: str, out: list[_Candidate], _partial: bool) -> None:
    for m in _CARD.finditer(text):
        digits = _ascii_digits(m.group().replace(" ", "").replace("-", ""))
        if (
            12 <= len(digits) <= 19
            and _CARD_PREFIX.match(digits)
            and luhn_ok(digits)
            and digits.count(digits[0]) != len(digits)
        ):
            out.append((_RANK["CREDIT_CARD"], m.start(), m.end(), "CREDIT_CARD"))


def _scan_iban(text: str, out: list[_Candidate], _partial: bool) -> None:
    for m in _IBAN.finditer(text):
        start = m.start() - 2
        want = _IBAN_LENGTHS.get(text[start : start + 2].upper())
        rest = _IBAN_REST[want].match(text, m.end()) if want else None
        if rest is not None and iban_ok(text[start : rest.end()].replace(" ", "")):
            out.append((_RANK["IBAN"], start, rest.end(), "IBAN"))


def _custom_scanner(label: str, pattern: re.Pattern[str]) -> _Scanner:
    def scan(text: str, out: list[_Candidate], _partial: bool) -> None:
        out.extend(
            (_CUSTOM_RANK, m.start(), m.end(), label)
            for m in pattern.finditer(text)
            if m.end() > m.start()
        )

    return scan


def _resolve(cands: list[_Candidate]) -> list[Finding]:
    """Keep the best of overlapping candidates: lower rank first, then the longer, then earlier."""
    cands = [c for c in cands if c[3]]
    cands.sort(key=lambda c: (c[0], c[1] - c[2], c[1]))
    starts: list[int] = []
    kept: list[_Candidate] = []
    for cand in cands:
        _, start, end, _ = cand
        i = bisect_left(starts, start)
        if i > 0 and kept[i - 1][2] > start:
            continue
        if i < len(kept) and kept[i][1] < end:
            continue
        starts.insert(i, start)
        kept.insert(i, cand)
    return [Finding(entity, start, end) for _, start, end, entity in kept]


class PiiDetector:
    """Finds the configured entities; build once per config, call `find` per text."""

    __slots__ = ("_scanners", "entities")

    def __init__(
        self,
        entities: Sequence[str],
        custom_patterns: Sequence[tuple[str, str]] = (),
        phone_regions: Sequence[str] = ("US",),
    ) -> None:
        unknown = [e for e in entities if e not in BUILTIN_ENTITIES]
        if unknown:
            raise ValueError(
                f"unknown PII entity {', '.join(unknown)}; known: {', '.join(BUILTIN_ENTITIES)}"
            )
        builtin: dict[str, _Scanner] = {
            "EMAIL": _scan_email,
            "SSN": _scan_ssn,
            "CREDIT_CARD": _scan_card,
            "IBAN": _scan_iban,
            "IP_ADDRESS": _scan_ip,
        }
        if "PHONE" in entities:
            builtin["PHONE"] = _PhoneRule(phone_regions).scan
        scanners = [builtin[e] for e in dict.fromkeys(entities)]
        for label, regex in custom_patterns:
            if not _LABEL.fullmatch(label):
                raise ValueError(f"custom PII pattern label {label!r} must match {_LABEL.pattern}")
            try:
                compiled = re.compile(regex)
            except re.error as exc:
                raise ValueError(f"custom PII pattern {label}: invalid regex: {exc}") from exc
            scanners.append(_custom_scanner(label, compiled))
        self._scanners = tuple(scanners)
        self.entities = tuple(dict.fromkeys([*entities, *(label for label, _ in custom_patterns)]))

    def find(self, text: str) -> list[Finding]:
        """Sorted, non-overlapping findings in `text`."""
        cands: list[_Candidate] = []
        for scan in self._scanners:
            scan(text, cands, False)
        return _resolve(cands)

    def find_partial(self, text: str) -> tuple[list[Finding], list[tuple[int, int]]]:
        """For streaming, where more text may follow `text`.

        Returns the findings plus the (start, end) of every span a caller cutting the text must
        not cut inside: each candidate that passed validation (before overlaps were resolved)
        and each phone-shaped run. Near the end of `text`, a phone number whose trailing context
        word may not have arrived yet counts as found. A caller that holds back everything such a
        span touches never releases half of an entity.
        """
        cands: list[_Candidate] = []
        for scan in self._scanners:
            scan(text, cands, True)
        spans = [(c[1], c[2]) for c in cands]
        return _resolve(cands), spans
