"""The operator's real subscription server (TLS, hub, long polls) with token checks stubbed, as a
process of its own, printing its RSS and open subscriptions as JSON lines: for measuring memory
per long poll without 500 pods (tests/integration/test_operator_memory.py).

    python -m tests.support.subscription_server PORT TLS_DIR
"""

from __future__ import annotations

import asyncio
import json
import ssl
import sys
from pathlib import Path

from aiohttp import web
from packgate_operator import memory, tls
from packgate_operator.hub import Hub, Published
from packgate_operator.kube import TokenIdentity
from packgate_operator.metrics import Metrics
from packgate_operator.propagate import SubscriptionServer
from packgate_policy import load_text

CONFIG = "pack: {name: gw, version: 1.0.0}\nproviders: {targets: [{id: t, provider: openai}]}\n"


class AnyPod:
    """Token "N" is pod-N's (TokenReview is not what is measured here)."""

    async def verify(self, token: str) -> TokenIdentity:
        return TokenIdentity(
            "system:serviceaccount:ns:default", "ns", "default", f"pod-{token}", token
        )

    async def pack_of(self, identity: TokenIdentity) -> str:
        return "gw"


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def main(port: int, tls_dir: Path) -> None:
    memory.shrink_tls_buffers()  # as `packgate operator run` does
    files = tls.generate(tls_dir, ["127.0.0.1"])
    hub = Hub()
    hub.ready.set()
    hub.publish(Published("ns", "gw", load_text(CONFIG).hash, CONFIG))
    stub = AnyPod()
    server = SubscriptionServer(hub, stub, stub, Metrics(), max_wait=60)  # type: ignore[arg-type]
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(files.cert_file, files.key_file)
    runner = web.AppRunner(server.app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=context).start()
    trim = asyncio.create_task(memory.trim_when_connections_drop(lambda: hub.subscriptions, 1.0))
    while not trim.done():
        print(json.dumps({"rss_mib": round(rss_mib(), 1), "subs": hub.subscriptions}), flush=True)
        await asyncio.sleep(0.5)


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), Path(sys.argv[2])))
