"""Run the audit collector as a local process, for ``make demo``, the tests and the benchmark.

Why it exists: in a cluster the chart runs the collector as a Deployment with the chart's TLS
Secret; on loopback it is a child process whose serving certificate is issued by the local
operator's CA (so sidecars verify it with the CA they already trust for config pushes).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .. import tls
from ..local import die_with_parent, free_port


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
        files = self._tls()
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.argv(files),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "KUBECONFIG": str(self.kubeconfig)},
                preexec_fn=die_with_parent,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"the collector exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{self.admin_port}/readyz", timeout=1
                ):
                    return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"the collector was not ready after {timeout}s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/metrics", timeout=5) as r:
            return str(r.read().decode())

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def __enter__(self) -> CollectorProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
