"""The operator on the real control plane: PolicyPacks become ConfigMaps and status, opted-in pods
get the sidecar through the real apiserver's admission chain, mistakes are rejected with a message
that says what to fix, and pods that slipped through without a sidecar are reported.

The operator runs as `packgate operator run` (a child process) serving namespaces `pgop-*`; its
webhook is registered with a MutatingWebhookConfiguration limited to this module's namespaces.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from localcluster import LocalCluster
from operator_process import OperatorProcess, webhook_configuration

from tests.support.waiting import wait_for

pytestmark = pytest.mark.cluster
ROOT = Path(__file__).resolve().parents[2]


class Env:
    def __init__(self, cluster: LocalCluster, operator: OperatorProcess, label: str) -> None:
        self.cluster = cluster
        self.operator = operator
        self.label = label

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> Any:
        return self.cluster.kubectl(*args, input=input, check=check)

    def apply(self, manifest: dict[str, Any], check: bool = True) -> Any:
        return self.kubectl("apply", "-f", "-", input=json.dumps(manifest), check=check)

    def create(self, manifest: dict[str, Any], *extra: str, check: bool = True) -> Any:
        return self.kubectl("create", "-f", "-", *extra, input=json.dumps(manifest), check=check)

    def get(self, kind: str, name: str, namespace: str) -> dict[str, Any] | None:
        got = self.kubectl("get", kind, name, "-n", namespace, "-o", "json", check=False)
        return json.loads(got.stdout) if got.returncode == 0 else None

    def namespace(self) -> str:
        name = f"pgop-{uuid.uuid4().hex[:8]}"
        manifest = {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": name, "labels": {"packgate-test": self.label}},
        }
        self.apply(manifest)
        wait_for(
            lambda: self.get("serviceaccount", "default", name),
            what=f"the default service account of {name}",
        )
        return name


@pytest.fixture(scope="module")
def env(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    cluster.kubectl("apply", "-f", str(ROOT / "crds" / "policypacks.yaml"))
    cluster.kubectl(
        "wait", "--for=condition=Established", "crd/policypacks.packgate.dev", "--timeout=30s"
    )
    label = uuid.uuid4().hex[:8]
    workdir = tmp_path_factory.mktemp("operator")
    operator = OperatorProcess(
        kubeconfig=cluster.kubeconfig, workdir=workdir, namespaces=["pgop-*"]
    )
    operator.start()
    name = f"packgate-test-{label}"
    configuration = webhook_configuration(
        name,
        operator.webhook_url,
        operator.ca_pem,
        namespace_selector={"matchLabels": {"packgate-test": label}},
    )
    cluster.kubectl("apply", "-f", "-", input=json.dumps(configuration))
    try:
        yield Env(cluster, operator, label)
    finally:
        cluster.kubectl("delete", "mutatingwebhookconfiguration", name, check=False)
        operator.stop()
        print(operator.log_tail(80))


@pytest.fixture
def ns(env: Env) -> str:
    return env.namespace()


def spec(name: str = "gateway", **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "pack": {"name": name, "version": "1.0.0"},
        "providers": {
            "targets": [
                {
                    "id": "primary",
                    "provider": "openai:gpt-4o",
                    "secret_key_ref": {"secret": {"name": "openai", "key": "api-key"}},
                }
            ]
        },
        "policies": {"chain": ["audit-logger"]},
        "policy": {"audit-logger": {"retention_days": 30}},
    }
    body.update(changes)
    return body


def pack(
    namespace: str, name: str = "gateway", body: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "apiVersion": "packgate.dev/v1alpha1",
        "kind": "PolicyPack",
        "metadata": {"name": name, "namespace": namespace},
        "spec": body if body is not None else spec(),
    }


def pod(
    namespace: str, name: str, annotations: dict[str, str] | None = None, **spec_: Any
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app": name, "team": "search"},
            "annotations": annotations
            if annotations is not None
            else {"packgate.dev/inject": "true", "packgate.dev/policy-pack": "gateway"},
        },
        "spec": spec_ or {"containers": [{"name": "app", "image": "registry.invalid/app:1"}]},
    }


def status_of(env: Env, namespace: str, name: str = "gateway") -> dict[str, Any]:
    got = env.get("policypack", name, namespace) or {}
    return dict(got.get("status") or {})


def condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions", []) if c["type"] == kind), {})


def rendered_hash(env: Env, namespace: str, name: str = "gateway") -> str:
    configmap = env.get("configmap", f"packgate-{name}", namespace) or {}
    return str(
        configmap.get("metadata", {}).get("annotations", {}).get("packgate.dev/config-hash", "")
    )


def ready_pack(
    env: Env, namespace: str, name: str = "gateway", body: dict[str, Any] | None = None
) -> str:
    env.apply(pack(namespace, name, body))
    return str(
        wait_for(
            lambda: status_of(env, namespace, name).get("configHash"),
            what=f"PolicyPack {name} to be rendered",
        )
    )


def events(env: Env, namespace: str, reason: str) -> list[dict[str, Any]]:
    got = env.kubectl("get", "events", "-n", namespace, "-o", "json")
    return [e for e in json.loads(got.stdout)["items"] if e.get("reason") == reason]


# --- PolicyPack lifecycle --------------------------------------------------------------------


def test_pack_lifecycle_create_edit_invalid_fix(env: Env, ns: str) -> None:
    first = ready_pack(env, ns)
    configmap = env.get("configmap", "packgate-gateway", ns)
    assert configmap is not None
    assert configmap["metadata"]["ownerReferences"][0]["kind"] == "PolicyPack"
    assert "retention_days: 30" in configmap["data"]["policy.yaml"]
    status = status_of(env, ns)
    assert condition(status, "Valid")["status"] == "True"
    assert condition(status, "Ready")["status"] == "True"
    assert status["observedGeneration"] == 1

    # An edit re-renders: new hash in the ConfigMap and the status, generation observed.
    env.apply(pack(ns, body=spec(policy={"audit-logger": {"retention_days": 90}})))
    second = wait_for(
        lambda: (h := status_of(env, ns).get("configHash")) != first and h, what="the edit"
    )
    assert rendered_hash(env, ns) == second
    assert status_of(env, ns)["observedGeneration"] == 2

    # Invalid (the CRD schema cannot see it, the policy loader can): Valid=False with lint's
    # words, an Event, and the last good config stays in force.
    broken = spec(
        policy={"audit-logger": {"retention_days": 90}, "content-filter": {"patterns": ["([a-z"]}}
    )
    env.apply(pack(ns, body=broken))
    wait_for(
        lambda: condition(status_of(env, ns), "Valid").get("status") == "False",
        what="Valid=False",
    )
    status = status_of(env, ns)
    valid = condition(status, "Valid")
    assert valid["reason"] == "SpecInvalid"
    assert valid["message"] == (
        "spec.policy.content-filter.patterns[0]: invalid regular expression: "
        "unterminated character set at position 1"
    )
    assert valid["observedGeneration"] == 3
    assert condition(status, "Ready")["reason"] == "LastGoodConfigInForce"
    assert status["configHash"] == second
    assert rendered_hash(env, ns) == second
    warning = wait_for(lambda: events(env, ns, "InvalidSpec"), what="the InvalidSpec event")
    assert (
        "spec.policy.content-filter.patterns[0]: invalid regular expression"
        in (warning[0]["message"])
    )
    assert warning[0]["type"] == "Warning"

    # Fixed: valid again, rendered again.
    env.apply(pack(ns, body=spec(policy={"audit-logger": {"retention_days": 7}})))
    wait_for(lambda: condition(status_of(env, ns), "Valid").get("status") == "True", what="fix")
    third = status_of(env, ns)["configHash"]
    assert third not in (first, second)
    wait_for(lambda: rendered_hash(env, ns) == third, what="the fixed ConfigMap")


def test_pack_invalid_from_the_start_is_not_ready_and_renders_nothing(env: Env, ns: str) -> None:
    env.apply(
        pack(
            ns,
            body=spec(
                policy={"pii-detector": {"detect_patterns": [{"label": "ID", "regex": "(["}]}}
            ),
        )
    )
    wait_for(lambda: condition(status_of(env, ns), "Valid").get("status") == "False", what="Valid")
    status = status_of(env, ns)
    assert condition(status, "Ready")["reason"] == "NoValidConfig"
    assert (
        "spec.policy.pii-detector.detect_patterns[0].regex" in condition(status, "Valid")["message"]
    )
    assert env.get("configmap", "packgate-gateway", ns) is None


def test_configmap_deleted_by_hand_is_rendered_again(env: Env, ns: str) -> None:
    config_hash = ready_pack(env, ns)
    env.kubectl("delete", "configmap", "packgate-gateway", "-n", ns)
    wait_for(lambda: rendered_hash(env, ns) == config_hash, what="the ConfigMap to come back")


def test_kopf_writes_no_bookkeeping_onto_pods(env: Env, ns: str) -> None:
    ready_pack(env, ns)
    env.apply(pod(ns, "tracked"))
    env.apply(pod(ns, "plain", annotations={}))
    wait_for(lambda: status_of(env, ns).get("injectedPods") == 1, what="the pod to be counted")
    for name in ("tracked", "plain"):
        meta = (env.get("pod", name, ns) or {})["metadata"]
        assert not [k for k in meta.get("annotations", {}) if "kopf" in k]
        assert not meta.get("finalizers")
    assert not (env.get("policypack", "gateway", ns) or {})["metadata"].get("finalizers")


# --- injection -------------------------------------------------------------------------------


def sidecar(pod_: dict[str, Any]) -> dict[str, Any]:
    init = pod_["spec"].get("initContainers", [])
    found = [c for c in init if c["name"] == "packgate-sidecar"]
    assert len(found) == 1, f"expected one packgate-sidecar, got {[c['name'] for c in init]}"
    return found[0]


def env_map(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def test_opted_in_pod_gets_the_sidecar_and_keeps_its_own_things(env: Env, ns: str) -> None:
    config_hash = ready_pack(env, ns)
    env.apply(
        pod(
            ns,
            "app",
            initContainers=[{"name": "migrate", "image": "registry.invalid/migrate:1"}],
            containers=[
                {
                    "name": "app",
                    "image": "registry.invalid/app:1",
                    "env": [
                        {"name": "MODE", "value": "prod"},
                        {"name": "OPENAI_API_KEY", "value": "x"},
                    ],
                },
                {"name": "worker", "image": "registry.invalid/worker:1"},
            ],
            volumes=[{"name": "cache", "emptyDir": {}}],
        )
    )
    got = env.get("pod", "app", ns)
    assert got is not None
    assert [c["name"] for c in got["spec"]["initContainers"]] == ["migrate", "packgate-sidecar"]
    side = sidecar(got)
    assert side["restartPolicy"] == "Always"
    assert side["startupProbe"]["httpGet"]["path"] == "/readyz"
    assert side["securityContext"]["readOnlyRootFilesystem"] is True
    assert side["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert env_map(side)["PACKGATE_TARGET_PRIMARY_API_KEY"] == {
        "secretKeyRef": {"name": "openai", "key": "api-key"}
    }
    app, worker = got["spec"]["containers"]
    assert [e["name"] for e in app["env"]] == ["MODE", "OPENAI_API_KEY", "OPENAI_BASE_URL"]
    assert env_map(app)["OPENAI_API_KEY"] == "x"
    assert env_map(worker)["OPENAI_BASE_URL"] == "http://127.0.0.1:41002/v1"
    assert "OPENAI_API_KEY" in env_map(worker)
    assert "secretKeyRef" not in json.dumps(got["spec"]["containers"])
    volumes = {v["name"]: v for v in got["spec"]["volumes"]}
    assert volumes["cache"] == {"name": "cache", "emptyDir": {}}
    assert volumes["packgate-config"]["configMap"]["name"] == "packgate-gateway"
    assert got["spec"]["volumes"][0]["name"] == "cache"  # existing volumes keep their place
    record = json.loads(got["metadata"]["annotations"]["packgate.dev/status"])
    assert record["pack"] == "gateway" and record["configHash"] == config_hash


def test_pods_without_the_annotation_are_never_changed(env: Env, ns: str) -> None:
    ready_pack(env, ns)
    env.apply(pod(ns, "plain", annotations={"other": "x"}))
    env.apply(pod(ns, "opted-out", annotations={"packgate.dev/inject": "false"}))
    for name in ("plain", "opted-out"):
        got = env.get("pod", name, ns) or {}
        assert "initContainers" not in got["spec"]
        assert "env" not in got["spec"]["containers"][0]
        assert "packgate.dev/status" not in got["metadata"].get("annotations", {})


def test_resource_overrides_by_annotation(env: Env, ns: str) -> None:
    ready_pack(env, ns)
    annotations = {
        "packgate.dev/inject": "true",
        "packgate.dev/policy-pack": "gateway",
        "packgate.dev/sidecar-cpu-request": "250m",
        "packgate.dev/sidecar-memory-limit": "1Gi",
    }
    env.apply(pod(ns, "big", annotations=annotations))
    resources = sidecar(env.get("pod", "big", ns) or {})["resources"]
    assert resources["requests"] == {"cpu": "250m", "memory": "96Mi"}
    assert resources["limits"] == {"memory": "1Gi"}


@pytest.mark.parametrize(
    ("annotations", "message"),
    [
        (
            {"packgate.dev/inject": "true", "packgate.dev/policy-pack": "missing"},
            'PolicyPack "missing" (annotation packgate.dev/policy-pack) does not exist',
        ),
        (
            {"packgate.dev/inject": "true"},
            "packgate.dev/policy-pack is missing: set it to the name of a PolicyPack",
        ),
        (
            {"packgate.dev/inject": "yes", "packgate.dev/policy-pack": "gateway"},
            'packgate.dev/inject is "yes": set it to "true"',
        ),
        (
            {
                "packgate.dev/inject": "true",
                "packgate.dev/policy-pack": "gateway",
                "packgate.dev/sidecar-memory-limit": "lots",
            },
            'packgate.dev/sidecar-memory-limit is "lots", which is not a Kubernetes quantity',
        ),
    ],
)
def test_mistakes_are_rejected_with_what_to_fix(
    env: Env, ns: str, annotations: dict[str, str], message: str
) -> None:
    ready_pack(env, ns)
    result = env.create(pod(ns, "rejected", annotations=annotations), check=False)
    assert result.returncode != 0
    assert 'admission webhook "inject.packgate.dev" denied the request' in result.stderr
    assert message in result.stderr
    assert env.get("pod", "rejected", ns) is None


def test_invalid_pack_rejects_pods_with_the_lint_messages(env: Env, ns: str) -> None:
    env.apply(pack(ns, body=spec(policy={"content-filter": {"patterns": ["*oops"]}})))
    wait_for(lambda: condition(status_of(env, ns), "Valid").get("status") == "False", what="Valid")
    result = env.create(pod(ns, "rejected"), check=False)
    assert result.returncode != 0
    assert 'PolicyPack "gateway" is invalid' in result.stderr
    assert "spec.policy.content-filter.patterns[0]: invalid regular expression" in result.stderr
    assert f"kubectl edit policypack gateway -n {ns}" in result.stderr


def test_dry_run_is_answered_and_leaves_nothing(env: Env, ns: str) -> None:
    ready_pack(env, ns)
    before = env.operator.metrics()
    result = env.create(pod(ns, "dry"), "--dry-run=server", "-o", "json")
    preview = json.loads(result.stdout)
    assert sidecar(preview)["name"] == "packgate-sidecar"
    assert env.get("pod", "dry", ns) is None
    injected = [
        line
        for line in env.operator.metrics().splitlines()
        if line.startswith("packgate_operator_injections_total")
    ]
    assert injected == [
        line
        for line in before.splitlines()
        if line.startswith("packgate_operator_injections_total")
    ]
    rejected = env.create(
        pod(ns, "dry2", annotations={"packgate.dev/inject": "true"}),
        "--dry-run=server",
        check=False,
    )
    assert "packgate.dev/policy-pack is missing" in rejected.stderr


def test_reinvocation_and_replayed_manifests_add_nothing(env: Env, ns: str) -> None:
    """An injected pod spec replayed (e.g. copied from `kubectl get -o yaml`) is not injected
    twice: the same name-keyed check that makes webhook reinvocation a no-op."""
    ready_pack(env, ns)
    env.apply(pod(ns, "first"))
    first = env.get("pod", "first", ns) or {}
    copy_ = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "second",
            "namespace": ns,
            "annotations": first["metadata"]["annotations"],
        },
        "spec": {k: first["spec"][k] for k in ("initContainers", "containers", "volumes")},
    }
    copy_["spec"]["volumes"] = [
        v for v in copy_["spec"]["volumes"] if not v["name"].startswith("kube-api-access")
    ]
    for container in copy_["spec"]["initContainers"] + copy_["spec"]["containers"]:
        container["volumeMounts"] = [
            m
            for m in container.get("volumeMounts", [])
            if not m["name"].startswith("kube-api-access")
        ]
    env.apply(copy_)
    second = env.get("pod", "second", ns) or {}
    assert [c["name"] for c in second["spec"]["initContainers"]] == ["packgate-sidecar"]
    assert [e["name"] for e in second["spec"]["containers"][0]["env"]] == [
        e["name"] for e in first["spec"]["containers"][0]["env"]
    ]
    assert [v["name"] for v in second["spec"]["volumes"] if v["name"].startswith("packgate-")] == [
        v["name"] for v in first["spec"]["volumes"] if v["name"].startswith("packgate-")
    ]


def test_deployment_pods_in_two_namespaces_are_injected_and_counted(env: Env, ns: str) -> None:
    other = env.namespace()
    for namespace in (ns, other):
        ready_pack(env, namespace)
        env.apply(
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": "web", "namespace": namespace},
                "spec": {
                    "replicas": 2,
                    "selector": {"matchLabels": {"app": "web"}},
                    "template": {
                        "metadata": {
                            "labels": {"app": "web"},
                            "annotations": {
                                "packgate.dev/inject": "true",
                                "packgate.dev/policy-pack": "gateway",
                            },
                        },
                        "spec": {
                            "containers": [{"name": "web", "image": "registry.invalid/web:1"}]
                        },
                    },
                },
            }
        )
    for namespace in (ns, other):
        wait_for(
            lambda namespace=namespace: status_of(env, namespace).get("injectedPods") == 2,
            what=f"2 injected pods counted in {namespace}",
        )
        pods = json.loads(env.kubectl("get", "pods", "-n", namespace, "-o", "json").stdout)["items"]
        assert len(pods) == 2
        for item in pods:
            assert sidecar(item)["restartPolicy"] == "Always"
        status = status_of(env, namespace)
        assert status["podsWithoutSidecar"] == 0
        # No sidecar process runs in this test, so none reports the hash yet.
        assert status["podsInSync"] == 0
        assert condition(status, "InSync")["reason"] == "Converging"


def test_pods_created_while_the_webhook_was_away_are_reported(env: Env, ns: str) -> None:
    ready_pack(env, ns)
    # Simulate "created before packgate was installed": move this namespace out of the webhook's
    # reach, create an opted-in pod, and bring it back.
    env.kubectl("label", "namespace", ns, "packgate-test-", "--overwrite")
    env.apply(pod(ns, "drifted"))
    env.kubectl("label", "namespace", ns, f"packgate-test={env.label}", "--overwrite")
    got = env.get("pod", "drifted", ns) or {}
    assert "initContainers" not in got["spec"]
    wait_for(lambda: status_of(env, ns).get("podsWithoutSidecar") == 1, what="drift count")
    event = wait_for(lambda: events(env, ns, "SidecarMissing"), what="the drift event")
    assert event[0]["involvedObject"]["name"] == "drifted"
    assert "delete the pod so its controller recreates it" in event[0]["message"]
    metric = f'packgate_operator_pods_without_sidecar{{namespace="{ns}",pack="gateway"}} 1.0'
    assert metric in env.operator.metrics()


def test_deleting_a_pack_garbage_collects_its_configmap(env: Env, ns: str) -> None:
    """Last in the module: the garbage collector notices a new CRD's kind only at its next
    30-second discovery sync, so a pack deleted right after the CRD was created waits for it."""
    ready_pack(env, ns)
    env.kubectl("delete", "policypack", "gateway", "-n", ns, "--timeout=20s")
    # No finalizer holds the pack: it is gone at once, and its ConfigMap follows.
    assert env.get("policypack", "gateway", ns) is None
    wait_for(lambda: env.get("configmap", "packgate-gateway", ns) is None, 90, what="ConfigMap GC")


def test_an_operator_serving_named_namespaces_stays_up_and_reconciles(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    # The Helm chart passes plain names (operator.namespaces); the module's operator uses a glob.
    name = f"pgnamed-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    with OperatorProcess(
        kubeconfig=cluster.kubeconfig, workdir=tmp_path, namespaces=[name]
    ) as operator:
        pack = {
            "apiVersion": "packgate.dev/v1alpha1",
            "kind": "PolicyPack",
            "metadata": {"name": "named", "namespace": name},
            "spec": spec("named"),
        }
        cluster.kubectl("apply", "-f", "-", input=json.dumps(pack))
        wait_for(
            lambda: (
                cluster.kubectl(
                    "get", "configmap", "packgate-named", "-n", name, check=False
                ).returncode
                == 0
            ),
            what="the ConfigMap of a pack in a named namespace",
        )
        assert operator.proc is not None and operator.proc.poll() is None, operator.log_tail()
        assert operator.healthy()
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)
