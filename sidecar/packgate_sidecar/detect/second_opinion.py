"""The HTTP client that asks an in-cluster classifier for a second opinion on uncertain texts.

Why this exists: the local injection model is fast but small; a transformer classifier (Prompt
Guard, DeBERTa) served in the cluster is better on the texts the local model is unsure of, and far
too slow to run on everything. The `prompt-injection` policy sends only texts whose local score
falls in a configured band here. This client bounds what that costs the proxy:

- a time budget per call (`timeout_ms`) that covers waiting for a free slot, connecting, sending
  and reading the answer;
- a cap on calls in flight (`max_concurrency`), so a burst of uncertain texts cannot pile up
  connections on the classifier;
- a cache of scores keyed by a BLAKE2 digest of the text (never the text itself), bounded in size
  and age, so a retried or repeated prompt costs nothing;
- a short circuit breaker: after `BREAKER_FAILURES` failures in a row the classifier is not called
  for `BREAKER_SECONDS`, so a dead service costs each request nothing instead of a timeout.

Every failure raises `BackendUnavailable` with a short reason (timeout, error, protocol,
circuit_open); what that means for the request (keep the local verdict or block) is the policy's
`fail_open` decision, not this client's.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

import aiohttp
from packgate_policy import InjectionBackend

from .classifier_protocol import ProtocolError, parse_scores, request_body

__all__ = ["BREAKER_FAILURES", "BREAKER_SECONDS", "BackendUnavailable", "SecondOpinion"]

BREAKER_FAILURES = 5
BREAKER_SECONDS = 2.0
MAX_RESPONSE_BYTES = 1 << 20  # scores for a batch of texts are a few KB at most


class BackendUnavailable(Exception):
    """The classifier gave no usable answer in time; `reason` is a short metric-safe token."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ScoreCache:
    """LRU of text digest -> (expiry, score); holds no text."""

    def __init__(self, size: int, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.size, self.ttl, self.clock = size, ttl, clock
        self._entries: OrderedDict[bytes, tuple[float, float]] = OrderedDict()

    @staticmethod
    def key(text: str) -> bytes:
        return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()

    def get(self, key: bytes) -> float | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] <= self.clock():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry[1]

    def put(self, key: bytes, score: float) -> None:
        if self.size <= 0:
            return
        self._entries[key] = (self.clock() + self.ttl, score)
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


class SecondOpinion:
    """Scores texts with the configured classifier; one instance per policy, shared by requests."""

    def __init__(self, config: InjectionBackend) -> None:
        self.config = config
        self.cache = ScoreCache(config.cache_size, float(config.cache_ttl_s))
        self._slots = asyncio.Semaphore(config.max_concurrency)
        self._session: aiohttp.ClientSession | None = None
        self._failures = 0
        self._open_until = 0.0
        self.calls = 0  # HTTP calls made, for tests and debugging

    async def scores(self, texts: Sequence[str]) -> tuple[list[float], bool]:
        """A score per text, and whether all came from the cache; raises BackendUnavailable."""
        keys = [ScoreCache.key(text) for text in texts]
        found = [self.cache.get(key) for key in keys]
        missing = [i for i, score in enumerate(found) if score is None]
        if not missing:
            return [score for score in found if score is not None], True
        # One call per distinct missing text, in a single batch.
        unique: dict[bytes, int] = {}
        for i in missing:
            unique.setdefault(keys[i], i)
        fresh = await self._call([texts[i] for i in unique.values()])
        by_key = dict(zip(unique, fresh, strict=True))
        for key, score in by_key.items():
            self.cache.put(key, score)
        return [
            by_key[key] if score is None else score for key, score in zip(keys, found, strict=True)
        ], False

    async def _call(self, texts: list[str]) -> list[float]:
        if time.monotonic() < self._open_until:
            raise BackendUnavailable("circuit_open")
        try:
            async with asyncio.timeout(self.config.timeout_ms / 1000):
                async with self._slots:
                    self.calls += 1
                    scores = await self._post(texts)
        except TimeoutError:
            self._failed()
            raise BackendUnavailable("timeout") from None
        except ProtocolError:
            self._failed()
            raise BackendUnavailable("protocol") from None
        except (aiohttp.ClientError, OSError, ValueError):
            self._failed()
            raise BackendUnavailable("error") from None
        self._failures = 0
        return scores

    async def _post(self, texts: list[str]) -> list[float]:
        cfg = self.config
        body = json.dumps(request_body(cfg.protocol, texts, cfg.input_name))
        async with self._client().post(
            cfg.url, data=body, headers={"Content-Type": "application/json"}
        ) as response:
            response.raise_for_status()
            raw = await response.content.read(MAX_RESPONSE_BYTES + 1)
            if len(raw) > MAX_RESPONSE_BYTES:
                raise ProtocolError("response too large")
        return parse_scores(
            cfg.protocol, json.loads(raw), len(texts), cfg.output_name, cfg.label_index
        )

    def _failed(self) -> None:
        self._failures += 1
        if self._failures >= BREAKER_FAILURES:
            self._open_until = time.monotonic() + BREAKER_SECONDS
            self._failures = 0

    def _client(self) -> aiohttp.ClientSession:
        # Created on first use, inside the running loop; no cookies, no proxy from the
        # environment (the classifier is in-cluster), connections capped like the calls.
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.config.max_concurrency),
                cookie_jar=aiohttp.DummyCookieJar(),
                trust_env=False,
            )
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
