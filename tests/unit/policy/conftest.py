"""Fixtures of the policy contract tests: the committed seed examples and manifest wrapping.

The seed examples live in examples/policy-configs/ (one file per document of the seed file
../shared/seed/policy-config-examples.yaml, byte for byte) so the tests run from any checkout.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
SEED_NAMES = ("chatgpt-enterprise-gateway", "chatgpt-enterprise-mini")
MANIFEST_HEADER_LINES = 5


def _as_policypack(config_text: str, name: str = "demo") -> str:
    """A PolicyPack manifest whose spec is `config_text` as written: its line N is line N + 5."""
    header = (
        f"apiVersion: packgate.dev/v1alpha1\nkind: PolicyPack\nmetadata:\n  name: {name}\nspec:\n"
    )
    body = "".join(f"  {line}" if line.strip() else line for line in config_text.splitlines(True))
    return header + body


@pytest.fixture
def repo() -> Path:
    return REPO


@pytest.fixture
def examples_dir() -> Path:
    return REPO / "examples" / "policy-configs"


@pytest.fixture
def seed_file() -> Path:
    return REPO.parent / "shared" / "seed" / "policy-config-examples.yaml"


@pytest.fixture(params=SEED_NAMES)
def seed_example(request: pytest.FixtureRequest) -> Path:
    return REPO / "examples" / "policy-configs" / f"{request.param}.yaml"


@pytest.fixture
def as_policypack() -> Callable[..., str]:
    return _as_policypack
