"""A real kubelet node joined to the local control plane, contained in the run's sandbox.

Why: packgate's operator runs as pods and injects a sidecar into pods; only a real node proves
that the chart, the image, the webhook, the native sidecar and the push channel work together.
This joins one node (containerd + runc + the CNI bridge plugin, kubelet, kube-proxy in iptables
mode) plus kube-scheduler, a cluster DNS and a volume provisioner (storage.py) to a LocalCluster
started with `advertise_address=sandbox.NODE_IP`. Binaries come from cluster/build-node.sh,
images from cluster/image.py.

Containment: the process must have entered its own network namespace first (sandbox.enter()):
the pod bridge, the pods' veths, routes and kube-proxy's rules all live there, with no route out.
containerd, kubelet and kube-proxy run under cluster/nodeinit.py in a private mount namespace
that masks the host-global sysctls kubelet would write. Their cgroups live under one root of
this run's own (/sys/fs/cgroup/<hierarchy>/packgate-<id>), removed on stop.

    python cluster/node.py up     # control plane + node in a sandbox, print KUBECONFIG, wait
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import clusterdns
import nodeinit
import sandbox
import storage
from localcluster import SERVICE_CIDR, ClusterError, LocalCluster
from processes import free_port, spawn, stop_processes

HERE = Path(__file__).resolve().parent
POD_CIDR = "10.244.0.0/24"
BRIDGE = "pgbr0"


def build_node_tools() -> Path:
    """Build (or reuse from the cache) runc, containerd, CNI, kubelet, kube-proxy, scheduler."""
    result = sandbox.run_in_host_network(
        ["bash", str(HERE / "build-node.sh")], stdout=subprocess.PIPE
    )
    if result.returncode != 0:
        raise ClusterError(f"cluster/build-node.sh failed with exit code {result.returncode}")
    return Path(result.stdout.strip().splitlines()[-1])


def cni_dir(bin_dir: Path) -> Path:
    version = os.environ.get("CNI_VERSION", "v1.10.0")
    return bin_dir.parent / f"cni-{version}"


@dataclass
class Node:
    """One kubelet node; use as a context manager or call start() and stop()."""

    cluster: LocalCluster
    bin_dir: Path
    images: Sequence[Path] = ()
    pause_image: str = ""
    name: str = "packgate-node"
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="packgate-node-")))
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    started_in: float = 0.0
    _procs: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)
    _dns: Any = None
    _volumes: storage.LocalVolumes | None = None

    @property
    def cgroup_root(self) -> str:
        return f"/packgate-{self.run_id}"

    def __enter__(self) -> Node:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- start --

    def start(self, timeout: float = 90.0) -> None:
        if not sandbox.entered():
            raise ClusterError("a node needs the run's own network namespace: call sandbox.enter()")
        if self.cluster.advertise_address != sandbox.NODE_IP:
            raise ClusterError(f"the cluster must advertise {sandbox.NODE_IP} for pods to reach it")
        began = time.monotonic()
        try:
            self._grant_node_rbac()
            config = self._write_configs()
            for hierarchy in nodeinit.cgroup_hierarchies():
                (hierarchy / self.cgroup_root.lstrip("/")).mkdir(exist_ok=True)
            self._dns = clusterdns.serve(
                sandbox.NODE_IP, lambda: self.cluster.get_raw("/api/v1/services")[1]
            )
            # The apiserver dials Service IPs (webhooks): a locally sent packet needs a route
            # before kube-proxy's OUTPUT rules rewrite it to a pod IP. The sandbox has no
            # default route, so the Service range gets one of its own, sourced from the node.
            subprocess.run(
                ["ip", "route", "replace", SERVICE_CIDR, "dev", "lo", "src", sandbox.NODE_IP],
                check=True,
                capture_output=True,
            )
            self._start_scheduler()
            # PersistentVolumeClaims (the audit collector's) bind to directories in workdir.
            self._volumes = storage.LocalVolumes(self.cluster, self.workdir / "volumes", self.name)
            self._volumes.start()
            self._spawn(
                "nodeinit",
                [
                    "unshare",
                    "--mount",
                    "--propagation",
                    "private",
                    sys.executable,
                    str(HERE / "nodeinit.py"),
                    str(config),
                ],
            )
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        self.started_in = time.monotonic() - began

    def _grant_node_rbac(self) -> None:
        # The apiserver authorizes with RBAC only (no Node authorizer): bind kubelets' group
        # to the built-in system:node role. kube-proxy and the scheduler have built-in bindings.
        self.cluster.kubectl(
            "apply",
            "-f",
            "-",
            input=json.dumps(
                {
                    "apiVersion": "rbac.authorization.k8s.io/v1",
                    "kind": "ClusterRoleBinding",
                    "metadata": {"name": "packgate-local:nodes"},
                    "roleRef": {
                        "apiGroup": "rbac.authorization.k8s.io",
                        "kind": "ClusterRole",
                        "name": "system:node",
                    },
                    "subjects": [
                        {
                            "apiGroup": "rbac.authorization.k8s.io",
                            "kind": "Group",
                            "name": "system:nodes",
                        }
                    ],
                }
            ),
        )

    def _write_configs(self) -> Path:
        w = self.workdir
        for d in ("cni/net.d", "cni/ipam", "kubelet", "pod-logs", "containerd"):
            (w / d).mkdir(parents=True, exist_ok=True)
        ca = self.cluster.workdir / "pki" / "ca.crt"
        kubelet_kc = self.cluster.user_kubeconfig(
            f"system:node:{self.name}", ["system:nodes"], name="kubelet"
        )
        proxy_kc = self.cluster.user_kubeconfig("system:kube-proxy", [], name="kube-proxy")
        sock = w / "containerd" / "containerd.sock"
        (w / "cni/net.d/10-packgate.conflist").write_text(
            json.dumps(
                {
                    "cniVersion": "1.0.0",
                    "name": "packgate",
                    "plugins": [
                        {
                            "type": "bridge",
                            "bridge": BRIDGE,
                            "isGateway": True,
                            "ipMasq": False,
                            "hairpinMode": True,
                            "ipam": {
                                "type": "host-local",
                                "dataDir": str(w / "cni/ipam"),
                                "ranges": [[{"subnet": POD_CIDR}]],
                                "routes": [{"dst": "0.0.0.0/0"}],
                            },
                        }
                    ],
                }
            )
        )
        (w / "containerd.toml").write_text(f"""version = 4
root = '{w}/containerd/root'
state = '{w}/containerd/state'
[plugins]
  [plugins.'io.containerd.cri.v1.images']
    snapshotter = 'overlayfs'
    [plugins.'io.containerd.cri.v1.images'.pinned_images]
      sandbox = '{self.pause_image}'
  [plugins.'io.containerd.cri.v1.runtime']
    netns_mounts_under_state_dir = true
    # No CAP_SYS_RESOURCE here: runc may not lower oom_score_adj below containerd's own.
    restrict_oom_score_adj = true
    enable_criu = false
    cdi_spec_dirs = ['{w}/containerd/cdi']
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
      BinaryName = '{self.bin_dir / "runc"}'
      Root = '{w}/runc'
      SystemdCgroup = false
    [plugins.'io.containerd.cri.v1.runtime'.cni]
      bin_dirs = ['{cni_dir(self.bin_dir)}']
      conf_dir = '{w}/cni/net.d'
  [plugins.'io.containerd.grpc.v1.cri']
    stream_server_address = '127.0.0.1'
    stream_server_port = '0'
  [plugins.'io.containerd.internal.v1.opt']
    path = '{w}/containerd/opt'
  [plugins.'io.containerd.nri.v1.nri']
    disable = true
  [plugins.'io.containerd.server.v1.grpc']
    address = '{sock}'
  [plugins.'io.containerd.server.v1.ttrpc']
    address = '{sock}.ttrpc'
  [plugins.'io.containerd.shim.v1.manager']
    # At most 42 characters or containerd loads no CRI (shim socket paths must fit sun_path):
    # not under the work dir, whose length follows TMPDIR. /run is the node's private tmpfs.
    socket_dir = '/run/packgate-shims'
""")
        (w / "resolv.conf").write_text(f"nameserver {sandbox.NODE_IP}\n")
        kubelet_config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            # cgroup v1 and no systemd here; kubelet >= 1.35 refuses v1 unless told.
            "failCgroupV1": False,
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": self.cgroup_root,
            "containerRuntimeEndpoint": f"unix://{sock}",
            "address": sandbox.NODE_IP,
            "port": free_port(),
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": free_port(),
            # Only the apiserver (a client certificate from the cluster CA) talks to kubelet.
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": False},
                "x509": {"clientCAFile": str(ca)},
            },
            "authorization": {"mode": "AlwaysAllow"},
            "podLogsDir": str(w / "pod-logs"),
            "failSwapOn": False,
            "makeIPTablesUtilChains": False,
            "protectKernelDefaults": False,
            "clusterDomain": "cluster.local",
            "clusterDNS": [sandbox.NODE_IP],
            "resolvConf": str(w / "resolv.conf"),
            # ConfigMap volumes and pod status refresh fast enough for tests.
            "syncFrequency": "5s",
            "nodeStatusUpdateFrequency": "4s",
            "serializeImagePulls": False,
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "evictionHard": {
                "memory.available": "50Mi",
                "nodefs.available": "1%",
                "imagefs.available": "1%",
                "nodefs.inodesFree": "1%",
            },
            "maxPods": 40,
            "shutdownGracePeriod": "0s",
        }
        (w / "kubelet.yaml").write_text(json.dumps(kubelet_config))
        self.kube_proxy_healthz = free_port()
        (w / "kube-proxy.yaml").write_text(
            json.dumps(
                {
                    "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
                    "kind": "KubeProxyConfiguration",
                    "mode": "iptables",
                    "clientConnection": {"kubeconfig": str(proxy_kc)},
                    "hostnameOverride": self.name,
                    "clusterCIDR": POD_CIDR,
                    "healthzBindAddress": f"127.0.0.1:{self.kube_proxy_healthz}",
                    "metricsBindAddress": f"127.0.0.1:{free_port()}",
                    # Leave conntrack's global tables alone (zero means "do not touch").
                    "conntrack": {
                        "maxPerCore": 0,
                        "min": 0,
                        "tcpEstablishedTimeout": "0s",
                        "tcpCloseWaitTimeout": "0s",
                    },
                    "iptables": {
                        "minSyncPeriod": "0s",
                        "syncPeriod": "30s",
                        "localhostNodePorts": False,
                    },
                    "nodePortAddresses": [f"{sandbox.NODE_IP}/32"],
                }
            )
        )
        config = {
            "workdir": str(w),
            "cgroup_root": self.cgroup_root,
            "bin_dir": str(self.bin_dir),
            "ctr": str(self.bin_dir / "ctr"),
            "containerd_socket": str(sock),
            "images": [str(p) for p in self.images],
            "containerd": [
                str(self.bin_dir / "containerd"),
                "--config",
                str(w / "containerd.toml"),
            ],
            "kubelet": [
                str(self.bin_dir / "kubelet"),
                f"--config={w / 'kubelet.yaml'}",
                f"--kubeconfig={kubelet_kc}",
                f"--root-dir={w / 'kubelet'}",
                f"--hostname-override={self.name}",
                f"--node-ip={sandbox.NODE_IP}",
                "--v=1",
            ],
            "kube_proxy": [
                str(self.bin_dir / "kube-proxy"),
                f"--config={w / 'kube-proxy.yaml'}",
                "--v=1",
            ],
        }
        path = w / "node.json"
        path.write_text(json.dumps(config, indent=1))
        return path

    def _spawn(self, name: str, argv: list[str]) -> None:
        self._procs.append((name, spawn(argv, self.workdir / f"{name}.log")))

    def _start_scheduler(self) -> None:
        kc = self.cluster.user_kubeconfig("system:kube-scheduler", [], name="scheduler")
        self._spawn(
            "kube-scheduler",
            [
                str(self.bin_dir / "kube-scheduler"),
                f"--kubeconfig={kc}",
                f"--authentication-kubeconfig={kc}",
                f"--authorization-kubeconfig={kc}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                "--v=1",
            ],
        )

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            if (
                (self.workdir / "images.ready").exists()
                and self._node_ready()
                and self._proxy_ready()
            ):
                return
            time.sleep(0.2)
        raise ClusterError(f"node not ready after {timeout}s:\n{self.log_tail('kubelet')}")

    def _check_alive(self) -> None:
        for marker in ("images.failed", "exited"):
            if (self.workdir / marker).exists():
                text = (self.workdir / marker).read_text()
                raise ClusterError(f"node failed ({marker}): {text}\n{self.log_tail('kubelet')}")
        for name, proc in self._procs:
            if proc.poll() is not None:
                raise ClusterError(
                    f"{name} exited with code {proc.returncode}:\n{self.log_tail(name)}"
                )

    def _node_ready(self) -> bool:
        status, body = self.cluster.get_raw(f"/api/v1/nodes/{self.name}")
        if status != 200:
            return False
        conditions = json.loads(body).get("status", {}).get("conditions", [])
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    def _proxy_ready(self) -> bool:
        import urllib.request

        try:
            url = f"http://127.0.0.1:{self.kube_proxy_healthz}/healthz"
            with urllib.request.urlopen(url, timeout=1) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.workdir / f"{name}.log"
        if not path.exists():
            return "(no log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    # -- stop --

    def stop(self) -> None:
        stop_processes(self._procs, grace=30)
        if self._dns is not None:
            self._dns.stop()
            self._dns = None
        if self._volumes is not None:
            self._volumes.stop()
            self._volumes = None
        self._remove_cgroups()
        subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True, check=False)
        subprocess.run(["ip", "route", "del", SERVICE_CIDR], capture_output=True, check=False)
        shutil.rmtree(self.workdir, ignore_errors=True)
        with contextlib.suppress(ClusterError):
            self.cluster.kubectl("delete", "node", self.name, "--ignore-not-found", "--wait=false")

    def _remove_cgroups(self) -> None:
        nodeinit.remove_cgroups(self.cgroup_root)


def main(argv: Sequence[str]) -> int:
    import image as image_mod
    from localcluster import build_tools

    if not argv or argv[0] != "up":
        print(__doc__)
        return 2
    tools, node_tools = build_tools(), build_node_tools()
    built, pause = image_mod.build(), image_mod.pause_image(node_tools)
    sandbox.enter()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with (
        LocalCluster(bin_dir=tools, advertise_address=sandbox.NODE_IP) as cluster,
        Node(
            cluster, node_tools, images=[pause.tarball, built.tarball], pause_image=pause.name
        ) as node,
    ):
        print(f"control plane {cluster.started_in:.1f}s, node {node.started_in:.1f}s")
        print(f"image: {built.name}")
        print(f"app image: {built.app_name}")
        print(f"kubeconfig: {cluster.kubeconfig}")
        print(f"cgroup root: {node.cgroup_root}")
        print(f"kubectl: nsenter --net=/proc/{os.getpid()}/ns/net {tools}/kubectl get pods -A")
        print("ready", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
