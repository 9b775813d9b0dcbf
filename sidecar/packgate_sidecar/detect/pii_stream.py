"""Redact PII in a streamed response (SSE deltas) without buffering the whole stream.

Why: a model streams a phone number as "+1 650", " 253", " 0000"; redacting each delta alone
would pass every piece through. Buffering the whole response would defeat streaming and let memory
grow with the response. So the redactor keeps a short tail unreleased: each `feed` runs the
detector over the pending text (plus a little already-released text as left context) and releases
everything except the last `holdback` characters, moved further left when a candidate entity
crosses the cut, so an entity is always released whole and redacted.

Guarantee: the concatenated output equals `anonymize(full_text, detector.find(full_text))` for
any chunking when every entity is shorter than `holdback` (property-tested). The cut never falls
inside a validated candidate or a phone-shaped number run (`PiiDetector.find_partial`), so the
text left of it is judged as the full text would judge it: it has at least `holdback` characters
of right context (>= the detector's look-ahead), and `CONTEXT_BEFORE` + 16 characters of released
text are kept as left context. An entity longer than `holdback` may be released partly unredacted
if its beginning was released before its end arrived (e.g. a 70-character e-mail address).

Memory is bounded: a run of overlapping candidates longer than `max_pending` is released anyway
(any entity found in it is still redacted), so pending text never grows past roughly `max_pending`
plus one delta.
"""

from __future__ import annotations

from packgate_sidecar.detect.anonymize import Action, anonymize
from packgate_sidecar.detect.pii import CONTEXT_AFTER, CONTEXT_BEFORE, Finding, PiiDetector

_LEFT_CONTEXT = CONTEXT_BEFORE + 16


class StreamRedactor:
    """Feed deltas in order, emit what `feed` returns, then emit `flush()` at end of stream."""

    __slots__ = (
        "_action",
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
        # Entities redacted so far, by type: a policy reports them without seeing the values.
        self.counts: dict[str, int] = {}

    def feed(self, delta: str) -> str:
        """Add the next delta; return the redacted text that is safe to release now."""
        self._pending += delta
        if len(self._pending) <= self._holdback:
            return ""
        return self._release(final=False)

    def flush(self) -> str:
        """End of stream: return the rest, redacted. The redactor can then be reused."""
        out = self._release(final=True) if self._pending else ""
        self._context = ""
        return out

    def _release(self, final: bool) -> str:
        window = self._context + self._pending
        base = len(self._context)
        if final:
            findings, cut = self._detector.find(window), len(window)
        else:
            findings, spans = self._detector.find_partial(window)
            cut = self._cut(findings, spans, base, len(window))
            if cut <= base:
                return ""
        emit: list[Finding] = []
        for f in findings:
            if f.end <= base or f.start >= cut:
                continue
            # A finding that reaches into released text can only come from context the earlier
            # call could not see (or from a match longer than the holdback): redact the part
            # that is still ours rather than release it, and the rest next time.
            emit.append(Finding(f.entity, max(f.start, base) - base, min(f.end, cut) - base))
            if f.start >= base:  # the rest of an entity begun in released text is not a new one
                self.counts[f.entity] = self.counts.get(f.entity, 0) + 1
        raw = window[base:cut]
        out = anonymize(raw, emit, self._action, hash_salt=self._hash_salt) if emit else raw
        self._context = window[max(0, cut - _LEFT_CONTEXT) : cut]
        self._pending = window[cut:]
        return out

    def _cut(
        self, findings: list[Finding], spans: list[tuple[int, int]], base: int, length: int
    ) -> int:
        cut = length - self._holdback
        spans = [s for s in spans if s[0] >= base]
        moved = True
        while moved:  # a cut moved to one candidate's start may land inside another
            moved = False
            for start, end in spans:
                if start < cut < end:
                    cut, moved = start, True
        if length - max(cut, base) > self._max_pending:
            # A candidate run longer than max_pending: release up to the holdback anyway, but
            # extend over any finding that crosses that point so it is redacted whole.
            cut = length - self._holdback
            for f in findings:
                if f.start < cut < f.end:
                    cut = f.end
        return cut
