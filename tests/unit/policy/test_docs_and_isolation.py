"""docs/policy-config.md stays true to the code, and the contract package stays light.

The field reference in the docs is generated from the models and its lint example is real
output; `packgate_policy` is imported by `packgate policy lint` and the operator alike, so it must
not drag in aiohttp, kopf or the sidecar.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from packgate_policy.reference import END, REGENERATE, render, splice
from packgate_sidecar.cli import main


def test_the_field_reference_in_the_docs_is_current(repo: Path) -> None:
    document = (repo / "docs" / "policy-config.md").read_text()
    assert splice(document) == document, f"docs/policy-config.md is stale; run: {REGENERATE}"


def test_the_reference_documents_every_policy_kind_with_its_defaults() -> None:
    reference = render()
    for kind in (
        "prompt-injection",
        "pii-detector",
        "content-filter",
        "audit-logger",
        "cost-attribution",
    ):
        assert f"### `policy.{kind}`" in reference
    assert "| `threshold` | number, 0.0..1.0 | `0.8` |" in reference
    assert "| `retention_days` | integer, 1..36500 | `365` |" in reference
    assert "| `version` | string, at most 128 chars | **required** |" in reference


def test_the_lint_example_in_the_docs_is_real_output(
    repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    document = (repo / "docs" / "policy-config.md").read_text()
    section = document[document.index("## Validation") : document.index(END)]
    config = re.search(r"```yaml\n(.*?)```", section, re.S)
    console = re.search(r"```console\n\$ packgate policy lint bad.yaml\n(.*?)```", section, re.S)
    assert config and console
    (tmp_path / "bad.yaml").write_text(config.group(1))
    monkeypatch.chdir(tmp_path)
    assert main(["policy", "lint", "bad.yaml"]) == 2
    captured = capsys.readouterr()
    assert captured.out + captured.err == console.group(1)


HEAVY = ("aiohttp", "kopf", "uvloop", "kubernetes", "packgate_sidecar", "packgate_operator")


def test_the_contract_package_imports_neither_aiohttp_nor_kopf() -> None:
    code = (
        "import json, sys\n"
        "import packgate_policy, packgate_policy.lint_cli, packgate_policy.crd_cli\n"
        "import packgate_policy.reference, packgate_policy.secrets\n"
        "print(json.dumps(sorted({name.split('.')[0] for name in sys.modules})))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    loaded = set(json.loads(result.stdout))
    assert "packgate_policy" in loaded
    assert loaded.isdisjoint(HEAVY), sorted(loaded & set(HEAVY))


def test_packgate_policy_lint_starts_without_the_sidecar_stack(seed_example: Path) -> None:
    code = (
        "import json, sys\n"
        "from packgate_sidecar.cli import main\n"
        f"status = main(['policy', 'lint', '-q', {str(seed_example)!r}])\n"
        "print(json.dumps([status, sorted({n.split('.')[0] for n in sys.modules})]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    status, loaded = json.loads(result.stdout.splitlines()[-1])
    assert status == 0
    assert set(loaded).isdisjoint({"aiohttp", "kopf", "uvloop", "kubernetes"})
