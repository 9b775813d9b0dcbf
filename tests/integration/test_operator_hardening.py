"""The operator against a careless or hostile namespace user, on the real control plane.

Each test is one way around governance that used to work (issue 12): a ConfigMap forged by hand,
a pod that brings its own `packgate-sidecar` or `packgate-config`, a pod in a namespace the
operator does not serve, a deleted pod's token, an opt-out pod blocked by a down operator, an
invalid edit that silently rejects new pods, a pod naming a deleted pack. Sidecars are
`packgate gateway run` processes started as the kubelet would start them (see
test_operator_propagation), requests go through the real OpenAI SDK.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml
from localcluster import LocalCluster, make_ca
from operator_process import OperatorProcess, webhook_configuration
from packgate_operator.render import render
from processes import free_port

from tests.integration.test_operator_propagation import (
    Setup,
    Sidecar,
    deployment,
    get_json,
    hashes,
    pods_of,
    policypack,
    spec,
    start_sidecars,
    wait_subscribed,
)
from tests.integration.test_operator_propagation import upstream as upstream
from tests.support.waiting import wait_for

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def hard(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    with Setup(cluster, tmp_path_factory.mktemp("operator"), "pghd") as running:
        yield running


def events(setup: Setup, namespace: str, reason: str) -> list[dict[str, Any]]:
    got = setup.kubectl("get", "events", "-n", namespace, "-o", "json")
    return [e for e in json.loads(got.stdout)["items"] if e.get("reason") == reason]


def condition(setup: Setup, namespace: str, kind: str) -> dict[str, Any]:
    return next((c for c in setup.status(namespace).get("conditions", []) if c["type"] == kind), {})


def readyz(sidecar: Sidecar) -> dict[str, Any]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{sidecar.admin_port}/readyz", timeout=5
        ) as response:
            return dict(json.loads(response.read()))
    except urllib.error.HTTPError as exc:
        return dict(json.loads(exc.read()))


def sidecar_metrics(sidecar: Sidecar) -> str:
    import urllib.request

    with urllib.request.urlopen(
        f"http://127.0.0.1:{sidecar.admin_port}/metrics", timeout=5
    ) as response:
        return str(response.read().decode())


def pod(namespace: str, name: str, **spec_: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "annotations": {"packgate.dev/inject": "true", "packgate.dev/policy-pack": "gateway"},
        },
        "spec": spec_ or {"containers": [{"name": "app", "image": "registry.invalid/app:1"}]},
    }


def create(setup: Setup, manifest: dict[str, Any]) -> Any:
    return setup.kubectl("create", "-f", "-", input=json.dumps(manifest), check=False)


# --- 1. a forged ConfigMap ----------------------------------------------------------------------


def test_a_forged_configmap_is_put_back_and_never_enforced(
    hard: Setup, upstream: str, tmp_path: Path
) -> None:
    ns = hard.namespace()
    guarded = spec(upstream, blocked_term="zanzibar")
    hard.apply(policypack(ns, guarded))
    wait_for(lambda: hard.status(ns).get("configHash"), what="rendered pack")
    hard.apply(deployment(ns, 1))
    (sidecar,) = start_sidecars(hard, ns, pods_of(hard, ns, 1), tmp_path)
    try:
        wait_for(lambda: hashes([sidecar]) == [render(guarded).hash], 30, "sidecar ready")
        wait_subscribed(hard, ns, [sidecar], 1)
        with pytest.raises(openai.PermissionDeniedError):
            sidecar.chat("tell me about zanzibar")
        original = (hard.get("configmap", "packgate-gateway", ns) or {})["data"]["policy.yaml"]

        # The attack: the ConfigMap rewritten without the content filter, its hash annotation
        # set to match (what an app team with ConfigMap edit rights can do).
        forged_rendered = render(spec(upstream))
        configmap = hard.get("configmap", "packgate-gateway", ns) or {}
        configmap["data"]["policy.yaml"] = forged_rendered.text
        configmap["metadata"]["annotations"]["packgate.dev/config-hash"] = forged_rendered.hash
        hard.kubectl("replace", "-f", "-", input=json.dumps(configmap))

        # Put back by content within seconds, with a Warning Event on the pack ...
        wait_for(
            lambda: (
                (hard.get("configmap", "packgate-gateway", ns) or {})["data"]["policy.yaml"]
                == original
            ),
            10,
            "the ConfigMap restored",
        )
        tampered = wait_for(lambda: events(hard, ns, "ConfigMapTampered"), 10, "tamper event")
        assert "no packgate operator signature" in tampered[0]["message"]
        # ... and never pushed: the sidecar still enforces the filter (it used to be switched off
        # within a second).
        time.sleep(1.5)
        assert hashes([sidecar]) == [render(guarded).hash]
        with pytest.raises(openai.PermissionDeniedError):
            sidecar.chat("tell me about zanzibar")

        # The kubelet would mount the forged text before the operator restores it: the sidecar
        # refuses it from the file too, says so in /readyz and its metrics, and reports it.
        sidecar.config.write_text(forged_rendered.text)
        wait_for(lambda: readyz(sidecar).get("refused"), 10, "the refusal in /readyz")
        refusal = readyz(sidecar)["refused"][0]
        assert refusal["reason"] == "unsigned" and refusal["source"].startswith("file:")
        assert (
            'packgate_config_signature_refusals_total{reason="unsigned",source="file"} 1.0'
            in sidecar_metrics(sidecar)
        )
        with pytest.raises(openai.PermissionDeniedError):
            sidecar.chat("tell me about zanzibar")
        # An old config signed by the operator is refused as well (a rollback).
        hard.edit(ns, spec(upstream, blocked_term="zanzibar", description="v2"))
        current = render(spec(upstream, blocked_term="zanzibar", description="v2")).hash
        wait_for(lambda: hashes([sidecar]) == [current], 10, "the signed edit enforced")
        sidecar.config.write_text(original)  # generation 1, signed, older than what runs
        wait_for(
            lambda: any(r["reason"] == "rollback" for r in readyz(sidecar).get("refused", [])),
            10,
            "the rollback refused",
        )
        assert hashes([sidecar]) == [current]

        event = wait_for(lambda: events(hard, ns, "UnsignedConfigRefused"), 15, "pod event")
        assert event[0]["involvedObject"]["kind"] == "Pod"
        wait_for(
            lambda: condition(hard, ns, "ConfigTrusted").get("status") == "False",
            15,
            "ConfigTrusted=False",
        )
        trusted = condition(hard, ns, "ConfigTrusted")
        assert trusted["reason"] == "UnsignedConfigRefused"
        assert (
            f'packgate_operator_pods_refusing_config{{namespace="{ns}",pack="gateway"}} 1.0'
            in hard.operator.metrics()
        )
        # The kubelet catches up with the restored ConfigMap: the report clears.
        current_text = (hard.get("configmap", "packgate-gateway", ns) or {})["data"]["policy.yaml"]
        sidecar.config.write_text(current_text)
        wait_for(
            lambda: condition(hard, ns, "ConfigTrusted").get("status") == "True",
            15,
            "ConfigTrusted=True again",
        )
    finally:
        sidecar.stop()


# --- 2. reserved names, a user-written status record ---------------------------------------------


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        (
            {"initContainers": [{"name": "packgate-sidecar", "image": "registry.invalid/x:1"}]},
            "init container packgate-sidecar is reserved",
        ),
        (
            {"volumes": [{"name": "packgate-config", "configMap": {"name": "my-policy"}}]},
            "volume packgate-config is reserved",
        ),
    ],
)
def test_a_pod_using_a_reserved_name_is_refused_with_the_conflict(
    hard: Setup, upstream: str, extra: dict[str, Any], named: str
) -> None:
    ns = hard.namespace()
    hard.apply(policypack(ns, spec(upstream)))
    wait_for(lambda: hard.status(ns).get("configHash"), what="rendered pack")
    manifest = pod(ns, "sneaky", containers=[{"name": "app", "image": "registry.invalid/a:1"}])
    manifest["spec"].update(extra)
    result = create(hard, manifest)
    assert result.returncode != 0
    assert named in result.stderr
    assert hard.get("pod", "sneaky", ns) is None
    # A pod created with the status record of an injected pod gets the real one.
    manifest = pod(ns, "claims-governed")
    manifest["metadata"]["annotations"]["packgate.dev/status"] = json.dumps(
        {"pack": "other", "configHash": "sha256:forged", "sidecarVersion": "9"}
    )
    create(hard, manifest)
    got = hard.get("pod", "claims-governed", ns) or {}
    record = json.loads(got["metadata"]["annotations"]["packgate.dev/status"])
    assert record["pack"] == "gateway" and record["configHash"] == hard.status(ns)["configHash"]
    assert [c["name"] for c in got["spec"]["initContainers"]] == ["packgate-sidecar"]


# --- 3. namespace scope, hostNetwork --------------------------------------------------------------


def test_opted_in_pods_the_operator_cannot_serve_are_refused_with_why(
    hard: Setup, upstream: str
) -> None:
    # A namespace outside the operator's scope (pghd-*), yet reached by the webhook.
    outside = f"elsewhere-{uuid.uuid4().hex[:8]}"
    hard.apply(
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": outside, "labels": {"packgate-test": hard.label}},
        }
    )
    wait_for(lambda: hard.get("serviceaccount", "default", outside), what="default SA")
    hard.apply(policypack(outside, spec(upstream)))
    result = create(hard, pod(outside, "unserved"))
    assert result.returncode != 0
    assert f'namespace "{outside}" is not served by this packgate operator' in result.stderr
    hard.kubectl("delete", "namespace", outside, "--wait=false", check=False)

    ns = hard.namespace()
    hard.apply(policypack(ns, spec(upstream)))
    wait_for(lambda: hard.status(ns).get("configHash"), what="rendered pack")
    host = pod(
        ns, "host", hostNetwork=True, containers=[{"name": "a", "image": "registry.invalid/a:1"}]
    )
    result = create(hard, host)
    assert result.returncode != 0 and "hostNetwork pods cannot be injected" in result.stderr


def test_opt_out_pods_are_created_while_the_webhook_is_unreachable(cluster: LocalCluster) -> None:
    label = uuid.uuid4().hex[:8]
    name = f"packgate-dead-{label}"
    ns = f"pgdead-{label}"
    # A webhook that points at nothing, exactly as when the operator is down.
    dead = webhook_configuration(
        name,
        f"https://127.0.0.1:{free_port()}",
        make_ca().cert_pem.decode(),
        namespace_selector={"matchLabels": {"packgate-dead": label}},
    )
    cluster.kubectl("apply", "-f", "-", input=json.dumps(dead))
    cluster.kubectl("create", "namespace", ns)
    cluster.kubectl("label", "namespace", ns, f"packgate-dead={label}")
    try:
        wait_for(
            lambda: cluster.kubectl("get", "sa", "default", "-n", ns, check=False).returncode == 0,
            what="default SA",
        )
        out = pod(ns, "opted-out")
        out["metadata"]["annotations"] = {"packgate.dev/inject": "false"}
        made = cluster.kubectl("create", "-f", "-", input=json.dumps(out), check=False)
        assert made.returncode == 0, made.stderr
        opted_in = cluster.kubectl(
            "create", "-f", "-", input=json.dumps(pod(ns, "opted-in")), check=False
        )
        assert opted_in.returncode != 0 and "inject.packgate.dev" in opted_in.stderr
    finally:
        cluster.kubectl("delete", "mutatingwebhookconfiguration", name, check=False)
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


# --- concerns: invalid edits visible, deleted packs, deleted pods' tokens -------------------------


def test_an_invalid_edit_is_visible_and_new_pods_get_the_last_good_config(
    hard: Setup, upstream: str
) -> None:
    ns = hard.namespace()
    hard.apply(policypack(ns, spec(upstream)))
    good = wait_for(lambda: hard.status(ns).get("configHash"), what="rendered pack")
    broken = spec(upstream)
    broken["policy"] = {"content-filter": {"patterns": ["([a-z"]}}
    broken["policies"] = {"chain": ["content-filter"]}
    hard.apply(policypack(ns, broken))
    wait_for(lambda: condition(hard, ns, "Valid").get("status") == "False", what="Valid=False")
    table = hard.kubectl("get", "ppk", "gateway", "-n", ns).stdout
    header, row = table.splitlines()[:2]
    assert header.split()[:4] == ["NAME", "VERSION", "ENABLED", "VALID"]
    assert row.split()[3] == "False"
    result = hard.kubectl("create", "-f", "-", input=json.dumps(pod(ns, "new")))
    assert "is invalid" in result.stderr and f"last good config {good}" in result.stderr
    record = json.loads(
        (hard.get("pod", "new", ns) or {})["metadata"]["annotations"]["packgate.dev/status"]
    )
    assert record["configHash"] == good


def test_pods_naming_a_deleted_pack_are_reported(hard: Setup, upstream: str) -> None:
    ns = hard.namespace()
    hard.apply(policypack(ns, spec(upstream)))
    wait_for(lambda: hard.status(ns).get("configHash"), what="rendered pack")
    hard.apply(deployment(ns, 1))
    (item,) = pods_of(hard, ns, 1)
    hard.kubectl("delete", "policypack", "gateway", "-n", ns)
    event = wait_for(lambda: events(hard, ns, "PolicyPackMissing"), 20, "the missing-pack event")
    assert event[0]["involvedObject"]["name"] == item["metadata"]["name"]
    assert "PolicyPack gateway" in event[0]["message"]
    metric = f'packgate_operator_pods_without_pack{{namespace="{ns}",pack="gateway"}} 1.0'
    wait_for(lambda: metric in hard.operator.metrics(), 10, "the missing-pack metric")


def test_a_deleted_pod_s_token_stops_working_at_once(hard: Setup, upstream: str) -> None:
    ns = hard.namespace()
    hard.apply(policypack(ns, spec(upstream)))
    wait_for(lambda: hard.status(ns).get("configHash"), what="rendered pack")
    hard.apply(pod(ns, "short-lived"))
    item = hard.get("pod", "short-lived", ns) or {}
    token = hard.token(ns, item)
    url = f"{hard.operator.subscribe_url}/v1/namespaces/{ns}/pods/short-lived/config?wait=0"
    status, _ = get_json(url, token, hard.operator.ca_pem)
    assert status == 200
    hard.kubectl("delete", "pod", "short-lived", "-n", ns, "--grace-period=0", "--force")
    started = time.monotonic()
    # The TokenReview result is cached, so only the pod check can refuse it this fast.
    wait_for(lambda: get_json(url, token, hard.operator.ca_pem)[0] == 403, 5, "the token refused")
    print(f"\ndeleted pod's token refused after {time.monotonic() - started:.2f} s")
    status, body = get_json(url, token, hard.operator.ca_pem)
    assert body["error"]["reason"] == "pod-gone"


# --- RBAC: the chart's scoped rules are enough, and nothing more --------------------------------


def test_the_operator_works_with_the_chart_s_scoped_rbac_and_nothing_else(
    cluster: LocalCluster, upstream: str, tmp_path: Path
) -> None:
    label = uuid.uuid4().hex[:8]
    served, home, release = f"pgrbac-{label}", f"pgrbac-home-{label}", f"pgrbac{label}"
    for name in (served, home):
        cluster.kubectl("create", "namespace", name)
    cluster.kubectl("label", "namespace", served, f"packgate-test={label}")
    chart = Path(__file__).resolve().parents[2] / "helm" / "packgate"
    rendered = subprocess.run(
        [str(cluster.bin_dir / "helm"), "template", release, str(chart), "-n", home,
         "--set", f"operator.namespaces={{{served}}}", "--set", f"fullnameOverride={release}"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    rbac = [
        doc
        for doc in yaml.safe_load_all(rendered)
        if doc and doc["kind"] in ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role",
                                   "RoleBinding")
    ]  # fmt: skip
    cluster.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                          "items": rbac}))  # fmt: skip
    account = f"system:serviceaccount:{home}:{release}"
    token = cluster.kubectl("create", "token", release, "-n", home, "--duration=1h").stdout.strip()
    kubeconfig = tmp_path / "operator.kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {
                    "server": cluster.server,
                    "certificate-authority": str(cluster.workdir / "pki" / "ca.crt")}}],
                "users": [{"name": "op", "user": {"token": token}}],
                "contexts": [{"name": "op", "context": {"cluster": "c", "user": "op"}}],
                "current-context": "op",
            }
        )
    )  # fmt: skip
    operator = OperatorProcess(kubeconfig=kubeconfig, workdir=tmp_path / "op", namespaces=[served])
    hook = f"packgate-rbac-{label}"
    try:
        operator.start()
        cluster.kubectl("apply", "-f", "-", input=json.dumps(webhook_configuration(
            hook, operator.webhook_url, operator.ca_pem,
            namespace_selector={"matchLabels": {"packgate-test": label}})))  # fmt: skip
        cluster.kubectl("apply", "-f", "-", input=json.dumps(policypack(served, spec(upstream))))

        def status() -> dict[str, Any]:
            got = cluster.kubectl("get", "ppk", "gateway", "-n", served, "-o", "json")
            return dict(json.loads(got.stdout).get("status") or {})

        config_hash = wait_for(lambda: status().get("configHash"), 30, "rendered with its RBAC")
        made = cluster.kubectl("create", "-f", "-", input=json.dumps(pod(served, "app")))
        assert made.returncode == 0
        got = json.loads(cluster.kubectl("get", "pod", "app", "-n", served, "-o", "json").stdout)
        assert json.loads(got["metadata"]["annotations"]["packgate.dev/status"])["configHash"] == (
            config_hash
        )
        wait_for(lambda: status().get("injectedPods") == 1, 30, "the pod counted")
        # The push channel works with it (TokenReview, pod lookup) ...
        pod_token = cluster.kubectl(
            "create", "token", "default", "-n", served, "--audience=packgate",
            "--bound-object-kind=Pod", "--bound-object-name=app",
            f"--bound-object-uid={got['metadata']['uid']}",
        ).stdout.strip()  # fmt: skip
        code, body = get_json(
            f"{operator.subscribe_url}/v1/namespaces/{served}/pods/app/config?wait=0",
            pod_token,
            operator.ca_pem,
        )
        assert code == 200 and body["hash"] == config_hash
        assert "Forbidden" not in operator.log_tail(400), operator.log_tail(400)
        # ... and it cannot write a ConfigMap, or read a Secret, anywhere else.
        for verb, resource, where in (
            ("patch", "configmaps", "kube-system"),
            ("create", "configmaps", "default"),
            ("delete", "configmaps", served),
            ("update", "configmaps", served),
            ("get", "secrets", served),
            ("list", "pods", "kube-system"),
        ):
            can = cluster.kubectl(
                "auth", "can-i", verb, resource, "-n", where, f"--as={account}", check=False
            )
            assert can.stdout.strip() == "no", f"{verb} {resource} in {where}: {can.stdout}"
    finally:
        operator.stop()
        print(operator.log_tail(40))
        cluster.kubectl("delete", "mutatingwebhookconfiguration", hook, check=False)
        for kind in ("clusterrole", "clusterrolebinding"):
            cluster.kubectl("delete", kind, release, check=False)
        for name in (served, home):
            cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def test_a_kube_system_pod_without_sidecar_is_not_told_that_recreating_it_helps(
    cluster: LocalCluster, upstream: str, tmp_path: Path
) -> None:
    name = f"pgsys-{uuid.uuid4().hex[:8]}"
    with OperatorProcess(
        kubeconfig=cluster.kubeconfig, workdir=tmp_path, namespaces=["kube-system"]
    ) as operator:
        try:
            manifest = policypack("kube-system", spec(upstream))
            manifest["metadata"]["name"] = name
            cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))
            item = pod("kube-system", name)  # no webhook is ever called for kube-system
            item["metadata"]["annotations"]["packgate.dev/policy-pack"] = name
            cluster.kubectl("create", "-f", "-", input=json.dumps(item))

            def missing() -> list[dict[str, Any]]:
                got = cluster.kubectl("get", "events", "-n", "kube-system", "-o", "json").stdout
                return [
                    e
                    for e in json.loads(got)["items"]
                    if e.get("reason") == "SidecarMissing" and e["involvedObject"]["name"] == name
                ]

            event = wait_for(missing, 30, "the SidecarMissing event")[0]
            assert "recreating the pod will not inject it" in event["message"]
            assert "delete the pod so its controller recreates it" not in event["message"]
        finally:
            print(operator.log_tail(20))
            cluster.kubectl("delete", "pod", name, "-n", "kube-system", "--wait=false", check=False)
            cluster.kubectl("delete", "ppk", name, "-n", "kube-system", check=False)
