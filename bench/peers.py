"""The peers packgate is compared with: LiteLLM proxy, and presidio-analyzer for PII detection.

Why separate virtual environments: both bring large, pinned dependency trees (LiteLLM's proxy
pins FastAPI, pydantic and openai versions; presidio-analyzer pulls spaCy) that must not leak
into packgate's own .venv and change what packgate runs on. Each lives under
~/.cache/packgate/bench/<name>-<version>/, is built once by `make bench` and reused by every
clone; a stamp file marks a finished install, so a broken half-install is rebuilt.

LiteLLM runs as its users run it: `litellm --config ... --num_workers 1`, no database (so the
master key it insists on is checked in memory), pointed at the same upstream as every other
setup. The second row turns on LiteLLM's offline PII filter, the built-in
`litellm_content_filter` guardrail with its prebuilt regex patterns masking the seed chain's four
entity types (email, US phone, US SSN, credit card) on requests and responses. (Its `presidio`
guardrail needs presidio analyzer and anonymizer HTTP servers, so it is not an offline filter.)
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml
from processes import free_port

from .common import CACHE, Service, StartError, log, pinned

LITELLM_VERSION = "1.106.12"
# Newer releases pin litellm-proxy / litellm-proxy-extras builds that are not on PyPI.
PRESIDIO_VERSION = "2.2.366"
STAMP = ".packgate-bench-installed"


class InstallError(RuntimeError):
    """A peer could not be installed; the message says which and why."""


def ensure_venv(name: str, version: str, requirements: list[str]) -> Path:
    """A virtualenv with `requirements` under the bench cache, built once per version."""
    venv = CACHE / f"{name}-{version}"
    if (venv / STAMP).exists():
        return venv
    log(f"installing {name} {version} into {venv} (once; reused afterwards)")
    venv.parent.mkdir(parents=True, exist_ok=True)
    base = getattr(sys, "_base_executable", sys.executable)
    steps = [
        [base, "-m", "venv", "--clear", str(venv)],
        [str(venv / "bin/pip"), "install", "--quiet", "--upgrade", "pip"],
        [str(venv / "bin/pip"), "install", "--quiet", *requirements],
    ]
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True, check=False, timeout=1800)
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            raise InstallError(f"{' '.join(step[:4])} failed: {' | '.join(tail)}")
    (venv / STAMP).write_text(" ".join(requirements) + "\n")
    return venv


def litellm_venv() -> Path:
    return ensure_venv("litellm", LITELLM_VERSION, [f"litellm[proxy]=={LITELLM_VERSION}"])


def presidio_venv() -> Path:
    return ensure_venv("presidio", PRESIDIO_VERSION, [f"presidio-analyzer=={PRESIDIO_VERSION}"])


@dataclass
class PeerSetup:
    key: str
    port: int
    service: Service | None
    status: str = "ok"
    note: str = ""


PII_PATTERNS = ["email", "us_phone", "us_ssn", "credit_card"]


def litellm_config(upstream_base: str, pii: bool) -> dict[str, object]:
    config: dict[str, object] = {
        "model_list": [
            {
                "model_name": "gpt-4o",
                "litellm_params": {
                    "model": "openai/gpt-4o",
                    "api_base": upstream_base,
                    "api_key": "os.environ/BENCH_UPSTREAM_KEY",
                },
            }
        ],
    }
    if pii:
        config["guardrails"] = [
            {
                "guardrail_name": "pii-mask",
                "litellm_params": {
                    "guardrail": "litellm_content_filter",
                    "mode": ["pre_call", "post_call"],
                    "default_on": True,
                    "patterns": [
                        {"pattern_type": "prebuilt", "pattern_name": name, "action": "MASK"}
                        for name in PII_PATTERNS
                    ],
                },
            }
        ]
    return config


def start_litellm(
    work: Path, upstream_base: str, key: str, client_key: str, cpu: str | None, notes: list[str]
) -> list[PeerSetup]:
    """Start LiteLLM plain and with its PII filter; failures become rows with the reason."""
    try:
        venv = litellm_venv()
    except (InstallError, OSError, subprocess.TimeoutExpired) as exc:
        reason = f"LiteLLM {LITELLM_VERSION} could not be installed: {exc}"
        return [PeerSetup(k, 0, None, "skipped", reason) for k in ("litellm", "litellm-pii")]
    notes.append(
        f"LiteLLM {LITELLM_VERSION}: one worker, no database; litellm-pii adds the built-in "
        f"litellm_content_filter guardrail masking {', '.join(PII_PATTERNS)} (pre and post call); "
        "it does no injection detection or audit, so it does less than the seed chain"
    )
    out: list[PeerSetup] = []
    for key_name, pii in (("litellm", False), ("litellm-pii", True)):
        port = free_port()
        config_path = work / f"{key_name}.yaml"
        config_path.write_text(yaml.safe_dump(litellm_config(upstream_base, pii)))
        argv = [
            str(venv / "bin/litellm"),
            "--config",
            str(config_path),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--num_workers",
            "1",
        ]
        env = {
            "BENCH_UPSTREAM_KEY": key,
            # LiteLLM refuses to start without a master key; clients present it (no database:
            # it is compared in memory, the cheapest auth LiteLLM has).
            "LITELLM_MASTER_KEY": client_key,
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no fetch of the price list at start-up
            "LITELLM_TELEMETRY": "False",
            "DISABLE_SCHEMA_UPDATE": "True",
        }
        service = Service(key_name, pinned(argv, cpu), work / f"{key_name}.log", env=env).start()
        out.append(PeerSetup(key_name, port, service))
    for setup in out:  # both start at once: LiteLLM takes several seconds to import
        assert setup.service is not None
        try:
            setup.service.wait_http(f"http://127.0.0.1:{setup.port}/health/liveliness", 240)
        except StartError as exc:
            setup.status = "error"
            setup.note = str(exc)[:600]
    return out
