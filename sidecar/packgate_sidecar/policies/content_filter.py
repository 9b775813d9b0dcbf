"""The content-filter policy: block or log requests and responses that match term lists.

Why it exists: a platform team needs a predictable, explainable way to keep certain content out
of model traffic: the built-in categories (`content_terms.py`: phrases that state harmful intent,
not topics) and its own `terms` (literal, case-insensitive, on word edges) and `patterns`
(Python regular expressions, applied as written). Matching runs on normalised text (NFKC,
invisible characters removed, look-alike letters folded, whitespace runs collapsed to one space)
so trivial obfuscation does not slip past a term.

Which texts: custom terms and patterns apply to every text, system prompts included, because
they usually name things that must not leave at all (a confidential project name). Built-in
categories skip the application's own texts (system and developer prompts, tool descriptions):
a system prompt that says "never explain how to make a bomb" must not block every request.

Streams: each channel holds back `holdback` characters (96, or the longest custom term plus a
margin) and is scanned every 32 new characters, so a term split across deltas is caught before
any of it is sent (`block`) while memory stays bounded. A match longer than the hold-back may be
missed when its start was already released; built-in entries are far shorter.

Decisions: reason `content:<categories>` (`custom` for the pack's own terms and patterns),
details `{category: number of texts or stream channels that matched}`; never the matched text.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from packgate_policy import ContentFilter, PolicyBlock

from ..detect.normalize import normalize
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
from .common import APP_ROLES, counted_reason, maybe_offload, settings_as, text_chars
from .content_terms import CATEGORIES
from .needles import Needles, needles

CUSTOM = "custom"
HOLDBACK = 96
MAX_HOLDBACK = 1024
STEP = 32
# Characters after a match that must have arrived before a stream counts it: enough for the
# lookaheads of the built-in patterns ("bomb" + " shelter" is not a weapon).
RIGHT_CONTEXT = 16
_SPACE = re.compile(r"\s")


def prepare(text: str) -> str:
    """The form every term and pattern is matched against."""
    return " ".join(normalize(text).split())


def _term(term: str) -> str:
    words = prepare(term).strip().split(" ")
    return r"(?<!\w)" + " ".join(re.escape(word) for word in words) + r"(?!\w)"


@dataclass(frozen=True, slots=True)
class _Entry:
    name: str  # category, or "custom"
    regex: re.Pattern[str]
    needles: Needles | None  # run the regex only when one occurs (None: always run it)
    folded: bool  # needles are lower-case: look for them in the lower-cased text


def _entry(name: str, regex: re.Pattern[str]) -> _Entry:
    return _Entry(name, regex, needles(regex), bool(regex.flags & re.IGNORECASE))


class Matcher:
    """Compiled built-in categories and custom terms/patterns of one content-filter config.

    Each term list and pattern is its own regex behind a substring pre-check (`needles.py`):
    one alternation of every phrase costs milliseconds per kilobyte in `re`, the pre-checks a
    few microseconds, and most text contains no needle of most entries.
    """

    def __init__(
        self, categories: Iterable[str], terms: Sequence[str], patterns: Sequence[str]
    ) -> None:
        self.builtin: list[_Entry] = []
        for name in dict.fromkeys(categories):
            category = CATEGORIES[name]
            sources = list(category.patterns)
            if category.terms:
                sources.append("|".join(_term(term) for term in category.terms))
            self.builtin.extend(_entry(name, re.compile(src, re.IGNORECASE)) for src in sources)
        self.custom: list[_Entry] = []
        if terms:
            joined = "|".join(_term(term) for term in terms)
            self.custom.append(_entry(CUSTOM, re.compile(joined, re.IGNORECASE)))
        self.custom.extend(_entry(CUSTOM, re.compile(pattern)) for pattern in patterns)
        longest = max((len(prepare(term)) for term in terms), default=0)
        self.holdback = min(max(HOLDBACK, longest + RIGHT_CONTEXT + 8), MAX_HOLDBACK)

    def match(self, text: str, builtin: bool = True, final: bool = True) -> set[str]:
        """Categories (and `custom`) matched in `text`. With `final` false the text may go on,
        so a match near its end is not counted yet ("bomb" could become "bombastic")."""
        prepared = prepare(text)
        folded = prepared.lower()
        end = len(prepared) - RIGHT_CONTEXT
        found: set[str] = set()
        seen: dict[tuple[str, bool], bool] = {}  # entries share needles: search each once
        for entry in (*self.builtin, *self.custom) if builtin else self.custom:
            if entry.name in found:
                continue
            if entry.needles is not None:
                haystack = folded if entry.folded else prepared
                for needle in entry.needles:
                    key = (needle, entry.folded)
                    present = seen.get(key)
                    if present is None:
                        present = seen[key] = needle in haystack
                    if present:
                        break
                else:
                    continue
            for hit in entry.regex.finditer(prepared):
                if final or hit.end() <= end:
                    found.add(entry.name)
                    break
        return found


class ContentFilterPolicy(Policy):
    kind = "content-filter"

    def __init__(self, settings: PolicyBlock, runtime: PolicyRuntime) -> None:
        super().__init__(settings, runtime)
        self.config = settings_as(settings, ContentFilter)
        self.matcher = Matcher(self.config.categories, self.config.terms, self.config.patterns)

    def scan(self, texts: Sequence[TextItem]) -> dict[str, int]:
        """How many texts matched each category."""
        counts: dict[str, int] = {}
        for item in texts:
            if item.text:
                # Once per text and config (`judge`), not once per turn that repeats it.
                if item.role in APP_ROLES:
                    found = self.judge("own", item, self._match_own)
                else:
                    found = self.judge("builtin", item, self._match_builtin)
                for name in found:
                    counts[name] = counts.get(name, 0) + 1
        return counts

    def _match_builtin(self, text: str) -> tuple[str, ...]:
        return tuple(self.matcher.match(text, builtin=True))

    def _match_own(self, text: str) -> tuple[str, ...]:
        return tuple(self.matcher.match(text, builtin=False))

    async def _check(self, texts: Sequence[TextItem]) -> Decision:
        counts = await maybe_offload(text_chars(texts), lambda: self.scan(texts))
        if not counts:
            return ALLOW
        reason = counted_reason("content", counts)
        if self.config.action == "block":
            return Decision.block(reason, **counts)
        return Decision.flag(reason, **counts)

    async def on_request(self, ctx: RequestContext, texts: Sequence[TextItem]) -> Decision:
        return await self._check(texts)

    async def on_response(self, ctx: RequestContext, texts: Sequence[TextItem]) -> Decision:
        if not self.config.scan_responses:
            return ALLOW
        return await self._check(texts)

    def stream_filter(self, ctx: RequestContext) -> StreamFilter | None:
        if not self.config.scan_responses:
            return None
        return _StreamMatcher(self.matcher, self.config.action == "block")


class _StreamMatcher(StreamFilter):
    """Scans a window of released context plus held-back text. With `block` the held-back text
    is only released once scanned clean; with `log` text passes at once and the window is only
    used for matching."""

    __slots__ = ("block", "context", "found", "holdback", "matcher", "pending")

    def __init__(self, matcher: Matcher, block: bool) -> None:
        self.matcher = matcher
        self.block = block
        self.holdback = matcher.holdback
        self.context = ""  # tail of released text, from a word start
        self.pending = ""  # not scanned clean yet
        self.found: set[str] = set()

    def _scan(self, final: bool) -> None:
        hits = self.matcher.match(self.context + self.pending, final=final)
        if not hits:
            return
        if self.block:
            counts = dict.fromkeys(hits, 1)
            raise Blocked(counted_reason("content", counts), **counts)
        self.found |= hits

    def feed(self, text: str) -> str:
        self.pending += text
        passed = "" if self.block else text
        if len(self.pending) < self.holdback + STEP:
            return passed
        self._scan(final=False)
        cut = len(self.pending) - self.holdback
        released, self.pending = self.pending[:cut], self.pending[cut:]
        seen = self.context + released
        tail = seen[-self.holdback :]
        if len(tail) < len(seen):
            # Start a cut context at a word start, or the end of a cut word could match a term.
            space = _SPACE.search(tail)
            tail = tail[space.end() :] if space else tail
        self.context = tail
        return released if self.block else passed

    def finish(self) -> str:
        self._scan(final=True)
        rest, self.pending, self.context = self.pending, "", ""
        return rest if self.block else ""

    def summary(self) -> Decision | None:
        if not self.found:
            return None
        counts = dict.fromkeys(self.found, 1)
        return Decision.flag(counted_reason("content", counts), **counts)
