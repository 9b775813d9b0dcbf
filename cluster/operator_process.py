"""Run the operator as a local process against a control plane: for `make demo`, tests, benchmarks.

Why it exists: in a cluster the Helm chart deploys the operator and creates the webhook
configuration; on a laptop (or in the test suite's loopback control plane) the operator is a
process on 127.0.0.1, and something must register its webhook with the apiserver, pointing at
that address with the operator's CA. The webhook configuration built here is the same shape the
chart renders (matchConditions on the opt-in annotation, failurePolicy Fail, reinvocation
IfNeeded, sideEffects None, 5 s timeout), so tests exercise what production runs. It is part of
the harness, not the operator package: nothing here runs in a pod.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packgate_operator.annotations import INJECT
from packgate_operator.webhook import WEBHOOK_ID
from processes import answers, free_port, log_tail, spawn, stop_processes, wait_until_ready

WEBHOOK_NAME = "inject.packgate.dev"
# The CEL matchCondition the chart renders too (helm/packgate/templates/webhook.yaml).
OPTED_IN = (
    f"has(object.metadata.annotations) && '{INJECT}' in object.metadata.annotations && "
    f"object.metadata.annotations['{INJECT}'] != 'false'"
)


def webhook_configuration(
    name: str,
    url: str,
    ca_pem: str,
    *,
    namespace_selector: Mapping[str, Any] | None = None,
    failure_policy: str = "Fail",
) -> dict[str, Any]:
    """A MutatingWebhookConfiguration that sends opted-in pod creations to `url`."""
    selector = (
        dict(namespace_selector)
        if namespace_selector is not None
        else {
            "matchExpressions": [
                {
                    "key": "kubernetes.io/metadata.name",
                    "operator": "NotIn",
                    "values": ["kube-system", "kube-public", "kube-node-lease"],
                }
            ]
        }
    )
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/part-of": "packgate"}},
        "webhooks": [
            {
                "name": WEBHOOK_NAME,
                "admissionReviewVersions": ["v1"],
                "clientConfig": {
                    "url": f"{url.rstrip('/')}/{WEBHOOK_ID}",
                    "caBundle": base64.b64encode(ca_pem.encode()).decode(),
                },
                "rules": [
                    {
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE"],
                        "resources": ["pods"],
                        "scope": "Namespaced",
                    }
                ],
                # Only pods carrying the opt-in annotation (any value but "false": a malformed
                # one must be rejected by the webhook, not waved through) ever reach the
                # operator; opted-out pods are created even while the operator is down.
                "matchConditions": [{"name": "opted-in", "expression": OPTED_IN}],
                "namespaceSelector": selector,
                "failurePolicy": failure_policy,
                "sideEffects": "None",
                "timeoutSeconds": 5,
                "reinvocationPolicy": "IfNeeded",
            }
        ],
    }


@dataclass
class OperatorProcess:
    """`packgate operator run` as a child process on loopback ports; a context manager."""

    kubeconfig: Path
    workdir: Path
    namespaces: Sequence[str] = ()
    extra_args: Sequence[str] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    webhook_port: int = field(default_factory=free_port)
    subscribe_port: int = field(default_factory=free_port)
    admin_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def webhook_url(self) -> str:
        return f"https://127.0.0.1:{self.webhook_port}"

    @property
    def subscribe_url(self) -> str:
        return f"https://127.0.0.1:{self.subscribe_port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def tls_dir(self) -> Path:
        return self.workdir / "tls"

    @property
    def ca_pem(self) -> str:
        return (self.tls_dir / "ca.crt").read_text()

    @property
    def log_path(self) -> Path:
        return self.workdir / "operator.log"

    def argv(self) -> list[str]:
        args = [
            sys.executable,
            "-m",
            "packgate_sidecar.cli",
            "operator",
            "run",
            f"--kubeconfig={self.kubeconfig}",
            "--webhook-host=127.0.0.1",
            f"--webhook-port={self.webhook_port}",
            "--subscribe-host=127.0.0.1",
            f"--subscribe-port={self.subscribe_port}",
            f"--subscribe-url={self.subscribe_url}",
            "--admin-host=127.0.0.1",
            f"--admin-port={self.admin_port}",
            f"--tls-dir={self.tls_dir}",
            "--tls-sans=localhost,127.0.0.1",
        ]
        if self.namespaces:
            args.append("--namespaces=" + ",".join(self.namespaces))
        return args + list(self.extra_args)

    def start(self, timeout: float = 60.0) -> OperatorProcess:
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), **self.env}
        self.proc = spawn(self.argv(), self.log_path, env)
        wait_until_ready(self.proc, self.healthy, "the operator", self.log_path, timeout)
        return self

    def healthy(self) -> bool:
        return answers(self.admin_url + "/readyz")

    def stop(self) -> None:
        if self.proc is not None:
            stop_processes([("operator", self.proc)], grace=20)

    def log_tail(self, lines: int = 40) -> str:
        return log_tail(self.log_path, lines)

    def metrics(self) -> str:
        with urllib.request.urlopen(self.admin_url + "/metrics", timeout=5) as response:  # noqa: S310 - loopback
            return str(response.read().decode())

    def __enter__(self) -> OperatorProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
