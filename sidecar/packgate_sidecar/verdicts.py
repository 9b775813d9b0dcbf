"""Per-message memo of policy verdicts: judge each message once, however many turns repeat it.

Why this exists: a chat request carries the whole conversation, so turn 20 re-sends nineteen
messages the sidecar has already judged; scoring and redacting them again would make every
request cost as much as the conversation is long. Policies route their per-text work through
`Policy.memo`, which keeps the result here, in one bounded LRU per sidecar, under a digest of the
text, and within that text's entry under (the policy instance's scope, a tag):

- The scope is unique to a policy *instance*, and the chain builds a new instance whenever a
  policy's config block changes: a changed config can never read a verdict made under the old
  one, while a reload that leaves a block unchanged keeps its instance and its verdicts.
- A text is known by a 128-bit digest only (SHA-256 cut to 16 bytes): no prompt text is kept in
  the cache keys, and two different texts share a key with odds of 2^-64 even among billions of
  messages. SHA-256 rather than BLAKE2b because OpenSSL's runs on the CPU's SHA instructions
  where there are some (x86 SHA-NI, ARMv8): ~0.7 against ~1.4 us per KB, and a 20-turn chat's
  request digests ~20 KB.
- One entry per text holds every policy's verdicts on it, so a message costs one digest and one
  LRU lookup per request however many policies judge it (`entry`; a `TextItem` fetches its
  entry once for the whole chain). Digesting is most of a hit's cost.
- Values are returned as stored, so callers store immutable values (floats, tuples, strings).
- Memory is bounded in bytes: each entry is charged what it holds in the interpreter (the LRU
  slot, digest and entry: `ENTRY_COST`; per verdict its slot and a small value: `VALUE_COST`;
  plus what the caller says a larger value holds), the least recently used text going first
  when the budget (`MAX_COST`) or the entry bound is passed. A value bigger than a quarter of
  the budget is computed but not kept. Under a new prompt in every request the cache fills up
  with texts that never come back, so its budget is what the sidecar's memory grows by: it is
  set, and the entries kept compact (no per-verdict tuple, one key object per (scope, tag)), so
  that a full cache fits the sidecar's 80 MiB target and still holds the texts of ~180
  concurrent 20-turn chats (docs/performance-history.md).
- Verdicts of policy instances that are gone stay in their text's entry until it is evicted; an
  entry keeps at most `MAX_VALUES` verdicts (past that it starts again with the new verdict
  only), so reloads cannot grow a hot one.

Lookups take a lock: policies scanning very large texts run in worker threads.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from hashlib import sha256
from typing import Any, TypeVar

__all__ = ["Entry", "VerdictCache", "text_digest"]

_T = TypeVar("_T")
_A = TypeVar("_A")
MAX_ENTRIES = 16384
# Bytes of the interpreter's memory (as tracemalloc counts it): a full cache adds about this
# much to the sidecar's resident set (plus pymalloc's ~10%); see docs/performance-history.md.
MAX_COST = 4 * 1024 * 1024
# An entry with its first verdict: its LRU slot (~130 with the table's slack), digest (49), the
# entry with its key table (240) and its cost (an int, 32).
ENTRY_COST = 450
VALUE_COST = 24  # a verdict besides what its size says: a float, or its share of a larger table
MAX_VALUES = 32  # verdicts per text: a few per policy in the chain, plus replaced instances'
MAX_KEYS = 4096  # distinct (scope, tag) keys remembered to share (a few per policy instance)
_MISSING: Any = object()


def text_digest(text: str) -> bytes:
    # surrogatepass: JSON may carry lone surrogates, which are still distinct texts.
    return sha256(text.encode("utf-8", "surrogatepass")).digest()[:16]


class Entry(dict[Hashable, Any]):
    """One text's verdicts, (scope, tag) -> value, and what the entry costs. Read without the
    lock (a dict get is atomic); written under the cache's lock. The entry is the dict itself
    (not an object holding one), and values are stored bare: a few hundred bytes per text less
    than an object, a dict and a (value, cost) tuple per verdict."""

    __slots__ = ("cost", "digest")

    def __init__(self, digest: bytes) -> None:
        super().__init__()
        self.digest = digest
        self.cost = ENTRY_COST


class VerdictCache:
    """A bounded LRU of per-text verdicts, keyed by text digest, then by (scope, tag)."""

    def __init__(
        self,
        max_entries: int = MAX_ENTRIES,
        max_cost: int = MAX_COST,
    ) -> None:
        self.max_entries = max_entries
        self.max_cost = max_cost
        self._lookups: dict[tuple[str, bool], int] = {}
        self._entries: OrderedDict[bytes, Entry] = OrderedDict()
        # One stored key object per (scope, tag): callers build a new tuple per lookup, and
        # each entry would otherwise keep its own copy of it.
        self._keys: dict[Hashable, Hashable] = {}
        self._cost = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def cost(self) -> int:
        return self._cost

    def entry(self, text: str) -> Entry:
        """`text`'s entry, made most recently used; a new one (not stored until it holds a
        value) when the text is not known."""
        digest = text_digest(text)
        with self._lock:
            found = self._entries.get(digest)
            if found is not None:
                self._entries.move_to_end(digest)
                return found
        return Entry(digest)

    def entries(self, texts: Sequence[str]) -> list[Entry]:
        """`entry` of each text, under one lock."""
        # text_digest, inline: a call per text is a tenth of a short text's digest.
        digests = [sha256(text.encode("utf-8", "surrogatepass")).digest()[:16] for text in texts]
        out: list[Entry] = []
        with self._lock:
            stored = self._entries
            for digest in digests:
                found = stored.get(digest)
                if found is None:
                    out.append(Entry(digest))
                else:
                    stored.move_to_end(digest)
                    out.append(found)
        return out

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
        return self.lookup(self.entry(text), scope, _call, compute, size, kind)

    def lookup(
        self,
        entry: Entry,
        scope: Hashable,
        compute: Callable[[_A], _T],
        argument: _A,
        size: Callable[[_T], int] | None = None,
        kind: str = "",
    ) -> _T:
        """The value under `scope` in a text's `entry` (see `entry`), or `compute(argument)`'s,
        which is then stored there (the argument spares callers a closure per lookup)."""
        found = entry.get(scope, _MISSING)
        with self._lock:
            counted = (kind, found is not _MISSING)
            self._lookups[counted] = self._lookups.get(counted, 0) + 1
            if found is not _MISSING:
                self.hits += 1
                return found  # type: ignore[no-any-return]
            self.misses += 1
        return self._compute(entry, scope, compute, argument, size)

    def lookup_all(
        self,
        entries: Sequence[Entry],
        scope: Hashable,
        compute: Callable[[_A], _T],
        arguments: Sequence[_A],
        size: Callable[[_T], int] | None = None,
        kind: str = "",
    ) -> list[_T]:
        """`lookup` of each entry with its argument, in order; the hits are counted under one
        lock, and the misses computed in order."""
        found = [entry.get(scope, _MISSING) for entry in entries]
        missed = sum([value is _MISSING for value in found])
        with self._lock:
            lookups = self._lookups
            if missed:
                lookups[(kind, False)] = lookups.get((kind, False), 0) + missed
                self.misses += missed
            if missed < len(found):
                lookups[(kind, True)] = lookups.get((kind, True), 0) + len(found) - missed
                self.hits += len(found) - missed
        if not missed:
            return found
        return [
            self._compute(entry, scope, compute, argument, size) if value is _MISSING else value
            for entry, value, argument in zip(entries, found, arguments, strict=True)
        ]

    def _compute(
        self,
        entry: Entry,
        scope: Hashable,
        compute: Callable[[_A], _T],
        argument: _A,
        size: Callable[[_T], int] | None,
    ) -> _T:
        value = compute(argument)
        cost = VALUE_COST + (size(value) if size is not None else 0)
        if ENTRY_COST + cost > self.max_cost // 4:
            return value
        with self._lock:
            self._store(entry, scope, value, cost)
        return value

    def _store(self, entry: Entry, scope: Hashable, value: object, cost: int) -> None:
        current = self._entries.get(entry.digest)
        if current is not None and current is not entry:
            entry = current  # another request stored this text meanwhile: join it
        if scope in entry:  # computed twice concurrently: the first copy stays
            return
        if current is None:  # new, or evicted since it was looked up: (re)insert it
            self._entries[entry.digest] = entry
            self._cost += entry.cost
        if len(entry) >= MAX_VALUES:  # many reloads judged this text: start it again
            self._cost -= entry.cost - ENTRY_COST
            entry.cost = ENTRY_COST
            entry.clear()
        key = self._keys.get(scope)
        if key is None:
            if len(self._keys) >= MAX_KEYS:
                self._keys.clear()  # stored keys stay valid; later ones are shared anew
            key = self._keys[scope] = scope
        entry[key] = value
        entry.cost += cost
        self._cost += cost
        while len(self._entries) > self.max_entries or self._cost > self.max_cost:
            _, evicted = self._entries.popitem(last=False)
            self._cost -= evicted.cost

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._cost = 0

    def lookups(self) -> dict[tuple[str, bool], int]:
        """Lookups so far by (policy kind, hit), for metrics."""
        with self._lock:
            return dict(self._lookups)


def _call(compute: Callable[[], _T]) -> _T:
    return compute()
