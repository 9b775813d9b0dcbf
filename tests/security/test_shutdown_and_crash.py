"""Threat: a shutdown or a crash breaks the audit trail or overruns the pod's grace period.

SIGTERM: the whole shutdown takes at most `--drain-seconds`; a stream still open at the deadline
ends with an SSE error event the SDK raises, and is audited as `drained`. SIGKILL under load:
every response a client received has a durable audit record. A crash that tears the last line
of the log is reported by `packgate audit verify` as TORN (exit 3), not as tampering (exit 1).
Real `packgate gateway run` processes, the real audit-logger, the real OpenAI SDK.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml
from processes import free_port

from tests.integration.test_gateway_shutdown import wait_ready
from tests.support.gateway import make_config
from tests.support.gateway_cli import gateway_argv
from tests.support.upstream import Behavior, FakeUpstream

KEY = "0123456789abcdef0123456789abcdef"
AUDIT = {"audit-logger": {"log_all_access": True}}


@asynccontextmanager
async def sidecar(
    tmp_path: Path, upstream: FakeUpstream, *extra: str
) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    config = tmp_path / "policy-config.yaml"
    config.write_text(
        yaml.safe_dump(make_config(upstream.base_url, chain=["audit-logger"], policy=AUDIT))
    )
    port, admin_port = free_port(), free_port()
    process = await asyncio.create_subprocess_exec(
        *gateway_argv(port, admin_port, config, tmp_path / "data", *extra),
        env={**os.environ, "UPSTREAM_KEY": "sk-upstream-0123456789", "PACKGATE_AUDIT_KEY": KEY},
        stderr=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
    )
    try:
        await wait_ready(f"http://127.0.0.1:{admin_port}", process)
        yield process, f"http://127.0.0.1:{port}/v1"
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def audit_records(tmp_path: Path) -> list[dict[str, Any]]:
    out = []
    for segment in sorted((tmp_path / "data" / "audit").glob("audit-*.jsonl")):
        for line in segment.read_bytes().split(b"\n"):
            if line.strip():
                envelope = json.loads(line)
                if envelope["type"] == "access":
                    out.append(envelope["body"])
    return out


def verify(directory: Path, key_file: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            *(sys.executable, "-m", "packgate_sidecar.cli", "audit", "verify", str(directory)),
            *("--key-file", str(key_file)),
        ],
        capture_output=True,
        text=True,
        check=False,
    )


async def test_sigterm_ends_open_streams_within_drain_seconds_and_audits_them_drained(
    tmp_path: Path,
) -> None:
    drain = 2.0
    async with (
        FakeUpstream(Behavior(chunk_delay=0.3, text="word " * 200)) as upstream,
        sidecar(tmp_path, upstream, "--drain-seconds", str(drain)) as (process, url),
    ):
        client = openai.AsyncOpenAI(base_url=url, api_key="x", max_retries=0, timeout=30)
        raw = await client.chat.completions.with_raw_response.create(
            model="m", messages=[{"role": "user", "content": "talk"}], stream=True
        )
        request_id = raw.headers["x-packgate-request-id"]
        stream = raw.parse()
        received = []
        with pytest.raises(openai.APIError) as caught:
            async for chunk in stream:
                received.append(chunk)
                if len(received) == 2:
                    process.send_signal(signal.SIGTERM)
                    signalled = time.monotonic()
        assert "drained" in str(caught.value) or "shut down" in str(caught.value)
        assert await asyncio.wait_for(process.wait(), drain + 5) == 0
        took = time.monotonic() - signalled
    # The whole shutdown fits in --drain-seconds (plus process exit, measured from outside).
    assert took <= drain + 0.5, f"shutdown took {took:.2f}s with --drain-seconds {drain}"
    mine = [r for r in audit_records(tmp_path) if r["request_id"] == request_id]
    assert [r["outcome"] for r in mine] == ["started", "drained"]
    assert mine[1]["status"] == 200 and mine[1]["streamed"] is True


async def test_after_sigkill_under_load_every_answered_request_has_an_audit_record(
    tmp_path: Path,
) -> None:
    answered: list[str] = []
    enough = asyncio.Event()

    async def worker(client: openai.AsyncOpenAI, number: int) -> None:
        while True:
            stream = number % 3 == 0
            try:
                raw = await client.chat.completions.with_raw_response.create(
                    model="m", messages=[{"role": "user", "content": f"hi {number}"}], stream=stream
                )
                request_id = raw.headers["x-packgate-request-id"]
                if stream:
                    async for _ in raw.parse():
                        answered.append(request_id)  # the client has bytes of this response
                        break
                else:
                    raw.parse()
                    answered.append(request_id)
                if len(answered) >= 150:
                    enough.set()
            except (openai.APIError, openai.APIConnectionError):
                return

    async with (
        FakeUpstream(Behavior(delay=0.005)) as upstream,
        sidecar(tmp_path, upstream) as (process, url),
    ):
        client = openai.AsyncOpenAI(base_url=url, api_key="x", max_retries=0, timeout=10)
        workers = [asyncio.create_task(worker(client, n)) for n in range(24)]
        await asyncio.wait_for(enough.wait(), 60)
        process.kill()  # SIGKILL, mid-load
        await process.wait()
        await asyncio.gather(*workers)
    audited = {r["request_id"] for r in audit_records(tmp_path)}
    missing = [rid for rid in answered if rid not in audited]
    assert not missing, f"{len(missing)} of {len(answered)} answered requests have no record"

    key_file = tmp_path / "key"
    key_file.write_text(KEY)
    directory = tmp_path / "data" / "audit"
    assert verify(directory, key_file).returncode == 0
    # A crash mid-write leaves a cut-off line (a kill cannot tear a single O_APPEND write, so
    # the tear is made by hand): its own outcome, distinct from tampering.
    newest = sorted(directory.glob("audit-*.jsonl"))[-1]
    with newest.open("ab") as log:
        log.write(b'{"body":{"endpoint":"chat.comp')
    torn = verify(directory, key_file)
    assert torn.returncode == 3, torn.stdout
    assert torn.stdout.splitlines()[-1].startswith("TORN")
    first = sorted(directory.glob("audit-*.jsonl"))[0]
    data = first.read_bytes()
    first.write_bytes(data.replace(b'"status":200', b'"status":201', 1))
    tampered = verify(directory, key_file)
    assert tampered.returncode == 1, tampered.stdout
