"""The demo's audit chapter: where a platform team sees the block, from the chart's collector.

Why a module of its own: demo/run.py tells the whole story; this part shows what issue 14
promises a platform team, against the audit collector the chart runs on the node: the block as
an aggregated Warning Event (`kubectl get events`), in `packgate audit query` and on the Events
page (both through `kubectl port-forward`, as a user reaches them), and the stored chain checked
with `packgate audit verify` straight from the collector's volume.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from localcluster import LocalCluster
from node import Node

from tests.support.realpods import PortForward, pods, ready
from tests.support.waiting import wait_for

AUDIT_SECRET = "packgate-audit"  # noqa: S105 - the Secret's name (chart: sidecar.auditKeySecret)
AUDIT_KEY = "demo-audit-key-0123456789abcdef"
READ_PORT = 8446  # the chart's collector.readPort
READER = "platform-team"


class AuditDemo:
    def __init__(self, cluster: LocalCluster, namespace: str, collector: str) -> None:
        self.cluster, self.namespace, self.collector = cluster, namespace, collector

    def wait_ready(self) -> None:
        selector = "app.kubernetes.io/component=audit-collector"
        wait_for(
            lambda: [p for p in pods(self.cluster, self.namespace, selector) if ready(p)],
            timeout=90,
            what="the audit collector Ready on its volume",
        )

    def prepare(self, namespace: str) -> None:
        """The namespace's audit key Secret, and a platform-team reader allowed to get packs
        (who may get PolicyPacks in a namespace may read its audit records)."""
        k = self.cluster.kubectl
        k("create", "secret", "generic", AUDIT_SECRET, "-n", namespace,
          f"--from-literal=audit-key={AUDIT_KEY}")  # fmt: skip
        k("create", "serviceaccount", READER, "-n", namespace)
        k("create", "role", "policypack-reader", "-n", namespace, "--verb=get,list,watch",
          "--resource=policypacks.packgate.dev")  # fmt: skip
        k("create", "rolebinding", "policypack-reader", "-n", namespace,
          "--role=policypack-reader", f"--serviceaccount={namespace}:{READER}")  # fmt: skip

    def show(self, namespace: str, node: Node, say: Callable[[str], None]) -> None:
        token = self.cluster.kubectl("create", "token", READER, "-n", namespace).stdout.strip()
        target = f"deploy/{self.collector}"
        with PortForward(self.cluster, self.namespace, target, READ_PORT) as forward:
            query = [sys.executable, "-m", "packgate_sidecar.cli", "audit", "query",
                     f"--url={forward.url}", f"--token={token}", "-n", namespace]  # fmt: skip

            def blocked() -> list[dict[str, Any]]:
                done = _run([*query, "--decision=blocked", "-o", "json"])
                return list(json.loads(done.stdout)["records"]) if done.returncode == 0 else []

            wait_for(blocked, 30, "the blocked request's record at the collector")
            say(
                "the sidecar shipped its sealed records to the collector pod, which checked "
                "each one's hash, MAC and chain link before storing it on its volume"
            )

            def events() -> str:
                out = self.cluster.kubectl(
                    "get", "events", "-n", namespace, "--field-selector=type=Warning", check=False
                ).stdout
                return out if "PolicyBlocked" in out else ""

            say(f"\n$ kubectl get events -n {namespace} --field-selector=type=Warning")
            say(wait_for(events, 30, "the aggregated Warning Event").rstrip())
            say(
                f"\n$ kubectl -n {self.namespace} port-forward {target} :{READ_PORT} &"
                f"   # here: {forward.url}"
            )
            say(
                f"$ packgate audit query --url {forward.url} -n {namespace} --decision blocked"
                f"   # token of {namespace}:{READER}"
            )
            say(_run([*query, "--decision=blocked"]).stdout.rstrip())
            with urllib.request.urlopen(forward.url + "/", timeout=10) as page:  # noqa: S310
                status = page.status
            say(
                f"\nThe Events page: {forward.url}/  (HTTP {status} from the collector pod while "
                f"the demo runs; on your cluster: kubectl -n {self.namespace} port-forward "
                f"{target} {READ_PORT}:{READ_PORT}, then http://127.0.0.1:{READ_PORT}/, and sign "
                f"in with `kubectl create token {READER} -n {namespace}`)"
            )
        self._verify(namespace, node, say)

    def _verify(self, namespace: str, node: Node, say: Callable[[str], None]) -> None:
        claim = json.loads(
            self.cluster.kubectl(
                "get", "pvc", self.collector, "-n", self.namespace, "-o", "json"
            ).stdout
        )
        volume = json.loads(
            self.cluster.kubectl("get", "pv", claim["spec"]["volumeName"], "-o", "json").stdout
        )
        store = Path(volume["spec"]["local"]["path"])
        done = _run(
            [sys.executable, "-m", "packgate_sidecar.cli", "audit", "verify", str(store)],
            env={**os.environ, "PACKGATE_AUDIT_KEY": AUDIT_KEY},
        )
        shown = store.relative_to(node.workdir)
        say(f"\n$ packgate audit verify <the collector's volume: node dir/{shown}>")
        say(done.stdout.rstrip() or done.stderr.rstrip())


def _run(argv: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False, env=env, timeout=60)
