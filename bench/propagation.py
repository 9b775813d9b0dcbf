"""Propagation and scale of the operator on the real local control plane (not part of make test).

What it measures, on a fresh LocalCluster:

1. propagation: N sidecar processes (default 100), each started with its pod's identity (the
   injected args and env, the rendered ConfigMap as its file, a pod-bound projected token),
   subscribe to the operator; then a series of PolicyPack edits, each made with one PATCH to the
   apiserver. Latency = from just before the PATCH to the sidecar's own "config loaded" log line
   for the new hash (the moment it swapped the config in). Also: edit -> ConfigMap and edit ->
   status (configHash and podsInSync == N) as seen by polling the API.
2. scale: P packs (default 100) in 10 namespaces and M opted-in pods (default 1000) created
   through the webhook; operator RSS before and after, time for all statuses to count the pods,
   and edit -> ConfigMap / status times for one pack while all of that is loaded.

    .venv/bin/python bench/propagation.py                      # 100 sidecars, 100 packs, 1000 pods
    .venv/bin/python bench/propagation.py --sidecars 20 --pods 200 --packs 20 --edits 3
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime as dt
import json
import os
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "cluster"))

from localcluster import LocalCluster, build_tools  # noqa: E402
from operator_process import OperatorProcess, webhook_configuration  # noqa: E402
from packgate_operator.render import render  # noqa: E402
from processes import die_with_parent, free_port  # noqa: E402


def log(message: str) -> None:
    print(f"[propagation {time.strftime('%H:%M:%S')}] {message}", flush=True)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


class Api:
    """Direct HTTPS to the apiserver as admin: timing an edit must not include kubectl's start."""

    def __init__(self, cluster: LocalCluster) -> None:
        pki = cluster.workdir / "pki"
        self.server = cluster.server
        self.context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        self.context.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))

    def call(
        self, method: str, path: str, body: Any = None, ctype: str = "application/json"
    ) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.server + path, data=data, method=method)  # noqa: S310
        request.add_header("Content-Type", ctype)
        try:
            with urllib.request.urlopen(request, context=self.context, timeout=30) as response:  # noqa: S310
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise RuntimeError(f"{method} {path}: {exc.code} {exc.read()[:300]!r}") from None

    def pack(self, ns: str, name: str = "gateway") -> Any:
        return self.call("GET", f"/apis/packgate.dev/v1alpha1/namespaces/{ns}/policypacks/{name}")

    def configmap_hash(self, ns: str, pack: str = "gateway") -> str:
        got = self.call("GET", f"/api/v1/namespaces/{ns}/configmaps/packgate-{pack}") or {}
        return str(
            got.get("metadata", {}).get("annotations", {}).get("packgate.dev/config-hash", "")
        )

    def patch_spec(self, ns: str, name: str, spec: dict[str, Any]) -> None:
        path = f"/apis/packgate.dev/v1alpha1/namespaces/{ns}/policypacks/{name}"
        self.call("PATCH", path, {"spec": spec}, "application/merge-patch+json")


def spec(description: str = "", chain: list[str] | None = None) -> dict[str, Any]:
    pack: dict[str, Any] = {"name": "gateway", "version": "1.0.0", "enabled": True}
    if description:
        pack["description"] = description
    return {
        "pack": pack,
        "providers": {
            "targets": [
                {
                    "id": "local",
                    "provider": "openai",
                    "base_url": "http://127.0.0.1:9/v1",
                    "secret_key_ref": {"env": "UPSTREAM_KEY"},
                }
            ]
        },
        "policies": {"chain": chain or []},
    }


def manifest(kind: str, ns: str, name: str, **body: Any) -> dict[str, Any]:
    api = {"PolicyPack": "packgate.dev/v1alpha1", "Deployment": "apps/v1"}.get(kind, "v1")
    return {"apiVersion": api, "kind": kind, "metadata": {"name": name, "namespace": ns}, **body}


def apply(cluster: LocalCluster, *items: dict[str, Any]) -> None:
    cluster.kubectl(
        "apply",
        "-f",
        "-",
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(items)}),
    )


def namespace(cluster: LocalCluster, name: str) -> None:
    cluster.kubectl("create", "namespace", name)
    deadline = time.monotonic() + 30
    while cluster.kubectl("get", "sa", "default", "-n", name, check=False).returncode:
        if time.monotonic() > deadline:
            raise TimeoutError(name)
        time.sleep(0.2)


def wait(check: Any, timeout: float, what: str, interval: float = 0.02) -> float:
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"{what} after {timeout}s")
        time.sleep(interval)
    return time.monotonic() - started


def pod_template(pack: str) -> dict[str, Any]:
    return {
        "metadata": {
            "labels": {"app": "chat"},
            "annotations": {"packgate.dev/inject": "true", "packgate.dev/policy-pack": pack},
        },
        "spec": {"containers": [{"name": "chat", "image": "registry.invalid/chat:1"}]},
    }


# --- sidecars --------------------------------------------------------------------------------


def sidecar_process(
    pod: dict[str, Any], config: str, token: str, workdir: Path
) -> subprocess.Popen[bytes]:
    workdir.mkdir(parents=True, exist_ok=True)
    container = next(c for c in pod["spec"]["initContainers"] if c["name"] == "packgate-sidecar")
    (workdir / "policy.yaml").write_text(config)
    (workdir / "token").write_text(token)
    fields = {
        "metadata.name": pod["metadata"]["name"],
        "metadata.namespace": pod["metadata"]["namespace"],
    }
    env = {**os.environ, "UPSTREAM_KEY": "sk-bench"}
    for item in container["env"]:
        if "value" in item:
            env[item["name"]] = item["value"]
        elif "fieldRef" in item.get("valueFrom", {}):
            env[item["name"]] = fields[item["valueFrom"]["fieldRef"]["fieldPath"]]
    env["PACKGATE_TOKEN_FILE"] = str(workdir / "token")
    env["PACKGATE_DATA_DIR"] = str(workdir / "data")
    env.pop("PACKGATE_POD_LABELS_FILE", None)
    args = list(container["args"])
    for flag, value in (
        ("--listen", f"127.0.0.1:{free_port()}"),
        ("--admin-listen", f"127.0.0.1:{free_port()}"),
        ("--policy-config", str(workdir / "policy.yaml")),
    ):
        args[args.index(flag) + 1] = value
    log_file = (workdir / "sidecar.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "packgate_sidecar.cli", *args, "--log-level=info"],
        env=env,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        preexec_fn=die_with_parent,
    )
    log_file.close()
    return proc


def loaded_at(log_path: Path, config_hash: str) -> float | None:
    """Wall-clock time of the sidecar's "config loaded" line for `config_hash`."""
    for line in log_path.read_text(errors="replace").splitlines():
        if '"config loaded"' in line and config_hash in line:
            entry = json.loads(line)
            stamp = dt.datetime.strptime(entry["ts"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(
                tzinfo=dt.UTC
            )
            return stamp.timestamp()
    return None


def token_for(cluster: LocalCluster, ns: str, pod: dict[str, Any]) -> str:
    meta = pod["metadata"]
    return str(
        cluster.kubectl(
            "create",
            "token",
            "default",
            "-n",
            ns,
            "--audience=packgate",
            "--bound-object-kind=Pod",
            f"--bound-object-name={meta['name']}",
            f"--bound-object-uid={meta['uid']}",
            "--duration=2h",
        ).stdout.strip()
    )


def propagation(
    cluster: LocalCluster, api: Api, operator: OperatorProcess, n: int, edits: int, workdir: Path
) -> dict[str, Any]:
    ns = "bench-propagation"

    def status(namespace_: str) -> dict[str, Any]:
        return dict((api.pack(namespace_) or {}).get("status") or {})

    namespace(cluster, ns)
    apply(cluster, manifest("PolicyPack", ns, "gateway", spec=spec()))
    wait(lambda: api.configmap_hash(ns), 30, "rendered pack")
    apply(
        cluster,
        manifest(
            "Deployment",
            ns,
            "chat",
            spec={
                "replicas": n,
                "selector": {"matchLabels": {"app": "chat"}},
                "template": pod_template("gateway"),
            },
        ),
    )
    pods: list[dict[str, Any]] = []

    def listed() -> bool:
        nonlocal pods
        pods = api.call("GET", f"/api/v1/namespaces/{ns}/pods")["items"]
        return len(pods) == n

    wait(listed, 120, f"{n} pods", 0.5)
    config = api.call("GET", f"/api/v1/namespaces/{ns}/configmaps/packgate-gateway")["data"][
        "policy.yaml"
    ]
    log(f"{n} pods injected; creating tokens and starting {n} sidecars")
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        tokens = list(pool.map(lambda p: token_for(cluster, ns, p), pods))
    procs = []
    started = time.monotonic()
    try:
        for pod, token in zip(pods, tokens, strict=True):
            procs.append(sidecar_process(pod, config, token, workdir / pod["metadata"]["name"]))

        def subscribed() -> bool:
            # A port picked free may be taken before the sidecar binds it: start that one again.
            for index, proc in enumerate(procs):
                if proc.poll() is not None:
                    pod = pods[index]
                    log(f"sidecar {pod['metadata']['name']} exited; starting it again")
                    path = workdir / pod["metadata"]["name"]
                    (path / "sidecar.log").rename(path / f"sidecar.log.{time.time():.0f}")
                    procs[index] = sidecar_process(pod, config, tokens[index], path)
            return status(ns).get("podsInSync") == n

        wait(subscribed, 600, f"{n} sidecars subscribed", 0.5)
        log(f"{n} sidecars subscribed and in sync after {time.monotonic() - started:.0f}s")
        sidecar_rss = [rss_mb(p.pid) for p in procs]
        latencies: list[float] = []
        to_configmap: list[float] = []
        to_status: list[float] = []
        to_converged: list[float] = []
        for round_ in range(1, edits + 1):
            body = spec(description=f"edit {round_}")
            target = render(body).hash
            t0_wall, t0 = time.time(), time.monotonic()
            api.patch_spec(ns, "gateway", body)
            wait(lambda target=target: api.configmap_hash(ns) == target, 30, "ConfigMap")
            to_configmap.append(time.monotonic() - t0)
            wait(lambda target=target: status(ns).get("configHash") == target, 30, "status hash")
            to_status.append(time.monotonic() - t0)
            logs = [workdir / p["metadata"]["name"] / "sidecar.log" for p in pods]

            def swapped(target: str = target, logs: list[Path] = logs) -> bool:
                return all(loaded_at(f, target) for f in logs)

            wait(swapped, 60, "sidecars", 0.1)
            times = [loaded_at(f, target) for f in logs]
            latencies += [t - t0_wall for t in times if t is not None]
            wait(lambda: status(ns).get("podsInSync") == n, 60, "status convergence", 0.05)
            to_converged.append(time.monotonic() - t0)
            log(
                f"edit {round_}: p50 {statistics.median(latencies[-n:]) * 1000:.0f} ms, "
                f"max {max(latencies[-n:]) * 1000:.0f} ms"
            )
            time.sleep(1)
        return {
            "sidecars": n,
            "edits": edits,
            "samples": len(latencies),
            "edit_to_sidecar_p50_ms": round(statistics.median(latencies) * 1000, 1),
            "edit_to_sidecar_p99_ms": round(pct(latencies, 99) * 1000, 1),
            "edit_to_sidecar_max_ms": round(max(latencies) * 1000, 1),
            "edit_to_configmap_p50_ms": round(statistics.median(to_configmap) * 1000, 1),
            "edit_to_status_hash_p50_ms": round(statistics.median(to_status) * 1000, 1),
            "edit_to_status_all_in_sync_p50_ms": round(statistics.median(to_converged) * 1000, 1),
            "operator_rss_mb": round(rss_mb(operator.proc.pid), 1) if operator.proc else None,
            "sidecar_rss_mb_median": round(statistics.median(sidecar_rss), 1),
        }
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()


def scale(
    cluster: LocalCluster, api: Api, operator: OperatorProcess, packs: int, pods: int
) -> dict[str, Any]:
    assert operator.proc is not None
    before = rss_mb(operator.proc.pid)
    namespaces = [f"bench-scale-{i}" for i in range(10)]
    for ns in namespaces:
        namespace(cluster, ns)
    started = time.monotonic()
    pack_names = [(namespaces[i % 10], f"pack-{i}") for i in range(packs)]
    for ns in namespaces:
        apply(
            cluster,
            *[
                manifest("PolicyPack", n, name, spec=spec(description=name))
                for n, name in pack_names
                if n == ns
            ],
        )
    wait(
        lambda: all(
            api.configmap_hash(ns, name) for ns, name in pack_names[:: max(1, packs // 10)]
        ),
        300,
        "packs rendered",
        0.5,
    )
    wait(
        lambda: all(api.configmap_hash(ns, name) for ns, name in pack_names), 300, "all packs", 0.5
    )
    packs_rendered = time.monotonic() - started
    log(f"{packs} packs rendered in {packs_rendered:.1f}s; creating {pods} pods")
    started = time.monotonic()
    per_pack = max(1, pods // packs)
    batch: list[dict[str, Any]] = []
    for index in range(pods):
        ns, name = pack_names[(index // per_pack) % packs]
        template = pod_template(name)
        pod = manifest("Pod", ns, f"p-{index}", spec=template["spec"])
        pod["metadata"].update(template["metadata"])
        batch.append(pod)
        if len(batch) == 100:
            apply(cluster, *batch)
            batch = []
    if batch:
        apply(cluster, *batch)
    created = time.monotonic() - started

    def counted() -> bool:
        total = 0
        for ns in namespaces:
            items = api.call("GET", f"/apis/packgate.dev/v1alpha1/namespaces/{ns}/policypacks")[
                "items"
            ]
            total += sum(i.get("status", {}).get("injectedPods", 0) for i in items)
        return total >= pods

    wait(counted, 300, "all pods counted", 1.0)
    counted_after = time.monotonic() - started
    after = rss_mb(operator.proc.pid)
    to_configmap: list[float] = []
    to_status: list[float] = []
    for ns, name in pack_names[: min(5, packs)]:
        body = spec(description=f"scale edit of {name}")
        target = render(body).hash
        t0 = time.monotonic()
        api.patch_spec(ns, name, body)
        wait(lambda n=ns, m=name, t=target: api.configmap_hash(n, m) == t, 60, "ConfigMap")
        to_configmap.append(time.monotonic() - t0)

        def status_hash(n: str = ns, m: str = name) -> str:
            return str(((api.pack(n, m) or {}).get("status") or {}).get("configHash", ""))

        wait(lambda t=target, f=status_hash: f() == t, 60, "status")
        to_status.append(time.monotonic() - t0)
    return {
        "packs": packs,
        "pods": pods,
        "packs_rendered_s": round(packs_rendered, 1),
        "pods_created_s": round(created, 1),
        "pods_counted_in_status_s": round(counted_after, 1),
        "operator_rss_before_mb": round(before, 1),
        "operator_rss_after_mb": round(after, 1),
        "edit_to_configmap_p50_ms": round(statistics.median(to_configmap) * 1000, 1),
        "edit_to_configmap_max_ms": round(max(to_configmap) * 1000, 1),
        "edit_to_status_p50_ms": round(statistics.median(to_status) * 1000, 1),
        "edit_to_status_max_ms": round(max(to_status) * 1000, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sidecars", type=int, default=100)
    parser.add_argument("--edits", type=int, default=5)
    parser.add_argument("--packs", type=int, default=100)
    parser.add_argument("--pods", type=int, default=1000)
    parser.add_argument("--skip-scale", action="store_true")
    parser.add_argument("--skip-propagation", action="store_true")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanups on SIGTERM too
    results: dict[str, Any] = {"cpus": os.cpu_count(), "load_at_start": os.getloadavg()[0]}
    workdir = Path(tempfile.mkdtemp(prefix="packgate-bench-propagation-"))
    with LocalCluster(bin_dir=build_tools()) as cluster:
        log(f"control plane up in {cluster.started_in:.1f}s")
        cluster.kubectl("apply", "-f", str(REPO / "crds" / "policypacks.yaml"))
        cluster.kubectl(
            "wait", "--for=condition=Established", "crd/policypacks.packgate.dev", "--timeout=30s"
        )
        with OperatorProcess(
            kubeconfig=cluster.kubeconfig, workdir=workdir / "operator"
        ) as operator:
            configuration = webhook_configuration(
                "packgate-bench", operator.webhook_url, operator.ca_pem
            )
            cluster.kubectl("apply", "-f", "-", input=json.dumps(configuration))
            api = Api(cluster)
            try:
                if not args.skip_propagation:
                    results["propagation"] = propagation(
                        cluster, api, operator, args.sidecars, args.edits, workdir
                    )
                    log(json.dumps(results["propagation"]))
                if not args.skip_scale:
                    results["scale"] = scale(cluster, api, operator, args.packs, args.pods)
                    log(json.dumps(results["scale"]))
            finally:
                print(operator.log_tail(20))
    print(json.dumps(results, indent=2))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
