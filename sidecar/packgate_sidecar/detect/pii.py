"""Find personal data in text so the pii-detector policy can redact it before it leaves the pod.

Why our own detector instead of presidio-analyzer: the analyzer needs spaCy models (hundreds of MB
and seconds of start-up) and runs far below the sidecar's latency budget. Structured identifiers
(cards, IBANs, SSNs, e-mail and IP addresses: `pii_patterns.py`) are better served by precompiled
regexes plus the checksums and parsers that make them trustworthy, and phone numbers by Google's
libphonenumber rules applied to candidates only (`pii_phone.py`).

The digit-based patterns (SSN, card, IBAN, IPv4, phone) run only inside the windows around
clusters of digits (`pii_regions.py`), which hold every match they have in the whole text.

Every scan runs on a normalised copy of the text (`pii_normalize.py`: NFKC, invisible characters
removed) and reports spans of the original, so obfuscated data is found and redacted whole.

Overlaps are resolved by trust, then length: checksum-validated cards and IBANs first, then
e-mail, IP and SSN, then custom patterns, then phone numbers.

For streaming, `find_partial` also says how far the text is final: where the trailing text that
could still grow into (or decide) an entity begins. See `open_tail`.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from operator import itemgetter

from .pii_normalize import Normalized
from .pii_patterns import (
    TOKEN_ENTITIES,
    Candidate,
    Scanner,
    custom_scanner,
    iban_ok,
    luhn_ok,
    scan_email,
    scan_iban,
    scan_ipv6,
    token_scanner,
)
from .pii_phone import CONTEXT_AFTER, CONTEXT_BEFORE, PhoneRule
from .pii_regions import digit_windows

__all__ = [
    "BUILTIN_ENTITIES",
    "CONTEXT_AFTER",
    "CONTEXT_BEFORE",
    "Finding",
    "PiiDetector",
    "iban_ok",
    "luhn_ok",
    "open_tail",
]

BUILTIN_ENTITIES = ("EMAIL", "PHONE", "SSN", "CREDIT_CARD", "IBAN", "IP_ADDRESS")
_LABEL = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")


@dataclass(frozen=True, slots=True)
class Finding:
    """One detected entity: `text[start:end]` (0-based, end exclusive) is an `entity`."""

    entity: str
    start: int
    end: int


# `open_tail` as one regex over the reversed text: the trailing run of entity characters, then
# (right to left) spaces and a token holding a digit, or spaces, a short word and such a token.
_E = r"[\w@.%+\-:()#]"
_OPEN_TAIL_REVERSED = re.compile(
    rf"{_E}*(?: +{_E}*\d{_E}*(?!{_E})| +{_E}{{1,9}}(?!{_E}) +{_E}*\d{_E}*(?!{_E}))*"
)


def open_tail(text: str) -> int:
    """Where the trailing text that a built-in entity could still grow from begins.

    That is the trailing run of characters an entity can contain, extended left across spaces
    while the token before them holds a digit (phone, card, SSN and IBAN groups: "650 253 0000",
    "GB29 NWBK 6016") or is a short word right after such a token (an extension "ext. 12", an
    IBAN's letter group). Everything before it is followed by a character no entity continues
    across, so a detector's judgement of it cannot change when more text arrives (phone numbers
    waiting for a trailing context word are held separately, see `PhoneRule`).
    """
    match = _OPEN_TAIL_REVERSED.match(text[::-1])
    assert match is not None  # every part of the pattern may be empty
    return len(text) - match.end()


def _resolve(cands: list[Candidate]) -> list[tuple[int, int, str]]:
    """Keep the best of overlapping candidates: lower rank first, then the longer, then earlier."""
    cands = [c for c in cands if c[3]]
    # Usually no two overlap (and most texts hold one entity at most): then every one is
    # kept, and ordering them by start is all to do.
    if len(cands) > 1:
        cands.sort(key=itemgetter(1))
        if not all(a[2] <= b[1] for a, b in pairwise(cands)):
            return _resolve_overlaps(cands)
    return [(start, end, entity) for _, start, end, entity in cands]


def _resolve_overlaps(cands: list[Candidate]) -> list[tuple[int, int, str]]:
    cands = sorted(cands, key=lambda c: (c[0], c[1] - c[2], c[1]))
    starts: list[int] = []
    kept: list[Candidate] = []
    for cand in cands:
        _, start, end, _ = cand
        i = bisect_left(starts, start)
        if i > 0 and kept[i - 1][2] > start:
            continue
        if i < len(kept) and kept[i][1] < end:
            continue
        starts.insert(i, start)
        kept.insert(i, cand)
    return [(start, end, entity) for _, start, end, entity in kept]


class PiiDetector:
    """Finds the configured entities; build once per config, call `find` per text."""

    __slots__ = ("_phone", "_scanners", "builtin_only", "entities")

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
        # SSNs, cards and IPv4 addresses in one pass; phone numbers last: the other scanners'
        # candidates spare it most validations.
        scanners: list[Scanner] = []
        if any(e in entities for e in TOKEN_ENTITIES):
            scanners.append(token_scanner(entities))
        scanners += [scan_email] if "EMAIL" in entities else []
        scanners += [scan_iban] if "IBAN" in entities else []
        scanners += [scan_ipv6] if "IP_ADDRESS" in entities else []
        self._phone = PhoneRule(phone_regions) if "PHONE" in entities else None
        for label, regex in custom_patterns:
            if not _LABEL.fullmatch(label):
                raise ValueError(f"custom PII pattern label {label!r} must match {_LABEL.pattern}")
            try:
                compiled = re.compile(regex)
            except re.error as exc:
                raise ValueError(f"custom PII pattern {label}: invalid regex: {exc}") from exc
            scanners.append(custom_scanner(label, compiled))
        self._scanners = tuple(scanners)
        # Custom patterns are arbitrary regexes: no shortcut may assume what they match.
        self.builtin_only = not custom_patterns
        self.entities = tuple(dict.fromkeys([*entities, *(label for label, _ in custom_patterns)]))

    def _scan(self, norm: Normalized, partial: bool) -> list[Candidate]:
        cands: list[Candidate] = []
        text = norm.text
        # The windows are there exactly when the text holds a digit (each digit starts or
        # joins a cluster), so they answer the digit part of the trigger test too.
        windows = digit_windows(text)
        if (
            self.builtin_only
            and not norm.changed
            and not windows
            and "@" not in text
            and ":" not in text
        ):
            # No digit, '@' or ':' (e-mail needs '@', IPv6 ':'): no built-in entity can be in it.
            return cands
        for scan in self._scanners:
            scan(text, cands, partial, windows)
        if self._phone is not None:
            self._phone.scan(text, cands, partial, windows)
        return cands

    def find(self, text: str) -> list[Finding]:
        """Sorted, non-overlapping findings in `text`."""
        norm = Normalized(text)
        found = _resolve(self._scan(norm, False))
        if not norm.changed:
            return [Finding(entity, start, end) for start, end, entity in found]
        return [Finding(entity, *norm.span(start, end)) for start, end, entity in found]

    def find_partial(self, text: str) -> tuple[list[Finding], list[tuple[int, int]], int | None]:
        """For streaming, where more text may follow `text`.

        Returns the findings; the (start, end) of every span a caller cutting the text must not
        cut inside: each candidate that passed validation (before overlaps were resolved), each
        phone-shaped run, and from a phone number whose trailing context word may not have
        arrived yet (which counts as found) to past the end; and where the open tail begins
        (`open_tail`), or None when custom patterns make it unknowable. A caller that holds back
        the open tail and everything such a span touches never releases half of an entity.
        """
        norm = Normalized(text)
        cands = self._scan(norm, True)
        # A hold may reach past the end of the text (see PhoneRule): it stays past the end.
        spans = [
            norm.span(start, end) if end <= len(norm.text) else (norm.start(start), len(text) + 1)
            for _, start, end, _ in cands
        ]
        findings = [Finding(e, *norm.span(s, t)) for s, t, e in _resolve(cands)]
        tail = norm.start(open_tail(norm.text)) if self.builtin_only else None
        return findings, spans, tail
