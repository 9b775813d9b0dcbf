"""Audit records leave the pod: shipping, the collector, Events, the query CLI and the Events page.

Against the real control plane: the operator injects pods created by a Deployment, the audit
collector runs as its own process (as the chart runs it as its own Deployment) and checks every
shipped record's hash, MAC (the namespace's audit-key Secret) and chain link. There is no
kubelet yet, so each pod's sidecar is a `packgate gateway run` process started with the injected
container's env and a projected token bound to that pod (as in test_operator_propagation), and
a pod "deletion" is what the kubelet does: SIGTERM to the sidecar, then the pod object goes.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from collector_process import CollectorProcess
from localcluster import LocalCluster
from packgate_sidecar.audit.chain import ChainState, parse_line, seal
from packgate_sidecar.audit.writer import list_segments

from tests.integration.test_operator_propagation import (
    Setup,
    Sidecar,
    deployment,
)
from tests.support.browser import Browser, install
from tests.support.upstream import upstream_process
from tests.support.waiting import wait_for

pytestmark = pytest.mark.cluster
ROOT = Path(__file__).resolve().parents[2]
KEY = bytes(range(7, 39))
SECRET = "packgate-audit"


class AuditedSidecar(Sidecar):
    """The injected sidecar, with the audit key its env takes from the namespace's Secret."""

    def __init__(self, *args: Any, extra_env: dict[str, str] | None = None) -> None:
        super().__init__(*args)
        self.env["PACKGATE_AUDIT_KEY"] = KEY.hex()
        self.env["PYTHONFAULTHANDLER"] = "1"
        self.env.update(extra_env or {})

    def records(self) -> list[bytes]:
        directory = self.workdir / "data" / "audit"
        return [ln for p in list_segments(directory) for ln in p.read_bytes().splitlines()]

    def readyz(self) -> tuple[int, dict[str, Any]]:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.admin_port}/readyz", timeout=5
            ) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())
        except OSError:  # not listening yet
            return 0, {}

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/metrics", timeout=5) as r:
            return str(r.read().decode())

    def terminate(self) -> None:
        """What the kubelet does first when the pod is deleted."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGABRT)  # PYTHONFAULTHANDLER: stacks into the log
            time.sleep(1)
            raise AssertionError("the sidecar did not stop:\n" + self.log()) from None


def pack_spec(upstream_url: str) -> dict[str, Any]:
    return {
        "pack": {"name": "gateway", "version": "1.0.0", "enabled": True},
        "providers": {
            "targets": [
                {
                    "id": "local",
                    "provider": "openai",
                    "base_url": upstream_url,
                    "secret_key_ref": {"env": "UPSTREAM_KEY"},
                }
            ]
        },
        "policies": {"chain": ["content-filter", "audit-logger"]},
        "policy": {
            "content-filter": {"action": "block", "categories": [], "terms": ["zanzibar"]},
            "audit-logger": {"retention_days": 30, "stdout": False},
        },
    }


class AuditEnv:
    def __init__(self, cluster: LocalCluster, workdir: Path, upstream_url: str) -> None:
        self.cluster = cluster
        self.workdir = workdir
        self.upstream = upstream_url
        self.collector = CollectorProcess(
            cluster.kubeconfig,
            workdir / "collector",
            ca_dir=workdir / "operator" / "tls",
            audit_key_secret=SECRET,
            events_interval=1.0,
        )
        self.setup = Setup(cluster, workdir / "operator", "pgau")
        self.setup.operator.extra_args = [
            f"--audit-key-secret={SECRET}",
            f"--audit-collector-url={self.collector.url}",
        ]

    def __enter__(self) -> AuditEnv:
        self.setup.__enter__()
        self.collector.start()
        self.ns = self.setup.namespace()
        self.other_ns = self.setup.namespace()
        for ns in (self.ns, self.other_ns):
            self.setup.kubectl(
                "create",
                "secret",
                "generic",
                SECRET,
                "-n",
                ns,
                f"--from-literal=audit-key={KEY.hex()}",
            )
            self.setup.apply(
                {
                    "apiVersion": "packgate.dev/v1alpha1",
                    "kind": "PolicyPack",
                    "metadata": {"name": "gateway", "namespace": ns},
                    "spec": pack_spec(self.upstream),
                }
            )
        wait_for(lambda: self.setup.status(self.ns).get("configHash"), what="rendered pack")
        wait_for(lambda: self.setup.status(self.other_ns).get("configHash"), what="second pack")
        # A reader who may get PolicyPacks in ns only, and a stranger who may not.
        for name in ("viewer", "stranger"):
            self.setup.kubectl("create", "serviceaccount", name, "-n", self.ns)
        self.setup.kubectl(
            "create",
            "role",
            "pack-reader",
            "-n",
            self.ns,
            "--verb=get,list",
            "--resource=policypacks.packgate.dev",
        )
        self.setup.kubectl(
            "create",
            "rolebinding",
            "pack-reader",
            "-n",
            self.ns,
            "--role=pack-reader",
            f"--serviceaccount={self.ns}:viewer",
        )
        self.viewer = self.user_token("viewer")
        self.stranger = self.user_token("stranger")
        return self

    def user_token(self, name: str) -> str:
        return str(
            self.setup.kubectl(
                "create", "token", name, "-n", self.ns, "--duration=1h"
            ).stdout.strip()
        )

    def __exit__(self, *exc: object) -> None:
        self.collector.stop()
        print(self.collector.log_tail(40))
        self.setup.__exit__(*exc)

    def sidecars(self, ns: str, replicas: int, name: str, **kw: Any) -> list[AuditedSidecar]:
        body = deployment(ns, replicas)
        body["metadata"]["name"] = name
        body["spec"]["selector"]["matchLabels"] = {"app": name}
        body["spec"]["template"]["metadata"]["labels"]["app"] = name
        self.setup.apply(body)
        pods = wait_for(
            lambda: (
                [p for p in pods_of_app(self.setup, ns, name) if p]
                if len(pods_of_app(self.setup, ns, name)) == replicas
                else None
            ),
            what=f"{name} pods",
        )
        text = self.setup.get("configmap", "packgate-gateway", ns)["data"]["policy.yaml"]  # type: ignore[index]
        out = []
        for pod in pods:
            token = self.setup.token(ns, pod)
            out.append(
                AuditedSidecar(
                    pod, text, token, self.workdir / pod["metadata"]["name"], **kw
                ).start()
            )
        wait_for(
            lambda: all(s.readyz()[0] == 200 for s in out if s.restart_if_port_was_taken() is None),
            30,
            "sidecars ready",
        )
        return out

    def query(self, token: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "packgate_sidecar.cli",
                "audit",
                "query",
                f"--url={self.collector.read_url}",
                f"--token={token}",
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def records(self, token: str, **filters: str) -> list[dict[str, Any]]:
        args = [f"--{k}={v}" for k, v in filters.items()]
        done = self.query(token, "-o", "json", "--limit=1000", *args)
        assert done.returncode == 0, done.stderr
        return list(json.loads(done.stdout)["records"])

    def events(self, ns: str) -> list[dict[str, Any]]:
        got = self.setup.kubectl("get", "events", "-n", ns, "-o", "json").stdout
        return [
            e
            for e in json.loads(got)["items"]
            if e.get("source", {}).get("component") == "packgate-audit-collector"
        ]


def pods_of_app(setup: Setup, ns: str, app: str) -> list[dict[str, Any]]:
    got = setup.kubectl("get", "pods", "-n", ns, "-l", f"app={app}", "-o", "json").stdout
    return list(json.loads(got)["items"])


@pytest.fixture(scope="module")
def env(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuditEnv]:
    root = tmp_path_factory.mktemp("audit")
    with (
        upstream_process(root / "upstream.log") as upstream_url,
        AuditEnv(cluster, root, upstream_url) as running,
    ):
        yield running


def chat(sidecar: Sidecar, text: str) -> int:
    try:
        sidecar.chat(text)
        return 200
    except openai.PermissionDeniedError:
        return 403
    except openai.APIStatusError as exc:
        return exc.status_code


def stored_lines(env: AuditEnv, ns: str, pod: dict[str, Any]) -> list[bytes]:
    meta = pod["metadata"]
    directory = env.collector.store / "pods" / ns / f"{meta['name']}_{meta['uid']}"
    if not directory.exists():
        return []
    return [ln for p in list_segments(directory) for ln in p.read_bytes().splitlines()]


def test_records_survive_collector_and_operator_restarts_and_pod_deletion(env: AuditEnv) -> None:
    first, second = env.sidecars(env.ns, 2, "chat")
    sent = [chat(first, "zanzibar plans" if i % 4 == 0 else f"hello {i}") for i in range(12)]
    assert sent.count(403) == 3 and sent.count(200) == 9
    # Every record the sidecar sealed reaches the collector, byte for byte.
    wait_for(lambda: stored_lines(env, env.ns, first.pod) == first.records(), 15, "shipped")

    def pod_events() -> dict[str, dict[str, Any]]:
        return {
            e["involvedObject"]["name"]: e
            for e in env.events(env.ns)
            if e["reason"] == "PolicyBlocked"
        }

    # The collector is killed (SIGKILL) right after acknowledging: nothing acknowledged is lost,
    # the restart recovers from its write-ahead log, and shipping goes on. (Event counts not yet
    # written are held in memory, so the test lets those out first.)
    first_name = first.pod["metadata"]["name"]
    wait_for(lambda: pod_events().get(first_name, {}).get("count") == 3, 15, "first events")
    assert chat(first, "just before the crash") == 200
    last = len(first.records()) - 1
    wait_for(lambda: first.readyz()[1]["audit_shipping"][0]["acked_seq"] == last, 15, "acked")
    assert env.collector.proc is not None
    env.collector.proc.kill()
    env.collector.proc.wait(timeout=10)
    env.collector.start()
    assert stored_lines(env, env.ns, first.pod) == first.records()
    assert chat(first, "after the crash") == 200
    wait_for(lambda: stored_lines(env, env.ns, first.pod) == first.records(), 15, "resumed")

    # The collector goes away; requests go on (the spool holds them) and nothing is lost.
    env.collector.stop()
    assert [chat(first, f"while down {i}") for i in range(5)] == [200] * 5
    assert [chat(second, "zanzibar again") for _ in range(2)] == [403, 403]
    env.collector.start()
    wait_for(lambda: stored_lines(env, env.ns, first.pod) == first.records(), 45, "caught up")
    wait_for(lambda: stored_lines(env, env.ns, second.pod) == second.records(), 45, "second")

    # The operator restarts: shipping does not depend on it.
    env.setup.operator.stop()
    env.setup.operator.start()
    assert chat(second, "after operator restart") == 200

    # The pod is deleted: SIGTERM drains the sidecar's spool before the pod object goes.
    assert chat(second, "last words") == 200
    second.terminate()
    env.setup.kubectl("delete", "pod", second.pod["metadata"]["name"], "-n", env.ns, "--wait=false")
    assert stored_lines(env, env.ns, second.pod) == second.records()
    assert "audit drain complete" in second.log()

    # Queries see all of it, filtered; the blocked requests are the zanzibar ones.
    blocked = env.records(env.viewer, namespace=env.ns, decision="blocked")
    assert len(blocked) == 5 and {r["status"] for r in blocked} == {403}
    assert {r["policies"][0] for r in blocked} == {"content-filter"}
    mine = env.records(env.viewer, pod=first.pod["metadata"]["name"], status="2xx")
    assert len(mine) == 9 + 2 + 5
    times = [r["time"] for r in mine]
    assert times == sorted(times, reverse=True)
    table = env.query(env.viewer, "--namespace", env.ns, "--decision", "blocked")
    assert table.returncode == 0 and table.stdout.count("blocked") == 5, table.stdout

    # The stranger is refused, by the CLI exit status and message.
    refused = env.query(env.stranger, "--namespace", env.ns)
    assert refused.returncode == 1
    assert "may not get policypacks in namespace" in refused.stderr

    # Events: one aggregated Warning per pod, policy and reason, with the count.
    names = {first.pod["metadata"]["name"]: 3, second.pod["metadata"]["name"]: 2}
    wait_for(lambda: {n: e["count"] for n, e in pod_events().items()} == names, 15, "events")
    for event in pod_events().values():
        assert event["type"] == "Warning" and "content-filter blocked" in event["message"]
    summary = [e for e in env.events(env.ns) if e["involvedObject"]["kind"] == "PolicyPack"]
    assert len(summary) == 1 and summary[0]["count"] == 5

    # The store verifies as a whole, MACs included.
    key_file = env.workdir / "audit.key"
    key_file.write_text(KEY.hex())
    verified = subprocess.run(
        [
            sys.executable,
            "-m",
            "packgate_sidecar.cli",
            "audit",
            "verify",
            str(env.collector.store),
            "--key-file",
            str(key_file),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert verified.returncode == 0, verified.stdout
    assert "OK: 2 chain(s)" in verified.stdout and "MACs checked" in verified.stdout
    first.stop()


def test_a_full_spool_refuses_requests_until_the_collector_catches_up(env: AuditEnv) -> None:
    (sidecar,) = env.sidecars(
        env.other_ns, 1, "spool", extra_env={"PACKGATE_AUDIT_SPOOL_MAX_BYTES": "6000"}
    )
    try:
        env.collector.stop()
        codes = [chat(sidecar, f"hello {i}") for i in range(20)]
        assert 403 in codes, codes  # the audit-logger failed closed once the spool was full
        status, body = sidecar.readyz()
        assert status == 503 and "audit spool full" in body["reason"]
        assert "packgate_audit_spool_full 1.0" in sidecar.metrics()
        env.collector.start()
        wait_for(lambda: sidecar.readyz()[0] == 200, 45, "spool drained")
        assert chat(sidecar, "hello again") == 200
        assert "packgate_audit_spool_full 0.0" in sidecar.metrics()
    finally:
        sidecar.stop()


def test_forged_records_are_quarantined_and_reported(env: AuditEnv) -> None:
    (sidecar,) = env.sidecars(env.ns, 1, "forge")
    try:
        assert chat(sidecar, "hello") == 200
        wait_for(lambda: stored_lines(env, env.ns, sidecar.pod) == sidecar.records(), 15, "shipped")
        last = parse_line(sidecar.records()[-1])
        assert not isinstance(last, str)
        # Someone holding the pod's token sends a record sealed without the audit key.
        forged, _ = seal(
            ChainState(last.seq + 1, last.hash),
            "access",
            {**last.body, "status": 200, "request_id": "forged"},
            key=b"not-the-audit-key-0123456789abcd",
            ts=last.ts,
            kid=last.kid,
        )
        token = (sidecar.workdir / "token").read_text()
        meta = sidecar.pod["metadata"]
        request = urllib.request.Request(
            f"{env.collector.url}/v1/namespaces/{env.ns}/pods/{meta['name']}/records",
            data=forged,
            method="POST",
            headers={"Authorization": f"Bearer {token}"},
        )
        import ssl

        context = ssl.create_default_context(cadata=env.setup.operator.ca_pem)
        with urllib.request.urlopen(request, context=context, timeout=10) as response:
            answer = json.loads(response.read())
        assert answer["stored"] == 0 and answer["quarantined"][0]["reason"].startswith("bad_mac")
        assert b"forged" not in b"".join(stored_lines(env, env.ns, sidecar.pod))
        # The sidecar's next genuine record still links to the stored chain.
        assert chat(sidecar, "hello again") == 200
        wait_for(lambda: stored_lines(env, env.ns, sidecar.pod) == sidecar.records(), 15, "more")
        problems = env.query(env.viewer, "--problems", "--namespace", env.ns)
        assert "QUARANTINED" in problems.stdout and "bad_mac" in problems.stdout
        assert 'packgate_collector_records_quarantined_total{reason="bad_mac"} 1.0' in (
            env.collector.metrics()
        )
        wait_for(
            lambda: [
                e
                for e in env.events(env.ns)
                if e["reason"] == "AuditRecordQuarantined"
                and e["involvedObject"]["name"] == meta["name"]
            ],
            15,
            "event",
        )
    finally:
        sidecar.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    chromium, chromedriver = install()
    running = Browser(chromium, chromedriver)
    try:
        yield running
    finally:
        running.close()


def test_the_events_page_filters_shows_details_follows_live_and_refuses_a_stranger(
    env: AuditEnv, browser: Browser
) -> None:
    (sidecar,) = env.sidecars(env.ns, 1, "page")
    name = sidecar.pod["metadata"]["name"]
    try:
        assert [chat(sidecar, t) for t in ("zanzibar one", "hello", "zanzibar two")] == [
            403,
            200,
            403,
        ]
        wait_for(lambda: stored_lines(env, env.ns, sidecar.pod) == sidecar.records(), 15, "shipped")

        browser.get(env.collector.read_url + "/")
        browser.type("#token", env.viewer)
        browser.click("#signin-form button")
        wait_for(lambda: browser.rows(), 15, "records on the page")
        assert "system:serviceaccount:" in browser.text("#who")
        browser.type("#filters input[name=pod]", name)
        browser.script("document.querySelector('#filters select[name=decision]').value = 'blocked'")
        browser.click("#filters button")
        wait_for(
            lambda: len(browser.rows()) == 2 and all(r[2] == name for r in browser.rows()),
            15,
            "the filtered rows",
        )
        rows = browser.rows()
        assert [r[5] for r in rows] == ["blocked", "blocked"] and [r[4] for r in rows] == [
            "403"
        ] * 2
        assert rows[0][0] >= rows[1][0]  # newest first

        browser.click("#records tbody tr")
        wait_for(lambda: "content-filter" in browser.text("#detail"), 10, "the detail view")
        detail = browser.text("#detail")
        assert "block" in detail and "MAC verified" in detail and "true" in detail
        assert "zanzibar" not in detail  # decisions, usage, latency: never prompt text
        browser.click("#close")

        # Live: a new block appears at the top without reloading the page.
        assert chat(sidecar, "zanzibar three") == 403
        wait_for(lambda: len(browser.rows()) == 3, 20, "the live update")
        assert "fresh" in str(
            browser.script("return document.querySelector('#records tbody tr').className")
        )

        # A stranger (may not get PolicyPacks in the namespace) sees nothing.
        browser.script("sessionStorage.clear()")
        browser.get(env.collector.read_url + "/")
        browser.type("#token", env.stranger)
        browser.click("#signin-form button")
        wait_for(lambda: browser.text("#error"), 10, "the refusal")
        assert "may not get policypacks" in browser.text("#error")
        assert browser.rows() == []
    finally:
        sidecar.stop()
