"""Run the audit collector as a local process, for ``make demo``, the tests and the benchmark.

Why it exists: in a cluster the chart runs the collector as a Deployment with the chart's TLS
Secret; on loopback it is a child process whose serving certificate is issued by the local
operator's CA (so sidecars verify it with the CA they already trust for config pushes). It is
part of the harness, not the operator package: nothing here runs in a pod.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from packgate_operator import tls
from processes import answers, free_port, log_tail, spawn, stop_processes, wait_until_ready


@dataclass
class CollectorProcess:
    kubeconfig: Path
    workdir: Path
    ca_dir: Path  # a directory holding ca.crt and ca.key (the local operator's tls dir)
    audit_key_secret: str = ""
    events_interval: float = 1.0
    extra_args: Sequence[str] = ()
    port: int = field(default_factory=free_port)
    read_port: int = field(default_factory=free_port)
    admin_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def read_url(self) -> str:
        return f"http://127.0.0.1:{self.read_port}"

    @property
    def store(self) -> Path:
        return self.workdir / "store"

    @property
    def log_path(self) -> Path:
        return self.workdir / "collector.log"

    def _tls(self) -> tls.TlsFiles:
        directory = self.workdir / "tls"
        directory.mkdir(parents=True, exist_ok=True)
        for name in ("ca.crt", "ca.key"):
            shutil.copy(self.ca_dir / name, directory / name)
        return tls.generate(directory, ["localhost", "127.0.0.1"])

    def argv(self, files: tls.TlsFiles) -> list[str]:
        return [
            sys.executable, "-m", "packgate_sidecar.cli", "audit", "collector",
            f"--store={self.store}", f"--listen=127.0.0.1:{self.port}",
            f"--read-listen=127.0.0.1:{self.read_port}",
            f"--admin-listen=127.0.0.1:{self.admin_port}",
            f"--tls-cert-file={files.cert_file}", f"--tls-key-file={files.key_file}",
            f"--kubeconfig={self.kubeconfig}", f"--audit-key-secret={self.audit_key_secret}",
            f"--events-interval={self.events_interval}", *self.extra_args,
        ]  # fmt: skip

    def start(self, timeout: float = 30.0) -> CollectorProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}
        self.proc = spawn(self.argv(self._tls()), self.log_path, env)
        ready = f"http://127.0.0.1:{self.admin_port}/readyz"
        wait_until_ready(self.proc, lambda: answers(ready), "the collector", self.log_path, timeout)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_processes([("collector", self.proc)], grace=20)

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/metrics", timeout=5) as r:
            return str(r.read().decode())

    def log_tail(self, lines: int = 40) -> str:
        return log_tail(self.log_path, lines)

    def __enter__(self) -> CollectorProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
