"""`make bench` still runs: the benchmark on its tiny configuration produces the rows it promises.

Why only a smoke test: performance numbers belong to the bench's own report, measured side by
side on a quiet machine; a timed assertion in the suite would fail on a busy CI machine and prove
nothing. This runs `bench/run.py --quick` for the proxy and detection measurements (no LiteLLM,
no presidio, no control plane: nothing heavy is installed) and checks the shape of its JSON:
every setup has a row, the ones that need nothing unfinished were measured, and every target is
judged or marked pending with a reason.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_quick_bench_writes_every_row(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench/run.py"),
            "--quick",
            "--only",
            "proxy,detect",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "== Targets" in done.stdout
    report = json.loads(out.read_text())
    assert report["quick"] is True
    assert report["machine"]["cores"]

    rows = {row["name"]: row for row in report["sections"]["proxy"]["rows"]}
    for scenario in ("json c1", "stream c1", "json c32", "stream c32"):
        for setup in ("direct", "floor", "packgate-empty"):
            row = rows[f"{scenario} {setup}"]
            assert row["status"] == "ok", row
            assert row["rps"] > 0, row
            assert row["p50_ms"] is not None and row["p99_ms"] >= row["p50_ms"]
        seed = rows[f"{scenario} packgate-seed"]
        # The seed chain runs once its policies are registered; until then it must say why.
        assert seed["status"] == "ok" or seed["status"] == "pending", seed
        if seed["status"] == "ok":
            assert seed["rps"] > 0
            assert seed.get("prompt_redacted") is True, "the seed chain let PII reach upstream"
    assert rows["stream c1 floor"]["ttfb_p50_ms"] is not None
    assert rows["json c1 packgate-empty"]["added_p50_ms"] is not None
    assert rows["json c32 packgate-empty"]["vs_floor_x"] > 0

    detect = {row["name"]: row for row in report["sections"]["detect"]["rows"]}
    pii = [row for name, row in detect.items() if name.startswith("packgate PII")]
    assert pii, detect
    for row in pii:
        assert row["status"] == "pending" or row["mb_s"] > 0

    memory = {row["name"]: row for row in report["sections"]["memory"]["rows"]}
    assert memory["packgate-empty process"]["idle_mb"] > 0

    targets = {t["target"]: t for t in report["targets"]}
    assert any("RPS / bare aiohttp" in name for name in targets)
    for target in targets.values():
        assert target["result"] in ("PASS", "MISS", "PENDING")
        if target["result"] == "PENDING":
            assert target["detail"], target
