"""The pii-detector policy: redact, mask, hash or block personal data in requests and responses.

Why it exists: personal data (e-mail addresses, phone numbers, SSNs, card numbers, IBANs, IP
addresses, plus the pack's own `detect_patterns`) must not leave the pod for the provider, and
with `scan_responses` must not reach the application from the model either. Detection is
`detect/pii.py`, the replacement presidio-anonymizer's operators (`detect/anonymize.py`).

Every text is scanned, whatever its role: a system prompt or a tool result holding a customer's
e-mail address leaks it just the same. Tool-call arguments in requests are JSON: they are parsed
and each string redacted on its own, then serialised again (JSON escapes would otherwise hide an
entity from the detector, and a redaction could cut an escape in two); arguments that are not
JSON are scanned as plain text. `redact`/`mask`/`hash` rewrite the texts and let the
request go on; `block` refuses it. Streamed responses go through a `StreamRedactor` per text
channel, which holds back only text that could still be part of an entity (the last word, a
number that may still grow) so an entity split across deltas is still caught without buffering
the stream; with `block`, the stream is ended as soon as an entity is found.

Decisions name entity types and counts (`pii:EMAIL,PHONE`, details `{"EMAIL": 2, "PHONE": 1}`),
never values. The request phase keeps its findings (types and offsets only) in
`ctx.state["pii-detector"]` for `packgate scan`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from packgate_policy import PiiDetector as PiiSettings
from packgate_policy import PolicyBlock

from ..detect.anonymize import anonymize, replacements, splice
from ..detect.pii import Finding, PiiDetector
from ..detect.pii_stream import StreamRedactor
from ..policy import (
    ALLOW,
    Blocked,
    Decision,
    Policy,
    PolicyRuntime,
    RequestContext,
    StreamFilter,
    TextItem,
)
from .common import counted_reason, offloaded, settings_as, text_chars

# With custom patterns (whose open tail cannot be known) a stream channel holds back this many
# characters: the longest custom match caught whole.
HOLDBACK = 64
# One of each entity: scanned once when the policy is built, so the lazy loading of phone
# metadata and of presidio's engine happens at config load, not in a request's time budget.
_WARM_UP = (
    "Call +1 650-253-0000 or (650) 253-0000, phone: +44 20 7946 0958, jane@example.com, "
    "4111 1111 1111 1111, DE89 3704 0044 0532 0130 00, 192.168.0.1, 078-05-1120"
)


@dataclass(frozen=True, slots=True)
class _Item:
    """What scanning one text found: immutable, as the verdict cache hands it out again.

    The cache keeps thousands of these, so a plain text's rewrite is kept as its replacements
    (`anonymize.replacements`: "<EMAIL>" is one shared string) and spliced into the text again
    on each use (~1 us for a 1 KB text with five entities), not as a copy of the text, which
    was most of what the cache held under new prompts; counts come from the findings.
    """

    findings: tuple[Finding, ...] = ()  # plain texts only (not tool-call arguments)
    replaced: tuple[str, ...] = ()  # each finding's replacement, when the text is rewritten
    rewritten: str | None = None  # a rewrite not made of findings: tool-call arguments' JSON
    counts: tuple[tuple[str, int], ...] = ()  # tool-call arguments' counts by entity

    def size(self) -> int:
        return (
            sum(map(len, self.replaced))
            + (len(self.rewritten) if self.rewritten else 0)
            + 48 * (len(self.findings) + len(self.counts))
        )

    def rewrite(self, text: str) -> str | None:
        """The rewritten `text` (the text this item was made from), None when unchanged."""
        if self.replaced:
            return splice(text, self.findings, self.replaced)
        return self.rewritten

    def count(self, counts: dict[str, int]) -> None:
        for entity, count in self.counts:
            counts[entity] = counts.get(entity, 0) + count
        for finding in self.findings:
            counts[finding.entity] = counts.get(finding.entity, 0) + 1


@dataclass
class _Scan:
    counts: dict[str, int] = field(default_factory=dict)
    rewrites: dict[int, str] = field(default_factory=dict)
    findings: dict[int, list[Finding]] = field(default_factory=dict)


def _arguments(item: TextItem) -> bool:
    """Whether a text is tool-call arguments holding JSON (scanned value by value)."""
    return item.path.endswith(".arguments") and item.text.lstrip()[:1] in ("{", "[")


class PiiDetectorPolicy(Policy):
    kind = "pii-detector"

    def __init__(self, settings: PolicyBlock, runtime: PolicyRuntime) -> None:
        super().__init__(settings, runtime)
        self.config = settings_as(settings, PiiSettings)
        self.detector = PiiDetector(
            self.config.entities,
            [(pattern.label, pattern.regex) for pattern in self.config.detect_patterns],
        )
        self.scan([TextItem(_WARM_UP, "user", "warm-up")])

    def _text(self, text: str, counts: dict[str, int]) -> tuple[str, list[Finding]]:
        findings = self.detector.find(text) if text else []
        for finding in findings:
            counts[finding.entity] = counts.get(finding.entity, 0) + 1
        if not findings or self.config.action == "block":
            return text, findings
        return anonymize(text, findings, self.config.action), findings

    def _json(self, value: Any, counts: dict[str, int]) -> Any:
        if isinstance(value, str):
            return self._text(value, counts)[0]
        if isinstance(value, list):
            return [self._json(item, counts) for item in value]
        if isinstance(value, dict):
            return {self._json(k, counts): self._json(v, counts) for k, v in value.items()}
        return value

    def _arguments(self, text: str, counts: dict[str, int]) -> str | None:
        """Tool-call arguments redacted value by value, or None when they are not JSON."""
        try:
            parsed = json.loads(text)
        except ValueError:
            return None
        if not isinstance(parsed, dict | list):
            return None
        before = sum(counts.values())
        redacted = self._json(parsed, counts)
        if sum(counts.values()) == before:
            return text
        return json.dumps(redacted, ensure_ascii=False)

    def _scan_text(self, text: str, arguments: bool) -> _Item:
        """One text's counts, rewrite and findings: pure in (text, settings), so memoised."""
        # Arguments are JSON: scanned as text, an escape such as \u00c0 next to a number
        # hides it, and a redaction could cut an escape in two and break the JSON.
        if arguments:
            counts: dict[str, int] = {}
            redacted = self._arguments(text, counts)
            if redacted is not None:
                rewritten = None if redacted == text else redacted
                return _Item(rewritten=rewritten, counts=tuple(counts.items()))
        findings = tuple(self.detector.find(text))
        if not findings or self.config.action == "block":
            return _Item(findings)
        replaced = replacements(text, findings, self.config.action)
        if replaced is None:  # never from the detector (its findings are ordered): keep it whole
            return _Item(findings, rewritten=anonymize(text, findings, self.config.action))
        if splice(text, findings, replaced) == text:
            return _Item(findings)  # rewritten to itself: reported as unchanged, as before
        return _Item(findings, replaced)

    def _scan_plain(self, text: str) -> _Item:
        return self._scan_text(text, False)

    def _scan_arguments(self, text: str) -> _Item:
        return self._scan_text(text, True)

    def scan(self, texts: Sequence[TextItem]) -> _Scan:
        """Counts by entity, the rewritten texts, and the plain texts' findings.

        Each text is scanned once per policy config (`memo`): the earlier turns a chat re-sends
        with every request are not scanned or redacted again.
        """
        result = _Scan()
        indexes = [index for index, item in enumerate(texts) if item.text]
        arguments = [_arguments(texts[index]) for index in indexes]
        if any(arguments):
            done = [
                self.judge("arguments", texts[index], self._scan_arguments, _Item.size)
                if is_arguments
                else self.judge("text", texts[index], self._scan_plain, _Item.size)
                for index, is_arguments in zip(indexes, arguments, strict=True)
            ]
        else:  # the usual case: every text judged in one pass over the verdict cache
            items = [texts[index] for index in indexes]
            done = self.judge_all("text", items, self._scan_plain, _Item.size)
        for index, item in zip(indexes, done, strict=True):
            if not item.findings and not item.counts and item.rewritten is None:
                continue  # nothing found (most texts): nothing to count or rewrite
            item.count(result.counts)
            if item.findings:
                result.findings[index] = list(item.findings)
            rewritten = item.rewrite(texts[index].text)
            if rewritten is not None:
                result.rewrites[index] = rewritten
        return result

    def _decide(self, scanned: _Scan) -> Decision:
        if not scanned.counts:
            return ALLOW
        reason = counted_reason("pii", scanned.counts)
        if self.config.action == "block":
            return Decision.block(reason, **scanned.counts)
        return Decision.rewrite(scanned.rewrites, reason, **scanned.counts)

    async def on_request(self, ctx: RequestContext, texts: Sequence[TextItem]) -> Decision:
        # Inline unless large (see common.OFFLOAD_CHARS): no coroutine layer per request.
        if offloaded(text_chars(texts)):
            scanned = await asyncio.to_thread(self.scan, texts)
        else:
            scanned = self.scan(texts)
        if scanned.findings:
            ctx.state[self.kind] = {"findings": scanned.findings}
        return self._decide(scanned)

    async def on_response(self, ctx: RequestContext, texts: Sequence[TextItem]) -> Decision:
        if not self.config.scan_responses:
            return ALLOW
        if offloaded(text_chars(texts)):
            return self._decide(await asyncio.to_thread(self.scan, texts))
        return self._decide(self.scan(texts))

    def stream_filter(self, ctx: RequestContext) -> StreamFilter | None:
        if not self.config.scan_responses:
            return None
        if self.config.action == "block":
            return _BlockingFilter(self.detector)
        return _RedactingFilter(StreamRedactor(self.detector, self.config.action, HOLDBACK))


class _RedactingFilter(StreamFilter):
    __slots__ = ("redactor",)
    may_block = False

    def __init__(self, redactor: StreamRedactor) -> None:
        self.redactor = redactor

    def feed(self, text: str) -> str:
        return self.redactor.feed(text)

    def finish(self) -> str:
        return self.redactor.flush()

    def summary(self) -> Decision | None:
        counts = self.redactor.counts
        if not counts:
            return None
        return Decision("rewrite", counted_reason("pii", counts), details=dict(counts))


class _BlockingFilter(StreamFilter):
    """Ends the stream at the first entity. The redactor decides what is safe to release, so
    nothing of an entity goes out before it is recognised; its output is only sent while it
    has found nothing."""

    __slots__ = ("redactor",)

    def __init__(self, detector: PiiDetector) -> None:
        self.redactor = StreamRedactor(detector, "redact", HOLDBACK)

    def _check(self, out: str) -> str:
        counts = self.redactor.counts
        if counts:
            raise Blocked(counted_reason("pii", counts), **counts)
        return out

    def feed(self, text: str) -> str:
        return self._check(self.redactor.feed(text))

    def finish(self) -> str:
        return self._check(self.redactor.flush())
