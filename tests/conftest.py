"""Shared fixtures: the real local Kubernetes control plane, a kubelet node, per-test namespaces.

The control plane and the node are session-scoped because starting them takes seconds; each
test that needs isolation gets its own namespace. Nothing here mocks Kubernetes.

The whole test run lives in a network namespace of its own (cluster/sandbox.py), entered here
before any thread exists: tests use loopback as before, and the node's bridge, pods, Service
IPs and iptables rules exist only inside that namespace, which has no route out.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import image
import pytest
import sandbox
from image import BuiltImage
from localcluster import LocalCluster, build_tools
from node import Node, build_node_tools

if os.geteuid() == 0:  # a node needs root; without it `pods` tests skip (see the node fixture)
    sandbox.enter()

ROOT = Path(__file__).resolve().parents[1]
_started: list[LocalCluster] = []
_nodes: list[Node] = []


@pytest.fixture(scope="session")
def bin_dir() -> Path:
    """Where etcd, kube-apiserver, kubectl and helm are (built once, cached across clones)."""
    return build_tools()


@pytest.fixture(scope="session")
def cluster(bin_dir: Path) -> Iterator[LocalCluster]:
    # Inside the sandbox the apiserver also publishes the node address as the `kubernetes`
    # Service's endpoint, so pods (when the node fixture runs) reach it through kube-proxy.
    advertise = sandbox.NODE_IP if sandbox.entered() else ""
    with LocalCluster(bin_dir=bin_dir, advertise_address=advertise) as running:
        # The PolicyPack CRD goes in first: the garbage collector only learns about a new kind
        # at its next resync (30 s), and packs' ConfigMaps must be collected in tests.
        running.kubectl("apply", "-f", str(ROOT / "crds" / "policypacks.yaml"))
        running.kubectl(
            "wait", "--for=condition=Established", "crd/policypacks.packgate.dev", "--timeout=60s"
        )
        _started.append(running)
        yield running


@pytest.fixture(scope="session")
def packgate_image() -> BuiltImage:
    """The packgate image built from the Dockerfile's recipe (cached by content)."""
    return image.build()


SYSTEM_NAMESPACES = {"kube-system", "kube-public", "kube-node-lease"}
WORKLOADS = "deployments,replicasets,statefulsets,daemonsets,jobs,cronjobs,replicationcontrollers"


def _clear_workloads(cluster: LocalCluster) -> None:
    names = cluster.kubectl("get", "namespaces", "-o", "name").stdout.split()
    namespaces = [n.split("/", 1)[1] for n in names]
    for name in (n for n in namespaces if n not in SYSTEM_NAMESPACES):
        cluster.kubectl("delete", WORKLOADS, "--all", "-n", name, "--wait=false", check=False)
        cluster.kubectl(
            "delete", "pods", "--all", "-n", name, "--force", "--grace-period=0", check=False
        )
    stale = [n for n in namespaces if n not in SYSTEM_NAMESPACES and n != "default"]
    if stale:
        cluster.kubectl("delete", "namespace", *stale, "--wait=false", check=False)


@pytest.fixture(scope="session")
def node(cluster: LocalCluster, packgate_image: BuiltImage) -> Iterator[Node]:
    """One kubelet node joined to the session's control plane, started once per session."""
    if not sandbox.entered():
        pytest.skip("running pods needs root (a network namespace, cgroups, mounts)")
    # Pods that earlier (apiserver-only) tests left behind were never meant to run; once a node
    # and a scheduler exist they would be scheduled and take its CPU (an operator replica then
    # stays Pending: Insufficient cpu). Those tests are over, so before the node starts every
    # workload outside the kube-* namespaces goes, controllers first so nothing is recreated.
    _clear_workloads(cluster)
    node_bin = build_node_tools()
    pause = image.pause_image(node_bin)
    with Node(
        cluster, node_bin, images=[pause.tarball, packgate_image.tarball], pause_image=pause.name
    ) as running:
        _nodes.append(running)
        yield running


@pytest.fixture
def namespace(cluster: LocalCluster) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:10]}"
    cluster.kubectl("create", "namespace", name)
    # Pods are refused until the controller-manager has made the default service account.
    deadline = time.monotonic() + 30
    while cluster.kubectl("get", "serviceaccount", "default", "-n", name, check=False).returncode:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no default service account in namespace {name}")
        time.sleep(0.2)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for running in _started:
        terminalreporter.write_line(
            f"local control plane: started in {running.started_in:.1f}s; "
            + "; ".join(f"{tool}: {version}" for tool, version in running.versions().items())
        )
    for started in _nodes:
        terminalreporter.write_line(f"local node: started in {started.started_in:.1f}s")
