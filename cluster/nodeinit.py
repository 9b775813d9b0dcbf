"""The node's init process: containerd, kubelet and kube-proxy in a private mount namespace.

Why: left alone, a node writes to the machine. kubelet sets host-global sysctls
(vm.overcommit_memory, kernel.panic, kernel.panic_on_oops), writes /var/log/containers and
/var/lib/kubelet, libcni caches results in /var/lib/cni, iptables takes /run/xtables.lock,
containerd mounts overlay filesystems. cluster/node.py starts this script through
`unshare --mount --propagation private`, so every mount made here (including the masks over
/proc/sys that show kubelet the values it wants) is visible to the node only and disappears
with it. The network namespace is the run's sandbox (cluster/sandbox.py), inherited.

It is also the node's reaper: as a child subreaper it inherits the containerd shims (which
daemonize) and the containers under them, and on SIGTERM, or when its parent dies, it stops
kubelet first (so nothing is restarted) and then kills every process it started or inherited.

    python cluster/nodeinit.py CONFIG.json      (only through cluster/node.py)
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

PR_SET_CHILD_SUBREAPER = 36
# What kubelet (protectKernelDefaults: false) would write; shown to it through read-only
# files bound over /proc/sys in this mount namespace only.
KUBELET_SYSCTLS = {
    "vm/overcommit_memory": "1",
    "vm/panic_on_oom": "0",
    "kernel/panic": "10",
    "kernel/panic_on_oops": "1",
    "kernel/keys/root_maxkeys": "1000000",
    "kernel/keys/root_maxbytes": "25000000",
}


CGROUP_FS = Path("/sys/fs/cgroup")


def cgroup_hierarchies() -> list[Path]:
    """The cgroup v1 hierarchies kubelet checks for its cgroupRoot (this VM runs cgroup v1)."""
    return sorted(
        p for p in CGROUP_FS.iterdir() if p.is_dir() and not p.is_symlink() and p.name != "unified"
    )


def remove_cgroups(root: str, wait: float = 10.0) -> None:
    """Remove the node's cgroup tree from every hierarchy, deepest first (runc also mirrors
    it into the v2 `unified` hierarchy). A cgroup empties a moment after its last process dies."""
    deadline = time.monotonic() + wait
    for hierarchy in [*cgroup_hierarchies(), CGROUP_FS / "unified"]:
        top = hierarchy / root.lstrip("/")
        while top.exists():
            dirs = sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
            for d in [*dirs, top]:
                with contextlib.suppress(OSError):
                    d.rmdir()
            if not top.exists() or time.monotonic() > deadline:
                break
            time.sleep(0.1)


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True)


def private_filesystem(work: Path) -> None:
    _mount("-t", "tmpfs", "-o", "mode=755", "packgate-node-run", "/run")
    _mount("-t", "tmpfs", "-o", "mode=755", "packgate-node-log", "/var/log")
    # libcni's cache directory is fixed at /var/lib/cni; the node needs nothing else there.
    _mount("-t", "tmpfs", "-o", "mode=755", "packgate-node-varlib", "/var/lib")
    # containerd's image store and unpacked layers (~0.9 GB, ~21,000 files): in memory, so that
    # neither the import at start nor their removal at stop waits on a shared disk (removing
    # them took 8-30 s); they vanish with this mount namespace.
    images = work / "containerd" / "root"
    images.mkdir(parents=True, exist_ok=True)
    _mount("-t", "tmpfs", "-o", "mode=700", "packgate-node-images", str(images))
    sysctls = work / "sysctl"
    sysctls.mkdir(exist_ok=True)
    for key, value in KUBELET_SYSCTLS.items():
        path = sysctls / key.replace("/", "_")
        path.write_text(value + "\n")
        _mount("--bind", str(path), f"/proc/sys/{key}")


def descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill_all() -> None:
    """SIGKILL every descendant until none is left (shims re-parent to us as they die)."""
    for _ in range(100):
        pids = descendants(os.getpid())
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        while True:
            try:
                if os.waitpid(-1, os.WNOHANG)[0] == 0:
                    break
            except ChildProcessError:
                break
        time.sleep(0.05)


def main(config_path: str) -> int:
    config: dict[str, Any] = json.loads(Path(config_path).read_text())
    work = Path(config["workdir"])
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1)
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    private_filesystem(work)
    env = {**os.environ, "PATH": f"{config['bin_dir']}:{os.environ['PATH']}"}

    def spawn(name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        with (work / f"{name}.log").open("ab") as log:
            return subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL
            )

    containerd = spawn("containerd", config["containerd"])
    socket = Path(config["containerd_socket"])
    deadline = time.monotonic() + 30
    while not socket.exists() and time.monotonic() < deadline and containerd.poll() is None:
        time.sleep(0.05)
    procs = {"containerd": containerd}
    procs["kubelet"] = spawn("kubelet", config["kubelet"])
    procs["kube-proxy"] = spawn("kube-proxy", config["kube_proxy"])
    # Images are imported while kubelet registers the node; node.py waits for this marker.
    for tarball in config["images"]:
        result = subprocess.run(
            [
                config["ctr"],
                "--address",
                str(socket),
                "--namespace",
                "k8s.io",
                "images",
                "import",
                tarball,
            ],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        if result.returncode != 0:
            (work / "images.failed").write_text(result.stderr)
            stopping = True
            break
    else:
        (work / "images.ready").touch()
    while not stopping:
        for name, proc in procs.items():
            if proc.poll() is not None:
                (work / "exited").write_text(f"{name} exited with code {proc.returncode}")
                stopping = True
        time.sleep(0.2)
    kubelet = procs["kubelet"]
    if kubelet.poll() is None:
        kubelet.terminate()
        try:
            kubelet.wait(timeout=10)
        except subprocess.TimeoutExpired:
            kubelet.kill()
    kill_all()
    # Also when the test run died without stopping the node: no cgroup stays behind.
    remove_cgroups(config["cgroup_root"])
    return 0


if __name__ == "__main__":
    # The parent (cluster/node.py) set PR_SET_PDEATHSIG before exec: its death is our SIGTERM.
    sys.exit(main(sys.argv[1]))
