"""Run the real gateway in-process on free loopback ports, for integration tests and benchmarks.

Why it exists: most gateway tests need a gateway, an upstream and the OpenAI SDK talking over real
sockets, and starting a subprocess for each would make the suite slow. This builds the same
objects `packgate gateway run` builds (holder, gateway app, admin app, runners) in the test's own
event loop. Tests that need real signals start `packgate gateway run` as a subprocess instead.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from openai import APIError, AsyncOpenAI
from packgate_sidecar.app import Gateway, GatewayOptions
from packgate_sidecar.metrics import Metrics
from packgate_sidecar.policy import PodIdentity, PolicyRuntime, Registry
from packgate_sidecar.reload import ConfigHolder
from packgate_sidecar.run import start_site

UPSTREAM_KEY = "sk-upstream-secret-key"


def make_config(
    *base_urls: str,
    chain: Sequence[str] = (),
    policy: Mapping[str, Any] | None = None,
    enabled: bool = True,
    models: Sequence[str | None] | None = None,
    name: str = "test-pack",
) -> dict[str, Any]:
    """A policy config with one target per base URL (ids t0, t1, ...), all keyed UPSTREAM_KEY."""
    targets = []
    for index, url in enumerate(base_urls):
        target: dict[str, Any] = {
            "id": f"t{index}",
            "provider": "openai",
            "base_url": url,
            "secret_key_ref": {"env": "UPSTREAM_KEY"},
        }
        model = models[index] if models is not None else None
        if model is not None:
            target["model"] = model
        targets.append(target)
    return {
        "pack": {"name": name, "version": "1.0.0", "enabled": enabled},
        "providers": {"targets": targets},
        "policies": {"chain": list(chain)},
        "policy": dict(policy or {}),
    }


@dataclass
class RunningGateway:
    base_url: str
    admin_url: str
    gateway: Gateway
    holder: ConfigHolder
    metrics: Metrics

    def client(self, **kwargs: Any) -> AsyncOpenAI:
        kwargs.setdefault("max_retries", 0)
        kwargs.setdefault("timeout", 10)
        return AsyncOpenAI(base_url=self.base_url, api_key="client-key-never-forwarded", **kwargs)

    def metric(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels)
        return value or 0.0

    async def stream_until_error(self) -> tuple[str, APIError]:
        """Stream a chat answer to "hi" through the real SDK until the stream ends in an error
        event: the text the application received before it, and the error."""
        stream = await self.client().chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        received = ""
        try:
            async for chunk in stream:
                received += "".join(c.delta.content or "" for c in chunk.choices)
        except APIError as error:
            return received, error
        raise AssertionError(f"the stream ended without an error after {received!r}")


def _port(runner: web.AppRunner) -> int:
    address = runner.addresses[0]
    return int(address[1])


@asynccontextmanager
async def running_gateway(
    config: Mapping[str, Any] | str | None,
    registry: Registry | None = None,
    options: GatewayOptions | None = None,
    environ: Mapping[str, str] | None = None,
    pod: PodIdentity | None = None,
    data_dir: Path | None = None,
) -> AsyncIterator[RunningGateway]:
    metrics = Metrics()
    runtime = PolicyRuntime(
        pod or PodIdentity("pod-a", "ns-a", {"team": "blue"}), metrics, data_dir
    )
    env = {"UPSTREAM_KEY": UPSTREAM_KEY, **(environ or {})}
    holder = ConfigHolder(registry or Registry(), runtime, metrics, environ=env)
    if config is not None:
        holder.apply(config, "push")
    gateway = Gateway(holder, metrics, runtime, options or GatewayOptions(read_timeout=10))
    api = await start_site(
        gateway.app(), ("127.0.0.1", 0), 5.0, True, gateway.guard, gateway.direct
    )
    admin = await start_site(gateway.admin_app(), ("127.0.0.1", 0), 1.0, False)
    try:
        yield RunningGateway(
            f"http://127.0.0.1:{_port(api)}/v1",
            f"http://127.0.0.1:{_port(admin)}",
            gateway,
            holder,
            metrics,
        )
    finally:
        await api.cleanup()
        await admin.cleanup()
        await holder.close()
