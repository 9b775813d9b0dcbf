"""`make demo` runs the whole story on real pods and cleans up after itself.

The demo is the README's main command, so it is tested the way a user runs it: as a process,
reading what it prints. It starts its own control plane and node (in a network namespace of its
own), installs the chart, and runs the app as a pod.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import sandbox
from image import BuiltImage

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.cluster, pytest.mark.pods]


@pytest.mark.timeout(600)
def test_demo_tells_the_whole_story_on_real_pods_and_stops_everything(
    packgate_image: BuiltImage,  # built (or reused) before the demo runs
) -> None:
    if os.geteuid() != 0:
        pytest.skip("the demo runs a kubelet node: it needs root")
    # Started from the machine's own network namespace, as `make demo` is: the demo makes its
    # own sandbox (and may still reach a package registry for a cold image build before that).
    result = sandbox.run_in_host_network(
        [sys.executable, str(ROOT / "demo" / "run.py")], capture_output=True, timeout=540, cwd=ROOT
    )
    out = result.stdout
    assert result.returncode == 0, out[-3000:] + result.stderr[-3000:]
    # The Helm-installed operator (two replicas) and collector, the app pod 2/2 on the node.
    listing = out.split("$ kubectl get pods -A -o wide")[1]
    assert listing.count("1/1     Running") == 3 and "2/2     Running" in listing
    assert "persistentvolumeclaim/packgate-audit-collector   Bound" in out
    # The webhook injected a native sidecar and pointed the app's SDK at it.
    assert "restartPolicy: Always" in out and "http://127.0.0.1:41002/v1" in out
    # PII was redacted before the provider saw it; the injection never reached it.
    assert "the provider received: 'Email <EMAIL> or call <PHONE> about SSN <SSN>.'" in out
    assert "jane.doe@example.com" not in out.split("the provider received:")[2].splitlines()[0]
    assert '"code": "input_blocked"' in out and '"policy": "prompt-injection"' in out
    assert "the provider received nothing" in out
    # The block reached the collector: an aggregated Warning Event, the query CLI, the page;
    # the chain it stored verifies with the namespace's audit key.
    assert "PolicyBlocked" in out and "pod/chat-app-" in out
    assert "prompt-injection" in out.split("--decision blocked")[1]
    assert "The Events page: http://127.0.0.1:" in out and "(HTTP 200 from the collector" in out
    assert "MACs checked" in out and "0 tampering, 0 gap(s)" in out
    # The edited pack is enforced by the running sidecar without a restart.
    assert '"policy": "content-filter"' in out
    assert "container restarts: 0 before, 0 after" in out
    assert "Demo finished" in out
    leftovers = subprocess.run(
        ["pgrep", "-f", "packgate-demo-"], capture_output=True, text=True, check=False
    )
    # Every process of its control plane and node had the demo's work dirs in its arguments.
    assert leftovers.stdout.strip() == "", f"processes left behind: {leftovers.stdout}"
