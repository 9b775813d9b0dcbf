"""Per-message memo of policy verdicts: judge each message once, however many turns repeat it.

Why this exists: a chat request carries the whole conversation, so turn 20 re-sends nineteen
messages the sidecar has already judged; scoring and redacting them again would make every
request cost as much as the conversation is long. Policies route their per-text work through
`Policy.memo`, which keeps the result here, in one bounded LRU per sidecar, under
(the policy instance's scope, a digest of the text):

- The scope is unique to a policy *instance*, and the chain builds a new instance whenever a
  policy's config block changes: a changed config can never read a verdict made under the old
  one, while a reload that leaves a block unchanged keeps its instance and its verdicts.
- A text is known by its 128-bit BLAKE2b digest only: no prompt text is kept in the cache keys,
  and two different texts share a key with odds of 2^-64 even among billions of messages.
- Values are returned as stored, so callers store immutable values (floats, tuples, strings).
- Memory is bounded twice: by entries, and by a budget of cost units (callers give the size of
  what a value holds, such as a redacted text), the least recently used going first. A value
  bigger than a quarter of the budget is computed but not kept.

Lookups take a lock: policies scanning very large texts run in worker threads.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from hashlib import blake2b
from typing import TypeVar

__all__ = ["VerdictCache", "text_digest"]

_T = TypeVar("_T")
MAX_ENTRIES = 8192
MAX_COST = 8 * 1024 * 1024  # roughly bytes of cached values (redacted texts dominate)
ENTRY_COST = 96  # what an entry costs besides its value: key tuple, digest, list links


def text_digest(text: str) -> bytes:
    # surrogatepass: JSON may carry lone surrogates, which are still distinct texts.
    return blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


class VerdictCache:
    """A bounded LRU of per-text verdicts, keyed by (scope, text digest)."""

    def __init__(
        self,
        max_entries: int = MAX_ENTRIES,
        max_cost: int = MAX_COST,
    ) -> None:
        self.max_entries = max_entries
        self.max_cost = max_cost
        self._lookups: dict[tuple[str, bool], int] = {}
        self._entries: OrderedDict[tuple[Hashable, bytes], tuple[object, int]] = OrderedDict()
        self._cost = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def cost(self) -> int:
        return self._cost

    def get_or_compute(
        self,
        scope: Hashable,
        text: str,
        compute: Callable[[], _T],
        size: Callable[[_T], int] | None = None,
        kind: str = "",
    ) -> _T:
        """The cached value for (scope, text), or `compute()`'s, which is then cached.

        `size(value)` is the value's cost (0 when not given). An exception from `compute`
        propagates and nothing is cached.
        """
        key = (scope, text_digest(text))
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
                self.hits += 1
            else:
                self.misses += 1
            counted = (kind, found is not None)
            self._lookups[counted] = self._lookups.get(counted, 0) + 1
        if found is not None:
            return found[0]  # type: ignore[return-value]
        value = compute()
        cost = ENTRY_COST + (size(value) if size is not None else 0)
        if cost > self.max_cost // 4:
            return value
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:  # computed twice concurrently: keep one copy
                self._cost -= old[1]
            self._entries[key] = (value, cost)
            self._cost += cost
            while len(self._entries) > self.max_entries or self._cost > self.max_cost:
                _, (_, evicted) = self._entries.popitem(last=False)
                self._cost -= evicted
        return value

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._cost = 0

    def lookups(self) -> dict[tuple[str, bool], int]:
        """Lookups so far by (policy kind, hit), for metrics."""
        with self._lock:
            return dict(self._lookups)
