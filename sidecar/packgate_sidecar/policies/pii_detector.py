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
import sys
from array import array
from collections.abc import Iterator, Mapping, Sequence
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

    The cache keeps thousands of these, so they are compact. A plain text's rewrite is kept as
    its replacements (`anonymize.replacements`: "<EMAIL>" is one shared string) and spliced
    into the text again on each use (~1 us for a 1 KB text with five entities), not as a copy
    of the text. Its findings are kept as their entity names (a tuple shared by all texts with
    the same sequence, `_shared`) and their offsets packed in one bytes object, not as Finding
    objects with an int object per offset: ~150 bytes for five findings instead of ~800. Counts
    come from the entity names.
    """

    entities: tuple[str, ...] = ()  # each finding's entity (plain texts only)
    spans: bytes = b""  # each finding's (start, end), packed as unsigned 32-bit ints
    replaced: tuple[str, ...] = ()  # each finding's replacement, when the text is rewritten
    rewritten: str | None = None  # a rewrite not made of findings: tool-call arguments' JSON
    counts: tuple[tuple[str, int], ...] = ()  # tool-call arguments' counts by entity

    @staticmethod
    def found(
        findings: Sequence[Finding], replaced: tuple[str, ...] = (), markers: bool = False
    ) -> _Item:
        """An item of `findings` (with their `replaced` values when rewritten); `markers`: the
        replacements are redaction markers ("<EMAIL>"), shared like the entity names."""
        if not findings:
            return _NOTHING
        offsets = array("I", [at for f in findings for at in (f.start, f.end)])
        entities = _shared(tuple([f.entity for f in findings]))
        return _Item(entities, offsets.tobytes(), _shared(replaced) if markers else replaced)

    @property
    def findings(self) -> list[Finding]:
        offsets = iter(array("I", self.spans))
        # zip of one iterator with itself: consecutive (start, end) pairs.
        return [
            Finding(entity, start, end)
            for entity, start, end in zip(self.entities, offsets, offsets, strict=True)
        ]

    def size(self) -> int:
        """Bytes this item holds, as tracemalloc counts them, for the verdict cache's budget
        (shared tuples and the config's entity names are not this item's)."""
        if self is _NOTHING:
            return 0
        held = _ITEM_BYTES + (_BYTES_BYTES + len(self.spans) if self.spans else 0)
        if self.entities and _SHARED.get(self.entities) is not self.entities:
            held += _TUPLE_BYTES + 8 * len(self.entities)
        if self.replaced and _SHARED.get(self.replaced) is not self.replaced:
            held += _TUPLE_BYTES + 8 * len(self.replaced) + sum(map(sys.getsizeof, self.replaced))
        if self.counts:
            held += (_TUPLE_BYTES + 8) * len(self.counts) + _TUPLE_BYTES  # (entity, count) pairs
        if self.rewritten is not None:
            held += sys.getsizeof(self.rewritten)
        return held

    def rewrite(self, text: str) -> str | None:
        """The rewritten `text` (the text this item was made from), None when unchanged."""
        if not self.replaced:
            return self.rewritten
        offsets = iter(array("I", self.spans))
        pieces: list[str] = []
        at = 0
        for start, end, new in zip(offsets, offsets, self.replaced, strict=True):
            pieces.append(text[at:start])
            pieces.append(new)
            at = end
        pieces.append(text[at:])
        return "".join(pieces)

    def count(self, counts: dict[str, int]) -> None:
        for entity, count in self.counts:
            counts[entity] = counts.get(entity, 0) + count
        for entity in self.entities:
            counts[entity] = counts.get(entity, 0) + 1


_NOTHING = _Item()  # what most texts' scans find, one object for all
_ITEM_BYTES = 72  # an _Item with its five slots
_BYTES_BYTES = 33  # a bytes object besides its data
_TUPLE_BYTES = 56  # a tuple besides its items
# The sequences of entity names (and of their redaction markers) that items share: most texts
# with PII hold one of a few. Never cleared, so a tuple is shared exactly when it is in here
# (what `size` charges relies on that); filled up to a bound, first come first kept.
_SHARED: dict[tuple[str, ...], tuple[str, ...]] = {}
_SHARED_MAX = 1024
_SHARED_LENGTH = 16  # longer sequences are rarely repeated


def _shared(names: tuple[str, ...]) -> tuple[str, ...]:
    """The shared copy of `names`, which becomes it if there is room."""
    found = _SHARED.get(names)
    if found is not None:
        return found
    if names and len(names) <= _SHARED_LENGTH and len(_SHARED) < _SHARED_MAX:
        _SHARED[names] = names
    return names


class _Findings(Mapping[int, list[Finding]]):
    """Each text's findings by its index, made into Finding objects only when read (by
    `packgate scan`): the request path never reads them, and a hit would otherwise build
    them from the compact item every time."""

    __slots__ = ("_items",)

    def __init__(self) -> None:
        self._items: dict[int, _Item] = {}

    def add(self, index: int, item: _Item) -> None:
        self._items[index] = item

    def __getitem__(self, index: int) -> list[Finding]:
        return self._items[index].findings

    def __iter__(self) -> Iterator[int]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)


@dataclass
class _Scan:
    counts: dict[str, int] = field(default_factory=dict)
    rewrites: dict[int, str] = field(default_factory=dict)
    findings: _Findings = field(default_factory=_Findings)


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
                if redacted == text and not counts:
                    return _NOTHING
                rewritten = None if redacted == text else redacted
                return _Item(rewritten=rewritten, counts=tuple(counts.items()))
        findings = self.detector.find(text)
        if not findings or self.config.action == "block":
            return _Item.found(findings)
        replaced = replacements(text, findings, self.config.action)
        if replaced is None:  # never from the detector (its findings are ordered): keep it whole
            found = _Item.found(findings)
            rewritten = anonymize(text, findings, self.config.action)
            return _Item(found.entities, found.spans, rewritten=rewritten)
        if splice(text, findings, replaced) == text:
            return _Item.found(findings)  # rewritten to itself: reported as unchanged, as before
        return _Item.found(findings, replaced, markers=self.config.action == "redact")

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
        # Tool-call arguments are rare: their test (a strip of the text) only where the path
        # says they may be.
        arguments = (
            [_arguments(texts[index]) for index in indexes]
            if any([texts[index].path.endswith(".arguments") for index in indexes])
            else None
        )
        if arguments is not None and any(arguments):
            done = [
                self.judge("arguments", texts[index], self._scan_arguments, _Item.size)
                if is_arguments
                else self.judge("text", texts[index], self._scan_plain, _Item.size)
                for index, is_arguments in zip(indexes, arguments, strict=True)
            ]
        elif len(indexes) == len(texts):  # the usual case: every text judged in one pass
            done = self.judge_all("text", texts, self._scan_plain, _Item.size)
        else:
            items = [texts[index] for index in indexes]
            done = self.judge_all("text", items, self._scan_plain, _Item.size)
        for index, item in zip(indexes, done, strict=True):
            if item is _NOTHING:
                continue  # nothing found (most texts): nothing to count or rewrite
            item.count(result.counts)
            if item.entities:
                result.findings.add(index, item)
            rewritten = item.rewrite(texts[index].text)
            if rewritten is not None:
                result.rewrites[index] = rewritten
        return result

    def _decide(self, scanned: _Scan) -> Decision:
        counts = scanned.counts
        if not counts:
            return ALLOW
        reason = counted_reason("pii", counts)
        if self.config.action == "block":
            return Decision.block(reason, **counts)
        if not scanned.rewrites:
            return Decision.allow(reason, **counts)
        # Decision.rewrite without its copies: this scan's dicts are the decision's own.
        return Decision("rewrite", reason, scanned.rewrites, counts)

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
