"""The Helm chart: lint, render with default and non-default values, and install, upgrade and
uninstall on the real local control plane.

There is no kubelet in the local control plane, so the operator pods are created but never run;
what these tests prove is that every object the chart renders is accepted by the real apiserver,
that values are validated, and that uninstall leaves nothing behind but the CRDs.
"""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from localcluster import LocalCluster

CHART = Path(__file__).resolve().parents[2] / "helm" / "packgate"


def helm(
    bin_dir: Path, *args: str, kubeconfig: Path | None = None
) -> subprocess.CompletedProcess[str]:
    argv = [str(bin_dir / "helm"), *args]
    if kubeconfig is not None:
        argv.append(f"--kubeconfig={kubeconfig}")
    return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=180)


def render(bin_dir: Path, *values: str) -> list[dict[str, object]]:
    sets = [arg for value in values for arg in ("--set", value)]
    result = helm(bin_dir, "template", "pg", str(CHART), "-n", "packgate-system", *sets)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def component(doc: dict[str, object]) -> str:
    labels = (doc.get("metadata") or {}).get("labels") or {}  # type: ignore[attr-defined]
    return str(labels.get("app.kubernetes.io/component", ""))


def by_kind(docs: list[dict[str, object]], kind: str, part: str = "operator") -> dict[str, object]:
    """The one object of `kind` belonging to `part` (the operator, or the audit-collector)."""
    found = [doc for doc in docs if doc["kind"] == kind and component(doc) in (part, "")]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def by_name(docs: list[dict[str, object]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]  # type: ignore[index]
    assert len(found) == 1, f"expected one {kind} {name}, got {len(found)}"
    return found[0]


def rules(doc: dict[str, Any]) -> dict[str, set[str]]:
    return {
        f"{g}/{r}": set(rule["verbs"])
        for rule in doc["rules"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
    }


def test_chart_lints(bin_dir: Path) -> None:
    result = helm(bin_dir, "lint", "--strict", str(CHART))
    assert result.returncode == 0, result.stdout + result.stderr


def test_default_render_has_the_webhook_contract(bin_dir: Path) -> None:
    docs = render(bin_dir)
    kinds = sorted(str(doc["kind"]) for doc in docs if component(doc) != "audit-collector")
    assert kinds == sorted(
        [
            "ClusterKopfPeering",  # two replicas by default: kopf peers through it
            "ClusterRole",
            "ClusterRoleBinding",
            "Deployment",
            "MutatingWebhookConfiguration",
            "PodDisruptionBudget",
            "Role",  # each replica's sidecar-reports Lease
            "RoleBinding",
            "Secret",
            "Secret",
            "Service",
            "ServiceAccount",
        ]
    )
    hook = by_kind(docs, "MutatingWebhookConfiguration")["webhooks"][0]  # type: ignore[index]
    assert hook["failurePolicy"] == "Fail"
    assert hook["timeoutSeconds"] == 5
    assert hook["reinvocationPolicy"] == "IfNeeded"
    assert hook["sideEffects"] == "None"
    assert "packgate.dev/inject" in hook["matchConditions"][0]["expression"]
    assert "!= 'false'" in hook["matchConditions"][0]["expression"]  # opt-outs never sent
    excluded = hook["namespaceSelector"]["matchExpressions"][0]["values"]
    assert {"kube-system", "kube-public", "kube-node-lease", "packgate-system"} <= set(excluded)
    secret = by_name(docs, "Secret", "pg-packgate-tls")
    signing = by_name(docs, "Secret", "pg-packgate-signing")
    assert "BEGIN PRIVATE KEY" in base64.b64decode(signing["data"]["signing.key"]).decode()  # type: ignore[index]
    assert hook["clientConfig"]["caBundle"] == secret["data"]["ca.crt"]  # type: ignore[index]
    deployment = by_kind(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 2  # type: ignore[index]
    env = {
        e["name"]: e.get("value")
        for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    }  # type: ignore[index]
    assert env["PACKGATE_PEERING"]
    assert env["PACKGATE_SUBSCRIBE_URL"] == "https://pg-packgate.packgate-system.svc:8444"


def test_non_default_values_render(bin_dir: Path) -> None:
    docs = render(
        bin_dir,
        "replicaCount=1",
        "webhook.failurePolicy=Ignore",
        "webhook.certManager.enabled=true",
        "podDisruptionBudget.enabled=false",
        "podAntiAffinity=hard",
        "operator.namespaces={team-a,team-b}",
        "sidecar.resources.limits.cpu=500m",
        "sidecar.auditKeySecret=packgate-audit",
    )
    kinds = {str(doc["kind"]) for doc in docs}
    assert "PodDisruptionBudget" not in kinds
    assert {"Certificate", "Issuer"} <= kinds
    assert [d["metadata"]["name"] for d in docs if d["kind"] == "Secret"] == [  # type: ignore[index]
        "pg-packgate-signing"
    ]
    hook = by_kind(docs, "MutatingWebhookConfiguration")
    assert hook["webhooks"][0]["failurePolicy"] == "Ignore"  # type: ignore[index]
    assert "cert-manager.io/inject-ca-from" in hook["metadata"]["annotations"]  # type: ignore[index]
    spec = by_kind(docs, "Deployment")["spec"]["template"]["spec"]  # type: ignore[index]
    env = {e["name"]: e.get("value") for e in spec["containers"][0]["env"]}
    assert "PACKGATE_PEERING" not in env
    assert env["PACKGATE_NAMESPACES"] == "team-a,team-b"
    assert env["PACKGATE_SIDECAR_CPU_LIMIT"] == "500m"
    assert env["PACKGATE_AUDIT_KEY_SECRET"] == "packgate-audit"
    assert "requiredDuringSchedulingIgnoredDuringExecution" in spec["affinity"]["podAntiAffinity"]


def test_namespace_scope_narrows_the_webhook_and_the_rbac(bin_dir: Path) -> None:
    cluster_wide = render(bin_dir)
    everywhere = rules(by_kind(cluster_wide, "ClusterRole"))
    assert everywhere["/configmaps"] == {"get", "list", "watch", "create", "patch"}  # no delete
    assert "update" not in everywhere["/configmaps"] and "/secrets" not in everywhere

    docs = render(bin_dir, "operator.namespaces={team-a,team-b}")
    cluster_role = rules(by_kind(docs, "ClusterRole"))
    # Nothing namespaced is granted cluster-wide any more (kube-system included).
    assert not {"/configmaps", "/pods", "/events", "packgate.dev/policypacks"} & set(cluster_role)
    assert cluster_role["authentication.k8s.io/tokenreviews"] == {"create"}
    served = [d for d in docs if not str(d["metadata"]["name"]).endswith("-replicas")]  # type: ignore[index]
    roles = {d["metadata"]["namespace"]: rules(d) for d in served if d["kind"] == "Role"}  # type: ignore[index]
    assert set(roles) == {"team-a", "team-b"}
    assert roles["team-a"]["/configmaps"] == {"get", "list", "watch", "create", "patch"}
    bindings = [d for d in served if d["kind"] == "RoleBinding"]
    assert {b["metadata"]["namespace"] for b in bindings} == {"team-a", "team-b"}  # type: ignore[index]

    inject, unserved = by_kind(docs, "MutatingWebhookConfiguration")["webhooks"]  # type: ignore[index]
    assert inject["name"] == "inject.packgate.dev"
    served = inject["namespaceSelector"]["matchExpressions"][0]
    assert served == {
        "key": "kubernetes.io/metadata.name",
        "operator": "In",
        "values": ["team-a", "team-b"],
    }
    # Opted-in pods elsewhere reach the operator only to be refused with a message.
    assert unserved["name"] == "unserved.packgate.dev"
    assert {"team-a", "team-b", "kube-system"} <= set(
        unserved["namespaceSelector"]["matchExpressions"][0]["values"]
    )


@pytest.mark.parametrize(
    ("value", "complaint"),
    [
        ("replicaCount=two", "replicaCount"),
        ("webhok.port=9443", "webhok"),
        ("webhook.failurePolicy=Sometimes", "failurePolicy"),
        ("sidecar.tokenExpirationSeconds=60", "tokenExpirationSeconds"),
        ("operator.namespaces={team-*}", "namespaces"),
        ("signing.extraTrustedKeys={nope}", "extraTrustedKeys"),
    ],
)
def test_schema_rejects_bad_values(bin_dir: Path, value: str, complaint: str) -> None:
    result = helm(bin_dir, "template", "pg", str(CHART), "--set", value)
    assert result.returncode != 0
    assert complaint in result.stderr


def test_every_values_key_is_commented() -> None:
    # Keys inside resource maps (requests/limits/cpu/memory) are Kubernetes data, not settings.
    data_parents = {"resources", "requests", "limits"}
    lines = (CHART / "values.yaml").read_text().splitlines()
    parents: list[tuple[int, str]] = []
    for index, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", "- ")) or ":" not in stripped:
            continue
        indent = len(line) - len(line.lstrip())
        key = stripped.split(":", 1)[0]
        while parents and parents[-1][0] >= indent:
            parents.pop()
        if not any(parent in data_parents for _, parent in parents):
            assert lines[index - 1].strip().startswith("#"), f"line {index + 1}: no comment: {line}"
        parents.append((indent, key))


@pytest.mark.cluster
def test_install_upgrade_uninstall_on_the_real_apiserver(cluster: LocalCluster) -> None:
    ns = "packgate-system"
    kubeconfig = cluster.kubeconfig
    install = helm(
        cluster.bin_dir,
        "install",
        "pg",
        str(CHART),
        "-n",
        ns,
        "--create-namespace",
        kubeconfig=kubeconfig,
    )
    assert install.returncode == 0, install.stderr
    secret_before = cluster.kubectl(
        "get", "secret", "pg-packgate-tls", "-n", ns, "-o", "json"
    ).stdout
    assert cluster.kubectl("get", "crd", "policypacks.packgate.dev").returncode == 0

    upgrade = helm(
        cluster.bin_dir,
        "upgrade",
        "pg",
        str(CHART),
        "-n",
        ns,
        "--set",
        "replicaCount=3",
        kubeconfig=kubeconfig,
    )
    assert upgrade.returncode == 0, upgrade.stderr
    replicas = cluster.kubectl(
        "get", "deploy", "pg-packgate", "-n", ns, "-o", "jsonpath={.spec.replicas}"
    )
    assert replicas.stdout == "3"
    # The webhook certificate is generated once and kept across upgrades.
    secret_after = cluster.kubectl(
        "get", "secret", "pg-packgate-tls", "-n", ns, "-o", "json"
    ).stdout
    assert json.loads(secret_before)["data"] == json.loads(secret_after)["data"]
    ca = json.loads(secret_after)["data"]["ca.crt"]
    hook = json.loads(
        cluster.kubectl("get", "mutatingwebhookconfiguration", "pg-packgate", "-o", "json").stdout
    )
    assert hook["webhooks"][0]["clientConfig"]["caBundle"] == ca

    uninstall = helm(cluster.bin_dir, "uninstall", "pg", "-n", ns, "--wait", kubeconfig=kubeconfig)
    assert uninstall.returncode == 0, uninstall.stderr
    selector = "app.kubernetes.io/instance=pg"
    for kind in (
        "deploy,svc,secret,sa,pdb",
        "clusterrole,clusterrolebinding,mutatingwebhookconfiguration",
    ):
        args = ["get", kind, "-l", selector, "-o", "name"]
        left = cluster.kubectl(*args, "-n", ns) if "deploy" in kind else cluster.kubectl(*args)
        assert left.stdout.strip() == "", f"left behind: {left.stdout}"
    # CRDs are kept on uninstall so that PolicyPacks survive a reinstall.
    assert cluster.kubectl("get", "crd", "policypacks.packgate.dev").returncode == 0
    # So is the audit collector's volume: the records must outlive an uninstall.
    kept = cluster.kubectl("get", "pvc", "pg-packgate-audit-collector", "-n", ns, check=False)
    assert kept.returncode == 0, kept.stderr


def test_the_audit_collector_renders_with_its_volume_and_narrow_rbac(bin_dir: Path) -> None:
    docs = render(bin_dir, "sidecar.auditKeySecret=audit-key")
    part = [doc for doc in docs if component(doc) == "audit-collector"]
    assert sorted(str(doc["kind"]) for doc in part) == [
        "ClusterRole",
        "ClusterRoleBinding",
        "Deployment",
        "PersistentVolumeClaim",
        "Service",
        "ServiceAccount",
    ]
    deployment = by_kind(docs, "Deployment", "audit-collector")
    spec = deployment["spec"]  # type: ignore[index]
    assert spec["replicas"] == 1 and spec["strategy"]["type"] == "Recreate"
    env = {e["name"]: e.get("value") for e in spec["template"]["spec"]["containers"][0]["env"]}
    assert env["PACKGATE_COLLECTOR_READ_LISTEN"].startswith("127.0.0.1:")
    rules = by_kind(docs, "ClusterRole", "audit-collector")["rules"]  # type: ignore[index]
    secrets = [r for r in rules if "secrets" in r["resources"]]
    assert secrets == [
        {
            "apiGroups": [""],
            "resources": ["secrets"],
            "resourceNames": ["audit-key"],
            "verbs": ["get"],
        }
    ]
    assert not any(v in r["verbs"] for r in rules for v in ("delete", "update", "list"))
    operator = by_kind(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]  # type: ignore[index]
    url = next(e["value"] for e in operator["env"] if e["name"] == "PACKGATE_AUDIT_COLLECTOR_URL")
    assert url == "https://pg-packgate-audit-collector.packgate-system.svc:8445"
    off = render(bin_dir, "collector.enabled=false")
    assert not [doc for doc in off if component(doc) == "audit-collector"]
