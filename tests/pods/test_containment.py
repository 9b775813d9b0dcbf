"""The node is contained: while it runs pods and after it stops, the host is as it was.

A node started by `python cluster/node.py up` (its own sandbox, control plane and node, as a
user would start it) runs a pod; the host's links, routes, iptables rules and the sysctls a
node writes are compared before, during and after, and its mounts and cgroups before and after.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sandbox
from image import BuiltImage
from nodeinit import CGROUP_FS, KUBELET_SYSCTLS

from tests.support.waiting import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.pods]
ROOT = Path(__file__).resolve().parents[2]
SYSCTLS = [*KUBELET_SYSCTLS, "net/ipv4/ip_forward", "net/bridge/bridge-nf-call-iptables"]


def host(*argv: str) -> str:
    result = sandbox.run_in_host_network(argv, capture_output=True)
    assert result.returncode == 0, result.stderr
    return str(result.stdout)


def network_state() -> dict[str, object]:
    return {
        "links": sorted(
            line.split(":")[1].strip() for line in host("ip", "-o", "link").splitlines()
        ),
        "addresses": host("ip", "-o", "addr"),
        "routes": host("ip", "route", "show", "table", "all"),
        # Rules only (counters change with traffic).
        "iptables": [
            line
            for line in host("iptables-save").splitlines()
            if line[:1] in "-*:" and not line.startswith(":")
        ],
        "sysctls": {
            k: host("cat", f"/proc/sys/{k}").strip()
            for k in SYSCTLS
            if Path(f"/proc/sys/{k}").exists()
        },
    }


def host_state() -> dict[str, object]:
    mounts = sorted(
        line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
    )
    cgroups = sorted(
        str(d.relative_to(CGROUP_FS))
        for h in CGROUP_FS.iterdir()
        if h.is_dir()
        for d in h.iterdir()
        if d.is_dir()
    )
    return {**network_state(), "mounts": mounts, "cgroups": cgroups}


def test_a_node_running_pods_leaves_no_trace_on_the_host(
    tmp_path: Path, bin_dir: Path, packgate_image: BuiltImage
) -> None:
    # packgate_image: built (if the code changed) before node.py starts inside this sandbox,
    # where no registry is reachable.
    if not sandbox.entered():
        pytest.skip("needs root")
    before = host_state()
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "cluster" / "node.py"), "up"],
        stdout=subprocess.PIPE,
        stderr=(tmp_path / "node.err").open("w"),
        text=True,
        cwd=ROOT,
    )
    info: dict[str, str] = {}
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.strip() == "ready":
                break
            key, _, value = line.partition(": ")
            info[key] = value.strip()
        else:
            pytest.fail(f"node.py up ended: {(tmp_path / 'node.err').read_text()[-3000:]}")

        def kubectl(*args: str, stdin: str | None = None) -> str:
            result = subprocess.run(
                [
                    "nsenter",
                    f"--net=/proc/{proc.pid}/ns/net",
                    str(bin_dir / "kubectl"),
                    f"--kubeconfig={info['kubeconfig']}",
                    *args,
                ],
                input=stdin,
                capture_output=True,
                text=True,
                check=False,
            )
            assert result.returncode == 0, result.stderr
            return result.stdout

        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "sleeper"},
            "spec": {
                "containers": [
                    {
                        "name": "c",
                        "image": info["image"],
                        "imagePullPolicy": "Never",
                        "command": ["sleep", "600"],
                    }
                ]
            },
        }
        kubectl("apply", "-f", "-", stdin=json.dumps(pod))
        wait_for(
            lambda: (
                json.loads(kubectl("get", "pod", "sleeper", "-o", "json"))["status"].get("phase")
                == "Running"
            ),
            timeout=60,
            what="the pod to run",
        )
        during = network_state()
        assert during == network_state_subset(before), (
            "the host's network changed while the node ran"
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    time.sleep(0.5)
    after = host_state()
    ours = info["cgroup root"].strip("/")
    assert without_other_runs(after, ours) == without_other_runs(before, ours)


def without_other_runs(state: dict[str, object], ours: str) -> dict[str, object]:
    """The state without the cgroups of other packgate nodes (another test run or the demo on
    the same machine starts and stops its own node at any time); this run's cgroups, and any
    other new cgroup, still count."""
    cgroups = state["cgroups"]
    assert isinstance(cgroups, list)
    kept = [
        c
        for c in cgroups
        if not (c.rpartition("/")[2].startswith("packgate-") and c.rpartition("/")[2] != ours)
    ]
    return {**state, "cgroups": kept}


def network_state_subset(state: dict[str, object]) -> dict[str, object]:
    return {k: state[k] for k in ("links", "addresses", "routes", "iptables", "sysctls")}
