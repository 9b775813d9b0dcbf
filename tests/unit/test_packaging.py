"""Static checks of the files users build and run with: the Dockerfile and kind-config.yaml.

This machine has no Docker engine, so the image is checked by reading the Dockerfile: a pinned
slim base, a non-root user, no remote ADD, the C scoring core compiled in the build stage and no
compilers in the final stage, and entrypoints that exist in the package. kind-config.yaml is
validated against kind's v1alpha4 Cluster schema (the fields kind documents, unknown keys
rejected).
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def stages(dockerfile: str) -> list[list[str]]:
    """Instructions grouped by build stage, with line continuations joined."""
    joined = re.sub(r"\\\n", " ", dockerfile)
    result: list[list[str]] = []
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            result.append([])
        if result:
            result[-1].append(line)
    return result


@pytest.fixture(scope="module")
def dockerfile() -> list[list[str]]:
    return stages((ROOT / "Dockerfile").read_text())


def test_image_is_multi_stage_on_a_pinned_slim_base(dockerfile: list[list[str]]) -> None:
    assert len(dockerfile) >= 2
    for stage in dockerfile:
        image = stage[0].split()[1]
        _, _, tag = image.partition(":")
        assert tag and tag != "latest", f"unpinned base image {image}"
        assert re.match(r"\d+\.\d+\.\d+-slim", tag), f"base is not a pinned slim tag: {image}"


def test_final_stage_runs_as_non_root_without_build_tools(dockerfile: list[list[str]]) -> None:
    final = dockerfile[-1]
    users = [line.split()[1] for line in final if line.upper().startswith("USER ")]
    assert users, "the final stage sets no USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0
    text = "\n".join(final)
    assert "apt-get install" not in text and "build-essential" not in text
    assert "COPY --from=" in text  # only built artifacts reach the final stage


def test_no_remote_add(dockerfile: list[list[str]]) -> None:
    for stage in dockerfile:
        for line in stage:
            if line.upper().startswith("ADD "):
                assert "://" not in line, f"remote ADD: {line}"


def test_entrypoints_exist_in_the_package(dockerfile: list[list[str]]) -> None:
    final = "\n".join(dockerfile[-1])
    assert 'ENTRYPOINT ["packgate"]' in final
    for command in (["operator", "run"], ["gateway", "run"]):
        result = subprocess.run(
            [sys.executable, "-m", "packgate_sidecar.cli", *command, "--help"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stderr


def test_the_compiled_core_is_built_in_the_build_stage_only(dockerfile: list[list[str]]) -> None:
    # pyproject declares the C extension, so `pip install .` compiles it: the build stage must
    # have a compiler and run that install; the final stage gets the built venv and nothing
    # that could compile (no compiler, no sources copied from the build context).
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    modules = project["tool"]["setuptools"]["ext-modules"]
    core = next(m for m in modules if m["name"] == "packgate_sidecar.detect._ngramcore")
    assert all((ROOT / source).is_file() for source in core["sources"])
    build, final = "\n".join(line for stage in dockerfile[:-1] for line in stage), dockerfile[-1]
    assert re.search(r"apt-get install[^\n]*\b(build-essential|gcc)\b", build)
    assert re.search(r"pip install[^\n]* \.(\s|$)", build), "the build stage must pip install ."
    final_text = "\n".join(final)
    for tool in ("gcc", "build-essential", "clang", "apt-get install", "pip install"):
        assert tool not in final_text, f"final stage mentions {tool}"
    copies = [line for line in final if line.upper().startswith("COPY ")]
    assert copies and all("--from=" in line for line in copies), copies


# kind's Cluster v1alpha4 fields (sigs.k8s.io/kind/pkg/apis/config/v1alpha4/types.go).
_PORT_MAPPING = {
    "type": "object",
    "additionalProperties": False,
    "required": ["containerPort"],
    "properties": {
        "containerPort": {"type": "integer", "minimum": 1, "maximum": 65535},
        "hostPort": {"type": "integer", "minimum": 0, "maximum": 65535},
        "listenAddress": {"type": "string"},
        "protocol": {"enum": ["TCP", "UDP", "SCTP"]},
    },
}
_NODE = {
    "type": "object",
    "additionalProperties": False,
    "required": ["role"],
    "properties": {
        "role": {"enum": ["control-plane", "worker"]},
        "image": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "extraMounts": {"type": "array"},
        "extraPortMappings": {"type": "array", "items": _PORT_MAPPING},
        "kubeadmConfigPatches": {"type": "array", "items": {"type": "string"}},
        "kubeadmConfigPatchesJSON6902": {"type": "array"},
    },
}
KIND_CLUSTER_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["kind", "apiVersion"],
    "properties": {
        "kind": {"const": "Cluster"},
        "apiVersion": {"const": "kind.x-k8s.io/v1alpha4"},
        "name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
        "nodes": {"type": "array", "items": _NODE, "minItems": 1},
        "networking": {"type": "object"},
        "featureGates": {"type": "object"},
        "runtimeConfig": {"type": "object"},
        "kubeadmConfigPatches": {"type": "array"},
        "kubeadmConfigPatchesJSON6902": {"type": "array"},
        "containerdConfigPatches": {"type": "array"},
        "containerdConfigPatchesJSON6902": {"type": "array"},
    },
}


def test_kind_config_is_a_valid_two_node_cluster_with_a_port_mapping() -> None:
    config = yaml.safe_load((ROOT / "kind-config.yaml").read_text())
    jsonschema.validate(config, KIND_CLUSTER_SCHEMA)
    roles = [node["role"] for node in config["nodes"]]
    assert roles.count("control-plane") == 1 and "worker" in roles
    assert any(node.get("extraPortMappings") for node in config["nodes"])


def test_kind_schema_rejects_a_typo() -> None:
    bad = {"kind": "Cluster", "apiVersion": "kind.x-k8s.io/v1alpha4", "nodes": [{"rol": "worker"}]}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, KIND_CLUSTER_SCHEMA)


def test_example_policypack_is_the_seed_config_unchanged() -> None:
    manifest = yaml.safe_load((ROOT / "examples" / "policypack.yaml").read_text())
    seed = yaml.safe_load(
        (ROOT / "examples" / "policy-configs" / "chatgpt-enterprise-gateway.yaml").read_text()
    )
    assert manifest["kind"] == "PolicyPack" and manifest["spec"] == seed
    lint = subprocess.run(
        [
            sys.executable,
            "-m",
            "packgate_sidecar.cli",
            "policy",
            "lint",
            "examples/policypack.yaml",
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    assert lint.returncode == 0, lint.stdout
