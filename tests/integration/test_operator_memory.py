"""Operator memory with 500 sidecar long polls: small per poll, and given back when they close.

Each sidecar holds one TLS long poll to the operator. asyncio's 256 KiB TLS read buffer per
connection made that about 320 KiB per sidecar, kept by the allocator after the polls closed
(61 -> 219 MiB, staying at 219). The server here is the operator's own subscription server in a
process of its own (token checks stubbed: TokenReview is not what is measured).
"""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
from packgate_policy import load_text
from processes import die_with_parent, free_port

from tests.support.subscription_server import CONFIG
from tests.support.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]
POLLS = 500


def last(lines: list[dict[str, Any]]) -> dict[str, Any]:
    return lines[-1] if lines else {}


def test_500_long_polls_cost_little_and_the_memory_comes_back(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.subscription_server", str(port), str(tmp_path)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=die_with_parent,
    )
    seen: list[dict[str, Any]] = []

    def read() -> dict[str, Any]:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if line.startswith("{"):
            seen.append(json.loads(line))
        return last(seen)

    try:
        wait_for(lambda: read().get("subs") == 0, 30, "the server")
        for _ in range(4):
            read()
        baseline = read()["rss_mib"]
        running = load_text(CONFIG).hash

        async def hold() -> list[int]:
            context = ssl.create_default_context(cafile=str(tmp_path / "ca.crt"))
            sessions = [
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context, limit=1))
                for _ in range(POLLS)
            ]

            async def poll(index: int, session: aiohttp.ClientSession) -> int:
                async with session.get(
                    f"https://127.0.0.1:{port}/v1/namespaces/ns/pods/pod-{index}/config",
                    params={"running": running, "wait": "20"},
                    headers={"Authorization": f"Bearer {index}"},
                ) as response:
                    return response.status

            try:
                polls = [asyncio.create_task(poll(i, s)) for i, s in enumerate(sessions)]
                return list(await asyncio.gather(*polls))
            finally:
                for session in sessions:
                    await session.close()

        statuses: list[int] = []
        client = asyncio.new_event_loop()
        holding = client.create_task(hold())
        holding.add_done_callback(lambda t: statuses.extend(t.result()))
        deadline = time.monotonic() + 60
        while read().get("subs", 0) < POLLS:
            client.run_until_complete(asyncio.sleep(0.05))
            assert time.monotonic() < deadline, f"only {last(seen)} subscribed"
        client.run_until_complete(asyncio.sleep(1))
        during = read()["rss_mib"]
        client.run_until_complete(holding)
        client.close()
        assert statuses == [304] * POLLS
        wait_for(lambda: read().get("subs") == 0, 30, "the polls to close")
        for _ in range(8):  # the trim runs within a second or two of the drop
            read()
        after = read()["rss_mib"]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    per_poll_kib = (during - baseline) * 1024 / POLLS
    print(
        f"\noperator RSS with {POLLS} long polls: {baseline:.0f} MiB before, {during:.0f} MiB "
        f"open ({per_poll_kib:.0f} KiB per poll), {after:.0f} MiB after they closed"
    )
    # Before: about 320 KiB per poll, and all of it kept after the polls closed.
    assert per_poll_kib < 150
    assert after - baseline < 30
