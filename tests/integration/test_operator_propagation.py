"""PolicyPack edits reach running sidecars over the authenticated channel, without restarts.

Pods are created through a Deployment (the controller-manager makes them) and injected by the
operator's webhook; there is no kubelet, so each pod's sidecar is a `packgate gateway run` process
started here with what the kubelet would give it: the injected container's args and env, the
pod's rendered ConfigMap as its config file, and a projected service-account token bound to that
pod (made with `kubectl create token --bound-object-kind Pod`). Requests go through the real
OpenAI SDK to a local OpenAI-compatible upstream.

The enforced change: a content filter with a custom term is added, so a request that passed
before the edit is refused with 403 after it; and `pack.enabled: false` (503 for everything) for
the sidecar that starts while the operator is down.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from localcluster import LocalCluster
from operator_process import OperatorProcess, webhook_configuration
from packgate_operator.render import render
from processes import die_with_parent, free_port

from tests.support.upstream import upstream_process
from tests.support.waiting import wait_for

pytestmark = pytest.mark.cluster
ROOT = Path(__file__).resolve().parents[2]
UPSTREAM_KEY = "sk-upstream-test"


class Setup:
    """One operator serving namespaces `<prefix>-*`, its webhook registered for them."""

    def __init__(self, cluster: LocalCluster, workdir: Path, prefix: str) -> None:
        self.cluster = cluster
        self.prefix = prefix
        self.label = uuid.uuid4().hex[:8]
        self.operator = OperatorProcess(
            kubeconfig=cluster.kubeconfig, workdir=workdir, namespaces=[f"{prefix}-*"]
        )
        self.webhook = f"packgate-test-{self.label}"

    def __enter__(self) -> Setup:
        self.cluster.kubectl("apply", "-f", str(ROOT / "crds" / "policypacks.yaml"))
        self.cluster.kubectl(
            "wait", "--for=condition=Established", "crd/policypacks.packgate.dev", "--timeout=30s"
        )
        self.operator.start()
        configuration = webhook_configuration(
            self.webhook,
            self.operator.webhook_url,
            self.operator.ca_pem,
            namespace_selector={"matchLabels": {"packgate-test": self.label}},
        )
        self.kubectl("apply", "-f", "-", input=json.dumps(configuration))
        return self

    def __exit__(self, *exc: object) -> None:
        self.kubectl("delete", "mutatingwebhookconfiguration", self.webhook, check=False)
        self.operator.stop()
        print(self.operator.log_tail(60))

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> Any:
        return self.cluster.kubectl(*args, input=input, check=check)

    def apply(self, manifest: dict[str, Any]) -> None:
        self.kubectl("apply", "-f", "-", input=json.dumps(manifest))

    def get(self, kind: str, name: str, namespace: str) -> dict[str, Any] | None:
        got = self.kubectl("get", kind, name, "-n", namespace, "-o", "json", check=False)
        return json.loads(got.stdout) if got.returncode == 0 else None

    def namespace(self) -> str:
        name = f"{self.prefix}-{uuid.uuid4().hex[:8]}"
        self.apply(
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": name, "labels": {"packgate-test": self.label}},
            }
        )
        wait_for(lambda: self.get("serviceaccount", "default", name), what="default SA")
        return name

    def status(self, namespace: str) -> dict[str, Any]:
        return dict((self.get("policypack", "gateway", namespace) or {}).get("status") or {})

    def edit(self, namespace: str, body: dict[str, Any]) -> None:
        """Replace the pack's spec with one PATCH straight to the apiserver.

        Timed edits go this way rather than through kubectl, whose start-up (hundreds of ms on a
        busy machine) is not part of the propagation being measured.
        """
        pki = self.cluster.workdir / "pki"
        context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        context.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        request = urllib.request.Request(
            f"{self.cluster.server}/apis/packgate.dev/v1alpha1/namespaces/{namespace}"
            "/policypacks/gateway",
            data=json.dumps([{"op": "replace", "path": "/spec", "value": body}]).encode(),
            method="PATCH",
            headers={"Content-Type": "application/json-patch+json"},
        )
        with urllib.request.urlopen(request, context=context, timeout=10) as response:
            assert response.status == 200

    def token(self, namespace: str, pod: dict[str, Any], audience: str = "packgate") -> str:
        meta = pod["metadata"]
        return str(
            self.kubectl(
                "create", "token", pod["spec"]["serviceAccountName"], "-n", namespace,
                f"--audience={audience}", "--bound-object-kind=Pod",
                f"--bound-object-name={meta['name']}", f"--bound-object-uid={meta['uid']}",
                "--duration=1h",
            ).stdout.strip()
        )  # fmt: skip


def spec(
    upstream: str, enabled: bool = True, description: str = "", blocked_term: str = ""
) -> dict[str, Any]:
    pack: dict[str, Any] = {"name": "gateway", "version": "1.0.0", "enabled": enabled}
    if description:
        pack["description"] = description
    return {
        "pack": pack,
        "providers": {
            "targets": [
                {
                    "id": "local",
                    "provider": "openai",
                    "base_url": upstream,
                    "secret_key_ref": {"env": "UPSTREAM_KEY"},
                }
            ]
        },
        "policies": {"chain": ["content-filter"] if blocked_term else []},
        "policy": (
            {"content-filter": {"action": "block", "categories": [], "terms": [blocked_term]}}
            if blocked_term
            else {}
        ),
    }


def policypack(namespace: str, body: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "packgate.dev/v1alpha1",
        "kind": "PolicyPack",
        "metadata": {"name": "gateway", "namespace": namespace},
        "spec": body,
    }


def deployment(namespace: str, replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "chat", "namespace": namespace},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "chat"}},
            "template": {
                "metadata": {
                    "labels": {"app": "chat", "team": "search"},
                    "annotations": {
                        "packgate.dev/inject": "true",
                        "packgate.dev/policy-pack": "gateway",
                    },
                },
                "spec": {"containers": [{"name": "chat", "image": "registry.invalid/chat:1"}]},
            },
        },
    }


class Sidecar:
    """A sidecar process with one pod's identity, as the kubelet would start it."""

    def __init__(self, pod: dict[str, Any], config_text: str, token: str, workdir: Path) -> None:
        self.pod = pod
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port, self.admin_port = free_port(), free_port()
        container = next(
            c for c in pod["spec"]["initContainers"] if c["name"] == "packgate-sidecar"
        )
        self.config = workdir / "policy.yaml"
        self.config.write_text(config_text)
        (workdir / "token").write_text(token)
        labels = pod["metadata"].get("labels", {})
        (workdir / "labels").write_text("\n".join(f'{k}="{v}"' for k, v in labels.items()))
        self.env = self._env(container)
        self.argv = self._argv(container["args"])
        self.proc: subprocess.Popen[bytes] | None = None

    def _env(self, container: dict[str, Any]) -> dict[str, str]:
        meta = self.pod["metadata"]
        fields = {"metadata.name": meta["name"], "metadata.namespace": meta["namespace"]}
        env = {"UPSTREAM_KEY": UPSTREAM_KEY}
        for item in container["env"]:
            if "value" in item:
                env[item["name"]] = item["value"]
            elif "fieldRef" in item.get("valueFrom", {}):
                env[item["name"]] = fields[item["valueFrom"]["fieldRef"]["fieldPath"]]
        # Files the kubelet would mount, at this process's own paths.
        env["PACKGATE_TOKEN_FILE"] = str(self.workdir / "token")
        env["PACKGATE_POD_LABELS_FILE"] = str(self.workdir / "labels")
        env["PACKGATE_DATA_DIR"] = str(self.workdir / "data")
        return env

    def _argv(self, args: list[str]) -> list[str]:
        replaced = {
            "--listen": f"127.0.0.1:{self.port}",
            "--admin-listen": f"127.0.0.1:{self.admin_port}",
            "--policy-config": str(self.config),
        }
        out = list(args)
        for index, arg in enumerate(out[:-1]):
            if arg in replaced:
                out[index + 1] = replaced[arg]
        return [sys.executable, "-m", "packgate_sidecar.cli", *out, "--log-level=info"]

    def start(self) -> Sidecar:
        log = (self.workdir / "sidecar.log").open("wb")
        self.proc = subprocess.Popen(
            self.argv,
            env={**os.environ, **self.env},
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=self.workdir,
            preexec_fn=die_with_parent,
        )
        log.close()
        return self

    def restart_if_port_was_taken(self) -> None:
        """Ports are picked free but bound later; another process may win one in between."""
        if self.proc is None or self.proc.poll() is None:
            return
        if "address already in use" not in self.log():
            raise AssertionError(f"sidecar exited with {self.proc.returncode}:\n{self.log()}")
        (self.workdir / "sidecar.log").rename(self.workdir / "sidecar.log.taken-port")
        self.port, self.admin_port = free_port(), free_port()
        self.argv = self._argv(self.argv[3:-1])
        self.start()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log(self) -> str:
        return (self.workdir / "sidecar.log").read_text(errors="replace")[-3000:]

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=f"http://127.0.0.1:{self.port}/v1", api_key="placeholder", max_retries=0
        )

    def chat(self, text: str = "hello") -> str:
        answer = self.client().chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": text}]
        )
        return str(answer.choices[0].message.content)


async def _hash_of(session: aiohttp.ClientSession, sidecar: Sidecar) -> str | None:
    try:
        async with session.get(f"http://127.0.0.1:{sidecar.admin_port}/readyz") as response:
            body = await response.json()
    except (aiohttp.ClientError, ValueError):
        return None
    return body.get("config_hash")


def hashes(sidecars: list[Sidecar]) -> list[str | None]:
    for sidecar in sidecars:
        sidecar.restart_if_port_was_taken()

    async def run() -> list[str | None]:
        async with aiohttp.ClientSession() as session:
            return list(await asyncio.gather(*(_hash_of(session, s) for s in sidecars)))

    return asyncio.run(run())


def time_to_hash(
    sidecars: list[Sidecar], target: str, started: float, timeout: float
) -> list[float]:
    """Seconds from `started` until each sidecar enforces `target` (polled every 10 ms)."""

    async def run() -> list[float]:
        done: dict[int, float] = {}
        async with aiohttp.ClientSession() as session:
            while len(done) < len(sidecars):
                if time.monotonic() - started > timeout:
                    raise AssertionError(
                        f"{len(sidecars) - len(done)} sidecars did not converge in {timeout}s"
                    )
                pending = [i for i in range(len(sidecars)) if i not in done]
                got = await asyncio.gather(*(_hash_of(session, sidecars[i]) for i in pending))
                now = time.monotonic()
                for i, value in zip(pending, got, strict=True):
                    if value == target:
                        done[i] = now - started
                await asyncio.sleep(0.01)
        return [done[i] for i in range(len(sidecars))]

    return asyncio.run(run())


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))]


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with upstream_process(tmp_path_factory.mktemp("upstream") / "upstream.log") as url:
        yield url


@pytest.fixture(scope="module")
def setup(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    with Setup(cluster, tmp_path_factory.mktemp("operator"), "pgpr") as running:
        yield running


def wait_subscribed(setup: Setup, namespace: str, sidecars: list[Sidecar], count: int) -> None:
    """podsInSync reaches `count`; if not, say whether the sidecars ever subscribed."""
    try:
        wait_for(lambda: setup.status(namespace).get("podsInSync") == count, 30, "sidecars in sync")
    except AssertionError:
        log = sidecars[0].log()
        hint = (
            "" if '"subscribed"' in log else
            " (no sidecar logged \"subscribed\": packgate gateway run must start "
            "packgate_sidecar.subscribe.start(holder) when PACKGATE_OPERATOR_URL is set)"
        )  # fmt: skip
        raise AssertionError(f"sidecars never converged{hint}; sidecar log:\n{log}") from None


def pods_of(setup: Setup, namespace: str, count: int) -> list[dict[str, Any]]:
    def listing() -> list[dict[str, Any]]:
        got = setup.kubectl("get", "pods", "-n", namespace, "-o", "json").stdout
        items: list[dict[str, Any]] = json.loads(got)["items"]
        return items if len(items) == count else []

    result: list[dict[str, Any]] = wait_for(listing, what=f"{count} pods in {namespace}")
    return result


def start_sidecars(
    setup: Setup, namespace: str, pods: list[dict[str, Any]], root: Path
) -> list[Sidecar]:
    configmap = setup.get("configmap", "packgate-gateway", namespace)
    assert configmap is not None
    text = configmap["data"]["policy.yaml"]
    sidecars = []
    for item in pods:
        audience = next(
            v["projected"]["sources"][0]["serviceAccountToken"]["audience"]
            for v in item["spec"]["volumes"]
            if v["name"] == "packgate-token"
        )
        token = setup.token(namespace, item, audience)
        sidecars.append(Sidecar(item, text, token, root / item["metadata"]["name"]).start())
    return sidecars


def test_edits_reach_ten_sidecars_and_are_enforced(
    setup: Setup, upstream: str, tmp_path: Path
) -> None:
    ns = setup.namespace()
    setup.apply(policypack(ns, spec(upstream)))
    first = wait_for(lambda: setup.status(ns).get("configHash"), what="rendered pack")
    setup.apply(deployment(ns, 10))
    pods = pods_of(setup, ns, 10)
    # A sidecar whose token belongs to a pod of another namespace: it must get nothing.
    stranger_ns = setup.namespace()
    setup.apply(policypack(stranger_ns, spec(upstream)))
    wait_for(lambda: setup.status(stranger_ns).get("configHash"), what="second pack")
    setup.apply(deployment(stranger_ns, 1))
    (foreign,) = pods_of(setup, stranger_ns, 1)
    sidecars = start_sidecars(setup, ns, pods, tmp_path)
    impostor = Sidecar(
        pods[0], (setup.get("configmap", "packgate-gateway", ns) or {})["data"]["policy.yaml"],
        setup.token(stranger_ns, foreign), tmp_path / "impostor",
    ).start()  # fmt: skip
    everyone = [*sidecars, impostor]
    try:
        wait_for(lambda: hashes(everyone) == [first] * 11, 60, "all sidecars ready")
        wait_subscribed(setup, ns, sidecars, 10)
        assert setup.status(ns)["injectedPods"] == 10
        assert all(sidecar.chat("tell me about zanzibar") == "hi" for sidecar in sidecars)

        latencies: list[float] = []
        for round_ in range(1, 6):
            body = spec(upstream, description=f"round {round_}")
            target = render(body).hash
            started = time.monotonic()
            setup.edit(ns, body)
            latencies += time_to_hash(sidecars, target, started, timeout=10)
        body = spec(upstream, blocked_term="zanzibar")
        target = render(body).hash
        started = time.monotonic()
        setup.edit(ns, body)
        latencies += time_to_hash(sidecars, target, started, timeout=10)

        p50, p99 = statistics.median(latencies), percentile(latencies, 99)
        print(f"\npropagation edit -> 10 sidecars enforcing: p50 {p50 * 1000:.0f} ms, "
              f"p99 {p99 * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms "
              f"({len(latencies)} samples)")  # fmt: skip
        assert p99 < 2.0

        # Enforced: the request that passed before the edit is blocked by every sidecar now.
        for sidecar in sidecars:
            with pytest.raises(openai.PermissionDeniedError) as refused:
                sidecar.chat("tell me about zanzibar")
            error = refused.value.body
            assert isinstance(error, dict) and error["type"] == "policy_violation"
            assert error["policy"] == "content-filter"
            assert sidecar.chat("hello") == "hi"
        # The impostor kept the config it started with: the operator refused its token.
        assert hashes([impostor]) == [first]
        assert impostor.chat("tell me about zanzibar") == "hi"
        assert "wrong-pod" in impostor.log() or "subscription refused" in impostor.log()
        metrics = setup.operator.metrics()
        assert 'packgate_operator_subscription_rejections_total{reason="wrong-pod"}' in metrics

        wait_for(lambda: setup.status(ns).get("configHash") == target, what="status hash")
        wait_for(lambda: setup.status(ns).get("podsInSync") == 10, 30, "converged status")
        in_sync = next(c for c in setup.status(ns)["conditions"] if c["type"] == "InSync")
        assert in_sync["status"] == "True"
    finally:
        for sidecar in everyone:
            sidecar.stop()


def get_json(url: str, token: str, ca_pem: str) -> tuple[int, dict[str, Any]]:
    context = ssl.create_default_context(cadata=ca_pem)
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def test_the_channel_refuses_tokens_that_do_not_prove_the_pod(setup: Setup, upstream: str) -> None:
    ns, other = setup.namespace(), setup.namespace()
    for namespace in (ns, other):
        setup.apply(policypack(namespace, spec(upstream)))
        setup.apply(deployment(namespace, 1))
    (mine,), (theirs,) = pods_of(setup, ns, 1), pods_of(setup, other, 1)
    wait_for(lambda: setup.status(ns).get("configHash"), what="rendered pack")
    base = setup.operator.subscribe_url
    ca = setup.operator.ca_pem
    url = f"{base}/v1/namespaces/{ns}/pods/{mine['metadata']['name']}/config?wait=0"

    status, body = get_json(url, setup.token(ns, mine), ca)
    assert status == 200
    assert body["pack"] == "gateway" and body["hash"] == setup.status(ns)["configHash"]
    assert "UPSTREAM_KEY" in body["config"] and UPSTREAM_KEY not in body["config"]

    status, body = get_json(url, setup.token(other, theirs), ca)
    assert status == 403
    assert body["error"]["reason"] == "wrong-pod"
    assert f"belongs to pod {other}/" in body["error"]["message"]

    status, body = get_json(
        url, setup.token(ns, mine, audience="https://kubernetes.default.svc"), ca
    )
    assert status == 401

    unbound = setup.kubectl("create", "token", "default", "-n", ns, "--audience=packgate").stdout
    status, body = get_json(url, unbound.strip(), ca)
    assert status == 403 and body["error"]["reason"] == "not-pod-bound"

    status, body = get_json(url, "not-a-token", ca)
    assert status == 401


def test_a_sidecar_started_while_the_operator_is_down_catches_up(
    cluster: LocalCluster, upstream: str, tmp_path: Path
) -> None:
    with Setup(cluster, tmp_path / "operator", "pgdn") as solo:
        ns = solo.namespace()
        solo.apply(policypack(ns, spec(upstream)))
        first = wait_for(lambda: solo.status(ns).get("configHash"), what="rendered pack")
        solo.apply(deployment(ns, 1))
        pods = pods_of(solo, ns, 1)
        solo.operator.stop()
        # Operator down: the sidecar starts on the last rendered config (the mounted file) ...
        (sidecar,) = start_sidecars(solo, ns, pods, tmp_path)
        try:
            wait_for(lambda: hashes([sidecar]) == [first], 30, "sidecar on the file config")
            assert sidecar.chat() == "hi"
            disabled = spec(upstream, enabled=False)
            solo.apply(policypack(ns, disabled))
            time.sleep(1)
            assert hashes([sidecar]) == [first]  # nobody renders while the operator is down
            # ... and catches up once the operator is back.
            solo.operator.start()
            wait_for(lambda: hashes([sidecar]) == [render(disabled).hash], 45, "catch-up")
            wait_for(lambda: solo.status(ns).get("podsInSync") == 1, 30, "the sidecar counted")
            with pytest.raises(openai.InternalServerError):
                sidecar.chat()
        finally:
            sidecar.stop()
