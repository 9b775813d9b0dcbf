"""The network namespace a test run (or the demo) lives in, so the cluster cannot reach out.

Why: a kubelet node dials Service ClusterIPs and pod IPs, the apiserver dials webhooks through
Services, kube-proxy writes iptables rules and the CNI bridge plugin adds links and routes. None
of that may touch the machine's real network. So the process that runs the cluster first moves
itself into a fresh network namespace of its own: it holds only `lo` (127.0.0.1 plus the
cluster's node address) and, once the node runs, the pod bridge and the pods' veths. There is no
route out of it, iptables rules written in it exist only in it, and the whole namespace (links,
routes, rules) disappears with the process. Children (etcd, the apiserver, kubelet, pods)
inherit it.

This must happen before the process starts any thread: a thread keeps the namespace it was
created in. A file descriptor for the original namespace is kept so that set-up steps that must
use a package registry (the image build) and the containment test can still run there.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
from collections.abc import Sequence
from typing import Any

CLONE_NEWNET = 0x40000000
# The node's address: on `lo` inside the sandbox, so it is local to the sandbox only. The
# apiserver advertises it (the `kubernetes` Service's endpoint), kubelet reports it as the
# node's InternalIP, the cluster DNS and the tests' fake providers listen on it.
NODE_IP = "10.200.0.1"

_host_netns_fd: int | None = None


class SandboxError(RuntimeError):
    """The private network namespace could not be made; the message says why."""


def _libc() -> Any:
    return ctypes.CDLL("libc.so.6", use_errno=True)


def enter() -> None:
    """Move this process into a new network namespace with `lo` up (idempotent)."""
    global _host_netns_fd
    if _host_netns_fd is not None:
        return
    host = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    if _libc().unshare(CLONE_NEWNET) != 0:
        os.close(host)
        err = ctypes.get_errno()
        raise SandboxError(f"unshare(CLONE_NEWNET) failed: {os.strerror(err)} (needs root)")
    _host_netns_fd = host
    for argv in (
        ["ip", "link", "set", "lo", "up"],
        ["ip", "addr", "add", f"{NODE_IP}/32", "dev", "lo"],
    ):
        subprocess.run(argv, check=True, capture_output=True)


def entered() -> bool:
    return _host_netns_fd is not None


def _to_host() -> None:  # preexec_fn: runs in the child between fork and exec
    assert _host_netns_fd is not None
    if _libc().setns(_host_netns_fd, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "setns to the host network namespace failed")


def run_in_host_network(argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run a command in the network namespace the process started in: for set-up steps that
    need a package registry, and to inspect the host's links and rules. Outside a sandbox it is
    a plain subprocess.run."""
    if _host_netns_fd is None:
        return subprocess.run(list(argv), text=True, check=False, **kwargs)
    return subprocess.run(
        list(argv),
        text=True,
        check=False,
        preexec_fn=_to_host,
        pass_fds=(_host_netns_fd,),
        **kwargs,
    )
