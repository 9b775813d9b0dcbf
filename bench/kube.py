"""Control-plane measurements: admission latency, reload propagation, operator memory.

Why on the real apiserver: admission latency is what kube-apiserver adds around the operator's
webhook (TLS, AdmissionReview encoding, the patch), and propagation runs through the operator's
watch of PolicyPacks, its render, and its authenticated long-poll channel to the sidecars. None
of that exists in a mock. The control plane is the project's own (cluster/localcluster.py: etcd,
kube-apiserver, kube-controller-manager on loopback), started once per bench run and shared; the
operator is `packgate operator run` as a child process with its webhook registered the way the
chart registers it (cluster/operator_process.py).

Admission is measured here. Reload propagation and the operator's memory at scale come from
bench/propagation.py (written with the operator; it can also run on its own): this module runs
its `propagation()` and `scale()` on the shared control plane and turns their results into rows.

Any missing piece (the operator failing to start, sidecars that cannot subscribe yet) turns the
affected rows into "pending" with the reason.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import ssl
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .common import (
    REPO,
    Report,
    Row,
    Section,
    StartError,
    Verdict,
    cpu_seconds,
    log,
    peak_rss_mb,
    percentile,
    rss_mb,
)
from .proxy import seed_config

GROUP, VERSION, PLURAL = "packgate.dev", "v1alpha1", "policypacks"
INJECT, PACK = "packgate.dev/inject", "packgate.dev/policy-pack"
SIDECAR = "packgate-sidecar"
WEBHOOK_NAME = "inject.packgate.dev"


@dataclass
class Options:
    workdir: Path
    quick: bool


# --- a tiny Kubernetes client ----------------------------------------------------------------


class Kube:
    """JSON over one persistent HTTPS connection, authenticated with the admin client cert."""

    def __init__(self, kubeconfig: Path) -> None:
        config = yaml.safe_load(kubeconfig.read_text())
        cluster = config["clusters"][0]["cluster"]
        user = config["users"][0]["user"]
        server = cluster["server"].removeprefix("https://")
        self.host, port = server.rsplit(":", 1)
        self.port = int(port)
        self.context = ssl.create_default_context(cafile=cluster["certificate-authority"])
        self.context.load_cert_chain(user["client-certificate"], user["client-key"])
        self.conn: http.client.HTTPSConnection | None = None

    def request(
        self, method: str, path: str, body: Any = None, content_type: str = "application/json"
    ) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = content_type
        for attempt in range(2):
            if self.conn is None:
                self.conn = http.client.HTTPSConnection(
                    self.host, self.port, context=self.context, timeout=60
                )
            try:
                self.conn.request(method, path, body=data, headers=headers)
                response = self.conn.getresponse()
                raw = response.read()
            except (OSError, http.client.HTTPException):
                self.conn.close()
                self.conn = None
                if attempt:
                    raise
                continue
            try:
                return response.status, json.loads(raw) if raw else None
            except ValueError:
                return response.status, raw.decode(errors="replace")
        raise AssertionError("unreachable")

    def text(self, path: str) -> str:
        if self.conn is None:
            self.conn = http.client.HTTPSConnection(self.host, self.port, context=self.context)
        self.conn.request("GET", path)
        return self.conn.getresponse().read().decode(errors="replace")

    def ok(
        self, method: str, path: str, body: Any = None, content_type: str = "application/json"
    ) -> Any:
        status, answer = self.request(method, path, body, content_type)
        if status >= 300:
            raise RuntimeError(f"{method} {path}: HTTP {status}: {str(answer)[:400]}")
        return answer


# --- the shared control plane ------------------------------------------------------------------


_state: dict[str, Any] = {}


def _cluster() -> Any:
    """Start the local control plane once per bench run; the CRD is installed."""
    if "cluster" in _state:
        return _state["cluster"]
    if "cluster_error" in _state:
        raise RuntimeError(_state["cluster_error"])
    try:
        from localcluster import LocalCluster, build_tools

        log("starting the local control plane (etcd, kube-apiserver, kube-controller-manager)")
        cluster = LocalCluster(bin_dir=build_tools())
        cluster.start()
        _state["cluster"] = cluster
        cluster.kubectl("apply", "--server-side", "-f", str(REPO / "crds/policypacks.yaml"))
        cluster.kubectl(
            "wait", "--for=condition=Established", f"crd/{PLURAL}.{GROUP}", "--timeout=60s"
        )
    except Exception as exc:
        _state["cluster_error"] = f"local control plane unavailable: {type(exc).__name__}: {exc}"
        raise RuntimeError(_state["cluster_error"]) from exc
    return cluster


def shutdown() -> None:
    cluster = _state.pop("cluster", None)
    if cluster is not None:
        cluster.stop()


def _namespace(kube: Kube, prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    kube.ok(
        "POST",
        "/api/v1/namespaces",
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}},
    )
    deadline = time.monotonic() + 60
    while kube.request("GET", f"/api/v1/namespaces/{name}/serviceaccounts/default")[0] != 200:
        if time.monotonic() > deadline:
            raise RuntimeError(f"no default service account in {name}")
        time.sleep(0.2)
    return name


@contextlib.contextmanager
def _operator(cluster: Any, kube: Kube, work: Path, namespaces: list[str]) -> Any:
    """`packgate operator run` for `namespaces`, with the webhook registered at it."""
    from operator_process import OperatorProcess, webhook_configuration

    # A glob per namespace: the operator then runs one cluster-wide watch filtered by pattern
    # (with plain names, the version this was written against stopped right after start-up).
    operator = OperatorProcess(
        kubeconfig=cluster.kubeconfig, workdir=work, namespaces=[f"{ns}*" for ns in namespaces]
    )
    try:
        operator.start(timeout=90)
    except (RuntimeError, TimeoutError) as exc:
        operator.stop()
        raise StartError(f"the operator did not start: {str(exc)[-500:]}") from exc
    name = f"packgate-bench-{uuid.uuid4().hex[:6]}"
    selector = {
        "matchExpressions": [
            {"key": "kubernetes.io/metadata.name", "operator": "In", "values": namespaces}
        ]
    }
    hook = webhook_configuration(
        name, operator.webhook_url, operator.ca_pem, namespace_selector=selector
    )
    path = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"
    kube.ok("POST", path, hook)
    try:
        yield operator
    finally:
        with contextlib.suppress(Exception):
            kube.request("DELETE", f"{path}/{name}")
        operator.stop()


def _usable_chain() -> tuple[list[str], str]:
    """The seed chain when this sidecar implements it, else an empty chain and why."""
    try:
        from packgate_sidecar.chain import builtin_registry

        kinds = set(builtin_registry().kinds())
    except Exception as exc:
        return [], f"policy registry unavailable ({type(exc).__name__})"
    chain = list(seed_config("http://127.0.0.1:1/v1")["policies"]["chain"])
    missing = [k for k in chain if k not in kinds]
    if missing:
        return [], f"seed chain not runnable yet (no {', '.join(missing)}): empty chain used"
    return chain, ""


def _pack_spec(upstream: str, chain_ok: bool, version: str = "1.0.0") -> dict[str, Any]:
    spec = seed_config(upstream)
    if not chain_ok:
        spec["policies"] = {"chain": []}
        spec["policy"] = {}
    spec["pack"]["version"] = version
    return spec


def _create_pack(kube: Kube, ns: str, name: str, spec: dict[str, Any]) -> None:
    kube.ok(
        "POST",
        f"/apis/{GROUP}/{VERSION}/namespaces/{ns}/{PLURAL}",
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "PolicyPack",
            "metadata": {"name": name},
            "spec": spec,
        },
    )


def _wait_pack(kube: Kube, ns: str, name: str, timeout: float = 30) -> dict[str, Any]:
    """Wait until the operator has reconciled the pack's current generation."""
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        status, body = kube.request(
            "GET", f"/apis/{GROUP}/{VERSION}/namespaces/{ns}/{PLURAL}/{name}"
        )
        if status == 200:
            observed = (body.get("status") or {}).get("observedGeneration")
            if observed is not None and observed >= body["metadata"]["generation"]:
                return body
        time.sleep(0.1)
    raise TimeoutError(
        f"PolicyPack {ns}/{name} not reconciled in {timeout:.0f}s: "
        f"status={json.dumps((body or {}).get('status'))[:300]}"
    )


def _pod(name: str | None, pack: str | None, generate: str = "bench-") -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name} if name else {"generateName": generate}
    if pack is not None:
        meta["annotations"] = {INJECT: "true", PACK: pack}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": {"containers": [{"name": "app", "image": "registry.example/app:1.0"}]},
    }


def _injected(pod: Any) -> bool:
    return isinstance(pod, dict) and any(
        c.get("name") == SIDECAR
        for c in pod.get("spec", {}).get("containers", [])
        + pod.get("spec", {}).get("initContainers", [])
    )


def _ms(values: list[float]) -> dict[str, float | None]:
    ordered = sorted(values)
    return {
        "p50_ms": percentile(ordered, 50),
        "p99_ms": percentile(ordered, 99),
        "mean_ms": sum(ordered) / len(ordered) if ordered else None,
    }


def _webhook_metric(kube: Kube) -> tuple[float, float]:
    """(sum seconds, count) of the apiserver's own timing of our webhook."""
    total = count = 0.0
    for line in kube.text("/metrics").splitlines():
        if line.startswith("apiserver_admission_webhook_admission_duration_seconds_") and (
            f'name="{WEBHOOK_NAME}"' in line
        ):
            name, _, value = line.rpartition(" ")
            if name.startswith("apiserver_admission_webhook_admission_duration_seconds_sum"):
                total += float(value)
            elif name.startswith("apiserver_admission_webhook_admission_duration_seconds_count"):
                count += float(value)
    return total, count


def _pending(section: Section, names: list[str], reason: str) -> None:
    for name in names:
        section.add(Row(name, status="pending", note=reason[:600]))


# --- admission -------------------------------------------------------------------------------


def admission(report: Report, opts: Options) -> None:
    section = report.section(
        "admission",
        "Pod creation latency as the client sees the apiserver answer (ms)",
        [("p50_ms", "p50"), ("p99_ms", "p99"), ("mean_ms", "mean"), ("count", "pods")],
    )
    rows = [
        "pod create, not opted in",
        "pod create, injected",
        "webhook time per pod (apiserver's timing)",
    ]
    try:
        cluster = _cluster()
    except RuntimeError as exc:
        _pending(section, rows, str(exc))
        return
    kube = Kube(cluster.kubeconfig)
    ns = _namespace(kube, "bench-adm")
    chain, why = _usable_chain()
    try:
        with _operator(cluster, kube, opts.workdir / "operator-admission", [ns]):
            _create_pack(kube, ns, "seed", _pack_spec("http://127.0.0.1:1/v1", bool(chain)))
            _wait_pack(kube, ns, "seed")
            count = 10 if opts.quick else 200
            plain: list[float] = []
            injected: list[float] = []
            failures: list[str] = []
            # Warm both paths (TLS sessions, the webhook's first request), then alternate.
            kube.request("POST", f"/api/v1/namespaces/{ns}/pods", _pod(None, None, "warm-"))
            kube.request("POST", f"/api/v1/namespaces/{ns}/pods", _pod(None, "seed", "warm-"))
            before = _webhook_metric(kube)
            for _ in range(count):
                for pack, into in ((None, plain), ("seed", injected)):
                    started = time.perf_counter()
                    status, pod = kube.request(
                        "POST", f"/api/v1/namespaces/{ns}/pods", _pod(None, pack)
                    )
                    elapsed = (time.perf_counter() - started) * 1000
                    if status != 201:
                        failures.append(f"HTTP {status}: {str(pod)[:200]}")
                    elif pack is not None and not _injected(pod):
                        failures.append("created without the sidecar")
                    else:
                        into.append(elapsed)
            after = _webhook_metric(kube)
    except (StartError, TimeoutError, RuntimeError) as exc:
        _pending(section, rows, str(exc))
        return
    finally:
        # Its pods would otherwise weigh on the cluster-wide operator of the later steps.
        kube.request("DELETE", f"/api/v1/namespaces/{ns}")
    section.add(Row(rows[0], {**_ms(plain), "count": len(plain)}))
    section.add(
        Row(
            rows[1],
            {**_ms(injected), "count": len(injected)},
            note=f"{len(failures)} failed: {failures[0]}" if failures else "",
        )
    )
    calls = after[1] - before[1]
    per_pod = (after[0] - before[0]) / len(injected) * 1000 if injected else None
    section.add(
        Row(
            rows[2],
            {"mean_ms": per_pod, "count": len(injected)},
            note=f"{calls / len(injected):.1f} webhook calls per injected pod "
            "(reinvocationPolicy IfNeeded)"
            if injected
            else "",
        )
    )
    added = None
    if plain and injected:
        added = (percentile(sorted(injected), 50) or 0) - (percentile(sorted(plain), 50) or 0)
    section.notes.append(
        "injection adds "
        + (f"{added:.1f} ms at p50" if added is not None else "-")
        + "; one persistent HTTPS connection, pods alternate plain/injected; the webhook row is "
        "the apiserver's apiserver_admission_webhook_admission_duration_seconds (mean)"
    )
    if why:
        section.notes.append(why)


# --- reload propagation and operator memory: bench/propagation.py ------------------------------
#
# The operator's author wrote bench/propagation.py (standalone: `python bench/propagation.py`):
# N real sidecars subscribed to a cluster-wide operator, PolicyPack edits, and the scale run with
# packs and injected pods. These wrappers run it on the shared control plane and turn its results
# into rows, rather than measuring the same thing a second way.


def _subscription_wired() -> str:
    """Why `packgate gateway run` cannot receive pushed configs yet ("" when it can).

    Without the subscription, propagation.py would wait ten minutes for sidecars that never
    subscribe, so this looks first for a module that starts it.
    """
    import packgate_sidecar

    package = Path(packgate_sidecar.__file__).parent
    for module in package.glob("*.py"):
        if module.name == "subscribe.py":
            continue
        text = module.read_text(errors="replace")
        if "subscribe.start" in text or "import subscribe" in text or "from .subscribe" in text:
            return ""
    return (
        "sidecars cannot receive pushed configs yet: no packgate_sidecar module starts the "
        "subscription (subscribe.start) in `packgate gateway run`"
    )


@contextlib.contextmanager
def _clusterwide_operator(cluster: Any, work: Path) -> Any:
    """The operator as propagation.py's own main() runs it: cluster-wide, webhook for all."""
    from operator_process import OperatorProcess, webhook_configuration

    operator = OperatorProcess(kubeconfig=cluster.kubeconfig, workdir=work)
    try:
        operator.start(timeout=90)
    except (RuntimeError, TimeoutError) as exc:
        operator.stop()
        raise StartError(f"the operator did not start: {str(exc)[-500:]}") from exc
    name = f"packgate-bench-{uuid.uuid4().hex[:6]}"
    kube = Kube(cluster.kubeconfig)
    path = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"
    kube.ok("POST", path, webhook_configuration(name, operator.webhook_url, operator.ca_pem))
    try:
        yield operator
    finally:
        with contextlib.suppress(Exception):
            kube.request("DELETE", f"{path}/{name}")
        operator.stop()


def _delete_namespace(kube: Kube, name: str, timeout: float = 180) -> None:
    kube.request("DELETE", f"/api/v1/namespaces/{name}")
    deadline = time.monotonic() + timeout
    while kube.request("GET", f"/api/v1/namespaces/{name}")[0] != 404:
        if time.monotonic() > deadline:
            raise TimeoutError(f"namespace {name} still exists after {timeout:.0f}s")
        time.sleep(0.5)


def reload(report: Report, opts: Options) -> None:
    section = report.section(
        "reload",
        "Reload propagation: PolicyPack edit -> each sidecar enforcing it (bench/propagation.py)",
        [("p50_ms", "p50 ms"), ("p99_ms", "p99 ms"), ("max_ms", "max ms"),
         ("to_configmap_ms", "-> ConfigMap p50"), ("to_in_sync_ms", "-> status in sync p50"),
         ("samples", "samples")],
    )  # fmt: skip
    sizes = [2] if opts.quick else [10, 100]
    edits = 2 if opts.quick else 5
    rows = [f"N = {n} sidecars" for n in sizes]
    p99_at_100: float | None = None
    reason = _subscription_wired()
    if not reason:
        try:
            cluster = _cluster()
        except RuntimeError as exc:
            reason = str(exc)
    if reason:
        _pending(section, rows, reason)
        _reload_verdict(report, None, reason)
        return
    from . import propagation

    kube = Kube(cluster.kubeconfig)
    api = propagation.Api(cluster)
    try:
        with _clusterwide_operator(cluster, opts.workdir / "operator-reload") as operator:
            for size, row in zip(sizes, rows, strict=True):
                log(f"reload: propagation.py with {size} sidecars, {edits} edits")
                with contextlib.redirect_stdout(sys.stderr):  # its progress lines, not the table
                    got = propagation.propagation(
                        cluster, api, operator, size, edits, opts.workdir / f"sidecars-{size}"
                    )
                section.add(Row(row, {
                    "p50_ms": got["edit_to_sidecar_p50_ms"],
                    "p99_ms": got["edit_to_sidecar_p99_ms"],
                    "max_ms": got["edit_to_sidecar_max_ms"],
                    "to_configmap_ms": got["edit_to_configmap_p50_ms"],
                    "to_in_sync_ms": got["edit_to_status_all_in_sync_p50_ms"],
                    "samples": f"{got['samples']}/{size * edits}",
                    "sidecar_rss_mb_median": got.get("sidecar_rss_mb_median"),
                }))  # fmt: skip
                if size == 100:
                    p99_at_100 = float(got["edit_to_sidecar_p99_ms"])
                _delete_namespace(kube, "bench-propagation")  # the next size starts afresh
    except (StartError, TimeoutError, RuntimeError, AssertionError, KeyError) as exc:
        reason = f"{type(exc).__name__}: {exc}"
        done = {r.name for r in section.rows}
        _pending(section, [r for r in rows if r not in done], reason)
    section.notes.append(
        "a sample: one sidecar's own 'config loaded' log time for the new hash minus the moment "
        "the PolicyPack PATCH was sent; sidecars are real `packgate gateway run` processes with "
        "the injected args, env and a pod-bound token (no kubelet: the mounted file never "
        "changes, so only the operator's push channel delivers the edit)"
    )
    if opts.quick:
        section.notes.append("--quick: N = 2 only; the target is judged at N = 100")
    _reload_verdict(
        report,
        p99_at_100 / 1000 if p99_at_100 is not None else None,
        reason or ("N = 100 not run (--quick)" if opts.quick else ""),
    )


def _reload_verdict(report: Report, p99_s: float | None, why: str) -> None:
    report.verdicts.append(Verdict("reload p99 at N = 100", p99_s, 2.0, " s", False, why[:120]))


def operator_memory(report: Report, opts: Options) -> None:
    section = report.section(
        "memory", "Resident memory (RSS, MiB)",
        [("idle_mb", "idle"), ("peak_mb", "peak under load"), ("count", "objects")],
    )  # fmt: skip
    # propagation.scale spreads packs over 10 namespaces, so at least 10 packs.
    packs, pods = (10, 50) if opts.quick else (100, 1000)
    name = f"operator, {packs} packs, {pods} pods"
    try:
        cluster = _cluster()
    except RuntimeError as exc:
        _pending(section, ["operator, idle", name], str(exc))
        return
    from . import propagation

    api = propagation.Api(cluster)
    try:
        with _clusterwide_operator(cluster, opts.workdir / "operator-memory") as operator:
            assert operator.proc is not None
            _settle(operator.proc.pid)
            log(f"memory: propagation.scale with {packs} packs and {pods} pods")
            with contextlib.redirect_stdout(sys.stderr):
                got = propagation.scale(cluster, api, operator, packs, pods)
            _settle(operator.proc.pid)
            settled = rss_mb(operator.proc.pid)
            peak = peak_rss_mb(operator.proc.pid)
    except (StartError, TimeoutError, RuntimeError, AssertionError, KeyError) as exc:
        _pending(section, ["operator, idle", name], f"{type(exc).__name__}: {exc}")
        return
    section.add(Row("operator, idle", {"idle_mb": got["operator_rss_before_mb"],
                                       "count": "no packs, no pods of its own"}))  # fmt: skip
    section.add(Row(name, {"idle_mb": settled, "peak_mb": peak,
                           "count": f"{packs} packs, {pods} pods"}))  # fmt: skip
    section.notes.append(
        f"operator scale (bench/propagation.py): {packs} packs rendered in "
        f"{got['packs_rendered_s']}s, {pods} injected pods counted in the packs' status "
        f"{got['pods_counted_in_status_s']}s after creation began; a pack edit reaches its "
        f"ConfigMap in {got['edit_to_configmap_p50_ms']} ms and its status in "
        f"{got['edit_to_status_p50_ms']} ms (p50) with all of that loaded"
    )


def _settle(pid: int, quiet: float = 0.05, window: float = 2.0, timeout: float = 120) -> None:
    """Wait until the process used less than `quiet` CPU seconds over `window` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = cpu_seconds(pid)
        time.sleep(window)
        if cpu_seconds(pid) - before < quiet * window:
            return
