"""Set-up shared by the real-pod tests and `make demo`: the fake provider on the node address,
the Helm release of the chart, and a `kubectl port-forward` to a pod.

Why one module: the tests (tests/pods/conftest.py) and the demo (demo/run.py) stand on the same
ground (the chart installed with its defaults on the local node, an OpenAI-compatible provider
that only pods in the run's network namespace can reach), and they must keep standing on the
same ground. Everything here stays inside the run's network namespace: the provider listens on
the node address, which exists only there, and port-forwards bind to its loopback.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import threading
from pathlib import Path
from types import TracebackType
from typing import Any

import sandbox
from localcluster import LocalCluster

from tests.support.upstream import FakeUpstream
from tests.support.waiting import wait_for

CHART = Path(__file__).resolve().parents[2] / "helm" / "packgate"
OPERATOR = "app.kubernetes.io/component=operator"


class Provider:
    """The fake OpenAI-compatible provider on the node address, served from its own thread
    (the tests and the demo keep their own event loops, or none)."""

    def __init__(self, host: str = sandbox.NODE_IP) -> None:
        self.host = host
        self.upstream = FakeUpstream()
        self.loop = asyncio.new_event_loop()
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return self.upstream.base_url

    def start(self) -> Provider:
        started = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(self.upstream.start(self.host, 0))
            started.set()
            self.loop.run_forever()

        self._thread = threading.Thread(target=run, name="fake-provider", daemon=True)
        self._thread.start()
        if not started.wait(10):
            raise RuntimeError(f"the fake provider did not start on {self.host}")
        return self

    def stop(self) -> None:
        if self._thread is None:
            return
        asyncio.run_coroutine_threadsafe(self.upstream.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self._thread = None

    def __enter__(self) -> Provider:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def opted_in_app(
    name: str,
    image: str,
    pack: str,
    *,
    labels: dict[str, str] | None = None,
    replicas: int = 1,
    namespace: str | None = None,
) -> dict[str, Any]:
    """A Deployment whose pods opt in to the sidecar for ``pack``; its app container idles (the
    caller runs the OpenAI SDK in it with ``kubectl exec``)."""
    metadata: dict[str, Any] = {"name": name}
    if namespace is not None:
        metadata["namespace"] = namespace
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata,
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {
                    "labels": {"app": name, **(labels or {})},
                    "annotations": {
                        "packgate.dev/inject": "true",
                        "packgate.dev/policy-pack": pack,
                    },
                },
                "spec": {
                    "containers": [
                        {
                            "name": "app",
                            "image": image,
                            "imagePullPolicy": "Never",
                            # Stops at once on SIGTERM, as an app should: a deleted pod then
                            # takes as long as the sidecar's drain, not the whole grace period
                            # (the injector raises it to what the sidecar needs).
                            "command": ["sh", "-c", "trap 'exit 0' TERM; sleep infinity & wait"],
                        }
                    ],
                },
            },
        },
    }


def helm(cluster: LocalCluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(cluster.bin_dir / "helm"), f"--kubeconfig={cluster.kubeconfig}", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )


def ready(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions) and not (
        pod.get("metadata") or {}
    ).get("deletionTimestamp")


def pods(cluster: LocalCluster, namespace: str, selector: str) -> list[dict[str, Any]]:
    out = cluster.kubectl("get", "pods", "-n", namespace, "-l", selector, "-o", "json").stdout
    return list(json.loads(out)["items"])


def install_release(
    cluster: LocalCluster, name: str, namespace: str, image_tag: str, *values: str
) -> None:
    """`helm install` the chart with its default values plus `image.tag` (the documented
    override for the locally built image) and `values` (`key=value`); wait until both operator
    replicas are Ready. A failure says what the cluster shows."""
    sets = [arg for value in (f"image.tag={image_tag}", *values) for arg in ("--set", value)]
    args = ["install", name, str(CHART), "-n", namespace, "--create-namespace", *sets]
    result = helm(cluster, *args)
    if result.returncode != 0:
        raise RuntimeError(f"helm install failed: {result.stderr}")
    try:
        wait_for(
            lambda: len([p for p in pods(cluster, namespace, OPERATOR) if ready(p)]) == 2,
            timeout=120,
            what="two Ready operator replicas",
        )
    except AssertionError:
        seen = [
            cluster.kubectl(*args, check=False).stdout[-3000:]
            for args in (
                ("get", "all", "-n", namespace, "-o", "wide"),
                ("get", "events", "-n", namespace),
                ("get", "mutatingwebhookconfigurations"),
                ("logs", "-n", namespace, "-l", OPERATOR, "--tail=20"),
            )
        ]
        raise AssertionError("operator replicas not Ready:\n" + "\n".join(seen)) from None


class PortForward:
    """`kubectl port-forward <target> :<port>` on a free local port (the sandbox's loopback)."""

    def __init__(self, cluster: LocalCluster, namespace: str, target: str, port: int) -> None:
        self.argv = [
            str(cluster.bin_dir / "kubectl"),
            f"--kubeconfig={cluster.kubeconfig}",
            "port-forward",
            "-n",
            namespace,
            target,
            f":{port}",
        ]
        self.url = ""
        self._proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> PortForward:
        self._proc = subprocess.Popen(
            self.argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()  # "Forwarding from 127.0.0.1:PORT -> 8446"
        found = re.search(r"127\.0\.0\.1:(\d+)", line)
        if not found:
            self.__exit__(None, None, None)
            raise RuntimeError(f"kubectl port-forward did not start: {line!r}")
        self.url = f"http://127.0.0.1:{found.group(1)}"
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None
