"""Shared fixtures: the real local Kubernetes control plane and per-test namespaces.

The control plane is session-scoped because starting it takes seconds; each test that needs
isolation gets its own namespace. Nothing here mocks Kubernetes.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from localcluster import LocalCluster, build_tools

ROOT = Path(__file__).resolve().parents[1]
_started: list[LocalCluster] = []


@pytest.fixture(scope="session")
def bin_dir() -> Path:
    """Where etcd, kube-apiserver, kubectl and helm are (built once, cached across clones)."""
    return build_tools()


@pytest.fixture(scope="session")
def cluster(bin_dir: Path) -> Iterator[LocalCluster]:
    with LocalCluster(bin_dir=bin_dir) as running:
        # The PolicyPack CRD goes in first: the garbage collector only learns about a new kind
        # at its next resync (30 s), and packs' ConfigMaps must be collected in tests.
        running.kubectl("apply", "-f", str(ROOT / "crds" / "policypacks.yaml"))
        running.kubectl(
            "wait", "--for=condition=Established", "crd/policypacks.packgate.dev", "--timeout=60s"
        )
        _started.append(running)
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
