"""Threat: the audit disk fills up while requests are being answered, and answers go out that no
durable record accounts for.

The sidecar runs with its data directory on a small tmpfs mounted in a mount namespace of its
own (nothing changes on the machine), so the disk really fills: `write` fails with ENOSPC. Every
answer a client received must have its record on that disk; the request whose record could not
be written gets 503 `audit_unavailable`, and later ones never reach the provider (audit-logger
fails closed); with `fail_open` it keeps answering and counts every fail-open.
Real `packgate gateway run`, the real audit-logger, the real OpenAI SDK.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
import yaml
from processes import free_port

from tests.integration.test_gateway_shutdown import wait_ready
from tests.support.gateway import make_config
from tests.support.gateway_cli import gateway_argv
from tests.support.upstream import FakeUpstream

KEY = "0123456789abcdef0123456789abcdef"

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None,
    reason="needs root and unshare(1) to mount a private tmpfs",
)


def records_on_disk(pid: int, data: Path) -> list[dict[str, Any]]:
    """The access records in the gateway's own view of its data dir (its mount namespace)."""
    audit = Path(f"/proc/{pid}/root") / data.relative_to("/") / "audit"
    out = []
    for segment in sorted(audit.glob("audit-*.jsonl")):
        for line in segment.read_bytes().split(b"\n"):
            try:
                envelope = json.loads(line)
            except ValueError:
                continue  # the torn line of the record that met the full disk
            if envelope.get("type") == "access":
                out.append(envelope["body"])
    return out


@asynccontextmanager
async def sidecar_on_a_small_disk(
    tmp_path: Path, upstream: FakeUpstream, **audit: Any
) -> AsyncIterator[tuple[asyncio.subprocess.Process, Path, str, str]]:
    """A gateway whose data dir is a 48 KiB tmpfs in its own mount namespace: (process, data
    dir, API URL, admin URL)."""
    config = tmp_path / "policy-config.yaml"
    data = tmp_path / "data"
    data.mkdir()
    policy = {"audit-logger": {"log_all_access": True, **audit}}
    config.write_text(
        yaml.safe_dump(make_config(upstream.base_url, chain=["audit-logger"], policy=policy))
    )
    port, admin_port = free_port(), free_port()
    mount = f'mount -t tmpfs -o size=48k packgate-audit-test "{data}" && exec "$@"'
    process = await asyncio.create_subprocess_exec(
        *("unshare", "--mount", "--propagation", "private", "sh", "-c", mount, "sh"),
        *gateway_argv(port, admin_port, config, data),
        env={**os.environ, "UPSTREAM_KEY": "sk-upstream-0123456789", "PACKGATE_AUDIT_KEY": KEY},
        stderr=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
    )
    admin = f"http://127.0.0.1:{admin_port}"
    try:
        await wait_ready(admin, process)
        yield process, data, f"http://127.0.0.1:{port}/v1", admin
    finally:
        process.kill()
        await process.wait()


async def test_a_full_audit_disk_never_lets_an_unrecorded_answer_out(tmp_path: Path) -> None:
    async with (
        FakeUpstream() as upstream,
        sidecar_on_a_small_disk(tmp_path, upstream) as (process, data, url, _),
    ):
        client = openai.AsyncOpenAI(base_url=url, api_key="x", max_retries=0)
        answered: list[str] = []
        refused: list[openai.APIStatusError] = []
        for number in range(2000):
            try:
                raw = await client.chat.completions.with_raw_response.create(
                    model="m", messages=[{"role": "user", "content": f"hi {number}"}]
                )
            except openai.APIStatusError as error:
                refused.append(error)
                if len(refused) == 3:
                    break
                continue
            raw.parse()
            answered.append(raw.headers["x-packgate-request-id"])
        recorded = {r["request_id"] for r in records_on_disk(process.pid, data)}
        forwarded = len(upstream.received)
    assert answered and len(refused) == 3, "the disk never filled up"
    missing = [request_id for request_id in answered if request_id not in recorded]
    assert not missing, f"{len(missing)} answered requests have no audit record"
    # The request whose record met the full disk went upstream, but its answer was withheld;
    # later ones were refused before going upstream (and their refusals, unrecordable too, are
    # withheld the same way).
    assert all("audit_unavailable" in str(error.body) for error in refused), refused
    assert all(error.status_code == 503 for error in refused)
    assert forwarded == len(answered) + 1


async def test_failing_open_a_full_audit_disk_keeps_answering_and_counts_it(
    tmp_path: Path,
) -> None:
    async with (
        FakeUpstream() as upstream,
        sidecar_on_a_small_disk(tmp_path, upstream, fail_open=True) as (_, _, url, admin),
    ):
        client = openai.AsyncOpenAI(base_url=url, api_key="x", max_retries=0)
        for number in range(300):  # about five times what fits on the disk
            await client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": f"hi {number}"}]
            )
        async with aiohttp.ClientSession() as session, session.get(admin + "/metrics") as got:
            metrics = await got.text()
    opened = [
        line
        for line in metrics.splitlines()
        if line.startswith("packgate_policy_fail_open_total") and 'kind="audit-logger"' in line
    ]
    assert opened and sum(float(line.rsplit(" ", 1)[1]) for line in opened) > 0
