"""The demo's audit chapter: records leave the pod for the collector, and where people look.

Why a module of its own: demo/run.py tells the whole story and is rewritten as the cluster grows
(real pods, Helm); this part needs only four hooks from it (construct before the operator, the
operator's extra flags, start after the operator, show after the blocked request) and shows what
issue 14 promises a platform team: the block in `kubectl get events`, in `packgate audit query`,
and the Events page's address.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from collector_process import CollectorProcess

SECRET = "packgate-audit"  # noqa: S105 - the Secret's name


class AuditDemo:
    def __init__(self, cluster: Any, workdir: Path, operator_tls: Path) -> None:
        self.cluster = cluster
        self.collector = CollectorProcess(
            cluster.kubeconfig,
            workdir / "collector",
            operator_tls,
            audit_key_secret=SECRET,
            events_interval=1.0,
        )

    def operator_args(self) -> list[str]:
        """Flags that make the injector point sidecars at the collector and the audit key."""
        return [f"--audit-collector-url={self.collector.url}", f"--audit-key-secret={SECRET}"]

    def start(self) -> CollectorProcess:
        return self.collector.start()

    def prepare(self, namespace: str, audit_key: str) -> None:
        """The namespace's audit key Secret, and a platform-team reader allowed to get packs."""
        k = self.cluster.kubectl
        k(
            "create",
            "secret",
            "generic",
            SECRET,
            "-n",
            namespace,
            f"--from-literal=audit-key={audit_key}",
        )
        k("create", "serviceaccount", "platform-team", "-n", namespace)
        k(
            "create",
            "role",
            "policypack-reader",
            "-n",
            namespace,
            "--verb=get,list,watch",
            "--resource=policypacks.packgate.dev",
        )
        k(
            "create",
            "rolebinding",
            "policypack-reader",
            "-n",
            namespace,
            "--role=policypack-reader",
            f"--serviceaccount={namespace}:platform-team",
        )

    def show(self, namespace: str, say: Callable[[str], None]) -> None:
        token = self.cluster.kubectl(
            "create", "token", "platform-team", "-n", namespace
        ).stdout.strip()
        query = [
            sys.executable,
            "-m",
            "packgate_sidecar.cli",
            "audit",
            "query",
            f"--url={self.collector.read_url}",
            f"--token={token}",
        ]

        def blocked() -> list[dict[str, Any]]:
            done = subprocess.run(
                [*query, "-n", namespace, "--decision=blocked", "-o", "json"],
                capture_output=True,
                text=True,
                check=False,
            )
            return list(json.loads(done.stdout)["records"]) if done.returncode == 0 else []

        _wait(blocked, 20, "the blocked request to reach the collector")
        say(
            f"the sidecar shipped its sealed records to the audit collector ({self.collector.url});"
            " it verified each one's hash, MAC and chain link and stored them under "
            f"{self.collector.store}"
        )

        def events() -> str:
            out = self.cluster.kubectl(
                "get", "events", "-n", namespace, "--field-selector=type=Warning", check=False
            ).stdout
            return out if "PolicyBlocked" in out else ""

        say("\n$ kubectl get events -n " + namespace + " --field-selector=type=Warning")
        say(_wait(events, 20, "the aggregated Warning Event").rstrip())
        shown = subprocess.run(
            [*query, "-n", namespace, "--decision=blocked"],
            capture_output=True,
            text=True,
            check=False,
        )
        say(
            f"\n$ packgate audit query -n {namespace} --decision blocked"
            f"   (token of {namespace}:platform-team)"
        )
        say(shown.stdout.rstrip())
        say(
            f"\nThe Events page: {self.collector.read_url}/  (sign in with a token such as "
            f"`kubectl create token platform-team -n {namespace}`; in a cluster: kubectl -n "
            "packgate-system port-forward deploy/packgate-audit-collector 8446:8446)"
        )


def _wait(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.3)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
