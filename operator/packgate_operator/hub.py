"""The propagation hub: the current rendered config of every pack, and the sidecars waiting for it.

Why in memory and fed from ConfigMaps: the ConfigMap is the durable source (sidecars mount it), so
the hub pushes exactly what the ConfigMaps hold, learnt from a watch. Each subscription is a
long poll that names the hash its sidecar runs; the hub answers at once when the pack's hash
differs and otherwise parks the request until the next change, so an edit reaches every waiting
sidecar in one broadcast. The hash a sidecar names is also its convergence report.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass

from .pods import PackKey, Report


@dataclass(frozen=True)
class Published:
    namespace: str
    pack: str
    hash: str
    text: str  # signed by the operator (packgate_policy.signing)
    uid: str = ""  # the pack's uid and generation the signature names
    generation: int = 0


class Hub:
    def __init__(self, on_change: Callable[[PackKey], None] | None = None) -> None:
        self._configs: dict[PackKey, Published] = {}
        self._changed: dict[PackKey, asyncio.Event] = {}
        self._reports: dict[str, Report] = {}
        self._report_pack: dict[str, PackKey] = {}
        self._on_change = on_change or (lambda key: None)
        self.ready = asyncio.Event()

    # -- configs --

    def publish(self, item: Published) -> bool:
        key = (item.namespace, item.pack)
        if self._configs.get(key) == item:
            return False
        self._configs[key] = item
        self._wake(key)
        return True

    def remove(self, namespace: str, pack: str) -> None:
        key = (namespace, pack)
        if self._configs.pop(key, None) is not None:
            self._wake(key)

    def replace_namespace_snapshot(
        self, namespace: str | None, items: Collection[Published]
    ) -> None:
        """After a (re)list: drop what vanished while the watch was down, publish the rest."""
        fresh = {(i.namespace, i.pack) for i in items}
        for key in list(self._configs):
            if (namespace is None or key[0] == namespace) and key not in fresh:
                self.remove(*key)
        for item in items:
            self.publish(item)

    def current(self, namespace: str, pack: str) -> Published | None:
        return self._configs.get((namespace, pack))

    def current_hash(self, key: PackKey) -> str:
        item = self._configs.get(key)
        return item.hash if item else ""

    def _wake(self, key: PackKey) -> None:
        event = self._changed.pop(key, None)
        if event is not None:
            event.set()
        self._on_change(key)

    async def wait(
        self, namespace: str, pack: str, known: Collection[str], wait_seconds: float
    ) -> Published | None:
        """The pack's config as soon as its hash is none of `known`; None after the wait."""
        key = (namespace, pack)
        deadline = time.monotonic() + wait_seconds
        while True:
            item = self._configs.get(key)
            if item is not None and item.hash not in known:
                return item
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            event = self._changed.setdefault(key, asyncio.Event())
            try:
                await asyncio.wait_for(event.wait(), remaining)
            except TimeoutError:
                return None

    # -- reports from sidecars --

    def report(
        self, uid: str, key: PackKey, running_hash: str, polling: bool, refused: str = ""
    ) -> None:
        before = self._reports.get(uid)
        self._reports[uid] = Report(
            hash=running_hash, seen=time.monotonic(), polling=polling, refused=refused
        )
        self._report_pack[uid] = key
        # Counts depend on the hash and freshness only, so a poll opening or closing is no news.
        if before is None or before.hash != running_hash or before.refused != refused:
            self._on_change(key)

    def forget(self, uid: str) -> None:
        self._reports.pop(uid, None)
        self._report_pack.pop(uid, None)

    @property
    def reports(self) -> Mapping[str, Report]:
        return self._reports

    def expire_reports(self, older_than: float) -> None:
        now = time.monotonic()
        for uid, report in list(self._reports.items()):
            if not report.polling and now - report.seen > older_than:
                key = self._report_pack.get(uid)
                self.forget(uid)
                if key is not None:
                    self._on_change(key)

    def pack_reports(self) -> dict[str, tuple[PackKey, str]]:
        """{pod uid: (pack, hash)} of the reports this replica holds (for the other replicas)."""
        return {
            uid: (key, self._reports[uid].hash)
            for uid, key in self._report_pack.items()
            if uid in self._reports
        }

    @property
    def subscriptions(self) -> int:
        return sum(1 for r in self._reports.values() if r.polling)

    @property
    def packs(self) -> int:
        return len(self._configs)
