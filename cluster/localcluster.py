"""A real Kubernetes control plane on loopback, for tests and the demo.

Why: packgate's operator, webhook and CRD must be proven against the real kube-apiserver, not a
mock. This starts etcd, kube-apiserver and kube-controller-manager (built from pinned Go modules
by build-tools.sh) the way controller-runtime's envtest does: a generated CA, client-certificate
auth with an admin in system:masters, RBAC, service-account signing, and a controller-manager so
that garbage collection, ReplicaSets and default service accounts work. There is no kubelet or
scheduler: pods are stored and mutated by admission but never run.

Every run gets its own temporary directory and free ports, so runs never collide, and every
process is stopped on exit, on failure, and (through PR_SET_PDEATHSIG) when the parent dies.

    python cluster/localcluster.py up      # start, print KUBECONFIG, wait for Ctrl-C
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from processes import free_port, spawn, stop_processes

HERE = Path(__file__).resolve().parent
SERVICE_CIDR = "10.96.0.0/24"


class ClusterError(RuntimeError):
    """The control plane could not be built or started; the message says which part and why."""


def build_tools() -> Path:
    """Build (or reuse from the cache) the Kubernetes binaries; return their directory."""
    result = subprocess.run(
        ["bash", str(HERE / "build-tools.sh")], stdout=subprocess.PIPE, text=True, check=False
    )
    if result.returncode != 0:
        raise ClusterError(f"cluster/build-tools.sh failed with exit code {result.returncode}")
    return Path(result.stdout.strip().splitlines()[-1])


# --- certificates ---------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyPair:
    cert_pem: bytes
    key_pem: bytes


def _key_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def make_ca(common_name: str = "packgate-local-ca") -> KeyPair:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(key, hashes.SHA256())
    )
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def issue_cert(
    ca: KeyPair,
    common_name: str,
    *,
    organizations: Sequence[str] = (),
    dns_names: Sequence[str] = (),
    ips: Sequence[str] = (),
    server: bool = False,
) -> KeyPair:
    """A leaf certificate signed by `ca`: a client cert, or a server cert when `server`."""
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    attrs += [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org) for org in organizations]
    now = dt.datetime.now(dt.UTC)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(attrs))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    sans: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def _write(path: Path, data: bytes, mode: int = 0o600) -> Path:
    path.write_bytes(data)
    path.chmod(mode)
    return path


def write_kubeconfig(path: Path, server: str, ca: Path, cert: Path, key: Path, user: str) -> Path:
    text = f"""apiVersion: v1
kind: Config
clusters:
- name: packgate-local
  cluster: {{server: "{server}", certificate-authority: "{ca}"}}
users:
- name: {user}
  user: {{client-certificate: "{cert}", client-key: "{key}"}}
contexts:
- name: {user}@packgate-local
  context: {{cluster: packgate-local, user: {user}, namespace: default}}
current-context: {user}@packgate-local
"""
    return _write(path, text.encode())


# --- processes ------------------------------------------------------------------------------


@dataclass
class LocalCluster:
    """A running control plane; use as a context manager or call start() and stop()."""

    bin_dir: Path
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="packgate-k8s-")))
    with_controller_manager: bool = True
    keep_workdir: bool = False
    # Set when a kubelet node joins (cluster/node.py): the apiserver then listens on every
    # address of its (sandboxed) network namespace and publishes this one as the `kubernetes`
    # Service's endpoint, so pods reach it through kube-proxy. Empty: loopback only.
    advertise_address: str = ""
    server: str = ""
    kubeconfig: Path = Path()
    ca: KeyPair | None = None
    started_in: float = 0.0
    _procs: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)

    # -- lifecycle --

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 90.0) -> None:
        began = time.monotonic()
        try:
            self._prepare_pki()
            etcd_url = self._etcd_url = self._start_etcd()
            self._start_apiserver(etcd_url)
            self._wait_ready(timeout)
            if self.with_controller_manager:
                self._start_controller_manager()
                self._wait_default_service_account(timeout)
        except BaseException:
            self.stop()
            raise
        self.started_in = time.monotonic() - began

    def stop(self) -> None:
        # etcd last, on its own: a terminating kube-apiserver still deletes its lease and its
        # `kubernetes` endpoint in etcd, and with etcd already gone it waited out the whole
        # grace period (10 s at every stop) before being killed.
        storage = [p for p in self._procs if p[0] == "etcd"]
        stop_processes([p for p in self._procs if p[0] != "etcd"], grace=10)
        stop_processes(storage, grace=10)
        self._procs.clear()
        if not self.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # -- setup steps --

    def _prepare_pki(self) -> None:
        pki = self.workdir / "pki"
        pki.mkdir(parents=True, exist_ok=True)
        self.ca = ca = make_ca()
        _write(pki / "ca.crt", ca.cert_pem, 0o644)
        _write(pki / "ca.key", ca.key_pem)
        service_ip = str(next(ipaddress.ip_network(SERVICE_CIDR).hosts()))
        serving = issue_cert(
            ca,
            "kube-apiserver",
            dns_names=[
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ],
            ips=["127.0.0.1", service_ip]
            + ([self.advertise_address] if self.advertise_address else []),
            server=True,
        )
        _write(pki / "apiserver.crt", serving.cert_pem, 0o644)
        _write(pki / "apiserver.key", serving.key_pem)
        sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        _write(pki / "sa.key", _key_pem(sa_key))
        _write(
            pki / "sa.pub",
            sa_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
            0o644,
        )
        self.apiserver_port = free_port()
        self.server = f"https://127.0.0.1:{self.apiserver_port}"
        self.kubeconfig = self.user_kubeconfig("admin", ["system:masters"], name="admin")
        self.kcm_kubeconfig = self.user_kubeconfig(
            "system:kube-controller-manager", [], name="controller-manager"
        )
        # The apiserver's client identity towards kubelets (logs, exec, port-forward).
        self.user_kubeconfig(
            "kube-apiserver-kubelet-client", ["system:masters"], name="kubelet-client"
        )

    def user_kubeconfig(self, user: str, groups: Sequence[str], name: str | None = None) -> Path:
        """A kubeconfig for `user` in `groups`, authenticated by a client certificate."""
        assert self.ca is not None
        name = name or user.replace(":", "-")
        pki = self.workdir / "pki"
        pair = issue_cert(self.ca, user, organizations=groups)
        cert = _write(pki / f"{name}.crt", pair.cert_pem, 0o644)
        key = _write(pki / f"{name}.key", pair.key_pem)
        return write_kubeconfig(
            self.workdir / f"{name}.kubeconfig", self.server, pki / "ca.crt", cert, key, user
        )

    def stop_apiserver(self) -> None:
        """Kill kube-apiserver alone (etcd and the rest keep running): an outage, for tests.
        Killed, not terminated: a graceful stop waits for open watches to drain."""
        for name, proc in list(self._procs):
            if name == "kube-apiserver":
                proc.kill()
                proc.wait(timeout=30)
                self._procs.remove((name, proc))

    def start_apiserver(self, timeout: float = 60.0) -> None:
        """Start kube-apiserver again on the same port and wait until it is ready."""
        self._start_apiserver(self._etcd_url)
        self._wait_ready(timeout)

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        proc = spawn(argv, self.workdir / f"{name}.log")
        self._procs.append((name, proc))
        return proc

    def _start_etcd(self) -> str:
        client, peer = free_port(), free_port()
        url = f"http://127.0.0.1:{client}"
        self._spawn(
            "etcd",
            [
                str(self.bin_dir / "etcd"),
                "--name=packgate",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={url}",
                f"--advertise-client-urls={url}",
                f"--listen-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-cluster=packgate=http://127.0.0.1:{peer}",
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )
        return url

    def _start_apiserver(self, etcd_url: str) -> None:
        pki = self.workdir / "pki"
        if self.advertise_address:
            # Only inside the run's own network namespace (cluster/sandbox.py): every address
            # there is the run's own.
            network = [
                "--bind-address=0.0.0.0",
                f"--advertise-address={self.advertise_address}",
                f"--kubelet-client-certificate={pki / 'kubelet-client.crt'}",
                f"--kubelet-client-key={pki / 'kubelet-client.key'}",
                "--kubelet-preferred-address-types=InternalIP",
            ]
        else:
            # Loopback may not be published as the kubernetes Service endpoint; nothing
            # in-cluster needs that Service without a node.
            network = [
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                "--endpoint-reconciler-type=none",
            ]
        self._spawn(
            "kube-apiserver",
            [
                str(self.bin_dir / "kube-apiserver"),
                f"--etcd-servers={etcd_url}",
                *network,
                f"--secure-port={self.apiserver_port}",
                f"--cert-dir={pki}",
                f"--tls-cert-file={pki / 'apiserver.crt'}",
                f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                "--authorization-mode=RBAC",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--allow-privileged=true",
                "--profiling=false",
                "--v=1",
            ],
        )

    def _start_controller_manager(self) -> None:
        pki = self.workdir / "pki"
        self._spawn(
            "kube-controller-manager",
            [
                str(self.bin_dir / "kube-controller-manager"),
                f"--kubeconfig={self.kcm_kubeconfig}",
                f"--authentication-kubeconfig={self.kcm_kubeconfig}",
                f"--authorization-kubeconfig={self.kcm_kubeconfig}",
                f"--service-account-private-key-file={pki / 'sa.key'}",
                f"--root-ca-file={pki / 'ca.crt'}",
                "--use-service-account-credentials=true",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                f"--cert-dir={self.workdir / 'kcm-certs'}",
                "--v=1",
            ],
        )

    # -- readiness --

    def _check_alive(self) -> None:
        for name, proc in self._procs:
            if proc.poll() is not None:
                raise ClusterError(
                    f"{name} exited with code {proc.returncode}:\n{self.log_tail(name)}"
                )

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.workdir / f"{name}.log"
        if not path.exists():
            return "(no log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def _ssl_context(self) -> ssl.SSLContext:
        pki = self.workdir / "pki"
        ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        return ctx

    def get_raw(self, path: str) -> tuple[int, bytes]:
        """GET a raw API path as the admin user; returns (status, body)."""
        try:
            with urllib.request.urlopen(  # noqa: S310 - loopback https only
                self.server + path, context=self._ssl_context(), timeout=5
            ) as response:
                return int(response.status), bytes(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def request(self, method: str, path: str, body: object = None) -> tuple[int, bytes]:
        """Send `body` (JSON) to an API path as the admin user; returns (status, body)."""
        request = urllib.request.Request(  # noqa: S310 - https to the local apiserver only
            self.server + path,
            data=None if body is None else json.dumps(body).encode(),
            method=method,
            headers={"Content-Type": "application/json"},
        )
        ctx = self._ssl_context()
        try:
            with urllib.request.urlopen(request, context=ctx, timeout=10) as response:  # noqa: S310
                return int(response.status), bytes(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def merge_patch(self, path: str, patch: object) -> int:
        """PATCH an API path with a JSON merge patch as the admin user (no kubectl start-up:
        for tests that time what happens after a change); returns the status."""
        request = urllib.request.Request(  # noqa: S310 - https to the local apiserver only
            self.server + path,
            data=json.dumps(patch).encode(),
            method="PATCH",
            headers={"Content-Type": "application/merge-patch+json"},
        )
        with urllib.request.urlopen(request, context=self._ssl_context(), timeout=10) as response:  # noqa: S310
            return int(response.status)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            with contextlib.suppress(OSError):
                status, _ = self.get_raw("/readyz")
                if status == 200:
                    return
            time.sleep(0.2)
        raise ClusterError(
            f"kube-apiserver not ready after {timeout}s:\n{self.log_tail('kube-apiserver')}"
        )

    def _wait_default_service_account(self, timeout: float) -> None:
        # Pods are rejected until the controller-manager has made the namespace's default
        # service account, so "started" means that has happened.
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            status, _ = self.get_raw("/api/v1/namespaces/default/serviceaccounts/default")
            if status == 200:
                return
            time.sleep(0.2)
        raise ClusterError(
            "default service account not created after "
            f"{timeout}s:\n{self.log_tail('kube-controller-manager')}"
        )

    # -- conveniences for tests and the demo --

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "PATH": f"{self.bin_dir}:{os.environ['PATH']}",
        }

    def kubectl(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        kubeconfig: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        argv = [
            str(self.bin_dir / "kubectl"),
            f"--kubeconfig={kubeconfig or self.kubeconfig}",
            *args,
        ]
        result = subprocess.run(
            argv, input=input, capture_output=True, text=True, check=False, timeout=120
        )
        if check and result.returncode != 0:
            raise ClusterError(
                f"kubectl {' '.join(args)} failed ({result.returncode}):\n{result.stderr}"
            )
        return result

    def versions(self) -> dict[str, str]:
        out = {}
        for tool, flag in (
            ("etcd", "--version"),
            ("kube-apiserver", "--version"),
            ("kubectl", "version --client"),
            ("helm", "version --short"),
        ):
            path = self.bin_dir / tool
            if path.exists():
                result = subprocess.run(
                    [str(path), *flag.split()], capture_output=True, text=True, check=False
                )
                out[tool] = (result.stdout or result.stderr).strip().splitlines()[0]
        return out


@contextlib.contextmanager
def running_cluster(**kwargs: object) -> Iterator[LocalCluster]:
    cluster = LocalCluster(bin_dir=build_tools(), **kwargs)  # type: ignore[arg-type]
    with cluster:
        yield cluster


def main(argv: Sequence[str]) -> int:
    if not argv or argv[0] not in ("up", "build"):
        print(__doc__)
        return 2
    bin_dir = build_tools()
    if argv[0] == "build":
        return 0
    cluster = LocalCluster(bin_dir=bin_dir)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with cluster:
        print(f"control plane ready in {cluster.started_in:.1f}s at {cluster.server}")
        print(f"export KUBECONFIG={cluster.kubeconfig}")
        print(f"export PATH={bin_dir}:$PATH")
        print("Ctrl-C stops it and removes its files.")
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
