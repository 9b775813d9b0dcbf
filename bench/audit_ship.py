"""Audit shipping at scale (100 sidecars x 50 records/s into one collector) and its cost.

Why it exists: issue 14 asks for the collector's cost and latency under a realistic fleet, and
for proof that shipping does not slow the proxy down. Two measurements, on the local control plane
(real TokenReviews for every shipping pod, the collector verifying hash, MAC and link of every
record and fsyncing before each acknowledgement):

- fleet: ``SIDECARS`` simulated sidecars, each a real ``AuditWriter`` + ``Shipper`` (the sidecar's
  own code) sealing ``RATE`` records/s with a pod-bound token of its own, split over two load
  processes. Reported: acknowledgement latency (sealed -> acknowledged, every record), collector
  CPU (share of one core) and peak RSS, and storage bytes per record (segments + index).
- cost: two real sidecars (``packgate gateway run``, the seed chain with audit-logger) side by side
  against the same local upstream, one shipping to the collector and one not, alternating rounds
  of sequential requests; the difference of their median latencies is shipping's added cost.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import kube
from bench.common import REPO, Report, Row, Verdict, cpu_seconds, log, peak_rss_mb
from tests.support.gateway_cli import gateway_argv
from tests.support.upstream import upstream_process

SIDECARS, RATE = 100, 50
WARMUP = 3.0  # seconds of the run reported apart: every sidecar connecting at once


@dataclass
class Options:
    workdir: Path
    quick: bool


def _pods(k: kube.Kube, ns: str, count: int, prefix: str) -> list[tuple[str, str]]:
    out = []
    for i in range(count):
        body = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": f"{prefix}-{i}"},
            "spec": {"containers": [{"name": "app", "image": "registry.invalid/app:1"}]},
        }
        pod = k.ok("POST", f"/api/v1/namespaces/{ns}/pods", body)
        out.append((pod["metadata"]["name"], pod["metadata"]["uid"]))
    return out


def _token(k: kube.Kube, ns: str, pod: tuple[str, str]) -> str:
    request = {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {
            "audiences": ["packgate"],
            "expirationSeconds": 3600,
            "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": pod[0], "uid": pod[1]},
        },
    }
    answer = k.ok("POST", f"/api/v1/namespaces/{ns}/serviceaccounts/default/token", request)
    return str(answer["status"]["token"])


def run(report: Report, opts: Options) -> None:
    from collector_process import CollectorProcess
    from packgate_operator import tls

    cluster = kube._cluster()
    k = kube.Kube(cluster.kubeconfig)
    ns = kube._namespace(k, "bench-audit")
    key = os.urandom(32)
    k.ok(
        "POST",
        f"/api/v1/namespaces/{ns}/secrets",
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "audit"},
            "stringData": {"audit-key": key.hex()},
        },
    )
    work = opts.workdir / "audit"
    tls.generate(work / "ca", ["localhost", "127.0.0.1"])
    sidecars = 10 if opts.quick else SIDECARS
    seconds = 5.0 if opts.quick else 20.0
    log(f"audit: {sidecars} shipping pods and their tokens")
    pods = _pods(k, ns, sidecars + 1, "ship")
    tokens = [_token(k, ns, pod) for pod in pods]
    collector = CollectorProcess(
        cluster.kubeconfig,
        work / "collector",
        work / "ca",
        audit_key_secret="audit",  # noqa: S106 - a Secret name
        events_interval=10,
    ).start()
    try:
        fleet = _fleet(
            report, collector, ns, pods[:sidecars], tokens[:sidecars], key, work, seconds
        )
        _cost(report, collector, ns, pods[-1], tokens[-1], key, work, opts.quick)
    finally:
        collector.stop()
    del fleet


def _fleet(
    report: Report,
    collector: Any,
    ns: str,
    pods: list[tuple[str, str]],
    tokens: list[str],
    key: bytes,
    work: Path,
    seconds: float,
) -> None:
    section = report.section(
        "audit",
        f"Audit shipping: {len(pods)} sidecars x {RATE} records/s into one collector",
        [("value", "value"), ("unit", "unit")],
    )
    halves = [list(range(len(pods)))[i::2] for i in range(2)]
    procs, outputs = [], []
    for n, half in enumerate(halves):
        spec = {
            "url": collector.url,
            "ca": (work / "ca" / "ca.crt").read_text(),
            "ns": ns,
            "key": key.hex(),
            "seconds": seconds,
            "rate": RATE,
            "dir": str(work / f"load{n}"),
            "sidecars": [{"pod": pods[i][0], "token": tokens[i]} for i in half],
        }
        config = work / f"load{n}.json"
        config.write_text(json.dumps(spec))
        outputs.append(work / f"load{n}.out.json")
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    str(Path(__file__)),
                    "--load",
                    str(config),
                    "--out",
                    str(outputs[-1]),
                ],
                cwd=REPO,
            )
        )
    pid = collector.proc.pid
    load_before = os.getloadavg()[0]
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    load_cpu = 0.0
    for proc in procs:
        _, _, usage = os.wait4(proc.pid, 0)  # the load's own CPU: is the machine saturated?
        proc.returncode = 0
        load_cpu += usage.ru_utime + usage.ru_stime
    elapsed = time.monotonic() - t0
    load_after = os.getloadavg()[0]
    cpu_used = cpu_seconds(pid) - cpu0
    cpu = cpu_used / elapsed
    # Where an acknowledgement's time goes on the collector: verify + append + fsync per batch.
    sums = {}
    for line in collector.metrics().splitlines():
        for key in (
            "packgate_collector_ingest_seconds_sum",
            "packgate_collector_ingest_seconds_count",
        ):
            if line.startswith(key + " "):
                sums[key] = float(line.split()[1])
    batches = sums.get("packgate_collector_ingest_seconds_count", 0.0)
    per_batch = sums.get("packgate_collector_ingest_seconds_sum", 0.0) / max(1.0, batches) * 1000
    latencies: list[float] = []
    sealed_at: list[float] = []
    waits: list[float] = []
    trips: list[float] = []
    records = 0
    for path in outputs:
        data = json.loads(path.read_text())
        latencies += data["latencies"]
        sealed_at += data["sealed_at"]
        waits += data["waits"]
        trips += data["trips"]
        records += data["records"]
    # The first seconds carry the start: 100 TLS handshakes and a TokenReview per pod at once.
    start = min(sealed_at, default=0.0)
    early = [lat for lat, at in zip(latencies, sealed_at, strict=True) if at < start + WARMUP]
    steady = [lat for lat, at in zip(latencies, sealed_at, strict=True) if at >= start + WARMUP]
    latencies.sort()
    files = [p for p in collector.store.rglob("*") if p.is_file()]
    chain_bytes = sum(p.stat().st_size for p in files if p.suffix == ".jsonl")
    index_bytes = sum(p.stat().st_size for p in files) - chain_bytes
    acked = max(1, len(latencies))
    p50 = latencies[len(latencies) // 2] * 1000 if latencies else None
    p99 = (
        latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000 if latencies else None
    )
    rows = [
        ("records acknowledged", len(latencies), f"of {records} sealed"),
        ("ack latency p50", round(p50, 1) if p50 else None, "ms"),
        ("ack latency p99", round(p99, 1) if p99 else None, "ms"),
        (
            f"  records sealed in the first {WARMUP:.0f} s",
            _percentiles(early),
            "ms p50 / p99 (connecting, first TokenReview of each pod)",
        ),
        (f"  records sealed after the first {WARMUP:.0f} s", _percentiles(steady), "ms p50 / p99"),
        (
            "  of which: sealed -> POST sent",
            _percentiles(waits),
            "ms p50 / p99 (the shipper's linger and the load process's own lag)",
        ),
        (
            "  of which: POST round trip",
            _percentiles(trips),
            "ms p50 / p99 (TLS, the collector's queue, verify, append, fsync)",
        ),
        ("collector CPU", round(cpu * 100, 1), "% of one core"),
        ("collector CPU per record", round(cpu_used / acked * 1e6, 1), "us (all its threads)"),
        ("collector peak RSS", round(peak_rss_mb(pid), 1), "MiB"),
        (
            "collector time per batch",
            round(per_batch, 1),
            f"ms mean over {batches:.0f} POSTs (body, queue, verify, append, fsync)",
        ),
        ("load generator CPU", round(load_cpu / elapsed * 100, 1), "% of one core (2 processes)"),
        (
            "machine load average",
            f"{load_before:.1f} -> {load_after:.1f}",
            f"1-min, before -> after the load ({os.cpu_count()} cores)",
        ),
        ("storage per record: chain", round(chain_bytes / acked), "bytes (segment files)"),
        ("storage per record: index", round(index_bytes / acked), "bytes (SQLite, WAL included)"),
    ]
    for name, value, unit in rows:
        section.add(Row(name, {"value": value, "unit": unit}))
    section.notes.append(
        f"{seconds:.0f} s of load; every record's hash, MAC and link verified and "
        "fsynced before its acknowledgement; 2 cores shared with the load"
    )
    loaded = f"p50 {p50:.0f} ms; load average {load_before:.1f} -> {load_after:.1f}" if p50 else ""
    report.verdicts.append(Verdict("audit ack latency p99", p99, 1000.0, "ms", False, loaded))


def _cost(
    report: Report,
    collector: Any,
    ns: str,
    pod: tuple[str, str],
    token: str,
    key: bytes,
    work: Path,
    quick: bool,
) -> None:
    from processes import die_with_parent, free_port

    section = report.section(
        "audit_cost",
        "Audit shipping: added latency per request",
        [("p50_ms", "p50 ms"), ("mean_ms", "mean ms"), ("n", "requests")],
    )
    stack = contextlib.ExitStack()
    upstream_url = stack.enter_context(upstream_process(work / "upstream.log"))
    config = work / "seed.yaml"
    seed = (REPO / "examples/policy-configs/chatgpt-enterprise-gateway.yaml").read_text()
    config.write_text(
        seed.replace(
            "provider: openai:chat:gpt-4o",
            f"provider: openai:chat:gpt-4o\n      base_url: {upstream_url}",
        )
    )
    (work / "token").write_text(token)
    sidecars = {}
    for name, ship in (("without shipping", False), ("with shipping", True)):
        port, admin = free_port(), free_port()
        env = {
            **os.environ,
            "OPENAI_API_KEY": "sk-bench",
            "PACKGATE_AUDIT_KEY": key.hex(),
            "PACKGATE_DATA_DIR": str(work / name.replace(" ", "-")),
        }
        if ship:
            env.update(
                PACKGATE_AUDIT_COLLECTOR_URL=collector.url,
                POD_NAME=pod[0],
                POD_NAMESPACE=ns,
                PACKGATE_TOKEN_FILE=str(work / "token"),
                PACKGATE_AUDIT_COLLECTOR_CA=(work / "ca" / "ca.crt").read_text(),
            )
        sidecars[name] = (
            port,
            subprocess.Popen(
                gateway_argv(port, admin, config, None, "--log-level=warning"),
                env=env,
                stdout=subprocess.DEVNULL,
                preexec_fn=die_with_parent,
            ),
        )
    try:
        samples = asyncio.run(
            _alternate(
                {n: p for n, (p, _) in sidecars.items()}, 3 if quick else 6, 1.5 if quick else 4.0
            )
        )
    finally:
        for _, proc in sidecars.values():
            proc.terminate()
            proc.wait(timeout=30)
        stack.close()
    medians = {}
    for name, values in samples.items():
        medians[name] = statistics.median(values) * 1000
        section.add(
            Row(
                name,
                {
                    "p50_ms": round(medians[name], 3),
                    "mean_ms": round(statistics.fmean(values) * 1000, 3),
                    "n": len(values),
                },
            )
        )
    added = medians["with shipping"] - medians["without shipping"]
    section.add(Row("added by shipping", {"p50_ms": round(added, 3)}))
    section.notes.append(
        "sequential chat completions through the seed chain, the two sidecars "
        "alternating in rounds; shipping runs on the same event loop"
    )
    report.verdicts.append(Verdict("audit shipping added latency (p50)", added, 0.1, "ms", False))


async def _alternate(ports: dict[str, int], rounds: int, seconds: float) -> dict[str, list[float]]:
    import aiohttp

    body = {
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": "Summarise our Q3 revenue trends."}],
    }
    samples: dict[str, list[float]] = {name: [] for name in ports}
    async with aiohttp.ClientSession() as session:
        for port in ports.values():  # ready and warm
            for _ in range(200):
                try:
                    async with session.post(
                        f"http://127.0.0.1:{port}/v1/chat/completions", json=body
                    ) as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        for _ in range(rounds):
            for name, port in ports.items():
                url = f"http://127.0.0.1:{port}/v1/chat/completions"
                end = time.monotonic() + seconds
                while time.monotonic() < end:
                    started = time.perf_counter()
                    async with session.post(url, json=body) as response:
                        await response.read()
                    samples[name].append(time.perf_counter() - started)
    return samples


# --- the load process: simulated sidecars, each with the sidecar's own writer and shipper --------


async def _load(spec: dict[str, Any]) -> dict[str, Any]:
    import concurrent.futures

    from packgate_sidecar.audit.ship import Shipper, ShipSettings
    from packgate_sidecar.audit.writer import AuditWriter
    from packgate_sidecar.pod_identity import Channel

    # Each real sidecar has its own process and thread pool; 50 of them in one process must not
    # queue behind asyncio's default pool of a few threads.
    asyncio.get_running_loop().set_default_executor(concurrent.futures.ThreadPoolExecutor(64))
    latencies: list[float] = []
    # Where each record's time went: sealed -> its POST sent (the shipper's linger, and this
    # process's own scheduling), and that POST's round trip (the collector, TLS both ways).
    waits: list[float] = []
    trips: list[float] = []
    sealed_at: list[float] = []
    sealed = 0

    def timed(shipper: Shipper) -> Callable[[bytes], None]:
        post = [0.0, 0.0]
        request = shipper._request

        async def timed_request(method: str, url: str, data: bytes | None = None) -> Any:
            started = time.time()
            try:
                return await request(method, url, data)
            finally:
                if data is not None:
                    post[:] = [started, time.time()]

        shipper._request = timed_request  # type: ignore[method-assign]

        def on_ack(data: bytes) -> None:
            now = time.time()
            for line in data.splitlines():
                if b'"type":"access"' not in line:
                    continue
                at = line.rfind(b'"ts":"')
                stamp = _epoch(line[at + 6 : at + 30].split(b'"')[0].decode())
                latencies.append(now - stamp)
                sealed_at.append(stamp)
                waits.append(post[0] - stamp)
                trips.append(post[1] - post[0])

        return on_ack

    writers, shippers = [], []
    for i, side in enumerate(spec["sidecars"]):
        directory = Path(spec["dir"]) / str(i)
        token = directory / "token"
        directory.mkdir(parents=True, exist_ok=True)
        token.write_text(side["token"])
        # fsync off: 100 real sidecars fsync on their own nodes' disks, not on the collector's.
        writer = AuditWriter(directory / "audit", bytes.fromhex(spec["key"]), fsync=False)
        writer.start()
        settings = ShipSettings(
            Channel(spec["url"], spec["ns"], side["pod"], token, ca_pem=spec["ca"])
        )
        shipper = Shipper(settings, directory / "audit")
        shipper.on_ack = timed(shipper)
        writer.on_durable = shipper.notify
        shipper.start()
        writers.append(writer)
        shippers.append(shipper)

    async def produce(i: int, writer: AuditWriter) -> int:
        n = 0
        interval = 1.0 / spec["rate"]
        next_at = time.monotonic() + random.uniform(0, interval)
        end = time.monotonic() + spec["seconds"]
        while next_at < end:
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            writer.submit(
                {
                    "time": "2025-03-01T12:00:00.000Z",
                    "request_id": f"r{i}-{n}",
                    "endpoint": "chat.completions",
                    "status": 200,
                    "latency_ms": 12.5,
                    "namespace": spec["ns"],
                    "pod": spec["sidecars"][i]["pod"],
                    "pack": "bench",
                    "model": "gpt-4o",
                    "decisions": [
                        {
                            "policy": "prompt-injection",
                            "decision": "allow",
                            "reason": "request/score=0.01",
                        }
                    ],
                }
            )
            n += 1
            next_at += interval
        return n

    counts = await asyncio.gather(*(produce(i, w) for i, w in enumerate(writers)))
    sealed = sum(counts)
    for writer in writers:
        await writer.aflush()
    deadline = time.monotonic() + 30
    while len(latencies) < sealed and time.monotonic() < deadline:  # noqa: ASYNC110 - polling
        await asyncio.sleep(0.1)
    for writer, shipper in zip(writers, shippers, strict=True):
        await shipper.close()
        await writer.aclose()
    return {
        "latencies": latencies,
        "sealed_at": sealed_at,
        "waits": waits,
        "trips": trips,
        "records": sealed,
    }


def _percentiles(values: list[float]) -> str:
    if not values:
        return "-"
    values = sorted(values)
    p99 = values[min(len(values) - 1, int(len(values) * 0.99))]
    return f"{values[len(values) // 2] * 1000:.0f} / {p99 * 1000:.0f}"


def _epoch(stamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--load", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    result = asyncio.run(_load(json.loads(args.load.read_text())))
    args.out.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    _ = tempfile  # the module is both the bench step and its load process
    sys.exit(main())
