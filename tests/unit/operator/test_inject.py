"""The injection patch: add-only, never touching what the pod already has, idempotent on a second
pass or a reinvocation, and what kopf finally sends the apiserver is add-only too."""

from __future__ import annotations

import copy
import json
from typing import Any

import jsonpatch
import kopf
import pytest
from packgate_operator import inject, reserved
from packgate_operator.inject import Injection, apply_patch, build_patch
from packgate_operator.render import render
from packgate_operator.settings import Settings
from packgate_policy import secret_env_name

SPEC: dict[str, Any] = {
    "pack": {"name": "gateway", "version": "1.0.0"},
    "providers": {
        "targets": [
            {
                "id": "primary",
                "provider": "openai:gpt-4o",
                "secret_key_ref": {"secret": {"name": "openai", "key": "api-key"}},
            },
            {"id": "backup", "provider": "openai", "secret_key_ref": {"env": "OPENAI_API_KEY"}},
        ]
    },
    "policies": {"chain": ["audit-logger"]},
}
SETTINGS = Settings(
    subscribe_url="https://packgate-operator.packgate.svc:8444",
    default_key_secret="llm-keys",
    sidecar_image="reg/packgate:1.2.3",
)


def injection(**overrides: Any) -> Injection:
    rendered = render(SPEC)
    values: dict[str, Any] = {
        "pack": "gateway",
        "configmap": "packgate-gateway",
        "config_hash": rendered.hash,
        "targets": rendered.loaded.config.providers.targets,
        "resources": SETTINGS.default_resources(),
        "ca_pem": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
    }
    return Injection(**{**values, **overrides})


def pod(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "app",
            "namespace": "team-a",
            "annotations": {"packgate.dev/inject": "true", "packgate.dev/policy-pack": "gateway"},
        },
        "spec": spec or {"containers": [{"name": "app", "image": "app:1"}]},
    }


def injected(source: dict[str, Any]) -> dict[str, Any]:
    return apply_patch(source, build_patch(source, injection(), SETTINGS))


def sidecar_of(result: dict[str, Any]) -> dict[str, Any]:
    (sidecar,) = [c for c in result["spec"]["initContainers"] if c["name"] == "packgate-sidecar"]
    return sidecar


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def test_sidecar_is_a_native_sidecar_with_a_startup_probe() -> None:
    sidecar = sidecar_of(injected(pod()))
    assert sidecar["restartPolicy"] == "Always"
    assert sidecar["startupProbe"]["httpGet"] == {"path": "/readyz", "port": 41003}
    assert sidecar["image"] == "reg/packgate:1.2.3"
    assert "--listen" in sidecar["args"] and "127.0.0.1:41002" in sidecar["args"]
    assert "/etc/packgate/config/policy.yaml" in sidecar["args"]


def test_sidecar_security_context_is_restrictive() -> None:
    context = sidecar_of(injected(pod()))["securityContext"]
    assert context["runAsNonRoot"] is True
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}


def test_config_is_a_whole_configmap_volume_never_a_subpath() -> None:
    result = injected(pod())
    volumes = {v["name"]: v for v in result["spec"]["volumes"]}
    assert volumes["packgate-config"]["configMap"] == {"name": "packgate-gateway"}
    mounts = sidecar_of(result)["volumeMounts"]
    assert all("subPath" not in m for m in mounts)
    config_mount = {
        "name": "packgate-config",
        "mountPath": "/etc/packgate/config",
        "readOnly": True,
    }
    assert config_mount in mounts


def test_writable_data_dir_and_labels_for_cost_tags() -> None:
    result = injected(pod())
    volumes = {v["name"]: v for v in result["spec"]["volumes"]}
    assert volumes["packgate-data"] == {"name": "packgate-data", "emptyDir": {}}
    assert volumes["packgate-podinfo"]["downwardAPI"]["items"] == [
        {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}
    ]
    env = env_of(sidecar_of(result))
    assert env["PACKGATE_POD_LABELS_FILE"] == "/etc/packgate/podinfo/labels"
    assert env["PACKGATE_DATA_DIR"] == "/var/lib/packgate"


def test_provider_keys_come_from_secrets_on_the_sidecar_only() -> None:
    result = injected(pod())
    env = env_of(sidecar_of(result))
    primary = render(SPEC).loaded.config.providers.targets[0]
    assert env[secret_env_name(primary)] == {"secretKeyRef": {"name": "openai", "key": "api-key"}}
    assert env["OPENAI_API_KEY"] == {
        "secretKeyRef": {"name": "llm-keys", "key": "OPENAI_API_KEY", "optional": True}
    }
    app_env = env_of(result["spec"]["containers"][0])
    assert app_env["OPENAI_API_KEY"] == inject.PLACEHOLDER_KEY
    assert "secretKeyRef" not in json.dumps(result["spec"]["containers"])


def test_without_a_default_key_secret_env_targets_get_nothing_from_the_injector() -> None:
    settings = Settings(subscribe_url=SETTINGS.subscribe_url)
    result = apply_patch(pod(), build_patch(pod(), injection(), settings))
    assert "OPENAI_API_KEY" not in env_of(sidecar_of(result))


def test_the_audit_key_comes_from_its_secret_on_the_sidecar_only() -> None:
    settings = Settings(subscribe_url=SETTINGS.subscribe_url, audit_key_secret="packgate-audit")
    result = apply_patch(pod(), build_patch(pod(), injection(), settings))
    assert env_of(sidecar_of(result))["PACKGATE_AUDIT_KEY"] == {
        "secretKeyRef": {"name": "packgate-audit", "key": "audit-key"}
    }
    assert "PACKGATE_AUDIT_KEY" not in json.dumps(result["spec"]["containers"])
    unset = apply_patch(pod(), build_patch(pod(), injection(), SETTINGS))
    assert "PACKGATE_AUDIT_KEY" not in env_of(sidecar_of(unset))


def test_subscription_identity_and_operator_ca_reach_the_sidecar() -> None:
    result = injected(pod())
    env = env_of(sidecar_of(result))
    assert env["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["POD_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert env["PACKGATE_OPERATOR_URL"] == SETTINGS.subscribe_url
    assert env["PACKGATE_OPERATOR_CA"].startswith("-----BEGIN CERTIFICATE-----")
    volumes = {v["name"]: v for v in result["spec"]["volumes"]}
    (source,) = volumes["packgate-token"]["projected"]["sources"]
    assert source["serviceAccountToken"]["audience"] == "packgate"


def test_every_app_container_gets_the_base_url() -> None:
    source = pod(containers=[{"name": "a", "image": "a"}, {"name": "b", "image": "b"}])
    result = injected(source)
    for container in result["spec"]["containers"]:
        assert env_of(container)["OPENAI_BASE_URL"] == "http://127.0.0.1:41002/v1"


def test_existing_env_init_containers_and_volumes_are_kept_in_order() -> None:
    source = pod(
        initContainers=[{"name": "migrate", "image": "m"}, {"name": "warm", "image": "w"}],
        containers=[
            {
                "name": "app",
                "image": "a",
                "env": [{"name": "A", "value": "1"}, {"name": "OPENAI_API_KEY", "value": "mine"}],
            }
        ],
        volumes=[{"name": "cache", "emptyDir": {}}],
    )
    result = injected(source)
    assert [c["name"] for c in result["spec"]["initContainers"]] == [
        "migrate",
        "warm",
        "packgate-sidecar",
    ]
    env = result["spec"]["containers"][0]["env"]
    assert env[:2] == source["spec"]["containers"][0]["env"]
    assert [e["name"] for e in env] == ["A", "OPENAI_API_KEY", "OPENAI_BASE_URL"]
    assert result["spec"]["volumes"][0] == {"name": "cache", "emptyDir": {}}


def test_a_container_with_envfrom_gets_no_placeholder_key() -> None:
    envfrom = [{"secretRef": {"name": "s"}}]
    source = pod(containers=[{"name": "a", "image": "a", "envFrom": envfrom}])
    assert "OPENAI_API_KEY" not in env_of(injected(source)["spec"]["containers"][0])


def test_an_own_base_url_is_overridden_by_appending_not_replacing() -> None:
    mine = {"name": "OPENAI_BASE_URL", "value": "https://api.openai.com/v1"}
    source = pod(containers=[{"name": "a", "image": "a", "env": [mine]}])
    env = injected(source)["spec"]["containers"][0]["env"]
    assert env[0] == mine
    base_urls = [e for e in env if e["name"] == "OPENAI_BASE_URL"]
    # Kubernetes uses the last definition of a name, so ours wins without removing theirs.
    assert base_urls[-1] == {"name": "OPENAI_BASE_URL", "value": "http://127.0.0.1:41002/v1"}


def test_status_record_names_pack_hash_and_version() -> None:
    result = injected(pod())
    record = json.loads(result["metadata"]["annotations"]["packgate.dev/status"])
    assert record == {
        "pack": "gateway",
        "configHash": render(SPEC).hash,
        "sidecarVersion": "1.2.3",
    }


def test_resources_come_from_the_injection() -> None:
    resources = {"requests": {"cpu": "1"}, "limits": {"cpu": "2"}}
    result = apply_patch(pod(), build_patch(pod(), injection(resources=resources), SETTINGS))
    assert sidecar_of(result)["resources"] == resources


@pytest.mark.parametrize(
    "spec",
    [
        {"containers": [{"name": "app", "image": "a"}]},
        {
            "initContainers": [{"name": "i", "image": "i"}],
            "containers": [{"name": "app", "image": "a", "env": [{"name": "X", "value": "1"}]}],
            "volumes": [{"name": "v", "emptyDir": {}}],
        },
    ],
)
def test_patch_is_add_only_and_a_second_pass_changes_nothing(spec: dict[str, Any]) -> None:
    source = pod(**spec)
    ops = build_patch(source, injection(), SETTINGS)
    assert ops and all(op["op"] == "add" for op in ops)
    once = apply_patch(source, ops)
    assert build_patch(once, injection(), SETTINGS) == []


def test_reinvocation_after_another_webhook_added_a_container_only_adds_its_env() -> None:
    once = injected(pod())
    once["spec"]["containers"].append({"name": "added-later", "image": "x"})
    ops = build_patch(once, injection(), SETTINGS)
    assert {op["path"] for op in ops} == {"/spec/containers/1/env"}


def test_a_pod_without_annotations_object_gets_one() -> None:
    source = pod()
    del source["metadata"]["annotations"]
    result = injected(source)
    assert "packgate.dev/status" in result["metadata"]["annotations"]


def test_what_kopf_sends_is_add_only_and_equals_our_patch() -> None:
    """The webhook hands the ops to kopf, which diffs; the apiserver must see only adds."""
    source = pod(
        initContainers=[{"name": "migrate", "image": "m"}],
        containers=[
            {"name": "app", "image": "a", "env": [{"name": "A", "value": "1"}]},
            {"name": "side", "image": "s"},
        ],
        volumes=[{"name": "cache", "emptyDir": {}}],
    )
    ops = build_patch(source, injection(), SETTINGS)
    patch = kopf.Patch(body=kopf.Body(copy.deepcopy(source)))

    def apply(raw: Any) -> None:
        for op in ops:
            inject.apply_add_in_place(raw, op["path"], copy.deepcopy(op["value"]))

    patch.fns.append(apply)
    sent = patch.as_json_patch()
    assert sent and {op["op"] for op in sent} == {"add"}
    assert jsonpatch.apply_patch(source, sent) == apply_patch(source, ops)


def test_applier_refuses_anything_but_add() -> None:
    with pytest.raises(inject.PatchError):
        apply_patch({"a": 1}, [{"op": "replace", "path": "/a", "value": 2}])


# --- reserved names: only packgate's own pieces may use them ---------------------------------


def test_an_injected_pod_has_no_conflicts_even_after_apiserver_defaulting() -> None:
    once = injected(pod())
    side = sidecar_of(once)
    # What the apiserver adds between webhook passes: defaults, canonical quantities.
    side["terminationMessagePath"] = "/dev/termination-log"
    side["startupProbe"]["successThreshold"] = 1
    side["env"][0]["valueFrom"]["fieldRef"]["apiVersion"] = "v1"
    side["resources"]["requests"]["cpu"] = "0.05"
    for volume in once["spec"]["volumes"]:
        if "configMap" in volume:
            volume["configMap"]["defaultMode"] = 420
    assert reserved.conflicts(once, injection(), SETTINGS) == []


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (lambda p: p["spec"]["containers"].append({"name": "packgate-sidecar", "image": "x"}),
         "container packgate-sidecar is reserved"),
        (lambda p: p["spec"].setdefault("initContainers", []).append(
            {"name": "packgate-sidecar", "image": "evil", "args": ["sleep"]}),
         "init container packgate-sidecar is reserved"),
        (lambda p: p["spec"].setdefault("volumes", []).append(
            {"name": "packgate-config", "configMap": {"name": "my-own-policy"}}),
         "volume packgate-config is reserved"),
        (lambda p: p["spec"].setdefault("volumes", []).append(
            {"name": "packgate-data", "hostPath": {"path": "/"}}),
         "volume packgate-data is reserved"),
    ],
)  # fmt: skip
def test_a_pod_using_a_reserved_name_is_named_in_the_refusal(change: Any, named: str) -> None:
    source = pod()
    change(source)
    problems = reserved.conflicts(source, injection(), SETTINGS)
    assert any(named in problem for problem in problems), problems


def test_a_copied_sidecar_with_one_extra_env_entry_is_not_packgate_s() -> None:
    once = injected(pod())
    sidecar_of(once)["env"].append({"name": "PACKGATE_CONFIG_KEYS", "value": "attacker:key"})
    assert reserved.conflicts(once, injection(trusted_keys="op:key"), SETTINGS)


def test_a_user_written_status_record_is_replaced() -> None:
    source = pod()
    source["metadata"]["annotations"]["packgate.dev/status"] = '{"pack": "forged"}'
    result = injected(source)
    record = json.loads(result["metadata"]["annotations"]["packgate.dev/status"])
    assert record["pack"] == "gateway" and record["configHash"] == render(SPEC).hash


def test_the_sidecar_is_told_which_keys_sign_its_configs() -> None:
    result = apply_patch(pod(), build_patch(pod(), injection(trusted_keys="k1:abc"), SETTINGS))
    env = {e["name"]: e.get("value") for e in sidecar_of(result)["env"]}
    assert env["PACKGATE_CONFIG_KEYS"] == "k1:abc"


def test_the_api_token_mount_added_by_admission_is_not_a_conflict_but_a_mount_over_ours_is() -> (
    None
):
    once = injected(pod())
    token_mount = {"name": "kube-api-access-x", "mountPath": "/var/run/secrets/kubernetes.io/sa"}
    sidecar_of(once)["volumeMounts"].append(token_mount)
    assert reserved.conflicts(once, injection(), SETTINGS) == []
    over = {"name": "mine", "mountPath": "/etc/packgate/config/policy.yaml", "subPath": "x"}
    sidecar_of(once)["volumeMounts"].append(over)
    assert reserved.conflicts(once, injection(), SETTINGS)


# --- the grace period: long enough for the sidecar to drain and ship its last records ---------


def test_a_short_grace_period_is_raised_to_what_the_sidecar_needs_and_a_longer_one_kept() -> None:
    shipping = Settings(
        subscribe_url=SETTINGS.subscribe_url,
        audit_collector_url="https://packgate-audit-collector.packgate.svc:8445",
        sidecar_image="reg/packgate:1.2.3",
    )
    need = inject.grace_seconds(shipping)
    assert need == 25 + 10 + 5  # drain, audit flush, margin

    short = pod(containers=[{"name": "app", "image": "a"}], terminationGracePeriodSeconds=1)
    ops = build_patch(short, injection(), shipping)
    assert {"op": "add", "path": "/spec/terminationGracePeriodSeconds", "value": need} in ops
    raised = apply_patch(short, ops)
    assert raised["spec"]["terminationGracePeriodSeconds"] == need
    assert build_patch(raised, injection(), shipping) == []  # a second pass changes nothing

    default = pod()  # no value: Kubernetes gives 30, short of 40 with shipping
    assert injected_with(default, shipping)["spec"]["terminationGracePeriodSeconds"] == need

    long = pod(containers=[{"name": "app", "image": "a"}], terminationGracePeriodSeconds=120)
    assert injected_with(long, shipping)["spec"]["terminationGracePeriodSeconds"] == 120

    # Without a collector the sidecar only drains requests: Kubernetes' default 30 s is enough.
    assert inject.grace_seconds(SETTINGS) == 30
    assert "terminationGracePeriodSeconds" not in injected(pod())["spec"]


def test_the_grace_period_follows_the_sidecar_s_own_shutdown_times() -> None:
    from packgate_sidecar import run
    from packgate_sidecar.audit import ship

    assert inject.SIDECAR_DRAIN_SECONDS == run.DRAIN_SECONDS
    assert inject.AUDIT_FLUSH_SECONDS == ship.DRAIN_SECONDS
    environ = {"PACKGATE_AUDIT_COLLECTOR_URL": "https://c:8445"}
    assert ship.flush_seconds(environ) == ship.DRAIN_SECONDS
    assert ship.flush_seconds({**environ, "PACKGATE_AUDIT_DRAIN_SECONDS": "3"}) == 3.0
    assert ship.flush_seconds({}) == 0.0


def injected_with(source: dict[str, Any], settings: Settings) -> dict[str, Any]:
    return apply_patch(source, build_patch(source, injection(), settings))
