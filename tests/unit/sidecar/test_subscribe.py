"""The sidecar's subscription client against the operator's real subscription server (TLS, hub,
protocol), with token verification stubbed: a config pushed by the operator is applied, the hash
the sidecar runs is reported back, a refused config is not re-sent in a loop, and an endpoint
whose certificate is not from the operator's CA is never trusted."""

from __future__ import annotations

import asyncio
import dataclasses
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from packgate_operator import tls
from packgate_operator.hub import Hub, Published
from packgate_operator.kube import TokenIdentity
from packgate_operator.metrics import Metrics
from packgate_operator.propagate import Refused, SubscriptionServer
from packgate_policy import ConfigError, load_text
from packgate_sidecar.audit.ship import ShipSettings
from packgate_sidecar.pod_identity import Channel
from packgate_sidecar.subscribe import SubscribeConfigError, Subscriber, SubscribeSettings

CONFIG = """pack: {name: gw, version: 1.0.0, enabled: %s}
providers: {targets: [{id: t, provider: openai}]}
"""


class StubAuth:
    async def verify(self, token: str) -> TokenIdentity:
        if token != "good-token":
            raise Refused(401, "invalid-token", "bad token")
        return TokenIdentity("system:serviceaccount:ns:default", "ns", "default", "pod-a", "uid-a")


class StubPodPacks:
    async def pack_of(self, identity: TokenIdentity) -> str:
        return "gw"


@dataclass
class Result:
    ok: bool
    hash: str | None

    def describe(self) -> str:
        return "" if self.ok else "refused"


class Holder:
    def __init__(self) -> None:
        self.hash: str | None = None
        self.applied: list[str] = []
        self.refused = 0

    def apply(self, text: str, source: str) -> Result:
        try:
            loaded = load_text(text)
        except ConfigError:
            self.refused += 1
            return Result(False, None)
        self.hash = loaded.hash
        self.applied.append(loaded.hash)
        return Result(True, loaded.hash)


async def serve(hub: Hub, files: tls.TlsFiles) -> tuple[web.AppRunner, int]:
    hub.ready.set()  # the operator's ConfigMap watch has listed everything
    server = SubscriptionServer(hub, StubAuth(), StubPodPacks(), Metrics(), max_wait=2)  # type: ignore[arg-type]
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(files.cert_file, files.key_file)
    runner = web.AppRunner(server.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, port


def settings(
    tmp_path: Path, port: int, ca_pem: str, token: str = "good-token"
) -> SubscribeSettings:
    token_file = tmp_path / "token"
    token_file.write_text(token)
    return SubscribeSettings(
        Channel(f"https://127.0.0.1:{port}", "ns", "pod-a", token_file, ca_pem=ca_pem),
        wait_seconds=1,
        max_backoff=0.2,
    )


async def wait_for(check: Any, within: float = 5) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_pushed_configs_are_applied_and_the_running_hash_reported(tmp_path: Path) -> None:
    files = tls.generate(tmp_path / "tls", ["127.0.0.1"])
    hub = Hub()
    first, second = load_text(CONFIG % "true"), load_text(CONFIG % "false")
    hub.publish(Published("ns", "gw", first.hash, CONFIG % "true"))
    runner, port = await serve(hub, files)
    holder = Holder()
    subscriber = Subscriber(
        settings(tmp_path, port, files.ca_pem), holder.apply, lambda: holder.hash
    )
    task = asyncio.create_task(subscriber.run())
    try:
        await wait_for(lambda: holder.applied == [first.hash])
        await wait_for(
            lambda: hub.reports.get("uid-a") is not None and hub.reports["uid-a"].hash == first.hash
        )
        hub.publish(Published("ns", "gw", second.hash, CONFIG % "false"))
        await wait_for(lambda: holder.applied == [first.hash, second.hash], within=2)
        await wait_for(lambda: hub.reports["uid-a"].hash == second.hash)
    finally:
        task.cancel()
        await runner.cleanup()


async def test_a_refused_config_is_not_sent_again(tmp_path: Path) -> None:
    files = tls.generate(tmp_path / "tls", ["127.0.0.1"])
    hub = Hub()
    hub.publish(Published("ns", "gw", "sha256:broken", "pack: [not, a, mapping]"))
    runner, port = await serve(hub, files)
    holder = Holder()
    subscriber = Subscriber(
        settings(tmp_path, port, files.ca_pem), holder.apply, lambda: holder.hash
    )
    task = asyncio.create_task(subscriber.run())
    try:
        await wait_for(lambda: holder.refused == 1)
        await asyncio.sleep(1.5)
        assert holder.refused == 1
    finally:
        task.cancel()
        await runner.cleanup()


async def test_a_config_superseded_by_the_file_is_sent_again(tmp_path: Path) -> None:
    """The mounted file can lag behind a push; the operator's current config must win again."""
    files = tls.generate(tmp_path / "tls", ["127.0.0.1"])
    hub = Hub()
    current, older = load_text(CONFIG % "false"), load_text(CONFIG % "true")
    hub.publish(Published("ns", "gw", current.hash, CONFIG % "false"))
    runner, port = await serve(hub, files)
    holder = Holder()
    subscriber = Subscriber(
        settings(tmp_path, port, files.ca_pem), holder.apply, lambda: holder.hash
    )
    task = asyncio.create_task(subscriber.run())
    try:
        await wait_for(lambda: holder.applied == [current.hash])
        holder.apply(CONFIG % "true", "file")  # the kubelet's late copy of an older version
        hub.publish(Published("ns", "gw", current.hash, CONFIG % "false"))  # no change upstream
        await wait_for(lambda: holder.applied == [current.hash, older.hash, current.hash], 4)
    finally:
        task.cancel()
        await runner.cleanup()


async def test_an_endpoint_with_a_certificate_from_another_ca_is_not_trusted(
    tmp_path: Path,
) -> None:
    files = tls.generate(tmp_path / "tls", ["127.0.0.1"])
    other = tls.generate(tmp_path / "other", ["127.0.0.1"])
    hub = Hub()
    hub.publish(Published("ns", "gw", "h", CONFIG % "true"))
    runner, port = await serve(hub, files)
    holder = Holder()
    subscriber = Subscriber(
        settings(tmp_path, port, other.ca_pem), holder.apply, lambda: holder.hash
    )
    task = asyncio.create_task(subscriber.run())
    try:
        await asyncio.sleep(1.0)
        assert holder.applied == [] and not subscriber.connected
    finally:
        task.cancel()
        await runner.cleanup()


async def test_a_bad_token_is_refused_and_nothing_applied(tmp_path: Path) -> None:
    files = tls.generate(tmp_path / "tls", ["127.0.0.1"])
    hub = Hub()
    hub.publish(Published("ns", "gw", "h", CONFIG % "true"))
    runner, port = await serve(hub, files)
    holder = Holder()
    subscriber = Subscriber(
        settings(tmp_path, port, files.ca_pem, token="stolen"), holder.apply, lambda: holder.hash
    )
    task = asyncio.create_task(subscriber.run())
    try:
        await asyncio.sleep(1.0)
        assert holder.applied == []
    finally:
        task.cancel()
        await runner.cleanup()


def test_environment_contract() -> None:
    assert SubscribeSettings.from_env({}) is None
    env = {
        "PACKGATE_OPERATOR_URL": "https://op:8444/",
        "PACKGATE_OPERATOR_CA": "PEM",
        "PACKGATE_TOKEN_FILE": "/t",
        "POD_NAME": "p",
        "POD_NAMESPACE": "n s",
    }
    parsed = SubscribeSettings.from_env(env)
    assert parsed is not None
    assert parsed.endpoint == "https://op:8444/v1/namespaces/n%20s/pods/p/config"
    # The audit shipper reads the same identity from the same variables, once, the same way.
    shipping = ShipSettings.from_env({**env, "PACKGATE_AUDIT_COLLECTOR_URL": "https://c:8445"})
    assert shipping is not None
    assert dataclasses.replace(shipping.channel, url=parsed.channel.url) == parsed.channel
    assert shipping.endpoint == "https://c:8445/v1/namespaces/n%20s/pods/p/records"
    with pytest.raises(SubscribeConfigError, match="must be https://"):
        SubscribeSettings.from_env({**env, "PACKGATE_OPERATOR_URL": "http://op"})
    with pytest.raises(SubscribeConfigError, match="POD_NAME"):
        SubscribeSettings.from_env({k: v for k, v in env.items() if k != "POD_NAME"})


async def test_a_refusal_is_reported_at_once_not_when_the_waiting_poll_ends(tmp_path: Path) -> None:
    files = tls.generate(tmp_path / "tls", ["127.0.0.1"])
    hub = Hub()
    first = load_text(CONFIG % "true")
    hub.publish(Published("ns", "gw", first.hash, CONFIG % "true"))
    runner, port = await serve(hub, files)
    holder = Holder()
    refusals: list[dict[str, Any]] = []
    slow = dataclasses.replace(settings(tmp_path, port, files.ca_pem), wait_seconds=30)
    subscriber = Subscriber(slow, holder.apply, lambda: holder.hash, lambda: refusals)
    task = asyncio.create_task(subscriber.run())
    try:
        await wait_for(lambda: holder.applied == [first.hash])
        await wait_for(lambda: hub.subscriptions == 1)  # parked for up to 30 s
        refusals.append(
            {"source": "file:/etc/x", "reason": "unsigned", "digest": "abc123", "at": 1}
        )
        subscriber.nudge()  # what ConfigHolder.refuse does through on_refusal
        await wait_for(lambda: hub.reports["uid-a"].refused == "file:unsigned:abc123", within=2)
    finally:
        task.cancel()
        await runner.cleanup()
