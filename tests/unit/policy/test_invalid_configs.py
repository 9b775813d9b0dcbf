"""Invalid configs, each with the exact words, path and line a user gets from loading and lint.

One table drives both the loader (`load_text` raises ConfigError with these issues) and the
command (`packgate policy lint` prints `FILE:LINE: error: PATH: MESSAGE` and exits 2).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from packgate_policy import ConfigError, ConfigIssue, load_text
from packgate_sidecar.cli import main

# Lines: 1 pack, 2 providers, 3 targets, 4 "- id", 5 provider, 6 secret_key_ref.
BASE = """\
pack: {name: demo, version: 1.0.0}
providers:
  targets:
    - id: main
      provider: openai:chat:gpt-4o
      secret_key_ref: {env: OPENAI_API_KEY}
"""
KINDS = "prompt-injection, pii-detector, content-filter, audit-logger, cost-attribution"
ENTITIES = "EMAIL, PHONE, SSN, CREDIT_CARD, IBAN, IP_ADDRESS"


def _replace(old: str, new: str) -> str:
    assert old in BASE
    return BASE.replace(old, new)


# (case id, config text, [(line, path, message)])
CASES: list[tuple[str, str, list[tuple[int, str, str]]]] = [
    (
        "unknown key with a near match",
        BASE + "policies:\n  chain: [pii-detector]\npolicy:\n  pii-detector:\n    actoin: redact\n",
        [(11, "policy.pii-detector.actoin", 'unknown key; did you mean "action"?')],
    ),
    (
        "unknown top-level key",
        BASE + "polices:\n  chain: [audit-logger]\n",
        [(7, "polices", 'unknown key; did you mean "policies"?')],
    ),
    (
        "unknown key without a near match",
        _replace("version: 1.0.0}", "version: 1.0.0, owner: me}"),
        [(1, "pack.owner", "unknown key; expected one of name, version, enabled, description")],
    ),
    (
        "unknown entity",
        BASE + "policy:\n  pii-detector:\n    entities: [EMAIL, SNN]\n",
        [
            (
                9,
                "policy.pii-detector.entities[1]",
                f'unknown entity "SNN"; expected one of {ENTITIES}',
            )
        ],
    ),
    (
        "unknown chain kind",
        BASE + "policies:\n  chain:\n    - pii-detector\n    - toxicity\n",
        [(10, "policies.chain[1]", f'unknown policy kind "toxicity"; expected one of {KINDS}')],
    ),
    (
        "unknown policy block kind",
        BASE + "policy:\n  toxicity: {}\n",
        [(8, "policy.toxicity", f"unknown key; expected one of {KINDS}")],
    ),
    (
        "unknown action",
        BASE + "policy:\n  pii-detector: {action: remove}\n",
        [
            (
                8,
                "policy.pii-detector.action",
                'unknown action "remove"; expected one of redact, mask, hash, block',
            )
        ],
    ),
    (
        "version is not SemVer",
        _replace("version: 1.0.0", 'version: "1.0"'),
        [(1, "pack.version", '"1.0" is not SemVer; expected MAJOR.MINOR.PATCH such as 1.0.0')],
    ),
    (
        "version with a v prefix",
        _replace("version: 1.0.0", "version: v1.0.0"),
        [(1, "pack.version", '"v1.0.0" is not SemVer; expected MAJOR.MINOR.PATCH such as 1.0.0')],
    ),
    (
        "version is a YAML number",
        _replace("version: 1.0.0", "version: 1.0"),
        [(1, "pack.version", "must be a SemVer string such as 1.0.0 (quote it), got 1.0")],
    ),
    (
        "threshold above 1",
        BASE + "policy:\n  prompt-injection:\n    threshold: 1.5\n",
        [(9, "policy.prompt-injection.threshold", "should be less than or equal to 1, got 1.5")],
    ),
    (
        "threshold below 0",
        BASE + "policy:\n  prompt-injection: {threshold: -0.1}\n",
        [
            (
                8,
                "policy.prompt-injection.threshold",
                "should be greater than or equal to 0, got -0.1",
            )
        ],
    ),
    (
        "threshold as a quoted string",
        BASE + "policy:\n  prompt-injection: {threshold: '0.9'}\n",
        [(8, "policy.prompt-injection.threshold", 'should be a number, got "0.9"')],
    ),
    (
        "retention_days 0",
        BASE + "policy:\n  audit-logger:\n    retention_days: 0\n",
        [(9, "policy.audit-logger.retention_days", "should be greater than or equal to 1, got 0")],
    ),
    (
        "retention_days 40000",
        BASE + "policy:\n  audit-logger:\n    retention_days: 40000\n",
        [
            (
                9,
                "policy.audit-logger.retention_days",
                "should be less than or equal to 36500, got 40000",
            )
        ],
    ),
    (
        "a quoted yes is not a boolean",
        BASE + "policy:\n  audit-logger: {immutable: 'yes'}\n",
        [(8, "policy.audit-logger.immutable", 'should be true or false, got "yes"')],
    ),
    (
        "duplicate target ids",
        BASE + "    - id: main\n      provider: openai\n",
        [
            (
                3,
                "providers.targets",
                'target id "main" is used by targets[0] and targets[1]; ids must be unique',
            )
        ],
    ),
    (
        "no targets",
        "pack: {name: demo, version: 1.0.0}\nproviders:\n  targets: []\n",
        [(3, "providers.targets", "needs at least 1 item, got 0")],
    ),
    (
        "no providers",
        "pack: {name: demo, version: 1.0.0}\n",
        [(1, "providers", "required key is missing")],
    ),
    (
        "unknown provider",
        _replace("openai:chat:gpt-4o", "anthropic:claude-3"),
        [
            (
                5,
                "providers.targets[0].provider",
                'unknown provider "anthropic"; expected one of openai',
            )
        ],
    ),
    (
        "provider with an API other than chat",
        _replace("openai:chat:gpt-4o", "openai:completions:gpt-4o"),
        [
            (
                5,
                "providers.targets[0].provider",
                '"openai:completions:gpt-4o": the API part must be "chat" '
                "(expected openai, openai:MODEL or openai:chat:MODEL)",
            )
        ],
    ),
    (
        "provider with an empty model",
        _replace("openai:chat:gpt-4o", "'openai:'"),
        [
            (
                5,
                "providers.targets[0].provider",
                '"openai:" is not one of openai, openai:MODEL, openai:chat:MODEL',
            )
        ],
    ),
    (
        "provider and model disagree",
        BASE + "      model: gpt-4o-mini\n",
        [
            (
                4,
                "providers.targets[0]",
                'provider names model "gpt-4o" but model is "gpt-4o-mini"; set one of them',
            )
        ],
    ),
    (
        "base_url ftp",
        BASE + "      base_url: ftp://example.com\n",
        [(7, "providers.targets[0].base_url", '"ftp://example.com" is not an http(s) URL')],
    ),
    (
        "base_url with a query",
        BASE + "      base_url: https://example.com/v1?key=1\n",
        [
            (
                7,
                "providers.targets[0].base_url",
                '"https://example.com/v1?key=1" must not have a query or fragment',
            )
        ],
    ),
    (
        "secret_key_ref with both env and secret",
        _replace("{env: OPENAI_API_KEY}", "{env: OPENAI_API_KEY, secret: {name: openai, key: k}}"),
        [(6, "providers.targets[0].secret_key_ref", "set exactly one of env or secret")],
    ),
    (
        "secret_key_ref with neither",
        _replace("{env: OPENAI_API_KEY}", "{}"),
        [(6, "providers.targets[0].secret_key_ref", "set exactly one of env or secret")],
    ),
    (
        "secret_key_ref with a misspelt key",
        _replace("{env: OPENAI_API_KEY}", "{secret: {name: openai, kye: api-key}}"),
        [
            (6, "providers.targets[0].secret_key_ref.secret.key", "required key is missing"),
            (
                6,
                "providers.targets[0].secret_key_ref.secret.kye",
                'unknown key; did you mean "key"?',
            ),
        ],
    ),
    (
        "repeated chain entry",
        BASE + "policies:\n  chain: [audit-logger, pii-detector, audit-logger]\n",
        [(8, "policies.chain", 'policy kind "audit-logger" is listed more than once')],
    ),
    (
        "invalid custom regex",
        BASE
        + "policy:\n  pii-detector:\n    detect_patterns:\n"
        + "      - {label: EMPLOYEE_ID, regex: 'E-[0-9{6}'}\n",
        [
            (
                10,
                "policy.pii-detector.detect_patterns[0].regex",
                "invalid regular expression: unterminated character set at position 2",
            )
        ],
    ),
    (
        "invalid content-filter pattern",
        BASE + "policy:\n  content-filter:\n    patterns: ['ok', '(unclosed']\n",
        [
            (
                9,
                "policy.content-filter.patterns[1]",
                "invalid regular expression: missing ), unterminated subpattern at position 0",
            )
        ],
    ),
    (
        "tag key with a space",
        BASE + "policy:\n  cost-attribution:\n    tags: {'cost center': x}\n",
        [
            (
                9,
                "policy.cost-attribution.tags.cost center (key)",
                "\"cost center\" must be letters, digits, '-', '_' or '.'",
            )
        ],
    ),
    (
        "pack name is not a DNS label",
        _replace("name: demo", "name: Demo_Pack"),
        [(1, "pack.name", "\"Demo_Pack\" must be a DNS label: lowercase letters, digits and '-'")],
    ),
    (
        "targets as a mapping",
        "pack: {name: demo, version: 1.0.0}\nproviders:\n  targets: {id: main}\n",
        [(3, "providers.targets", "should be a list, got a mapping")],
    ),
    (
        "duplicate key",
        BASE + "policies: {chain: []}\npolicies: {chain: [audit-logger]}\n",
        [(8, "policies", "duplicate key")],
    ),
]
IDS = [case[0] for case in CASES]


@pytest.mark.parametrize(("text", "expected"), [case[1:] for case in CASES], ids=IDS)
def test_loading_reports_every_problem_with_its_path_line_and_words(
    text: str, expected: list[tuple[int, str, str]]
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_text(text)
    got = sorted((issue.line, issue.path, issue.message) for issue in caught.value.issues)
    assert got == sorted(expected)
    assert all(issue.severity == "error" for issue in caught.value.issues)


@pytest.mark.parametrize(("text", "expected"), [case[1:] for case in CASES], ids=IDS)
def test_lint_prints_each_problem_and_exits_2(
    text: str,
    expected: list[tuple[int, str, str]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    assert main(["policy", "lint", str(path)]) == 2
    lines = capsys.readouterr().out.splitlines()
    for line, where, message in expected:
        assert f"{path}:{line}: error: {where}: {message}" in lines


def test_every_problem_of_a_document_is_reported_at_once() -> None:
    text = _replace("version: 1.0.0", "version: '1'") + (
        "policy:\n  prompt-injection: {threshold: 2}\n  audit-logger: {retention_days: 0}\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_text(text)
    assert [issue.path for issue in caught.value.issues] == [
        "pack.version",
        "policy.prompt-injection.threshold",
        "policy.audit-logger.retention_days",
    ]
    assert str(caught.value).startswith('pack.version: "1" is not SemVer')


def test_an_issue_reads_as_path_colon_message() -> None:
    assert str(ConfigIssue("pack.name", "required key is missing", 3)) == (
        "pack.name: required key is missing"
    )
