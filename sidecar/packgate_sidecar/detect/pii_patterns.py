"""The structured PII entities: e-mail, SSN, IP, payment card and IBAN scanners.

Why these are precompiled regexes plus checks rather than a model: each of these identifiers has
a strict shape and, for cards and IBANs, a checksum (Luhn, mod-97) or, for IPs, a parser
(`ipaddress`) that makes a match trustworthy. A scanner appends candidates
`(rank, start, end, entity)` to a list; `pii.py` resolves overlaps between all scanners' results.
The patterns that start at a digit run only inside the windows `pii_regions.digit_windows` finds
(the same findings as over the whole text, at a fraction of the cost).

An SSN is nine digits in the 3-2-4 layout with one consistent separator, or nine bare digits when
a context word (`SSN`, `social security`) stands just before them: without a word, nine bare
digits are as often an order or account number.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Collection, Sequence

from .pii_regions import SHORTEST_WINDOW, Region, iban_heads

# Overlap resolution: checksum-validated identifiers are the most trustworthy, phone numbers (the
# loosest rule) the least; within a rank the longer span wins.
RANK = {"CREDIT_CARD": 0, "IBAN": 0, "EMAIL": 1, "IP_ADDRESS": 1, "SSN": 1, "PHONE": 3}
CUSTOM_RANK = 2

Candidate = tuple[int, int, int, str]  # (rank, start, end, entity)
# (text, out, partial, windows): `partial` means more text may follow the end of `text`
# (streaming); `windows` are the text's `digit_windows`.
Scanner = Callable[[str, list[Candidate], bool, Sequence[Region]], None]


def hold(start: int, end: int) -> Candidate:
    """Not a finding: a span a streaming caller must not cut (entity "" is never reported)."""
    return (99, start, end, "")


# Speed note: every pattern starts with a character class and puts its "not glued to the previous
# token" lookbehind after that first character. `re` can then skip ahead in C to characters that
# can start a match; a leading lookbehind would make it try every position of the text.

# --- e-mail, SSN, IP -----------------------------------------------------------------------------

# Found from the "@" outwards: scanning for local parts would start a match at every letter.
_EMAIL_DOMAIN = re.compile(
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}(?![\w\-])"
)
# The local part before the "@": not glued to a word, "." or "%+-" before it, not starting with
# ".", at most 64 characters. As a search ending at the "@" that pattern tries every start in
# the 64 characters before it, each running to the "@" (most of an e-mail scan); `_email_local`
# finds the same start from the "@" leftwards instead.
EMAIL_LOCAL = re.compile(r"(?<![\w.%+\-])[A-Za-z0-9_%+\-][A-Za-z0-9_.%+\-]{0,63}\Z")
_LOCAL_RUN = re.compile(r"[A-Za-z0-9_.%+\-]*")
_GLUED = re.compile(r"[\w.%+\-]")
# "SSN", "SSN#", "SSNs", "social security", then up to three short words ("number is", "no.").
_SSN_CONTEXT = re.compile(
    r"(?:\bssns?|\bsocial[\s\-]+security)\b(?:\W+[^\W\d]{1,12}){0,3}\W*\Z", re.IGNORECASE
)
SSN_CONTEXT_BEFORE = 40
# IPv6: found from two colons at most four hex digits apart (a fast literal scan, where starting
# at every hex letter a-f of English text is not), then the hex/colon/dot run around them is
# handed to `ipaddress`.
_IPV6_HINT = re.compile(r":[0-9A-Fa-f]{0,4}:")
_IPV6 = re.compile(r"(?<![\w:.])[0-9A-Fa-f:]+(?:\.[0-9]+)*(?![\w:])")
_HEX_BEFORE = re.compile(r"[0-9A-Fa-f]{0,4}\Z")

# SSNs, IPv4 addresses and payment cards: one pattern, as each is a whole token that starts at
# a digit with no word character or "." before it (so a digit inside a token costs one failed
# look-behind, not one per entity), and a token is at most one of them: the alternatives never
# match at the same place, and none starts inside another's match (a property test holds this
# pattern to the four separate ones).
_TOKEN = re.compile(
    r"\d(?<![\w.]\d)(?:"
    # SSN: 3-2-4 digits, the same separator twice; the issuing rules are checked in `scan_tokens`.
    r"(?P<SSN>(?<!-\d)\d\d(?P<ssn_sep>[- .])\d\d(?P=ssn_sep)\d{4}(?![\w\-]|\.\d))"
    # Nine bare digits: an SSN only after a context word.
    r"|(?P<SSN_BARE>(?<![\-+]\d)\d{8}(?![\w\-]|\.\d))"
    r"|(?P<IP_ADDRESS>\d{0,2}\.\d{1,3}\.\d{1,3}\.\d{1,3}(?!\w|\.\d))"
    # A bare 12-19 digit run or 4-digit-led groups with one consistent separator (4-4-4-4, 4-6-5
    # Amex, 4-6-4 Diners); loose grouping would swallow phone numbers.
    r"|(?P<CREDIT_CARD>(?<![+\-]\d)(?<!\d \d)"
    r"(?:\d{11,18}|\d{3}(?P<card_sep>[ \-])\d{4,6}(?:(?P=card_sep)\d{3,6}){1,3})(?![\w\-]|\.\d))"
    r")"
)
TOKEN_ENTITIES = ("SSN", "IP_ADDRESS", "CREDIT_CARD")

# --- payment cards and IBANs ---------------------------------------------------------------------

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


# IBAN check digits: each letter counts as a two-digit number, A = 10 ... Z = 35.
_IBAN_LETTERS = {ord(ch): str(ord(ch) - 55) for ch in "ABCDEFGHIJKLMNOPQRSTUVWXYZ"}


def _ascii_digits(s: str) -> str:
    """Regex digits include other scripts (e.g. fullwidth), a cheap way to dodge ASCII rules."""
    return s if s.isascii() else "".join(str(int(c)) if c.isdecimal() else c for c in s)


# Luhn doubles every second digit from the right and adds the doubled value's digits.
_LUHN_DOUBLED = str.maketrans("0123456789", "0246813579")


def luhn_ok(digits: str) -> bool:
    """The Luhn check of ASCII `digits`, in C: every second digit from the right doubled by
    a translation, then all digits summed as bytes (a Python loop over them took 2.5x)."""
    kept, doubled = digits[-1::-2], digits[-2::-2].translate(_LUHN_DOUBLED)
    return (sum((kept + doubled).encode("ascii")) - 48 * len(digits)) % 10 == 0


def iban_ok(iban: str) -> bool:
    """ISO 13616 check: country length and mod-97 of the rearranged, letter-expanded string."""
    iban = iban.upper()
    if _IBAN_LENGTHS.get(iban[:2]) != len(iban) or not (iban.isascii() and iban.isalnum()):
        return False
    return int((iban[4:] + iban[:4]).translate(_IBAN_LETTERS)) % 97 == 1


# --- scanners ---------------------------------------------------------------------------------


def scan_email(text: str, out: list[Candidate], _partial: bool, _windows: Sequence[Region]) -> None:
    at = text.find("@")
    while at != -1:
        domain = _EMAIL_DOMAIN.match(text, at) if at else None
        if domain is not None:
            start = _email_local(text, at)
            if start >= 0:
                out.append((RANK["EMAIL"], start, domain.end(), "EMAIL"))
        at = text.find("@", at + 1)


def _email_local(text: str, at: int) -> int:
    """Where `EMAIL_LOCAL.search(text, max(0, at - 64), at)` starts its match, or -1.

    Any match ends at `at` and lies in the run of local-part characters before it. A start
    inside the run fails the look-behind (the character before it is a local-part character),
    so only the run's first character can start a match: when the run is at most 64 long, does
    not start with "." and is not glued to a word character before it.
    """
    run = _LOCAL_RUN.match(text[max(0, at - 65) : at][::-1])
    assert run is not None  # the pattern may match empty
    start = at - run.end()
    if (
        start == at
        or at - start > 64
        or text[start] == "."
        or (start > 0 and _GLUED.match(text, start - 1) is not None)
    ):
        return -1
    return start


def _issued(digits: str) -> bool:
    """Area 000, 666 and 9xx, group 00 and serial 0000 are never issued."""
    return not (
        digits[0] == "9"
        or digits[:3] in ("000", "666")
        or digits[3:5] == "00"
        or digits[5:] == "0000"
    )


def token_scanner(entities: Collection[str]) -> Scanner:
    """The scanner of `_TOKEN` that reports the SSNs, IPv4 addresses and cards of `entities`."""
    ssn, ip, card = (e in entities for e in TOKEN_ENTITIES)

    def scan(text: str, out: list[Candidate], _partial: bool, windows: Sequence[Region]) -> None:
        for pos, endpos in windows:
            if endpos - pos < SHORTEST_WINDOW:
                continue
            for m in _TOKEN.finditer(text, pos, endpos):
                kind = m.lastgroup
                if kind == "SSN":
                    s = _ascii_digits(m.group())
                    if ssn and _issued(s[:3] + s[4:6] + s[7:]):
                        out.append((RANK["SSN"], m.start(), m.end(), "SSN"))
                elif kind == "SSN_BARE":
                    start = m.start()
                    if (
                        ssn
                        and _issued(_ascii_digits(m.group()))
                        and _SSN_CONTEXT.search(text, max(0, start - SSN_CONTEXT_BEFORE), start)
                    ):
                        out.append((RANK["SSN"], start, m.end(), "SSN"))
                elif kind == "IP_ADDRESS":
                    if ip and _ipv4_ok(m.group()):
                        out.append((RANK["IP_ADDRESS"], m.start(), m.end(), "IP_ADDRESS"))
                elif card and _card_ok(m.group()):
                    out.append((RANK["CREDIT_CARD"], m.start(), m.end(), "CREDIT_CARD"))

    return scan


def _ipv4_ok(quad: str) -> bool:
    """What `ipaddress.IPv4Address` accepts (ASCII, no leading zeros, octets <= 255), faster."""
    return quad.isascii() and all(
        int(octet) <= 255 and (octet[0] != "0" or len(octet) == 1) for octet in quad.split(".")
    )


def scan_ipv6(text: str, out: list[Candidate], _partial: bool, _windows: Sequence[Region]) -> None:
    """IPv6 addresses need not hold a digit: found from the whole text's colons."""
    rank = RANK["IP_ADDRESS"]
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


def _card_ok(number: str) -> bool:
    digits = _ascii_digits(number.replace(" ", "").replace("-", ""))
    return (
        12 <= len(digits) <= 19
        and _CARD_PREFIX.match(digits) is not None
        and luhn_ok(digits)
        and digits.count(digits[0]) != len(digits)
    )


def scan_iban(text: str, out: list[Candidate], _partial: bool, windows: Sequence[Region]) -> None:
    # Only the check digits are found (in the windows): the rest is read from the whole text.
    if text.isascii():
        heads = iban_heads(text)
    else:
        heads = [m.start() for pos, end in windows for m in _IBAN.finditer(text, pos, end)]
    for head in heads:
        start = head - 2
        want = _IBAN_LENGTHS.get(text[start:head].upper())
        rest = _IBAN_REST[want].match(text, head + 2) if want else None
        if rest is not None and iban_ok(text[start : rest.end()].replace(" ", "")):
            out.append((RANK["IBAN"], start, rest.end(), "IBAN"))


def custom_scanner(label: str, pattern: re.Pattern[str]) -> Scanner:
    def scan(text: str, out: list[Candidate], _partial: bool, _windows: Sequence[Region]) -> None:
        out.extend(
            (CUSTOM_RANK, m.start(), m.end(), label)
            for m in pattern.finditer(text)
            if m.end() > m.start()
        )

    return scan
