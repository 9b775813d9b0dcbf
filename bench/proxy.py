"""Proxy overhead side by side: direct, bare aiohttp, packgate (empty and seed chain), LiteLLM.

Why it exists: it is the headline of the benchmark. Absolute requests per second drift on a
shared two-core machine, so every setup runs against the same upstream in the same rounds, the
order of the setups rotates from round to round, and the table reports the median over rounds of
the *per-round* ratios (a noisy minute hits all setups of that round alike).

Layout (see common.Cores): each server under test (and the upstream of the "direct" row, which
is then the server under test) runs on the SUT core; the load generator and the upstream the
proxies forward to share the other core. The idle setups sit on the SUT core doing nothing while
another setup is measured.

It also reads, from the seed-chain sidecar's own Prometheus metrics, what each policy cost per
request (the "chain" section), and the sidecars' resident memory idle and at peak under load
(the "memory" section).
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from processes import free_port

from tests.support.gateway_cli import gateway_argv

from . import payloads, peers
from .common import (
    BENCH,
    REPO,
    Cores,
    Report,
    Row,
    Service,
    StartError,
    Verdict,
    http_get,
    http_post,
    log,
    median,
    peak_rss_mb,
    pinned,
    rss_mb,
)

UPSTREAM_KEY = "sk-bench-upstream-0123456789"
# What clients present: packgate and the floor ignore it, LiteLLM checks it as its master key.
CLIENT_KEY = "sk-" + secrets.token_hex(32)
AUDIT_KEY = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
# The seed chain again, in its own sidecar, with a new prompt (and answer) in every request: the
# other rows repeat one body, as wrk does, so their request and response verdicts come from the
# verdict cache; this row shows what the chain costs when nothing repeats.
FRESH = "packgate-seed-fresh"
SCENARIOS = [("json", 1), ("stream", 1), ("json", 32), ("stream", 32)]
SEED_CONFIG = REPO / "examples/policy-configs/chatgpt-enterprise-gateway.yaml"
SHARED_SEED = REPO.parent / "shared/seed/policy-config-examples.yaml"


@dataclass
class Options:
    rounds: int
    duration: float
    warmup: float
    workdir: Path
    peers: bool  # LiteLLM rows
    setups: list[str] | None = None  # restrict to these setup keys
    profile_dir: Path | None = None  # py-spy the seed sidecar under load into this directory


@dataclass
class Setup:
    key: str
    port: int
    service: Service | None = None
    admin_url: str | None = None
    status: str = "ok"
    note: str = ""
    checks: dict[str, Any] = field(default_factory=dict)
    idle_rss_mb: float | None = None


def seed_config(base_url: str) -> dict[str, Any]:
    """The first seed policy config, unchanged except that its target points at `base_url`."""
    if SEED_CONFIG.exists():
        document = yaml.safe_load(SEED_CONFIG.read_text())
    else:
        document = next(yaml.safe_load_all(SHARED_SEED.read_text()))
    document["providers"]["targets"][0]["base_url"] = base_url
    return dict(document)


def empty_config(base_url: str) -> dict[str, Any]:
    config = seed_config(base_url)
    config["pack"]["name"] = "bench-empty-chain"
    config["policies"] = {"chain": []}
    config["policy"] = {}
    return config


def start_packgate(
    name: str,
    config: dict[str, Any],
    port: int,
    work: Path,
    cpu: str | None,
    extra: Sequence[str] = (),
    env: dict[str, str] | None = None,
) -> tuple[Service, str]:
    admin = free_port()
    config_path = work / f"{name}.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    data = work / f"{name}-data"
    data.mkdir(exist_ok=True)
    argv = gateway_argv(port, admin, config_path, data, *extra)
    env = {"OPENAI_API_KEY": UPSTREAM_KEY, "PACKGATE_AUDIT_KEY": AUDIT_KEY, **(env or {})}
    service = Service(name, pinned(argv, cpu), work / f"{name}.log", env=env).start()
    return service, f"http://127.0.0.1:{admin}"


def _loadgen(
    port: int, body: Path, concurrency: int, opts: Options, cpu: str | None, vary: bool = False
) -> dict[str, Any]:
    argv = [
        sys.executable,
        str(BENCH / "loadgen.py"),
        "--port",
        str(port),
        "--body",
        str(body),
        "--concurrency",
        str(concurrency),
        "--duration",
        str(opts.duration),
        "--warmup",
        str(opts.warmup),
        "--auth",
        CLIENT_KEY,
        *(["--vary"] if vary else []),
    ]
    done = subprocess.run(
        pinned(argv, cpu),
        capture_output=True,
        text=True,
        check=False,
        timeout=opts.duration + opts.warmup + 150,
    )
    if done.returncode != 0:
        raise RuntimeError(f"loadgen failed ({done.returncode}): {done.stderr[-500:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _metrics(admin_url: str | None) -> dict[tuple[str, str, str], float]:
    """Prometheus samples of the policy duration histogram and request counter."""
    out: dict[tuple[str, str, str], float] = {}
    if admin_url is None:
        return out
    status, body = http_get(admin_url + "/metrics")
    if status != 200:
        return out
    for line in body.decode().splitlines():
        if line.startswith("packgate_policy_duration_seconds_"):
            name, _, value = line.rpartition(" ")
            labels = dict(
                part.split("=", 1) for part in name[name.index("{") + 1 : -1].split(",") if part
            )
            metric = name[: name.index("{")].rsplit("_", 1)[1]  # sum | count | bucket
            if metric in ("sum", "count"):
                key = (labels["kind"].strip('"'), labels["phase"].strip('"'), metric)
                out[key] = float(value)
        elif line.startswith("packgate_requests_total{"):
            out[("", "requests", "count")] = out.get(("", "requests", "count"), 0.0) + float(
                line.rpartition(" ")[2]
            )
    return out


def _sanity(setup: Setup, bodies: dict[str, bytes], upstream_url: str) -> None:
    """One request of each kind; the seed rows also prove the prompt was redacted upstream."""
    for kind, body in bodies.items():
        status, answer = http_post(
            f"http://127.0.0.1:{setup.port}/v1/chat/completions",
            body,
            {"Authorization": f"Bearer {CLIENT_KEY}"},
        )
        if status != 200:
            setup.status = "error"
            setup.note = f"{kind} request answered HTTP {status}: {answer[:300]!r}"
            return
        if kind == "stream" and b"data: [DONE]" not in answer:
            setup.status = "error"
            setup.note = "the streamed answer did not end with data: [DONE]"
            return
        if setup.key not in ("direct", "floor", "packgate-empty", "litellm"):
            _, seen = http_get(upstream_url + "/_bench/last")
            leaked = [s for s in payloads.PROMPT_SECRETS if s.encode() in seen]
            setup.checks[f"{kind}_redacted"] = not leaked


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _diff(a: float | None, b: float | None) -> float | None:
    return a - b if a is not None and b is not None else None


def run(report: Report, opts: Options) -> None:
    cores = Cores.detect()
    work = opts.workdir / "proxy"
    work.mkdir(parents=True, exist_ok=True)
    bodies = {"json": payloads.chat_body(False), "stream": payloads.chat_body(True)}
    body_files = {}
    for kind, body in bodies.items():
        body_files[kind] = work / f"{kind}.json"
        body_files[kind].write_bytes(body)

    section = report.section(
        "proxy",
        "Chat completions through each setup (~1 KB prompt with PII; medians over rounds)",
        [
            ("rps", "req/s"),
            ("p50_ms", "p50 ms"),
            ("p99_ms", "p99 ms"),
            ("ttfb_p50_ms", "TTFB p50 ms"),
            ("added_p50_ms", "+p50 vs direct ms"),
            ("vs_floor_x", "RPS vs aiohttp"),
            ("vs_litellm_x", "RPS vs LiteLLM"),
            ("loadgen_cpu_pct", "loadgen CPU %"),
        ],
    )
    section.notes.append(cores.describe())
    section.notes.append(
        f"{opts.rounds} rounds x {opts.duration:g}s (+{opts.warmup:g}s warm-up) per setup and "
        "scenario, setup order rotated each round; ratios are medians of per-round ratios"
    )
    started: list[Service] = []
    setups: dict[str, Setup] = {}

    def want(key: str) -> bool:
        return opts.setups is None or key in opts.setups

    try:
        # Two identical upstreams: one on the SUT core for "direct", one on the load core for
        # the proxies (so the proxy has its core to itself).
        up_direct, up_proxied = free_port(), free_port()
        for port, cpu, name in (
            (up_direct, cores.sut, "upstream-direct"),
            (up_proxied, cores.load, "upstream"),
        ):
            argv = [sys.executable, str(BENCH / "upstream.py"), "--port", str(port)]
            service = Service(name, pinned(argv, cpu), work / f"{name}.log").start()
            started.append(service)
            service.wait_http(f"http://127.0.0.1:{port}/_bench/health", 30)
        upstream_url = f"http://127.0.0.1:{up_proxied}"
        upstream_base = upstream_url + "/v1"
        setups["direct"] = Setup("direct", up_direct)

        if want("floor"):
            port = free_port()
            argv = [
                sys.executable,
                str(BENCH / "floor.py"),
                "--port",
                str(port),
                "--upstream",
                upstream_base,
                "--key",
                UPSTREAM_KEY,
            ]
            service = Service("floor", pinned(argv, cores.sut), work / "floor.log").start()
            started.append(service)
            setups["floor"] = Setup("floor", port, service)
            _ready(setups["floor"], f"http://127.0.0.1:{port}/healthz", 30)

        for key, config in (
            ("packgate-empty", empty_config(upstream_base)),
            ("packgate-seed", seed_config(upstream_base)),
            (FRESH, seed_config(upstream_base)),
        ):
            if not want(key):
                continue
            port = free_port()
            service, admin = start_packgate(key, config, port, work, cores.sut)
            started.append(service)
            setups[key] = Setup(key, port, service, admin)
            _ready(setups[key], admin + "/readyz", 60)

        if opts.peers and (want("litellm") or want("litellm-pii")):
            for peer in peers.start_litellm(
                work, upstream_base, UPSTREAM_KEY, CLIENT_KEY, cores.sut, section.notes
            ):
                if want(peer.key):
                    setups[peer.key] = Setup(
                        peer.key, peer.port, peer.service, status=peer.status, note=peer.note
                    )
                if peer.service is not None:
                    started.append(peer.service)
        elif not opts.peers:
            section.notes.append("LiteLLM rows not run (--quick or --no-peers)")

        for setup in setups.values():
            if setup.status == "ok":
                _sanity(setup, bodies, upstream_url)
            if setup.status == "ok" and setup.service is not None:
                setup.idle_rss_mb = rss_mb(setup.service.pid)

        runnable = [s for s in setups.values() if s.status == "ok"]
        results: dict[tuple[str, int], dict[str, list[dict[str, Any]]]] = {}
        chain_costs: dict[tuple[str, int], dict[tuple[str, str, str], float]] = {}
        seed = setups.get("packgate-seed")
        for kind, concurrency in SCENARIOS:
            scenario = (kind, concurrency)
            results[scenario] = {s.key: [] for s in runnable}
            before = _metrics(seed.admin_url) if seed and seed.status == "ok" else {}
            for round_no in range(opts.rounds):
                shift = round_no % len(runnable)
                for setup in runnable[shift:] + runnable[:shift]:
                    log(
                        f"proxy: {kind} c{concurrency} round {round_no + 1}/{opts.rounds} "
                        f"{setup.key}"
                    )
                    try:
                        outcome = _loadgen(
                            setup.port,
                            body_files[kind],
                            concurrency,
                            opts,
                            cores.load,
                            vary=setup.key == FRESH,
                        )
                    except (RuntimeError, subprocess.TimeoutExpired, ValueError) as exc:
                        outcome = {"failed": str(exc)[:300]}
                    results[scenario][setup.key].append(outcome)
            if before:
                after = _metrics(seed.admin_url if seed else None)
                chain_costs[scenario] = {k: v - before.get(k, 0.0) for k, v in after.items()}

        if opts.profile_dir is not None and seed is not None and seed.status == "ok":
            _profile(report, seed, body_files["json"], opts, cores)
        _proxy_rows(report, section, setups, results)
        _chain_rows(report, chain_costs, seed)
        _memory_rows(report, setups)
    finally:
        for service in reversed(started):
            service.stop()


def _profile(report: Report, seed: Setup, body: Path, opts: Options, cores: Cores) -> None:
    from . import pyspy

    assert seed.service is not None and opts.profile_dir is not None
    log("proxy: profiling the seed-chain sidecar under json c32 load (py-spy)")

    def load() -> None:
        _loadgen(seed.port, body, 32, opts, cores.load)

    raw = pyspy.record(seed.service.pid, opts.warmup + opts.duration, opts.profile_dir, load)
    if raw is not None:
        pyspy.summarise(report, raw)


def _ready(setup: Setup, url: str, timeout: float) -> None:
    assert setup.service is not None
    try:
        setup.service.wait_http(url, timeout, give_up=_config_refused)
    except StartError as exc:
        setup.status = "pending"
        setup.note = str(exc)[:600]


def _config_refused(status: int, body: bytes) -> str | None:
    """A sidecar that reports its config as invalid will not become ready by waiting."""
    if status != 503:
        return None
    try:
        detail = json.loads(body)
        issues = detail["last_error"]["issues"]
    except (ValueError, KeyError, TypeError):
        return None
    if not issues:
        return None
    text = "; ".join(f"{i.get('path')}: {i.get('message')}" for i in issues[:3])
    return f"config refused by the sidecar: {text}"


def _round_metric(
    rounds: list[dict[str, Any]], pick: Callable[[dict[str, Any]], Any]
) -> list[float | None]:
    out: list[float | None] = []
    for outcome in rounds:
        try:
            value = pick(outcome)
        except (KeyError, TypeError):
            value = None
        out.append(float(value) if value is not None else None)
    return out


def _per_round(
    a: list[float | None],
    b: list[float | None],
    op: Callable[[float | None, float | None], float | None],
) -> float | None:
    return median([op(x, y) for x, y in zip(a, b, strict=False)])


def _proxy_rows(
    report: Report,
    section: Any,
    setups: dict[str, Setup],
    results: dict[tuple[str, int], dict[str, list[dict[str, Any]]]],
) -> None:
    order = ["direct", "floor", "packgate-empty", "packgate-seed", FRESH, "litellm", "litellm-pii"]
    ratios: dict[str, float | None] = {}
    for (kind, concurrency), by_setup in results.items():
        rps = {
            k: _round_metric(v, lambda o: o["rps"] if o.get("ok") else None)
            for k, v in by_setup.items()
        }
        p50 = {k: _round_metric(v, lambda o: o["latency_ms"]["p50"]) for k, v in by_setup.items()}
        p99 = {k: _round_metric(v, lambda o: o["latency_ms"]["p99"]) for k, v in by_setup.items()}
        ttfb = {k: _round_metric(v, lambda o: o["ttfb_ms"]["p50"]) for k, v in by_setup.items()}
        cpu = {k: _round_metric(v, lambda o: o["loadgen_cpu_pct"]) for k, v in by_setup.items()}
        for key in order:
            setup = setups.get(key)
            if setup is None:
                continue
            name = f"{kind} c{concurrency} {key}"
            if setup.status != "ok":
                said = any(r.note == setup.note for r in section.rows)
                section.add(Row(name, status=setup.status, note="" if said else setup.note))
                continue
            failures = [o["failed"] for o in by_setup.get(key, []) if "failed" in o]
            values = {
                "rps": median(rps[key]),
                "p50_ms": median(p50[key]),
                "p99_ms": median(p99[key]),
                "ttfb_p50_ms": median(ttfb[key]) if kind == "stream" else None,
                "added_p50_ms": _per_round(p50[key], p50.get("direct", []), _diff)
                if key != "direct"
                else None,
                "vs_floor_x": _per_round(rps[key], rps.get("floor", []), _ratio)
                if key not in ("direct", "floor")
                else None,
                "vs_litellm_x": _per_round(rps[key], rps.get("litellm", []), _ratio)
                if key.startswith("packgate")
                else None,
                "loadgen_cpu_pct": median(cpu[key]),
            }
            if kind == "stream" and key != "floor":
                values["ttfb_vs_floor_ms"] = _per_round(ttfb[key], ttfb.get("floor", []), _diff)
            notes = []
            errors = sum(sum(o.get("errors", {}).values()) for o in by_setup.get(key, []))
            non_200 = sum(
                n
                for o in by_setup.get(key, [])
                for s, n in o.get("statuses", {}).items()
                if s != "200"
            )
            if errors or non_200:
                notes.append(f"{errors} connection errors, {non_200} non-200 answers")
            if failures:
                notes.append("failed rounds: " + failures[0])
            if any(o.get("stretched") for o in by_setup.get(key, [])):
                notes.append("window stretched to hold two answers per connection (slow setup)")
            for check, ok in setup.checks.items():
                if check.startswith(kind):
                    values["prompt_redacted"] = ok
                    if not ok:
                        notes.append("the prompt's PII reached the upstream unredacted")
            section.add(Row(name, values, note="; ".join(notes)))
            tag = f"{kind}_c{concurrency}_{key}"
            ratios[f"{tag}_floor"] = values["vs_floor_x"]
            ratios[f"{tag}_litellm"] = values["vs_litellm_x"]
            ratios[f"{tag}_added"] = values["added_p50_ms"]
            ratios[f"{tag}_ttfb"] = values.get("ttfb_vs_floor_ms")
    _direct_note(section)
    seed_ok = setups.get("packgate-seed") is not None and setups["packgate-seed"].status == "ok"
    why = (
        ""
        if seed_ok
        else (
            f"packgate-seed {setups['packgate-seed'].status}, see the proxy rows"
            if "packgate-seed" in setups
            else "packgate-seed not run"
        )
    )
    for kind in ("json", "stream"):
        report.verdicts.append(
            Verdict(
                f"seed chain RPS / bare aiohttp RPS, {kind} c32",
                ratios.get(f"{kind}_c32_packgate-seed_floor"),
                0.5,
                "x",
                True,
                why,
            )
        )
        report.verdicts.append(
            Verdict(
                f"stretch: seed chain RPS / bare aiohttp RPS, {kind} c32",
                ratios.get(f"{kind}_c32_packgate-seed_floor"),
                0.8,
                "x",
                True,
                why,
            )
        )
        report.verdicts.append(
            Verdict(
                f"seed chain RPS / LiteLLM RPS, {kind} c32",
                ratios.get(f"{kind}_c32_packgate-seed_litellm"),
                20.0,
                "x",
                True,
                why
                or (
                    ""
                    if "litellm" in setups and setups["litellm"].status == "ok"
                    else "LiteLLM row not run"
                ),
            )
        )
        report.verdicts.append(
            Verdict(
                f"seed chain added p50 vs direct, {kind} c1",
                ratios.get(f"{kind}_c1_packgate-seed_added"),
                1.0,
                " ms",
                False,
                why,
            )
        )
    report.verdicts.append(
        Verdict(
            "seed chain stream TTFB p50 - bare aiohttp's, c1",
            ratios.get("stream_c1_packgate-seed_ttfb"),
            1.0,
            " ms",
            False,
            why,
        )
    )


def _direct_note(section: Any) -> None:
    """Say whether the upstream (or the load generator) could have limited the proxies."""
    rows = {row.name: row.values for row in section.rows if row.status == "ok"}
    for kind in ("json", "stream"):
        direct = rows.get(f"{kind} c32 direct", {})
        prefix = f"{kind} c32 "
        proxies = [
            v
            for k, v in rows.items()
            if k.startswith(prefix) and not k.endswith(" direct") and v.get("rps")
        ]
        if not direct.get("rps") or not proxies:
            continue
        fastest = max(float(v["rps"]) for v in proxies)
        times = float(direct["rps"]) / fastest
        busiest = max(float(v.get("loadgen_cpu_pct") or 0) for v in proxies)
        if times > 2:
            section.notes.append(
                f"{kind} c32: the upstream alone serves {times:.1f}x the fastest proxy's RPS, "
                "so it is not the bottleneck"
            )
        elif busiest < 60:
            section.notes.append(
                f"{kind} c32: the direct row ({times:.1f}x the fastest proxy) is limited by the "
                f"load generator's core (loadgen CPU {direct.get('loadgen_cpu_pct')}%); for the "
                f"proxies it used at most {busiest:.0f}%, so it did not limit them (the "
                "proxies' upstream is the same program, on the load core)"
            )
        else:
            section.notes.append(
                f"WARNING {kind} c32: the upstream alone is only {times:.1f}x the fastest proxy "
                f"and the load generator ran at up to {busiest:.0f}% CPU: the load side may have "
                "limited the proxies"
            )


def _chain_rows(
    report: Report,
    costs: dict[tuple[str, int], dict[tuple[str, str, str], float]],
    seed: Setup | None,
) -> None:
    section = report.section(
        "chain",
        "Seed chain cost by policy (from the sidecar's packgate_policy_duration_seconds)",
        [
            ("request_us", "request us"),
            ("response_us", "response us"),
            ("stream_us", "stream us"),
            ("finish_us", "finish us"),
            ("total_us", "total us/req"),
        ],
    )
    if seed is None or seed.status != "ok":
        section.add(
            Row(
                "seed chain",
                status="pending",
                note="packgate-seed not measured, see the proxy rows",
            )
        )
        return
    section.notes.append(
        "mean microseconds per request (sum/count of the histogram over the scenario); "
        "finish hooks run after the response is sent; the stream column is the time spent in "
        "stream filters over the whole response; '-' where a policy has no such phase"
    )
    for (kind, concurrency), delta in costs.items():
        requests = delta.get(("", "requests", "count"), 0.0)
        kinds = sorted({k for k, _, _ in delta if k})
        for policy in kinds:
            values: dict[str, Any] = {}
            total = 0.0
            for phase in ("request", "response", "stream", "finish"):
                spent = delta.get((policy, phase, "sum"))
                if spent is None or not requests or (phase == "stream" and not spent):
                    continue
                per = spent / requests * 1e6
                values[f"{phase}_us"] = per
                total += per
            values["total_us"] = total
            section.add(Row(f"{kind} c{concurrency} {policy}", values))


def _memory_rows(report: Report, setups: dict[str, Setup]) -> None:
    section = report.section(
        "memory",
        "Resident memory (RSS, MiB)",
        [("idle_mb", "idle"), ("peak_mb", "peak under load"), ("count", "objects")],
    )
    for key in ("floor", "packgate-empty", "packgate-seed", FRESH, "litellm", "litellm-pii"):
        setup = setups.get(key)
        if setup is None:
            continue
        if setup.status != "ok" or setup.service is None:
            section.add(Row(f"{key} process", status=setup.status, note="see the proxy rows"))
            continue
        section.add(
            Row(
                f"{key} process",
                {"idle_mb": setup.idle_rss_mb, "peak_mb": peak_rss_mb(setup.service.pid)},
            )
        )
    seed = section.find("packgate-seed process")
    peak = seed.values.get("peak_mb") if seed else None
    report.verdicts.append(
        Verdict(
            "sidecar RSS under load (seed chain)",
            float(peak) if isinstance(peak, float) else None,
            80.0,
            " MiB",
            False,
            "" if peak else "packgate-seed not measured",
        )
    )
