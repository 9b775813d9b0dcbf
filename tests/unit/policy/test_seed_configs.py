"""Both seed configs load unchanged: from a file, as text, and as the spec of a PolicyPack."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from packgate_policy import PolicyConfig, lint_text, load_file, load_mapping, load_text


def test_the_examples_are_the_seed_documents_byte_for_byte(
    seed_file: Path, examples_dir: Path
) -> None:
    if not seed_file.exists():
        pytest.skip(f"{seed_file} is not part of this checkout")
    documents = seed_file.read_text().split("\n---\n")[1:]
    examples = [
        (examples_dir / f"{name}.yaml").read_text()
        for name in ("chatgpt-enterprise-gateway", "chatgpt-enterprise-mini")
    ]
    assert [doc.rstrip("\n") for doc in documents] == [ex.rstrip("\n") for ex in examples]


def test_the_gateway_example_loads_with_its_provider_normalised(examples_dir: Path) -> None:
    loaded = load_file(examples_dir / "chatgpt-enterprise-gateway.yaml")
    config = loaded.config
    assert loaded.warnings == []
    assert (config.pack.name, config.pack.version, config.pack.enabled) == (
        "chatgpt-enterprise-gateway",
        "1.0.0",
        True,
    )
    [target] = config.providers.targets
    assert (target.id, target.provider, target.model) == ("chatgpt-enterprise", "openai", "gpt-4o")
    assert target.secret_key_ref is not None and target.secret_key_ref.env == "OPENAI_API_KEY"
    assert target.effective_base_url == "https://api.openai.com/v1"
    assert config.policies.chain == ["prompt-injection", "pii-detector", "audit-logger"]
    assert config.block("prompt-injection").model_dump() == {
        "fail_open": False,
        "timeout_ms": 200,
        "threshold": 0.8,
        "action": "block",
        "backend": None,
    }
    assert config.block("pii-detector").model_dump()["entities"] == [
        "EMAIL",
        "PHONE",
        "SSN",
        "CREDIT_CARD",
    ]
    audit = config.block("audit-logger").model_dump()
    assert (audit["immutable"], audit["retention_days"], audit["log_all_access"]) == (
        True,
        365,
        True,
    )


def test_the_mini_example_runs_only_the_audit_logger(examples_dir: Path) -> None:
    config = load_file(examples_dir / "chatgpt-enterprise-mini.yaml").config
    assert config.policies.chain == ["audit-logger"]
    assert config.providers.targets[0].model == "gpt-4o-mini"


def test_a_seed_example_lints_clean_as_a_file(seed_example: Path) -> None:
    result = lint_text(seed_example.read_text(), str(seed_example))
    assert result.valid
    assert result.issues == []


def test_a_seed_example_loads_as_a_policypack_spec_with_the_same_hash(
    seed_example: Path, as_policypack: Callable[..., str]
) -> None:
    text = seed_example.read_text()
    manifest = as_policypack(text, seed_example.stem)

    result = lint_text(manifest, "pack.yaml")
    assert result.valid and result.issues == []
    [document] = result.documents
    assert (document.kind, document.name) == ("PolicyPack", seed_example.stem)

    from_file = load_text(text)
    assert document.config_hash == from_file.hash
    # What the operator does: take .spec of the object and validate it as a mapping.
    spec = yaml.safe_load(manifest)["spec"]
    assert load_mapping(spec).config == from_file.config


def test_the_two_provider_spellings_are_one_config() -> None:
    short = {"id": "a", "provider": "openai:chat:gpt-4o"}
    medium = {"id": "a", "provider": "openai:gpt-4o"}
    long = {"id": "a", "provider": "openai", "model": "gpt-4o"}
    configs = [
        load_mapping(
            {"pack": {"name": "p", "version": "1.0.0"}, "providers": {"targets": [target]}}
        )
        for target in (short, medium, long)
    ]
    assert configs[0].config == configs[1].config == configs[2].config
    assert len({loaded.hash for loaded in configs}) == 1
    assert isinstance(configs[0].config, PolicyConfig)
