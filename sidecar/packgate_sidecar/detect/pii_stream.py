"""Redact PII in a streamed response (SSE deltas) without buffering the whole stream.

Why: a model streams a phone number as "+1 650", " 253", " 0000"; redacting each delta alone
would pass every piece through. Buffering the whole response would defeat streaming and let memory
grow with the response. So the redactor holds back only the text that could still be (or decide)
an entity: the open tail the detector reports (`pii.open_tail`: the trailing word, plus digit
groups before it joined by spaces), moved further left when a candidate entity crosses the cut,
or a phone number still waits for its trailing context word. Ordinary prose is released as it
arrives, less its last word; with custom patterns (arbitrary regexes, whose open tail cannot be
known) the last `holdback` characters are held instead.

Guarantee: the concatenated output equals `anonymize(full_text, detector.find(full_text))` for
any chunking (property-tested): the cut never falls inside a validated candidate, a phone-shaped
number run or the open tail, so the text left of it is judged as the full text would judge it,
and `CONTEXT_BEFORE` + 16 characters of released text are kept as left context. With custom
patterns the guarantee needs every entity shorter than `holdback`.

Deltas whose text holds no digit, '@', ':' or non-ASCII character cannot start or complete a
built-in entity, so the detector is not run for them at all: only the open tail is computed; at
the end of the stream such a held-back tail is released as it is. While the pending text is one
run of ASCII entity characters (a word or an e-mail address still arriving) not even that: the
open tail covers all of it, so nothing can be released yet.

Memory is bounded: a run of overlapping candidates (or one unbroken token) longer than
`max_pending` is released anyway (any entity found in it is still redacted), so pending text
never grows past roughly `max_pending` plus one delta.
"""

from __future__ import annotations

import re

from packgate_sidecar.detect.anonymize import Action, anonymize
from packgate_sidecar.detect.pii import (
    CONTEXT_AFTER,
    CONTEXT_BEFORE,
    Finding,
    PiiDetector,
    open_tail,
)

_LEFT_CONTEXT = CONTEXT_BEFORE + 16
# Text no built-in entity can start or end in: printable ASCII (plus tab and line breaks) without
# digits, '@' or ':', which normalisation leaves unchanged.
_PLAIN = re.compile(r"[\t\n\r !-/;-?A-~]*")
# The ASCII characters of `pii.open_tail`'s entity run (non-ASCII ones may change in
# normalisation: NFKC turns the word character "\u00bc" into "1\u20444", which ends a run).
_ONE_RUN = re.compile(r"[A-Za-z0-9_@.%+\-:()#]+")


class StreamRedactor:
    """Feed deltas in order, emit what `feed` returns, then emit `flush()` at end of stream."""

    __slots__ = (
        "_action",
        "_clean",
        "_context",
        "_detector",
        "_hash_salt",
        "_holdback",
        "_max_pending",
        "_pending",
        "counts",
    )

    def __init__(
        self,
        detector: PiiDetector,
        action: Action,
        holdback: int = 64,
        *,
        max_pending: int | None = None,
        hash_salt: bytes | None = None,
    ) -> None:
        if holdback < CONTEXT_AFTER:
            raise ValueError(f"holdback must be at least {CONTEXT_AFTER} characters")
        anonymize("", [], action)  # reject an unknown action now, not mid-stream
        self._detector = detector
        self._action: Action = action
        self._holdback = holdback
        self._max_pending = max_pending if max_pending is not None else 16 * holdback + 1024
        if self._max_pending <= holdback:
            raise ValueError("max_pending must exceed holdback")
        self._hash_salt = hash_salt
        self._context = ""  # tail of released raw text: left context for the detector
        self._pending = ""  # raw text not released yet
        self._clean = True  # the last cut fell where no entity of the final text can cross it
        # Entities redacted so far, by type: a policy reports them without seeing the values.
        self.counts: dict[str, int] = {}

    def feed(self, delta: str) -> str:
        """Add the next delta; return the redacted text that is safe to release now."""
        self._pending += delta
        if self._detector.builtin_only:
            pending = self._pending
            if len(pending) <= self._max_pending:
                if _ONE_RUN.fullmatch(pending):
                    # One run of entity characters (a word, an e-mail address or a number
                    # still arriving: about half of a stream's deltas). The open tail's
                    # trailing run covers all of it and the detector's cut lies at or before
                    # it, so nothing would be released, and no entity crosses the last cut.
                    self._clean = True
                    return ""
                if self._clean and _PLAIN.fullmatch(pending):
                    # Nothing here can be or finish an entity: release up to the open tail.
                    window, base = self._context + pending, len(self._context)
                    cut = open_tail(window)
                    return self._emit(window, base, cut, []) if cut > base else ""
        elif len(self._pending) <= self._holdback:
            return ""
        return self._release(final=False)

    def flush(self) -> str:
        """End of stream: return the rest, redacted. The redactor can then be reused."""
        pending = self._pending
        if not pending:
            out = ""
        elif self._detector.builtin_only and self._clean and _PLAIN.fullmatch(pending):
            # Nothing in it can be or finish an entity, and none crosses the last cut (clean):
            # what the detector would find in the window lies wholly in released text.
            out, self._pending = pending, ""
        else:
            out = self._release(final=True)
        self._context = ""
        self._clean = True
        return out

    def _release(self, final: bool) -> str:
        window = self._context + self._pending
        base = len(self._context)
        if final:
            findings, cut = self._detector.find(window), len(window)
        else:
            findings, spans, tail = self._detector.find_partial(window)
            cut = self._cut(findings, spans, base, len(window), tail)
            if cut <= base:
                return ""
        emit: list[Finding] = []
        for f in findings:
            if f.end <= base or f.start >= cut:
                continue
            # A finding that reaches into released text can only come from context the earlier
            # call could not see (or from a match longer than the holdback): redact the part
            # that is still ours rather than release it, and the rest next time.
            if base == 0 and f.end <= cut:
                emit.append(f)  # already as the released text counts (a stream's first release)
            else:
                emit.append(Finding(f.entity, max(f.start, base) - base, min(f.end, cut) - base))
            if f.start >= base:  # the rest of an entity begun in released text is not a new one
                self.counts[f.entity] = self.counts.get(f.entity, 0) + 1
        return self._emit(window, base, cut, emit)

    def _emit(self, window: str, base: int, cut: int, emit: list[Finding]) -> str:
        """Release window[base:cut] with `emit` (offsets relative to base) redacted."""
        raw = window[base:cut]
        out = anonymize(raw, emit, self._action, hash_salt=self._hash_salt) if emit else raw
        self._context = window[max(0, cut - _LEFT_CONTEXT) : cut]
        self._pending = window[cut:]
        return out

    def _cut(
        self,
        findings: list[Finding],
        spans: list[tuple[int, int]],
        base: int,
        length: int,
        tail: int | None,
    ) -> int:
        cut = length - self._holdback if tail is None else tail
        spans = [s for s in spans if s[0] >= base]
        moved = True
        while moved:  # a cut moved to one candidate's start may land inside another
            moved = False
            for start, end in spans:
                if start < cut < end:
                    cut, moved = start, True
        self._clean = True
        if length - max(cut, base) > self._max_pending:
            # A candidate run longer than max_pending: release up to the holdback anyway, but
            # extend over any finding that crosses that point so it is redacted whole.
            cut = length - self._holdback
            for f in findings:
                if f.start < cut < f.end:
                    cut = f.end
            self._clean = False
        return cut
