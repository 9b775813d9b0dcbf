"""`make demo` runs the whole story and cleans up after itself.

The demo is the README's main command, so it is tested the way a user runs it: as a process,
reading what it prints. It starts its own control plane, operator and sidecar.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.cluster


def test_demo_tells_the_whole_story_and_stops_everything() -> None:
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    result = subprocess.run(
        [sys.executable, str(ROOT / "demo" / "run.py")],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env=env,
        cwd=ROOT,
    )
    out = result.stdout
    assert result.returncode == 0, out[-3000:] + result.stderr[-3000:]
    # The webhook injected a native sidecar and pointed the app at it.
    assert "packgate-sidecar" in out and "restartPolicy: Always" in out
    assert "http://127.0.0.1:41002/v1" in out
    # PII was redacted before the provider saw it; the injection never reached it.
    assert "the provider received: 'Email <EMAIL> or call <PHONE> about SSN <SSN>.'" in out
    assert "jane.doe@example.com" not in out.split("the provider received:")[2].splitlines()[0]
    assert '"code": "input_blocked"' in out and '"policy": "prompt-injection"' in out
    assert "the provider received nothing" in out
    # The audit trail verifies, and the edited pack is enforced without a restart.
    assert "hash chain and MACs intact" in out
    assert '"policy": "content-filter"' in out
    # The block reached the collector: an aggregated Warning Event, the query CLI, the page.
    assert "PolicyBlocked" in out and "pod/chat-app-" in out
    assert "prompt-injection" in out.split("packgate audit query -n demo --decision blocked")[1]
    assert "The Events page: http://127.0.0.1:" in out
    assert "Demo finished" in out
    leftovers = subprocess.run(
        ["pgrep", "-f", "packgate-demo-"], capture_output=True, text=True, check=False
    )
    assert leftovers.stdout.strip() == "", f"processes left behind: {leftovers.stdout}"
