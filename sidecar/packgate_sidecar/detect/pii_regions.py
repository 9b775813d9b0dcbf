"""Where in a text the digit-based PII patterns can match: windows around clusters of digits.

Why: the SSN, card, IBAN, IPv4 and phone patterns each start at a digit, and `re` finds their
start by testing every character of the text against `\\d` (a Unicode category lookup): about
10 us per KB per pattern, the largest part of a scan, although prose holds a few digits per line.
So one pass finds the clusters of digits (on ASCII text as a byte-level literal scan of a
translated copy, much cheaper than `\\d`), and each pattern then runs with `pos`/`endpos` inside
the windows around them only.

Why the findings are the same as over the whole text (`tests/unit/sidecar/test_pii_regions.py`
holds it with a property test against whole-text scans):
- Every match of those patterns holds a digit, and between two consecutive digits of one match
  there is either a run of phone separators only (`[().\\- ]`, any length: a phone run) or at
  most `GAP` characters (a phone extension: " extension " is the longest). Digits joined that
  way form one cluster, so every digit of a match lies in one cluster.
- A match starts at most `BEFORE` characters before its first digit ("(+" of a phone number) and
  ends right after a digit (or an IBAN's check digits); its lookahead reads at most `AFTER`
  characters past the end. A window runs from `BEFORE` before its cluster to `AFTER` after it,
  so it holds the match and all the lookahead reads; the same holds for every path the regex
  engine tries that could end in a match, so `endpos` changes no result.
- Lookbehinds still see the text before `pos` (`re` keeps the whole string), so a window start
  changes none either. Clusters lie more than `GAP` characters apart, so windows never touch and
  no match is found twice, and a search resumed at a window start finds what the whole-text
  search finds there, as no match can start between windows.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

Region = tuple[int, int]

# The longest non-separator stretch between two digits of one match: " extension " of a phone.
GAP = 11
# "(+" before a phone number's first digit; the lookaheads read two characters past a match.
BEFORE, AFTER = 2, 2
_SEPARATORS = "().- "

# ASCII text: digits become "0" and letters "a" (for `iban_heads`); a cluster is then found
# from the literal "0", which `re` skips to without testing each character's category.
_MAP = bytes(
    ord("0") if chr(b).isdigit() else ord("a") if chr(b).isalpha() else b
    for b in (*range(128), *b"." * 128)  # a translation table has 256 entries; text is ASCII
)
_CLUSTER_ASCII = re.compile(rb"0(?:[().\- ]*+0|[^0]{0,%d}0)*" % GAP)
_CLUSTER = re.compile(rf"\d(?:[().\- ]*+\d|\D{{0,{GAP}}}\d)*")
# Clusters lie more than GAP characters apart, so windows this much wider never touch.
assert BEFORE + AFTER <= GAP
# A card, SSN, IPv4 address or phone run (`pii_patterns._TOKEN`, `pii_phone._PHONE`) runs at
# least 7 characters from its first digit to its last, both in one cluster: a window around a
# shorter cluster (a year, a day, a count: most numbers in prose) cannot hold one, so those
# scanners skip it rather than start a search there.
SHORTEST_RUN = 7
SHORTEST_WINDOW = BEFORE + SHORTEST_RUN + AFTER


def digit_windows(text: str) -> list[Region]:
    """Sorted, disjoint (start, end) windows that hold every match of the digit patterns."""
    clusters: Iterator[re.Match[bytes]] | Iterator[re.Match[str]]
    if text.isascii():
        clusters = _CLUSTER_ASCII.finditer(text.encode("ascii").translate(_MAP))
    else:
        clusters = _CLUSTER.finditer(text)
    # `re` reads a negative pos as 0 and an endpos past the end as the end.
    return [(cluster.start() - BEFORE, cluster.end() + AFTER) for cluster in clusters]


def iban_heads(text: str) -> list[int]:
    """In ASCII text, where `pii_patterns._IBAN` matches: the first of two digits that follow
    two letters with no letter or digit before them (an IBAN's country code and check digits).

    One substring search of the translated copy instead of a look-behind at every digit.
    """
    mapped = text.encode("ascii").translate(_MAP)
    heads = []
    at = mapped.find(b"aa00")
    while at != -1:
        if at == 0 or mapped[at - 1] not in b"a0":
            heads.append(at + 2)
        at = mapped.find(b"aa00", at + 1)
    return heads
