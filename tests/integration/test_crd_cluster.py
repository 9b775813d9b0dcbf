"""The generated PolicyPack CRD on the real kube-apiserver: accepted, served, and guarding specs.

What a user meets at `kubectl apply`: the seed examples are accepted as they are; a broken spec
is refused with the path and a readable reason; `kubectl explain` and `kubectl get ppk` show
what the models describe. Every case the apiserver refuses is also refused by
`packgate policy lint`, and the few it lets through (documented in docs/policy-config.md) are
pinned here so a change in either direction is noticed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from localcluster import LocalCluster
from packgate_policy import lint_text, load_file, load_mapping

from tests.support.waiting import wait_for

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
CRD_FILE = REPO / "crds" / "policypacks.yaml"
EXAMPLES = REPO / "examples" / "policy-configs"
SEEDS = ("chatgpt-enterprise-gateway", "chatgpt-enterprise-mini")
CRD_NAME = "policypacks.packgate.dev"


def manifest(spec: dict[str, Any], name: str) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "packgate.dev/v1alpha1",
            "kind": "PolicyPack",
            "metadata": {"name": name},
            "spec": spec,
        },
        sort_keys=False,
    )


def base_spec() -> dict[str, Any]:
    return {
        "pack": {"name": "demo", "version": "1.0.0"},
        "providers": {
            "targets": [
                {
                    "id": "main",
                    "provider": "openai:chat:gpt-4o",
                    "secret_key_ref": {"env": "OPENAI_API_KEY"},
                }
            ]
        },
        "policies": {"chain": ["prompt-injection", "pii-detector", "audit-logger"]},
    }


@pytest.fixture(scope="module")
def crd(cluster: LocalCluster) -> Iterator[None]:
    cluster.kubectl("apply", "-f", str(CRD_FILE))
    cluster.kubectl("wait", "--for=condition=Established", f"crd/{CRD_NAME}", "--timeout=60s")
    yield
    # The CRD stays: other modules of the session may use PolicyPacks too.


def test_the_crd_is_established_with_a_structural_schema(cluster: LocalCluster, crd: None) -> None:
    body = json.loads(cluster.kubectl("get", "crd", CRD_NAME, "-o", "json").stdout)
    conditions = {c["type"]: c["status"] for c in body["status"]["conditions"]}
    assert conditions["Established"] == "True"
    assert conditions["NamesAccepted"] == "True"
    assert "NonStructuralSchema" not in conditions
    assert body["status"]["acceptedNames"]["shortNames"] == ["ppk"]


@pytest.mark.parametrize("seed", SEEDS)
def test_a_seed_example_is_accepted_as_a_policypack_unchanged(
    cluster: LocalCluster, crd: None, namespace: str, seed: str
) -> None:
    path = EXAMPLES / f"{seed}.yaml"
    spec = yaml.safe_load(path.read_text())
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest(spec, seed))

    stored = json.loads(cluster.kubectl("get", "ppk", seed, "-n", namespace, "-o", "json").stdout)
    assert stored["spec"] == spec
    # What the operator will do with it: same config, same hash as the file.
    assert load_mapping(stored["spec"]).hash == load_file(path).hash


def _change(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """Set a dotted path (list indexes as numbers) of the spec."""

    def apply(spec: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = spec
        for part in parents:
            node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
        node[int(last) if last.isdigit() else last] = value

    return apply


TARGET = "providers.targets.0"
# (case, change to the base spec, what the apiserver's refusal says)
REFUSED: list[tuple[str, Callable[[dict[str, Any]], None], list[str]]] = [
    (
        "threshold 1.5",
        _change("policy.prompt-injection.threshold", 1.5),
        ["spec.policy.prompt-injection.threshold", "should be less than or equal to 1"],
    ),
    (
        "unknown entity",
        _change("policy.pii-detector.entities", ["EMAIL", "SNN"]),
        ["spec.policy.pii-detector.entities[1]", 'Unsupported value: "SNN"'],
    ),
    (
        "unknown chain kind",
        _change("policies.chain", ["toxicity"]),
        ["spec.policies.chain[0]", 'Unsupported value: "toxicity"'],
    ),
    (
        "bad semver",
        _change("pack.version", "1.0"),
        ["spec.pack.version", '"1.0" is not SemVer; expected MAJOR.MINOR.PATCH such as 1.0.0'],
    ),
    (
        "version as a number",
        _change("pack.version", 1.0),
        ["spec.pack.version", "must be of type string"],
    ),
    (
        "retention_days 0",
        _change("policy.audit-logger.retention_days", 0),
        ["spec.policy.audit-logger.retention_days", "should be greater than or equal to 1"],
    ),
    (
        "retention_days 40000",
        _change("policy.audit-logger.retention_days", 40000),
        ["spec.policy.audit-logger.retention_days", "should be less than or equal to 36500"],
    ),
    (
        "quoted boolean",
        _change("policy.audit-logger.immutable", "yes"),
        ["spec.policy.audit-logger.immutable", "must be of type boolean"],
    ),
    (
        "both env and secret",
        _change(f"{TARGET}.secret_key_ref", {"env": "K", "secret": {"name": "s", "key": "k"}}),
        ["spec.providers.targets[0].secret_key_ref", "set exactly one of env or secret"],
    ),
    (
        "neither env nor secret",
        _change(f"{TARGET}.secret_key_ref", {}),
        ["spec.providers.targets[0].secret_key_ref", "set exactly one of env or secret"],
    ),
    (
        "duplicate target ids",
        lambda spec: spec["providers"]["targets"].append({"id": "main", "provider": "openai"}),
        ["spec.providers.targets", "target ids must be unique"],
    ),
    (
        "no targets",
        _change("providers.targets", []),
        ["spec.providers.targets", "should have at least 1 items"],
    ),
    (
        "unknown provider",
        _change(f"{TARGET}.provider", "anthropic:claude"),
        [
            "spec.providers.targets[0].provider",
            '"anthropic:claude" is not one of openai, openai:MODEL, openai:chat:MODEL',
        ],
    ),
    (
        "provider and model disagree",
        _change(f"{TARGET}.model", "gpt-4o-mini"),
        ["spec.providers.targets[0]", "provider names a different model than model"],
    ),
    (
        "base_url ftp",
        _change(f"{TARGET}.base_url", "ftp://example.com"),
        ["spec.providers.targets[0].base_url", '"ftp://example.com" is not an http(s) URL'],
    ),
    (
        "repeated chain entry",
        _change("policies.chain", ["audit-logger", "audit-logger"]),
        ["spec.policies.chain", 'policy kind "audit-logger" is listed more than once'],
    ),
    (
        "bad tag key",
        _change("policy.cost-attribution.tags", {"cost center": "x"}),
        ["spec.policy.cost-attribution.tags", 'tag key "cost center" must be letters'],
    ),
    (
        "second-opinion band reversed",
        _change(
            "policy.prompt-injection.backend",
            {"url": "http://guard.ml:8080/score", "band": {"low": 0.9, "high": 0.5}},
        ),
        ["spec.policy.prompt-injection.backend.band", "low must be below high"],
    ),
    (
        "second opinion slower than the policy's budget",
        _change(
            "policy.prompt-injection.backend",
            {"url": "http://guard.ml:8080/score", "timeout_ms": 500},
        ),
        [
            "spec.policy.prompt-injection",
            "backend.timeout_ms must be below the policy's timeout_ms",
        ],
    ),
    (
        "unknown key (kubectl asks for strict field validation)",
        _change("policy.pii-detector.actoin", "redact"),
        ['unknown field "spec.policy.pii-detector.actoin"'],
    ),
]


@pytest.mark.parametrize(("change", "words"), [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_an_invalid_policypack_is_refused_at_apply_time_and_by_lint(
    cluster: LocalCluster,
    crd: None,
    namespace: str,
    change: Callable[[dict[str, Any]], None],
    words: list[str],
) -> None:
    spec = base_spec()
    change(spec)
    text = manifest(spec, "broken")

    result = cluster.kubectl("apply", "-n", namespace, "-f", "-", input=text, check=False)
    assert result.returncode != 0
    for word in words:
        assert word in result.stderr
    assert "Traceback" not in result.stderr
    gone = cluster.kubectl("get", "ppk", "broken", "-n", namespace, check=False)
    assert "NotFound" in gone.stderr

    assert not lint_text(text, "broken.yaml").valid


def test_what_only_lint_and_the_operator_catch(
    cluster: LocalCluster, crd: None, namespace: str
) -> None:
    # A regular expression that does not compile: the apiserver cannot know.
    bad_regex = base_spec()
    bad_regex["policy"] = {"pii-detector": {"detect_patterns": [{"label": "X", "regex": "(["}]}}
    text = manifest(bad_regex, "bad-regex")
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=text)
    assert not lint_text(text).valid

    # An unknown key from a client that does not ask for strict validation is pruned.
    typo = base_spec()
    typo["policy"] = {"pii-detector": {"actoin": "redact"}}
    text = manifest(typo, "typo")
    applied = cluster.kubectl("apply", "--validate=false", "-n", namespace, "-f", "-", input=text)
    assert applied.returncode == 0
    stored = json.loads(cluster.kubectl("get", "ppk", "typo", "-n", namespace, "-o", "json").stdout)
    assert stored["spec"]["policy"] == {"pii-detector": {}}
    assert not lint_text(text).valid

    # The same from an API client that does not set fieldValidation: the server's default
    # (Warn) stores the object without the key and says so only in a response header.
    body = json.loads(json.dumps(yaml.safe_load(manifest(typo, "raw-typo"))))
    raw = cluster.kubectl(
        "create",
        "--raw",
        f"/apis/packgate.dev/v1alpha1/namespaces/{namespace}/policypacks",
        "-f",
        "-",
        input=json.dumps(body),
    )
    assert json.loads(raw.stdout)["spec"]["policy"] == {"pii-detector": {}}
    assert 'unknown field "spec.policy.pii-detector.actoin"' in raw.stderr


def test_a_null_block_is_pruned_as_the_models_ignore_it(
    cluster: LocalCluster, crd: None, namespace: str
) -> None:
    spec = base_spec()
    spec["policy"] = {"audit-logger": None, "prompt-injection": {"threshold": 0.5}}
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest(spec, "nulls"))
    stored = json.loads(
        cluster.kubectl("get", "ppk", "nulls", "-n", namespace, "-o", "json").stdout
    )
    assert stored["spec"]["policy"] == {"prompt-injection": {"threshold": 0.5}}
    assert load_mapping(stored["spec"]).config == load_mapping(spec).config


def _explain(cluster: LocalCluster, field: str) -> str:
    found: list[str] = []

    def ready() -> bool:
        result = cluster.kubectl("explain", field, check=False)
        found[:] = [" ".join(result.stdout.split())]
        return result.returncode == 0

    # The apiserver publishes a new CRD's OpenAPI a moment after it is Established.
    wait_for(ready, what=f"kubectl explain {field}")
    return found[0]


def test_kubectl_explain_shows_the_model_descriptions(cluster: LocalCluster, crd: None) -> None:
    policy = _explain(cluster, "policypack.spec.policy")
    assert "Settings of each policy kind, by kind." in policy
    for kind in ("prompt-injection", "pii-detector", "content-filter", "audit-logger"):
        assert kind in policy
    threshold = _explain(cluster, "policypack.spec.policy.prompt-injection.threshold")
    assert "Score in [0, 1] at or above which it acts. Default: 0.8." in threshold
    assert "podsInSync" in _explain(cluster, "ppk.status")


def test_kubectl_get_shows_the_printer_columns(
    cluster: LocalCluster, crd: None, namespace: str
) -> None:
    spec = base_spec()  # no pack.enabled: the apiserver defaults it to true
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest(spec, "shown"))
    status = {
        "status": {
            "observedGeneration": 1,
            "configHash": "sha256:" + "ab" * 32,
            "injectedPods": 3,
            "podsInSync": 2,
            "podsWithoutSidecar": 1,
            "conditions": [
                {
                    "type": "Valid",
                    "status": "False",
                    "reason": "SpecInvalid",
                    "message": "an edit that did not validate",
                    "lastTransitionTime": "2026-01-01T00:00:00Z",
                },
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "LastGoodConfigInForce",
                    "message": "ok",
                    "lastTransitionTime": "2026-01-01T00:00:00Z",
                },
            ],
            "notInTheSchema": "pruned",
        }
    }
    cluster.kubectl(
        "patch",
        "ppk",
        "shown",
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps(status),
    )

    header, row = cluster.kubectl("get", "ppk", "-n", namespace).stdout.splitlines()
    assert header.split() == [
        "NAME",
        "VERSION",
        "ENABLED",
        "VALID",
        "READY",
        "IN",
        "SYNC",
        "INJECTED",
        "AGE",
    ]
    assert row.split()[:7] == ["shown", "1.0.0", "true", "False", "True", "2", "3"]

    wide_header, wide_row = cluster.kubectl(
        "get", "ppk", "-n", namespace, "-o", "wide"
    ).stdout.splitlines()
    assert "WITHOUT SIDECAR" in wide_header and "HASH" in wide_header
    assert "sha256:" + "ab" * 32 in wide_row.split()

    stored = json.loads(
        cluster.kubectl("get", "ppk", "shown", "-n", namespace, "-o", "json").stdout
    )
    assert "notInTheSchema" not in stored["status"]
    assert stored["spec"]["pack"]["enabled"] is True
