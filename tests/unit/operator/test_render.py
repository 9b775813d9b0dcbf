"""Rendering a PolicyPack: the ConfigMap a sidecar mounts holds a config that loads to the same
hash, never a secret, belongs to the pack, and the status says what happened."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml
from packgate_operator import render
from packgate_policy import ConfigError, load_text, signing

SPEC: dict[str, Any] = {
    "pack": {"name": "chatgpt-enterprise-gateway", "version": "1.0.0", "enabled": True},
    "providers": {
        "targets": [
            {
                "id": "chatgpt-enterprise",
                "provider": "openai:chat:gpt-4o",
                "secret_key_ref": {"secret": {"name": "openai", "key": "api-key"}},
            },
            {"id": "fallback", "provider": "openai", "secret_key_ref": {"env": "OPENAI_API_KEY"}},
        ]
    },
    "policies": {"chain": ["prompt-injection", "pii-detector", "audit-logger"]},
    "policy": {
        "prompt-injection": {"threshold": 0.8, "action": "block"},
        "pii-detector": {"action": "redact", "entities": ["EMAIL", "PHONE", "SSN", "CREDIT_CARD"]},
        "audit-logger": {"immutable": True, "retention_days": 365, "log_all_access": True},
    },
}

PACK: dict[str, Any] = {
    "apiVersion": "packgate.dev/v1alpha1",
    "kind": "PolicyPack",
    "metadata": {"name": "gateway", "namespace": "team-a", "uid": "u-1", "generation": 3},
    "spec": SPEC,
}


SIGNER = signing.Signer.generate()


def signed_body(rendered: render.Rendered) -> dict[str, Any]:
    return render.configmap_body(PACK, rendered, render.signed_text(PACK, rendered, SIGNER))


def test_configmap_holds_a_config_the_sidecar_loads_to_the_same_hash() -> None:
    rendered = render.render(SPEC)
    body = signed_body(rendered)
    text = body["data"]["policy.yaml"]
    assert load_text(text).hash == rendered.hash
    # Signed for this pack, its uid and generation; still a plain config for lint and the CLI.
    signed = signing.verify(text, {SIGNER.key_id: SIGNER.public}, "team-a", "gateway")
    assert (signed.uid, signed.generation, signed.body) == ("u-1", 3, rendered.text)
    assert body["metadata"]["annotations"]["packgate.dev/config-hash"] == rendered.hash
    assert body["metadata"]["name"] == "packgate-gateway"
    assert body["metadata"]["namespace"] == "team-a"


def test_configmap_is_owned_by_the_pack_so_it_is_garbage_collected() -> None:
    body = signed_body(render.render(SPEC))
    assert body["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "packgate.dev/v1alpha1",
            "kind": "PolicyPack",
            "name": "gateway",
            "uid": "u-1",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    assert body["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "packgate-operator"


def test_secret_references_stay_references() -> None:
    text = render.render(SPEC).text
    data = yaml.safe_load(text)
    refs = [t.get("secret_key_ref") for t in data["providers"]["targets"]]
    assert refs == [{"secret": {"name": "openai", "key": "api-key"}}, {"env": "OPENAI_API_KEY"}]


def test_equal_specs_render_equal_hashes_and_an_edit_changes_it() -> None:
    edited = copy.deepcopy(SPEC)
    edited["policy"]["prompt-injection"]["threshold"] = 0.5
    assert render.render(SPEC).hash == render.render(copy.deepcopy(SPEC)).hash
    assert render.render(SPEC).hash != render.render(edited).hash


def test_invalid_spec_gives_lint_messages_with_their_paths() -> None:
    bad = copy.deepcopy(SPEC)
    bad["policy"]["pii-detector"]["actoin"] = "redact"
    with pytest.raises(ConfigError) as caught:
        render.render(bad)
    assert render.issues_text(caught.value) == [
        "spec.policy.pii-detector.actoin: unknown key" + _suggestion(caught.value)
    ]


def _suggestion(error: ConfigError) -> str:
    # The loader may append a hint ("; did you mean action?"); it is the same text lint prints.
    message = error.issues[0].message
    return message.removeprefix("unknown key")


def test_long_pack_names_still_give_valid_names() -> None:
    name = "p" * 253
    assert len(render.configmap_name(name)) <= 253
    assert render.configmap_name(name) != render.configmap_name("p" * 252 + "q")
    assert len(render.label_value(name)) <= 63


def test_valid_status_conditions_and_hash() -> None:
    rendered = render.render(SPEC)
    status = render.status_valid({}, rendered, 3, "2030-01-01T00:00:00Z", "packgate-gateway")
    assert status["observedGeneration"] == 3
    assert status["configHash"] == rendered.hash
    by_type = {c["type"]: c for c in status["conditions"]}
    assert by_type["Valid"]["status"] == "True"
    assert by_type["Ready"]["reason"] == "ConfigRendered"
    assert "packgate-gateway" in by_type["Ready"]["message"]
    assert all(c["observedGeneration"] == 3 for c in status["conditions"])


def test_transition_time_moves_only_when_the_status_flips() -> None:
    rendered = render.render(SPEC)
    first = render.status_valid({}, rendered, 1, "T1", "cm")
    second = render.status_valid(first, rendered, 2, "T2", "cm")
    assert {c["lastTransitionTime"] for c in second["conditions"]} == {"T1"}
    broken = render.status_invalid(second, ["spec.x: unknown key"], 3, "T3")
    by_type = {c["type"]: c for c in broken["conditions"]}
    assert by_type["Valid"]["lastTransitionTime"] == "T3"
    assert by_type["Ready"]["lastTransitionTime"] == "T1"  # still True: the last good config


def test_invalid_after_valid_keeps_the_last_good_hash_in_force() -> None:
    rendered = render.render(SPEC)
    good = render.status_valid({}, rendered, 1, "T1", "cm")
    broken = render.status_invalid(good, ["spec.pack.version: required key is missing"], 2, "T2")
    by_type = {c["type"]: c for c in broken["conditions"]}
    assert broken["configHash"] == rendered.hash
    assert by_type["Valid"]["status"] == "False"
    assert by_type["Valid"]["reason"] == "SpecInvalid"
    assert by_type["Valid"]["message"] == "spec.pack.version: required key is missing"
    assert by_type["Ready"]["reason"] == "LastGoodConfigInForce"


def test_invalid_from_the_start_is_not_ready() -> None:
    broken = render.status_invalid({}, ["spec.providers: required key is missing"], 1, "T1")
    by_type = {c["type"]: c for c in broken["conditions"]}
    assert "configHash" not in broken
    assert by_type["Ready"]["status"] == "False"
    assert by_type["Ready"]["reason"] == "NoValidConfig"


def test_in_sync_condition() -> None:
    assert render.in_sync_condition([], 0, 0, "h", 1, "T")["reason"] == "NoInjectedPods"
    converging = render.in_sync_condition([], 3, 1, "sha256:x", 1, "T")
    assert converging["status"] == "False"
    assert converging["message"] == "1 of 3 injected pods enforce sha256:x"
    assert render.in_sync_condition([], 3, 3, "h", 1, "T")["status"] == "True"
