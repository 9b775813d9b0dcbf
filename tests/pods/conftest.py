"""Fixtures for tests on real pods: the fake provider inside the sandbox and the Helm release.

The provider listens on the node address, which exists only inside the run's network namespace,
so pods reach it over the bridge and nothing leaves the machine. The chart is installed once per
session with default values and the one documented override (the image tag), and uninstalled at
the end so that later tests see a cluster without its webhook.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sandbox
from image import BuiltImage
from localcluster import LocalCluster
from node import Node

from tests.support.upstream import FakeUpstream
from tests.support.waiting import wait_for

CHART = Path(__file__).resolve().parents[2] / "helm" / "packgate"
# Not packgate-system: the chart test leaves its kept audit volume there after uninstalling.
RELEASE, RELEASE_NS = "pg", "packgate"


@dataclass
class Provider:
    upstream: FakeUpstream
    loop: asyncio.AbstractEventLoop

    @property
    def base_url(self) -> str:
        return self.upstream.base_url


@pytest.fixture(scope="session")
def provider() -> Iterator[Provider]:
    """The fake OpenAI-compatible provider on the node address (inside the sandbox only)."""
    loop = asyncio.new_event_loop()
    upstream = FakeUpstream()
    started = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(upstream.start(sandbox.NODE_IP, 0))
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=run, name="fake-provider", daemon=True)
    thread.start()
    assert started.wait(10)
    yield Provider(upstream, loop)
    asyncio.run_coroutine_threadsafe(upstream.stop(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def helm(cluster: LocalCluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(cluster.bin_dir / "helm"), f"--kubeconfig={cluster.kubeconfig}", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )


def operator_pods(cluster: LocalCluster) -> list[dict[str, object]]:
    out = cluster.kubectl(
        "get", "pods", "-n", RELEASE_NS, "-l", "app.kubernetes.io/component=operator", "-o", "json"
    ).stdout
    return list(json.loads(out)["items"])


def ready(pod: dict[str, object]) -> bool:
    status = pod.get("status") or {}
    assert isinstance(status, dict)
    return any(
        c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions", [])
    ) and not (pod.get("metadata") or {}).get("deletionTimestamp")  # type: ignore[union-attr]


@pytest.fixture(scope="session")
def release(cluster: LocalCluster, node: Node, packgate_image: BuiltImage) -> Iterator[str]:
    """`helm install` of the chart with default values plus `image.tag` (the documented
    override for the locally built image); waits for both operator replicas to be Ready."""
    tag = packgate_image.name.rsplit(":", 1)[1]
    result = helm(
        cluster,
        "install",
        RELEASE,
        str(CHART),
        "-n",
        RELEASE_NS,
        "--create-namespace",
        "--set",
        f"image.tag={tag}",
    )
    assert result.returncode == 0, result.stderr
    try:
        try:
            wait_for(
                lambda: len([p for p in operator_pods(cluster) if ready(p)]) == 2,
                timeout=120,
                what="two Ready operator replicas",
            )
        except AssertionError:
            seen = [
                cluster.kubectl(*args, check=False).stdout[-3000:]
                for args in (
                    ("get", "all", "-n", RELEASE_NS, "-o", "wide"),
                    ("get", "events", "-n", RELEASE_NS),
                    ("get", "mutatingwebhookconfigurations"),
                    (
                        "logs",
                        "-n",
                        RELEASE_NS,
                        "-l",
                        "app.kubernetes.io/component=operator",
                        "--tail=20",
                    ),
                )
            ]
            raise AssertionError("operator replicas not Ready:\n" + "\n".join(seen)) from None
        yield RELEASE_NS
    finally:
        helm(cluster, "uninstall", RELEASE, "-n", RELEASE_NS, "--wait", "--timeout=60s")
