"""The generated PolicyPack CRD: committed copies match the generator, the schema is structural
(so the apiserver accepts it), and it says what a user of kubectl needs to read."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, cast

import jsonschema
import pytest
import yaml
from packgate_policy import build_crd, crd_yaml
from packgate_policy.crd import REGENERATE
from packgate_policy.schema import SchemaError, openapi_schema, walk
from packgate_sidecar.cli import main
from pydantic import BaseModel

COMMITTED = ("crds/policypacks.yaml", "helm/packgate/crds/policypacks.yaml")


def _version() -> dict[str, Any]:
    [version] = build_crd()["spec"]["versions"]
    return cast(dict[str, Any], version)


def _root() -> dict[str, Any]:
    return cast(dict[str, Any], _version()["schema"]["openAPIV3Schema"])


def _spec() -> dict[str, Any]:
    return cast(dict[str, Any], _root()["properties"]["spec"])


# --- drift ----------------------------------------------------------------------------------


@pytest.mark.parametrize("relative", COMMITTED)
def test_the_committed_crd_is_what_the_models_generate(repo: Path, relative: str) -> None:
    path = repo / relative
    assert path.exists(), f"{relative} is missing; run: {REGENERATE}"
    assert path.read_text() == crd_yaml(), f"{relative} is stale; run: {REGENERATE}"


def test_crd_check_fails_on_a_stale_copy_and_output_repairs_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stale = tmp_path / "crds" / "policypacks.yaml"
    stale.parent.mkdir()
    stale.write_text(crd_yaml().replace("shortNames:\n    - ppk", "shortNames:\n    - pp"))
    assert main(["crd", "--check", "--output", str(stale)]) == 1
    assert f"{stale}: differs from the generated CRD; run: {REGENERATE}" in capsys.readouterr().err

    fresh = tmp_path / "helm" / "crds" / "policypacks.yaml"
    assert main(["crd", "--output", str(stale), "--output", str(fresh)]) == 0
    assert stale.read_text() == fresh.read_text() == crd_yaml()
    assert main(["crd", "--check", "-o", str(stale), "-o", str(fresh)]) == 0


def test_crd_without_output_prints_one_crd_document(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["crd"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# The PolicyPack CustomResourceDefinition. GENERATED")
    assert list(yaml.safe_load_all(out)) == [build_crd()]


# --- names, status, columns -----------------------------------------------------------------


def test_the_crd_has_the_names_of_the_design() -> None:
    crd = build_crd()
    assert crd["metadata"]["name"] == "policypacks.packgate.dev"
    spec = crd["spec"]
    assert (spec["group"], spec["scope"]) == ("packgate.dev", "Namespaced")
    assert spec["names"] == {
        "kind": "PolicyPack",
        "listKind": "PolicyPackList",
        "plural": "policypacks",
        "singular": "policypack",
        "shortNames": ["ppk"],
        "categories": ["packgate"],
    }
    version = _version()
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"] == {"status": {}}


def test_the_status_schema_has_the_fields_the_operator_writes() -> None:
    status = _root()["properties"]["status"]
    assert set(status["properties"]) == {
        "observedGeneration",
        "configHash",
        "conditions",
        "injectedPods",
        "podsInSync",
        "podsWithoutSidecar",
    }
    conditions = status["properties"]["conditions"]
    # Server-side apply merges conditions by type, so two writers never clobber each other.
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    assert set(conditions["items"]["properties"]) == {
        "type",
        "status",
        "reason",
        "message",
        "lastTransitionTime",
        "observedGeneration",
    }


def test_printer_columns_point_at_fields_that_exist() -> None:
    columns = {column["name"]: column for column in _version()["additionalPrinterColumns"]}
    assert [name for name, c in columns.items() if c.get("priority", 0) == 0] == [
        "Version",
        "Enabled",
        "Valid",
        "Ready",
        "In Sync",
        "Injected",
        "Age",
    ]
    paths = {path for path, _ in walk(_root())}
    for column in columns.values():
        json_path = re.sub(r"\[\?\(.*\)\]", "[]", column["jsonPath"]).lstrip(".")
        if json_path.startswith("metadata."):
            continue
        assert json_path in paths, column


# --- structural schema ----------------------------------------------------------------------

FORBIDDEN = {
    "$ref",
    "anyOf",
    "oneOf",
    "allOf",
    "not",
    "const",
    "patternProperties",
    "propertyNames",
    "dependencies",
    "additionalItems",
    "definitions",
    "$defs",
    "$schema",
    "id",
    "title",
}


def structural_violations(node: Any, path: str = "", root: bool = True) -> list[str]:
    """The main rules of a structural schema (k8s.io/apiextensions-apiserver), as problems."""
    problems: list[str] = []
    where = path or "<root>"
    if not isinstance(node, dict):
        return [f"{where}: not a schema"]
    if "type" not in node and not node.get("x-kubernetes-preserve-unknown-fields"):
        problems.append(f"{where}: no type")
    for keyword in sorted(FORBIDDEN & node.keys()):
        problems.append(f"{where}: {keyword} is not allowed")
    if node.get("uniqueItems"):
        problems.append(f"{where}: uniqueItems is not allowed")
    if "properties" in node and "additionalProperties" in node:
        problems.append(f"{where}: properties and additionalProperties together")
    if "additionalProperties" in node and not isinstance(node["additionalProperties"], dict):
        problems.append(f"{where}: additionalProperties must be a schema")
    if node.get("type") == "array" and not isinstance(node.get("items"), dict):
        problems.append(f"{where}: an array needs one items schema")
    missing = set(node.get("required", [])) - set(node.get("properties", {}))
    if missing:
        problems.append(f"{where}: required names unknown properties {sorted(missing)}")
    for rule in node.get("x-kubernetes-validations", []):
        if "rule" not in rule or not ({"message", "messageExpression"} & rule.keys()):
            problems.append(f"{where}: a CEL rule needs a rule and a message")
    if node.get("x-kubernetes-list-type") == "map":
        keys = node.get("x-kubernetes-list-map-keys", [])
        if not keys or not set(keys) <= set(node["items"].get("required", [])):
            problems.append(f"{where}: list-map keys must be required item fields")
    for name, child in node.get("properties", {}).items():
        if root and name == "metadata" and child != {"type": "object"}:
            problems.append("metadata: only type: object is allowed at the root")
        problems += structural_violations(child, f"{path}.{name}" if path else name, False)
    if isinstance(node.get("items"), dict):
        problems += structural_violations(node["items"], f"{path}[]", False)
    if isinstance(node.get("additionalProperties"), dict):
        problems += structural_violations(node["additionalProperties"], f"{path}{{}}", False)
    return problems


def test_the_schema_is_structural() -> None:
    assert structural_violations(_root()) == []


@pytest.mark.parametrize(
    ("schema", "problem"),
    [
        ({"type": "object", "properties": {"a": {}}}, "a: no type"),
        ({"type": "object", "properties": {"a": {"$ref": "#/x", "type": "object"}}}, "a: $ref"),
        (
            {
                "type": "object",
                "properties": {"a": {"anyOf": [{"type": "string"}], "type": "string"}},
            },
            "a: anyOf",
        ),
        (
            {
                "type": "object",
                "properties": {"a": {"type": "string"}},
                "additionalProperties": False,
            },
            "properties and additionalProperties together",
        ),
        ({"type": "array"}, "<root>: an array needs one items schema"),
        (
            {"type": "object", "x-kubernetes-validations": [{"rule": "true"}]},
            "needs a rule and a message",
        ),
    ],
)
def test_the_structural_checker_catches_what_the_apiserver_refuses(
    schema: dict[str, Any], problem: str
) -> None:
    assert any(problem in found for found in structural_violations(schema))


def test_a_model_without_a_structural_form_fails_the_generator_not_the_apiserver() -> None:
    class Loose(BaseModel):
        value: int | str

    with pytest.raises(SchemaError, match="value: a union of 2 types is not structural"):
        openapi_schema(Loose)


def test_every_iterating_cel_rule_runs_over_a_bounded_collection() -> None:
    # The apiserver refuses a CRD whose CEL rules could cost too much: each rule that loops
    # over a list or map needs maxItems / maxProperties (learnt from a refused CRD).
    for path, node in walk(_spec()):
        for rule in node.get("x-kubernetes-validations", []):
            if re.search(r"\.(all|exists|exists_one|filter|map)\(", rule["rule"]):
                assert "maxItems" in node or "maxProperties" in node, (path, rule)


# --- what kubectl explain shows -------------------------------------------------------------


def test_every_spec_field_has_a_description() -> None:
    missing = [
        path
        for path, node in walk(_spec())
        if not path.endswith(("[]", "{}")) and not node.get("description")
    ]
    assert missing == []


def test_defaults_are_described_and_only_enabled_is_applied_by_the_apiserver() -> None:
    nodes = dict(walk(_spec()))
    assert [path for path, node in nodes.items() if "default" in node] == ["pack.enabled"]
    assert nodes["policy.prompt-injection.threshold"]["description"].endswith("Default: 0.8.")
    assert nodes["policy.audit-logger.retention_days"]["description"].endswith("Default: 365.")
    assert nodes["policy.pii-detector.entities"]["description"].endswith(
        "Default: EMAIL, PHONE, SSN, CREDIT_CARD, IBAN, IP_ADDRESS."
    )


def test_provider_accepts_the_spellings_the_models_normalise() -> None:
    provider = dict(walk(_spec()))["providers.targets[].provider"]
    [rule] = provider["x-kubernetes-validations"]
    pattern = re.fullmatch(r"self\.matches\(r'(.*)'\)", rule["rule"])
    assert pattern is not None
    accepts = ["openai", "openai:gpt-4o", "openai:chat:gpt-4o", "openai:chat:gpt-4o-mini"]
    refuses = ["anthropic", "openai:", "openai:completions:gpt-4o", "openai:chat:", "OpenAI"]
    assert [bool(re.search(pattern.group(1), value)) for value in accepts + refuses] == [
        True
    ] * len(accepts) + [False] * len(refuses)


# --- what the schema alone rejects (no CEL) -------------------------------------------------


def _base() -> dict[str, Any]:
    return {
        "pack": {"name": "demo", "version": "1.0.0"},
        "providers": {"targets": [{"id": "main", "provider": "openai"}]},
    }


@pytest.mark.parametrize(
    ("change", "rejected"),
    [
        ({"policy": {"prompt-injection": {"threshold": 1.5}}}, True),
        ({"policy": {"audit-logger": {"retention_days": 0}}}, True),
        ({"policy": {"audit-logger": {"retention_days": 40000}}}, True),
        ({"policy": {"pii-detector": {"entities": ["SNN"]}}}, True),
        ({"policies": {"chain": ["toxicity"]}}, True),
        ({"policy": {"audit-logger": {"immutable": "yes"}}}, True),
        ({"providers": {"targets": []}}, True),
        # Only the models (lint, the operator) see these; the apiserver stores or prunes them.
        ({"policy": {"pii-detector": {"detect_patterns": [{"label": "X", "regex": "(["}]}}}, False),
        ({"policy": {"pii-detector": {"actoin": "redact"}}}, False),
    ],
)
def test_what_the_schema_alone_rejects(change: dict[str, Any], rejected: bool) -> None:
    spec = {**_base(), **change}
    errors = list(jsonschema.Draft7Validator(_spec()).iter_errors(spec))
    assert bool(errors) is rejected, errors
