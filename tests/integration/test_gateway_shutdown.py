"""`packgate gateway run` as a real process: it serves, logs JSON without text or secrets, and on
SIGTERM refuses new connections while the request in flight still completes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import aiohttp
import openai
import pytest
import yaml
from processes import free_port

from tests.support.gateway import make_config
from tests.support.gateway_cli import gateway_argv
from tests.support.upstream import Behavior, FakeUpstream

PROMPT = "my card is 4111 1111 1111 1111, tell nobody"
KEY = "sk-upstream-key-that-must-not-be-logged"


async def wait_ready(admin: str, process: asyncio.subprocess.Process) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(200):
            assert process.returncode is None, "the gateway exited early"
            try:
                async with session.get(admin + "/readyz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError("the gateway never became ready")


async def test_sigterm_drains_in_flight_requests_and_refuses_new_ones(tmp_path: Path) -> None:
    async with FakeUpstream(Behavior(delay=1.5)) as upstream:
        config = tmp_path / "policy-config.yaml"
        config.write_text(yaml.safe_dump(make_config(upstream.base_url)))
        port, admin_port = free_port(), free_port()
        env = {**os.environ, "UPSTREAM_KEY": KEY}
        process = await asyncio.create_subprocess_exec(
            *gateway_argv(port, admin_port, config, None, "--drain-seconds", "10"),
            env=env,
            stderr=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        admin = f"http://127.0.0.1:{admin_port}"
        try:
            await wait_ready(admin, process)
            client = openai.AsyncOpenAI(
                base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0, timeout=10
            )
            in_flight = asyncio.create_task(
                client.chat.completions.create(
                    model="m", messages=[{"role": "user", "content": PROMPT}]
                )
            )
            await upstream.wait_received()
            process.send_signal(signal.SIGTERM)
            async with aiohttp.ClientSession() as session:
                for _ in range(100):  # readiness drops while the admin port still answers
                    async with session.get(admin + "/readyz") as response:
                        if response.status == 503:
                            assert (await response.json())["reason"].startswith("draining")
                            break
                    await asyncio.sleep(0.02)
                else:
                    raise AssertionError("/readyz never reported draining")
            fresh = openai.AsyncOpenAI(
                base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0, timeout=3
            )
            with pytest.raises(openai.APIConnectionError):
                await fresh.chat.completions.create(model="m", messages=[{"role": "user"}])
            completion = await in_flight
            assert completion.choices[0].message.content == f"echo: {PROMPT}"
            assert await asyncio.wait_for(process.wait(), 10) == 0
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        stderr = (await process.stderr.read()).decode()  # type: ignore[union-attr]
    lines = [json.loads(line) for line in stderr.splitlines() if line.strip()]
    events = [line["event"] for line in lines]
    assert "listening" in events and "draining" in events and events[-1] == "stopped"
    requests = [line for line in lines if line["event"] == "request"]
    assert requests and requests[0]["status"] == 200 and requests[0]["target"] == "t0"
    assert "4111" not in stderr and "tell nobody" not in stderr
    assert KEY not in stderr


async def test_an_invalid_config_at_start_keeps_the_process_up_not_ready(tmp_path: Path) -> None:
    config = tmp_path / "policy-config.yaml"
    config.write_text("pack: {name: x, version: 1.0.0}\nproviders: {targets: []}\n")
    admin = f"http://127.0.0.1:{free_port()}"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "packgate_sidecar.cli",
        "gateway",
        "run",
        "--listen",
        f"127.0.0.1:{free_port()}",
        "--admin-listen",
        admin.removeprefix("http://"),
        "--policy-config",
        str(config),
        "--poll-interval",
        "0.1",
        env={**os.environ, "UPSTREAM_KEY": KEY},
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(200):
                try:
                    async with session.get(admin + "/readyz") as response:
                        status, detail = response.status, await response.json()
                        break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.05)
            assert status == 503
            assert detail["last_error"]["issues"][0]["path"] == "providers.targets"
        # Fixing the file makes it ready without a restart.
        async with FakeUpstream() as upstream:
            config.write_text(yaml.safe_dump(make_config(upstream.base_url)))
            await wait_ready(admin, process)
    finally:
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 10) == 0
