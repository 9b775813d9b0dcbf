"""Fixtures for tests on real pods: the fake provider inside the sandbox and the Helm release.

The provider listens on the node address, which exists only inside the run's network namespace,
so pods reach it over the bridge and nothing leaves the machine. The chart is installed once per
session with default values and the one documented override (the image tag), and uninstalled at
the end so that later tests see a cluster without its webhook. Both come from
tests/support/realpods.py, which `make demo` stands on too.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from image import BuiltImage
from localcluster import LocalCluster
from node import Node

from tests.support.realpods import OPERATOR, Provider, helm, install_release, pods, ready

__all__ = ["RELEASE", "RELEASE_NS", "Provider", "operator_pods", "ready"]

# Not packgate-system: the chart test leaves its kept audit volume there after uninstalling.
RELEASE, RELEASE_NS = "pg", "packgate"


@pytest.fixture(scope="session")
def provider() -> Iterator[Provider]:
    """The fake OpenAI-compatible provider on the node address (inside the sandbox only)."""
    with Provider() as running:
        yield running


def operator_pods(cluster: LocalCluster) -> list[dict[str, Any]]:
    return pods(cluster, RELEASE_NS, OPERATOR)


@pytest.fixture(scope="session")
def release(cluster: LocalCluster, node: Node, packgate_image: BuiltImage) -> Iterator[str]:
    """`helm install` of the chart with default values plus `image.tag` (the documented
    override for the locally built image); waits for both operator replicas to be Ready."""
    try:
        install_release(cluster, RELEASE, RELEASE_NS, packgate_image.name.rsplit(":", 1)[1])
        yield RELEASE_NS
    finally:
        helm(cluster, "uninstall", RELEASE, "-n", RELEASE_NS, "--wait", "--timeout=60s")
