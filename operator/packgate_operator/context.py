"""The state one running operator shares between its kopf handlers, webhook and servers.

Why an explicit object rather than module globals: tests start several operators in one process,
and a handler should say what it depends on. run.py builds one Context and hands it to the code
that registers handlers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from packgate_policy.signing import Signer

from .hub import Hub
from .kube import Kube
from .metrics import Metrics
from .pods import PackKey, PodRegistry
from .replicas import Replicas
from .settings import Settings


class Dirty:
    """Packs whose status counts need recomputing; the reporter drains it in batches."""

    def __init__(self) -> None:
        self._keys: set[PackKey] = set()
        self._event = asyncio.Event()

    def mark(self, keys: Iterable[PackKey]) -> None:
        before = len(self._keys)
        self._keys.update(keys)
        if len(self._keys) != before:
            self._event.set()

    async def wait(self) -> None:
        await self._event.wait()

    def take(self) -> set[PackKey]:
        keys, self._keys = self._keys, set()
        self._event.clear()
        return keys


@dataclass
class PackInfo:
    uid: str
    generation: int


@dataclass
class Context:
    settings: Settings
    kube: Kube
    metrics: Metrics
    ca_pem: str = ""
    signer: Signer = field(default_factory=Signer.generate)
    # The public keys sidecars are told to trust (ours first), as PACKGATE_CONFIG_KEYS and parsed.
    trusted_env: str = ""
    trusted: dict[str, Any] = field(default_factory=dict)
    pods: PodRegistry = field(default_factory=PodRegistry)
    dirty: Dirty = field(default_factory=Dirty)
    packs: dict[PackKey, PackInfo] = field(default_factory=dict)
    hub: Hub = field(init=False)
    started: asyncio.Event = field(default_factory=asyncio.Event)
    # Set when several replicas peer (replicas.py): who reconciles, other replicas' reports.
    replicas: Replicas | None = None

    def __post_init__(self) -> None:
        self.hub = Hub(on_change=lambda key: self.dirty.mark([key]))
        if not self.trusted_env:
            self.trusted_env = self.signer.trusted_entry()
        if not self.trusted:
            from packgate_policy.signing import parse_trusted

            self.trusted = dict(parse_trusted(self.trusted_env))
