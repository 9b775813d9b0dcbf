"""Cyclic garbage collection set for a request-serving process, not for a script.

Why it exists: CPython starts a young-generation collection whenever the objects it tracks grow
by 700 since the last one. The objects that in-flight requests hold (parsed bodies, contexts,
aiohttp requests and responses, tasks) pass that mark by themselves, so with a few dozen requests
in flight a collection ran every ~20 requests, walked the live request objects, found next to no
garbage (requests are freed by reference counting) and promoted them; every few thousand requests
that promotion triggered a full collection walking the whole heap (imported modules, the
policies' models and schemas: 60-120 ms each). Measured on the seed chain at 32 concurrent
requests: 35-45 us of the loop thread's CPU per request, a tenth of the sidecar's cost.

`settle()`, run once the sidecar has loaded its config and built (and warmed) its policies:

- collects once, then freezes what survives (`gc.freeze`): the start-up heap is never walked
  again, so full collections only walk what was allocated since;
- raises the young-generation threshold to `YOUNG_THRESHOLD`, above what hundreds of in-flight
  requests hold, so a collection runs when garbage cycles accumulate, not because requests are
  in flight. Garbage cycles are still collected, just in larger batches (a few MB at most).

Frozen objects are never collected as cycles (reference counting still frees them), so a
frozen object graph that later becomes cyclic garbage (the policies of a config replaced by a
reload) would stay. `Settler` therefore re-settles once the config in force has changed and the
replaced one is no longer in use: unfreeze, collect (which frees it), freeze again.

Only `packgate gateway run` settles: tests that build a gateway in-process keep the defaults.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable
from typing import Generic, TypeVar

# Objects a young collection waits for: far above the live objects of the requests in flight
# (a chat request holds a few hundred), far below what would hold memory (~100 bytes each).
YOUNG_THRESHOLD = 20_000
_T = TypeVar("_T")


def settle() -> None:
    """Collect, freeze the survivors, and raise the young-generation threshold."""
    gc.unfreeze()  # a re-settle: what was frozen before is collected with the rest
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)


class Settler(Generic[_T]):
    """Re-settles once the object `current()` returns (the config in force) has changed and
    `idle(previous)` has said so at two checks in a row (the replaced policies are closed by
    then); checked every `interval` seconds. `previous` None: no config was in force yet.
    A re-settle is a full collection on the event loop (up to ~0.1 s), once per config change."""

    def __init__(
        self,
        current: Callable[[], _T | None],
        idle: Callable[[_T], bool],
        interval: float = 5.0,
    ) -> None:
        self.current = current
        self.idle = idle
        self.interval = interval
        self.settled: _T | None = current()
        self.settles = 0
        self._ripe = False

    def check(self) -> bool:
        """Settle again if the settled object was replaced and stayed idle; True if it did."""
        now = self.current()
        old = self.settled
        if now is old or (old is not None and not self.idle(old)):
            self._ripe = False
            return False
        if not self._ripe:
            self._ripe = True
            return False
        del old
        self.settled = now  # dropped before collecting: it would keep the old config alive
        self._ripe = False
        settle()
        self.settles += 1
        return True

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.check()
