"""The sidecar end of the operator's push channel: subscribe, apply each new config, report back.

Why: the mounted ConfigMap is the durable source, but the kubelet refreshes it only every minute
or so; a PolicyPack edit must be enforced within about a second. So the injected sidecar also
holds a long poll open to the operator (see packgate_operator/propagate.py for the protocol),
presenting its pod's projected service-account token, and hands every config it receives to
`ConfigHolder.apply`. The hash it sends on each poll is the one it enforces, which is how the
PolicyPack status counts converged sidecars.

Only the operator can push: the client connects out to the URL it was started with, verifies the
operator's certificate against the CA it was started with (never the system trust store), and
listens on nothing. It reconnects with jittered exponential backoff capped at a few seconds
(an edit must still arrive within about a second once the operator or the apiserver is back),
so a restarted operator is not stormed and a sidecar started while the operator is down runs on
the mounted file and catches up when the operator returns. Configs are verified by the holder
(packgate_policy.signing); a refused one is reported on the next poll (`refused=<reason>`), and
a refusal cuts a waiting poll short so the operator hears about it at once.

Environment (set by the injector): PACKGATE_OPERATOR_URL, PACKGATE_OPERATOR_CA (PEM) or
PACKGATE_OPERATOR_CA_FILE, PACKGATE_TOKEN_FILE, POD_NAME, POD_NAMESPACE. `start(holder)` returns
None when PACKGATE_OPERATOR_URL is unset (outside Kubernetes).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp

from .logs import describe_exception, get_logger, log
from .pod_identity import Channel, channel_from_env

_log = get_logger("subscribe")


class SubscribeConfigError(ValueError):
    """The subscription environment is incomplete or unsafe; the message says which variable."""


class _Result(Protocol):
    ok: bool
    hash: str | None

    def describe(self) -> str: ...


class _Holder(Protocol):
    def apply(self, document: str, source: str = ...) -> Any: ...


@dataclass(frozen=True)
class SubscribeSettings:
    channel: Channel  # the operator's URL, this pod's identity and token, the operator's CA
    wait_seconds: float = 25.0
    max_backoff: float = 2.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> SubscribeSettings | None:
        channel = channel_from_env(
            environ, "PACKGATE_OPERATOR_URL", ("PACKGATE_OPERATOR_CA",), SubscribeConfigError
        )
        if channel is None:
            return None
        wait = float(environ.get("PACKGATE_SUBSCRIBE_WAIT_SECONDS", "25"))
        return cls(channel, wait_seconds=wait)

    @property
    def endpoint(self) -> str:
        return self.channel.pod_url("config")


class Subscriber:
    """One long poll at a time against the operator; forever, until cancelled."""

    def __init__(
        self,
        settings: SubscribeSettings,
        apply: Callable[[str, str], _Result],
        running_hash: Callable[[], str | None],
        refusals: Callable[[], list[dict[str, Any]]] | None = None,
    ) -> None:
        self.settings = settings
        self._apply = apply
        self._running_hash = running_hash
        self._refusals = refusals or (lambda: [])
        self._nudged = asyncio.Event()
        # The last hash received that the holder refused: not asked for again. A hash that was
        # applied is not remembered here, so if the mounted file later puts an older config in
        # force, the running hash differs from the operator's and the current one is re-sent.
        self._refused: str | None = None
        self._backoff = 0.5
        self.received = 0
        self.connected = False

    async def run(self) -> None:
        connector = aiohttp.TCPConnector(ssl=self.settings.channel.ssl_context(), limit=1)
        async with aiohttp.ClientSession(connector=connector) as session:
            while True:
                self._nudged.clear()
                poll = asyncio.ensure_future(self.poll_once(session))
                nudge = asyncio.ensure_future(self._nudged.wait())
                await asyncio.wait({poll, nudge}, return_when=asyncio.FIRST_COMPLETED)
                nudge.cancel()
                if not poll.done():  # a refusal to report: re-poll now with it
                    poll.cancel()
                    with contextlib.suppress(BaseException):
                        await poll
                    continue
                try:
                    delay = poll.result()
                except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
                    self.connected = False
                    retry_in = self._next_backoff()
                    log(_log, 30, "subscription failed", url=self.settings.channel.url,
                        error=describe_exception(exc), retry_in=round(retry_in, 2))  # fmt: skip
                    delay = retry_in
                if delay:
                    await asyncio.sleep(delay)

    def nudge(self) -> None:
        """Report news (a refused config) now instead of when the waiting poll ends."""
        self._nudged.set()

    def _next_backoff(self) -> float:
        # Jittered, and never above max_backoff: an outage must not push the next edit far out.
        delay = min(self._backoff * random.uniform(0.5, 1.5), self.settings.max_backoff)
        self._backoff = min(self._backoff * 2, self.settings.max_backoff)
        return delay

    async def poll_once(self, session: aiohttp.ClientSession) -> float:
        """One request; returns how long to wait before the next one."""
        params = {"wait": str(self.settings.wait_seconds)}
        running = self._running_hash()
        if running:
            params["running"] = running
        if self._refused:
            params["seen"] = self._refused
        refusals = sorted(self._refusals(), key=lambda r: float(r.get("at", 0)))
        if refusals:
            latest = refusals[-1]
            params["refused"] = str(latest.get("reason", "unknown"))
            params["refused_source"] = str(latest.get("source", "")).split(":", 1)[0]
            params["refused_digest"] = str(latest.get("digest", ""))
        timeout = aiohttp.ClientTimeout(total=self.settings.wait_seconds + 15, connect=10)
        async with session.get(
            self.settings.endpoint,
            params=params,
            headers=self.settings.channel.headers(),
            timeout=timeout,
            allow_redirects=False,
        ) as response:
            if response.status == 304:
                self._connected()
                return 0.0
            if response.status != 200:
                body = (await response.text())[:500]
                retry_in = self._next_backoff()
                log(_log, 40, "subscription refused", status=response.status, detail=body,
                    retry_in=round(retry_in, 2))  # fmt: skip
                return retry_in
            message = await response.json()
        self._connected()
        self._receive(message)
        return 0.0

    def _connected(self) -> None:
        if not self.connected:
            log(_log, 20, "subscribed", url=self.settings.channel.url)
        self.connected = True
        self._backoff = 0.5

    def _receive(self, message: Any) -> None:
        if not isinstance(message, dict) or not isinstance(message.get("config"), str):
            raise ValueError("the operator sent a message without a config")
        if (message.get("namespace"), message.get("pod")) != (
            self.settings.channel.namespace,
            self.settings.channel.pod,
        ):
            raise ValueError("the operator sent a config addressed to another pod")
        self.received += 1
        started = time.monotonic()
        result = self._apply(message["config"], f"push:{self.settings.channel.url}")
        self._refused = None if result.ok else (str(message.get("hash") or "") or None)
        outcome = "applied" if result.ok else "refused"
        log(_log, 20 if result.ok else 40, f"pushed config {outcome}",
            pack=message.get("pack"), hash=message.get("hash"), applied_hash=result.hash,
            seconds=round(time.monotonic() - started, 4),
            issues=None if result.ok else result.describe())  # fmt: skip


def start(holder: Any, environ: Mapping[str, str] | None = None) -> asyncio.Task[None] | None:
    """Start subscribing for `holder` (a reload.ConfigHolder) when the environment asks for it.

    Call from the running event loop after the initial file load; cancel the task on shutdown.
    Raises SubscribeConfigError when the environment is half set, so a broken injection is loud.
    """
    import os

    settings = SubscribeSettings.from_env(os.environ if environ is None else environ)
    if settings is None:
        return None

    def running_hash() -> str | None:
        current = getattr(holder, "current", None)
        return getattr(current, "hash", None)

    def refusals() -> list[dict[str, Any]]:
        return list(getattr(holder, "refused", {}).values())

    subscriber = Subscriber(settings, holder.apply, running_hash, refusals)
    hooks = getattr(holder, "on_refusal", None)
    if hooks is not None:
        hooks.append(subscriber.nudge)
    return asyncio.get_running_loop().create_task(subscriber.run(), name="packgate-subscribe")
