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
  changes none either. Windows that would touch are merged, so no match is found twice, and a
  search resumed at a window start finds what the whole-text search finds there, as no match can
  start between windows.
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

# ASCII text: digits become "0", phone separators "-", everything else "."; a cluster is then
# found from the literal "0", which `re` skips to without testing each character's category.
_MAP = bytes(
    ord("0") if chr(b) in "0123456789" else ord("-") if chr(b) in _SEPARATORS else ord(".")
    for b in range(256)
)
_CLUSTER_ASCII = re.compile(rb"0(?:-*+0|[-.]{0,%d}0)*" % GAP)
_CLUSTER = re.compile(rf"\d(?:[().\- ]*+\d|\D{{0,{GAP}}}\d)*")


def digit_windows(text: str) -> list[Region]:
    """Sorted, disjoint (start, end) windows that hold every match of the digit patterns."""
    clusters: Iterator[re.Match[bytes]] | Iterator[re.Match[str]]
    if text.isascii():
        clusters = _CLUSTER_ASCII.finditer(text.encode("ascii").translate(_MAP))
    else:
        clusters = _CLUSTER.finditer(text)
    windows: list[Region] = []
    last = len(text)
    for cluster in clusters:
        start = cluster.start() - BEFORE
        end = min(last, cluster.end() + AFTER)
        if windows and start <= windows[-1][1]:
            windows[-1] = (windows[-1][0], end)
        else:
            windows.append((max(0, start), end))
    return windows
