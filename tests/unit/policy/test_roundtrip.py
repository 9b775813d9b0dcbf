"""Property tests: any valid config survives model -> YAML -> model unchanged, hash included,
and the CRD's schema accepts it as written (the CRD must never be stricter than the models)."""

from __future__ import annotations

import re
from typing import Any

import jsonschema
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from packgate_policy import (
    CONTENT_CATEGORIES,
    PII_ENTITIES,
    POLICY_KINDS,
    PolicyConfig,
    build_crd,
    canonical_dict,
    config_hash,
    dump_yaml,
    lint_text,
    load_mapping,
    load_text,
)

DNS_LABEL = r"[a-z0-9]([-a-z0-9]{0,14}[a-z0-9])?"
MODEL = r"[a-zA-Z0-9][-a-zA-Z0-9._]{0,20}"
REGEXES = [r"\bE-\d{6}\b", r"(?i)project\s+[a-z]+", r"[A-Z]{2}\d{4}", "x+", r"\$\{[^}]+\}"]

names = st.from_regex(DNS_LABEL, fullmatch=True)
models = st.from_regex(MODEL, fullmatch=True)
words = st.text(max_size=20)


@st.composite
def semvers(draw: st.DrawFn) -> str:
    core = ".".join(str(draw(st.integers(0, 999))) for _ in range(3))
    identifier = st.one_of(
        st.integers(0, 99).map(str),
        st.from_regex(r"[0-9]*[a-zA-Z-][0-9a-zA-Z-]{0,5}", fullmatch=True),
    )
    pre = draw(st.none() | st.lists(identifier, min_size=1, max_size=3).map(".".join))
    build = draw(
        st.none()
        | st.lists(st.from_regex(r"[0-9a-zA-Z-]{1,6}", fullmatch=True), min_size=1, max_size=2).map(
            ".".join
        )
    )
    return core + (f"-{pre}" if pre else "") + (f"+{build}" if build else "")


@st.composite
def targets(draw: st.DrawFn, target_id: str) -> dict[str, Any]:
    model = draw(models)
    target: dict[str, Any] = {"id": target_id}
    target.update(
        draw(
            st.sampled_from(
                [
                    {"provider": "openai"},
                    {"provider": "openai", "model": model},
                    {"provider": f"openai:{model}"},
                    {"provider": f"openai:chat:{model}"},
                    {"provider": f"openai:chat:{model}", "model": model},
                ]
            )
        )
    )
    base_url = draw(
        st.none()
        | st.sampled_from(
            [
                "http://127.0.0.1:8080/v1",
                "https://api.example.com",
                "https://llm.corp/v1/",
                "http://[::1]:9000",
            ]
        )
    )
    if base_url:
        target["base_url"] = base_url
    key = draw(
        st.none()
        | st.builds(
            lambda env: {"env": env}, st.from_regex(r"[A-Z_][A-Z0-9_]{0,15}", fullmatch=True)
        )
        | st.builds(
            lambda name, key: {"secret": {"name": name, "key": key}},
            names,
            st.from_regex(r"[-._a-zA-Z0-9]{1,12}", fullmatch=True),
        )
    )
    if key:
        target["secret_key_ref"] = key
    return target


def _common() -> dict[str, st.SearchStrategy[Any]]:
    return {"fail_open": st.booleans(), "timeout_ms": st.integers(1, 60000)}


def _block(required: dict[str, st.SearchStrategy[Any]] | None = None, **optional: Any) -> Any:
    return st.fixed_dictionaries(required or {}, optional={**_common(), **optional})


tag_keys = st.from_regex(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,10}[A-Za-z0-9])?", fullmatch=True)
BLOCKS = {
    "prompt-injection": _block(
        threshold=st.floats(0, 1, allow_nan=False), action=st.sampled_from(["block", "log"])
    ),
    "pii-detector": _block(
        action=st.sampled_from(["redact", "mask", "hash", "block"]),
        entities=st.lists(st.sampled_from(PII_ENTITIES), max_size=6),
        detect_patterns=st.lists(
            st.fixed_dictionaries(
                {
                    "label": st.from_regex(r"[A-Z][A-Z0-9_]{0,10}", fullmatch=True),
                    "regex": st.sampled_from(REGEXES),
                }
            ),
            max_size=3,
        ),
        scan_responses=st.booleans(),
    ),
    "content-filter": _block(
        action=st.sampled_from(["block", "log"]),
        categories=st.lists(st.sampled_from(CONTENT_CATEGORIES), max_size=6),
        terms=st.lists(st.text(min_size=1, max_size=20), max_size=4),
        patterns=st.lists(st.sampled_from(REGEXES), max_size=3),
        scan_responses=st.booleans(),
    ),
    "audit-logger": _block(
        immutable=st.booleans(),
        retention_days=st.integers(1, 36500),
        log_all_access=st.booleans(),
        stdout=st.booleans(),
    ),
    "cost-attribution": _block(
        tags=st.dictionaries(tag_keys, words, max_size=5),
        pod_labels=st.lists(st.text(min_size=1, max_size=20), max_size=3),
        header_tags=st.lists(tag_keys, max_size=3),
        prices=st.dictionaries(
            models,
            st.fixed_dictionaries(
                {
                    "input_per_1m": st.floats(0, 1e6, allow_nan=False),
                    "output_per_1m": st.floats(0, 1e6, allow_nan=False),
                }
            ),
            max_size=3,
        ),
    ),
}


@st.composite
def raw_configs(draw: st.DrawFn) -> dict[str, Any]:
    """A valid config in any of the spellings a user may write (provider forms, omitted keys)."""
    pack: dict[str, Any] = {"name": draw(names), "version": draw(semvers())}
    if draw(st.booleans()):
        pack["enabled"] = draw(st.booleans())
    if draw(st.booleans()):
        pack["description"] = draw(words)
    ids = draw(st.lists(names, min_size=1, max_size=4, unique=True))
    config: dict[str, Any] = {
        "pack": pack,
        "providers": {"targets": [draw(targets(target_id)) for target_id in ids]},
    }
    kinds = draw(st.permutations(POLICY_KINDS))
    chain = kinds[: draw(st.integers(0, len(kinds)))]
    write_empty_chain = draw(st.booleans())
    if chain or write_empty_chain:
        config["policies"] = {"chain": list(chain)}
    blocks = draw(st.fixed_dictionaries({}, optional=BLOCKS))
    if blocks:
        config["policy"] = blocks
    return config


PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(raw_configs())
def test_a_valid_config_survives_yaml_and_keeps_its_hash(raw: dict[str, Any]) -> None:
    config = PolicyConfig.model_validate(raw)
    text = dump_yaml(config)
    loaded = load_text(text)
    assert loaded.config == config
    assert loaded.hash == config_hash(config)
    assert lint_text(text).valid
    # The canonical form is a fixed point: rendering it again changes nothing.
    assert canonical_dict(loaded.config) == canonical_dict(config)
    assert load_mapping(canonical_dict(config)).hash == loaded.hash


def _with_cel_patterns(node: Any) -> Any:
    """The CRD schema for jsonschema: `self.matches(r'RE')` rules become `pattern: RE`."""
    if isinstance(node, list):
        return [_with_cel_patterns(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _with_cel_patterns(value) for key, value in node.items()}
    for rule in node.get("x-kubernetes-validations", []):
        match = re.fullmatch(r"self\.matches\(r'(.*)'\)", rule["rule"])
        if match:
            out["pattern"] = match.group(1)
    return out


SPEC_SCHEMA = _with_cel_patterns(
    build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
)


@PROPERTY
@given(raw_configs())
def test_the_crd_schema_accepts_every_valid_config_as_written_and_as_rendered(
    raw: dict[str, Any],
) -> None:
    jsonschema.validate(raw, SPEC_SCHEMA)
    jsonschema.validate(canonical_dict(PolicyConfig.model_validate(raw)), SPEC_SCHEMA)


def test_the_hash_counts_defaults_and_sees_every_change() -> None:
    base = {
        "pack": {"name": "p", "version": "1.0.0"},
        "providers": {"targets": [{"id": "a", "provider": "openai"}]},
        "policies": {"chain": ["prompt-injection"]},
    }
    explicit = {**base, "policy": {"prompt-injection": {"threshold": 0.8, "action": "block"}}}
    changed = {**base, "policy": {"prompt-injection": {"threshold": 0.81}}}
    assert load_mapping(base).config.block("prompt-injection") == load_mapping(
        explicit
    ).config.block("prompt-injection")
    assert load_mapping(changed).hash != load_mapping(explicit).hash
    assert load_mapping(base).hash.startswith("sha256:")
