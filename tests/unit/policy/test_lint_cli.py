"""`packgate policy lint`: what a user sees on the terminal and what CI sees in the exit code."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from packgate_policy import load_file
from packgate_sidecar.cli import main

VALID = """\
pack: {name: demo, version: 1.0.0}
providers:
  targets:
    - id: main
      provider: openai:chat:gpt-4o
policies:
  chain: [audit-logger]
"""
Run = Callable[..., tuple[int, list[str], str]]


@pytest.fixture
def lint(capsys: pytest.CaptureFixture[str]) -> Run:
    """Run `packgate policy lint ARGS` in-process: (exit code, stdout lines, stderr)."""

    def run(*args: str) -> tuple[int, list[str], str]:
        code = main(["policy", "lint", *args])
        captured = capsys.readouterr()
        return code, captured.out.splitlines(), captured.err

    return run


@pytest.fixture
def write(tmp_path: Path) -> Callable[[str, str], str]:
    def write(name: str, text: str) -> str:
        path = tmp_path / name
        path.write_text(text)
        return str(path)

    return write


def test_valid_files_exit_0_print_nothing_and_summarise_on_stderr(
    lint: Run, seed_example: Path, write: Callable[[str, str], str]
) -> None:
    code, out, err = lint(str(seed_example), write("valid.yaml", VALID))
    assert (code, out) == (0, [])
    assert err.strip() == "packgate policy lint: 2 files checked, all valid (0 errors, 0 warnings)"


def test_warnings_alone_keep_exit_0(lint: Run, write: Callable[[str, str], str]) -> None:
    path = write("warn.yaml", VALID + "policy:\n  content-filter: {action: log}\n")
    code, out, _ = lint(path)
    assert code == 0
    assert out == [
        f"{path}:9: warning: policy.content-filter: "
        "configured but not listed in policies.chain, so it does not run"
    ]


def test_a_disabled_pack_is_a_warning(lint: Run, write: Callable[[str, str], str]) -> None:
    path = write("off.yaml", VALID.replace("1.0.0}", "1.0.0, enabled: false}"))
    code, out, _ = lint(path)
    assert code == 0
    assert out == [
        f"{path}:1: warning: pack.enabled: "
        "the pack is disabled: the gateway refuses all traffic with 503"
    ]


def test_one_invalid_file_among_valid_ones_exits_2_and_only_it_is_printed(
    lint: Run, seed_example: Path, write: Callable[[str, str], str]
) -> None:
    bad = write("bad.yaml", VALID.replace("[audit-logger]", "[audit-loger]"))
    code, out, err = lint(str(seed_example), bad)
    assert code == 2
    assert len(out) == 1 and out[0].startswith(f"{bad}:7: error: policies.chain[0]: ")
    assert "2 files checked, 1 invalid (1 error, 0 warnings)" in err


def test_errors_of_an_invalid_config_come_in_file_order_with_its_warnings(
    lint: Run, write: Callable[[str, str], str]
) -> None:
    path = write(
        "bad.yaml",
        "pack: {name: demo, version: '1'}\n"
        "providers: {targets: [{id: main, provider: openai}]}\n"
        "policy:\n"
        "  content-filter: {}\n"
        "  audit-logger: {retention_days: 0}\n",
    )
    code, out, _ = lint("-q", path)
    assert code == 2
    assert [line.split(": ")[1:3] for line in out] == [
        ["error", "pack.version"],
        ["warning", "policy.content-filter"],
        ["error", "policy.audit-logger.retention_days"],
        ["warning", "policy.audit-logger"],
    ]


def test_json_output_describes_every_file_document_and_issue(
    lint: Run, seed_example: Path, write: Callable[[str, str], str]
) -> None:
    bad = write("bad.yaml", VALID.replace("1.0.0", "'1.0'"))
    code, out, _ = lint("--json", str(seed_example), bad)
    assert code == 2
    report = json.loads("\n".join(out))
    assert report["valid"] is False
    good, broken = report["files"]
    assert good["valid"] is True and good["issues"] == []
    assert good["documents"] == [
        {
            "document": 1,
            "line": 1,
            "kind": "config",
            "name": None,
            "pack": seed_example.stem,
            "valid": True,
            "config_hash": load_file(seed_example).hash,
        }
    ]
    assert broken["file"] == bad and broken["valid"] is False
    assert broken["issues"] == [
        {
            "document": 1,
            "line": 1,
            "severity": "error",
            "path": "pack.version",
            "message": '"1.0" is not SemVer; expected MAJOR.MINOR.PATCH such as 1.0.0',
        }
    ]


def test_dash_reads_standard_input(lint: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(VALID.replace("demo", "Demo")))
    code, out, _ = lint("-")
    assert code == 2
    assert out == [
        "<stdin>:1: error: pack.name: "
        "\"Demo\" must be a DNS label: lowercase letters, digits and '-'"
    ]


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "---\n"])
def test_an_empty_file_is_an_error_not_a_traceback(
    lint: Run, write: Callable[[str, str], str], text: str
) -> None:
    path = write("empty.yaml", text)
    code, out, _ = lint(path)
    assert (code, out) == (2, [f"{path}: error: the file is empty; expected a policy config"])


def test_a_syntax_error_names_its_line_and_where_the_construct_began(
    lint: Run, write: Callable[[str, str], str]
) -> None:
    path = write("syntax.yaml", "pack:\n  name: demo\n  version: [1.0.0\nproviders: {}\n")
    code, out, _ = lint(path)
    assert code == 2
    assert out == [
        f"{path}:4: error: YAML syntax error: expected ',' or ']', but got ':' "
        "(while parsing a flow sequence started on line 3)"
    ]


def test_tabs_get_a_hint(lint: Run, write: Callable[[str, str], str]) -> None:
    path = write("tabs.yaml", "pack:\n\tname: demo\n")
    code, out, _ = lint(path)
    assert code == 2
    assert out[0].startswith(f"{path}:2: error: YAML syntax error: found character '\\t'")
    assert out[0].endswith("(YAML does not allow tabs for indentation; use spaces)")


def test_several_configs_in_one_file_are_refused_at_the_second_document(
    lint: Run, examples_dir: Path, write: Callable[[str, str], str]
) -> None:
    gateway = (examples_dir / "chatgpt-enterprise-gateway.yaml").read_text()
    mini = (examples_dir / "chatgpt-enterprise-mini.yaml").read_text()
    path = write("both.yaml", gateway + "---\n" + mini)
    code, out, _ = lint(path)
    second = gateway.count("\n") + 2
    assert (code, out) == (
        2,
        [
            f"{path}:{second}: error: found 2 YAML documents; put one policy config per file "
            "(only a file of PolicyPack manifests may hold several)"
        ],
    )


def test_a_trailing_document_marker_is_not_a_second_document(
    lint: Run, write: Callable[[str, str], str]
) -> None:
    code, out, _ = lint(write("trailing.yaml", VALID + "---\n"))
    assert (code, out) == (0, [])


@pytest.mark.parametrize(
    ("text", "got"),
    [("- pack\n- providers\n", "a list"), ("just words\n", '"just words"'), ("42\n", "42")],
)
def test_a_document_that_is_not_a_mapping_says_what_it_is(
    lint: Run, write: Callable[[str, str], str], text: str, got: str
) -> None:
    path = write("odd.yaml", text)
    code, out, _ = lint(path)
    assert (code, out) == (
        2,
        [f"{path}:1: error: expected a mapping with pack, providers, policies; got {got}"],
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a: &x [*x]\n", "a[0]: recursive YAML alias"),
        (
            "!!python/object:os.system {}\n",
            "YAML error: could not determine a constructor for the tag "
            "'tag:yaml.org,2002:python/object:os.system'",
        ),
    ],
)
def test_hostile_yaml_is_refused_cleanly(
    lint: Run, write: Callable[[str, str], str], text: str, message: str
) -> None:
    path = write("hostile.yaml", text)
    code, out, _ = lint(path)
    assert (code, out) == (2, [f"{path}:1: error: {message}"])


def test_an_unreadable_file_is_an_error(lint: Run, tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00")
    code, out, _ = lint(str(missing), str(binary))
    assert code == 2
    assert out == [
        f"{missing}: error: cannot read the file: No such file or directory",
        f"{binary}: error: cannot read the file: not UTF-8 text (invalid start byte at byte 0)",
    ]


# --- PolicyPack manifests -------------------------------------------------------------------


def test_a_policypack_manifest_is_linted_through_its_spec_with_file_lines(
    lint: Run, write: Callable[[str, str], str], as_policypack: Callable[..., str]
) -> None:
    config = VALID + "policy:\n  pii-detector:\n    actoin: redact\n"
    path = write("pack.yaml", as_policypack(config))
    code, out, _ = lint(path)
    assert code == 2
    assert out == [
        f"{path}:14: warning: spec.policy.pii-detector: "
        "configured but not listed in policies.chain, so it does not run",
        f'{path}:15: error: spec.policy.pii-detector.actoin: unknown key; did you mean "action"?',
    ]


def test_a_stream_of_policypacks_is_linted_document_by_document(
    lint: Run, write: Callable[[str, str], str], as_policypack: Callable[..., str]
) -> None:
    good = as_policypack(VALID, "good")
    bad = as_policypack(VALID.replace("gpt-4o", "gpt-4o\n      base_url: ftp://x"), "bad")
    path = write("packs.yaml", good + "---\n" + bad)
    code, out, _ = lint("--json", path)
    assert code == 2
    report = json.loads("\n".join(out))["files"][0]
    assert [(d["name"], d["valid"]) for d in report["documents"]] == [
        ("good", True),
        ("bad", False),
    ]
    first_bad_line = good.count("\n") + 2
    assert report["issues"] == [
        {
            "document": 2,
            "line": first_bad_line + 10,
            "severity": "error",
            "path": "spec.providers.targets[0].base_url",
            "message": '"ftp://x" is not an http(s) URL',
        }
    ]


@pytest.mark.parametrize(
    ("manifest", "expected"),
    [
        (
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\ndata: {}\n",
            ['2: error: kind: expected PolicyPack, got "ConfigMap"'],
        ),
        (
            "apiVersion: packgate.dev/v1\nkind: PolicyPack\nmetadata: {name: x}\nspec: {}\n",
            [
                '1: error: apiVersion: expected packgate.dev/v1alpha1, got "packgate.dev/v1"',
                "4: error: spec.pack: required key is missing",
                "4: error: spec.providers: required key is missing",
            ],
        ),
        (
            "apiVersion: packgate.dev/v1alpha1\nkind: PolicyPack\nmetadata: {name: x}\n",
            ["1: error: spec: required key is missing; the spec is the policy config"],
        ),
        (
            "apiVersion: packgate.dev/v1alpha1\nkind: PolicyPack\nmetadata: {name: Bad_Name}\n"
            "spec: {pack: {name: x, version: 1.0.0}, providers: {targets: [{id: a, provider: "
            "openai}]}}\nextra: 1\n",
            [
                '3: error: metadata.name: "Bad_Name" must be a DNS subdomain: lowercase '
                "letters, digits, '-' and '.'",
                "5: error: extra: unknown key; expected one of apiVersion, kind, metadata, "
                "spec, status",
            ],
        ),
    ],
    ids=["other kind", "wrong apiVersion", "no spec", "bad name and extra key"],
)
def test_manifest_envelope_problems_are_named(
    lint: Run, write: Callable[[str, str], str], manifest: str, expected: list[str]
) -> None:
    path = write("m.yaml", manifest)
    code, out, _ = lint("-q", path)
    assert code == 2
    assert out == [f"{path}:{line}" for line in expected]


def test_the_installed_command_runs_lint_in_a_fresh_process(
    repo: Path, seed_example: Path, write: Callable[[str, str], str]
) -> None:
    bad = write("bad.yaml", VALID.replace("1.0.0", "'1'"))
    result = subprocess.run(
        [str(repo / ".venv" / "bin" / "packgate"), "policy", "lint", str(seed_example), bad],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stdout == (
        f'{bad}:1: error: pack.version: "1" is not SemVer; expected MAJOR.MINOR.PATCH such as '
        "1.0.0\n"
    )
    assert "Traceback" not in result.stderr
    assert "2 files checked, 1 invalid" in result.stderr
