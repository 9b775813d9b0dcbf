"""Small policies that stand in for the real ones in tests of the chain mechanism.

Why it exists: the chain, the text coverage and the gateway's policy paths must be tested before
(and independently of) the real PII, injection and audit policies. These are deliberately
trivial and deterministic: replace a marker, block on a word, fail, sleep, record what finished.
They register under real policy kinds because the config only accepts those.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from packgate_policy import PolicyBlock
from packgate_sidecar.policy import (
    Blocked,
    Decision,
    Policy,
    PolicyRuntime,
    Registry,
    RequestContext,
    StreamFilter,
    TextItem,
)


class HoldBackReplace(StreamFilter):
    """Replaces `marker` in a stream, holding back just enough to catch a marker split across
    deltas: the longest tail that could still grow into the marker."""

    def __init__(self, marker: str, replacement: str) -> None:
        self.marker = marker
        self.replacement = replacement
        self.pending = ""
        self.count = 0

    def feed(self, text: str) -> str:
        buffer = self.pending + text
        self.count += buffer.count(self.marker)
        buffer = buffer.replace(self.marker, self.replacement)
        hold = 0
        for size in range(min(len(self.marker) - 1, len(buffer)), 0, -1):
            if self.marker.startswith(buffer[-size:]):
                hold = size
                break
        self.pending = buffer[len(buffer) - hold :]
        return buffer[: len(buffer) - hold]

    def finish(self) -> str:
        rest, self.pending = self.pending, ""
        return rest

    def summary(self) -> Decision | None:
        if not self.count:
            return None
        return Decision("rewrite", "marker", details={"replaced": self.count})


class ReplacePolicy(Policy):
    """Rewrites `marker` to `replacement` everywhere: requests, responses and streams."""

    kind = "pii-detector"

    def __init__(
        self,
        settings: PolicyBlock,
        runtime: PolicyRuntime,
        marker: str = "SECRET",
        replacement: str = "[gone]",
    ) -> None:
        super().__init__(settings, runtime)
        self.marker = marker
        self.replacement = replacement

    def _rewrite(self, texts: Sequence[TextItem]) -> Decision:
        rewrites = {
            index: item.text.replace(self.marker, self.replacement)
            for index, item in enumerate(texts)
            if self.marker in item.text
        }
        return Decision.rewrite(rewrites, "marker", count=len(rewrites))

    async def on_request(self, ctx: RequestContext, texts: Sequence[TextItem]) -> Decision:
        return self._rewrite(texts)

    async def on_response(self, ctx: RequestContext, texts: Sequence[TextItem]) -> Decision:
        return self._rewrite(texts)

    def stream_filter(self, ctx: RequestContext) -> StreamFilter | None:
        return HoldBackReplace(self.marker, self.replacement)


class WordBlockFilter(StreamFilter):
    def __init__(self, word: str) -> None:
        self.word = word
        self.seen = ""

    def feed(self, text: str) -> str:
        self.seen = (self.seen + text)[-(len(self.word) + len(text)) :]
        if self.word in self.seen:
            raise Blocked("word", word_hits=1)
        return text


class BlockWordPolicy(Policy):
    """Blocks a request or response containing `word` (streams: as soon as it appears)."""

    kind = "content-filter"

    def __init__(self, settings: PolicyBlock, runtime: PolicyRuntime, word: str = "forbidden"):
        super().__init__(settings, runtime)
        self.word = word
        self.seen_texts: list[list[str]] = []

    async def on_request(self, ctx: RequestContext, texts: Sequence[TextItem]) -> Decision:
        self.seen_texts.append([item.text for item in texts])
        if any(self.word in item.text for item in texts):
            return Decision.block("word")
        return Decision.allow()

    async def on_response(self, ctx: RequestContext, texts: Sequence[TextItem]) -> Decision:
        if any(self.word in item.text for item in texts):
            return Decision.block("word")
        return Decision.allow()

    def stream_filter(self, ctx: RequestContext) -> StreamFilter | None:
        return WordBlockFilter(self.word)


class FailingPolicy(Policy):
    """Raises, sleeps past its budget, or burns CPU past it, in the request phase."""

    kind = "prompt-injection"

    def __init__(self, settings: PolicyBlock, runtime: PolicyRuntime, mode: str = "raise"):
        super().__init__(settings, runtime)
        self.mode = mode
        self.calls = 0

    async def on_request(self, ctx: RequestContext, texts: Sequence[TextItem]) -> Decision:
        self.calls += 1
        if self.mode == "raise":
            raise RuntimeError("policy bug")
        if self.mode == "sleep":
            await asyncio.sleep(5)
        if self.mode == "spin":
            deadline = time.thread_time() + self.settings.timeout_ms / 1000 * 2
            while time.thread_time() < deadline:
                pass
        return Decision.flag("looked", score=0.5)


class RecordingPolicy(Policy):
    """Keeps every finished request context, as audit-logger and cost-attribution would."""

    kind = "audit-logger"

    def __init__(self, settings: PolicyBlock, runtime: PolicyRuntime) -> None:
        super().__init__(settings, runtime)
        self.finished: list[RequestContext] = []
        self.closed = False

    async def on_finish(self, ctx: RequestContext) -> None:
        self.finished.append(ctx)

    async def aclose(self) -> None:
        self.closed = True


def registry_with(**factories: Any) -> Registry:
    """A registry from keyword arguments: `registry_with(pii_detector=factory)`."""
    return Registry({kind.replace("_", "-"): factory for kind, factory in factories.items()})


def allow_all(kinds: Sequence[str]) -> Registry:
    """Stand-ins that allow everything, for configs (like the seed's) naming real policies."""
    return Registry({kind: Policy for kind in kinds})
