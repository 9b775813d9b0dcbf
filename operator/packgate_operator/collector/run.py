"""``packgate audit collector``: run the audit collector (the chart runs it as its own Deployment).

Why a process of its own rather than a task in the operator: the store is one writer on a
ReadWriteOnce volume, while the operator runs several replicas for its webhook; a collector
restart or upgrade must not touch admission, and an operator rollout must not pause ingest.
Sidecars keep their records until acknowledged, so either restarting loses nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import ssl
import sys
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from ..kube import Kube
from ..propagate import Authenticator, Refused
from .access import Keyring, Readers, Retention
from .events import EventAggregator
from .server import Collector
from .store import Store

SWITCH_INTERVAL = 0.001  # seconds; see serve()


def _address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104 - ":port" asks for it


def add_arguments(parser: argparse.ArgumentParser) -> None:
    import os

    env = os.environ.get
    parser.add_argument(
        "--store",
        default=env("PACKGATE_COLLECTOR_STORE", "/var/lib/packgate-audit"),
        help="directory on the persistent volume (env PACKGATE_COLLECTOR_STORE)",
    )
    parser.add_argument(
        "--listen",
        type=_address,
        default=env("PACKGATE_COLLECTOR_LISTEN", "0.0.0.0:8445"),
        help="HTTPS address sidecars ship to",
    )
    parser.add_argument(
        "--read-listen",
        type=_address,
        default=env("PACKGATE_COLLECTOR_READ_LISTEN", "127.0.0.1:8446"),
        help="HTTP address of the query API and Events page (keep it on "
        "127.0.0.1: reach it with kubectl port-forward)",
    )
    parser.add_argument(
        "--admin-listen",
        type=_address,
        default=env("PACKGATE_COLLECTOR_ADMIN_LISTEN", "0.0.0.0:8447"),
        help="/healthz, /readyz and /metrics",
    )
    parser.add_argument("--tls-cert-file", default=env("PACKGATE_TLS_CERT_FILE", ""))
    parser.add_argument("--tls-key-file", default=env("PACKGATE_TLS_KEY_FILE", ""))
    parser.add_argument(
        "--audit-key-secret",
        default=env("PACKGATE_AUDIT_KEY_SECRET", ""),
        help="Secret (in each pod's namespace) whose key audit-key is the MAC key",
    )
    parser.add_argument("--token-audience", default=env("PACKGATE_TOKEN_AUDIENCE", "packgate"))
    parser.add_argument(
        "--events-interval",
        type=float,
        default=float(env("PACKGATE_EVENTS_INTERVAL", "10")),
        help="seconds between aggregated Event writes",
    )
    parser.add_argument("--prune-interval", type=float, default=3600.0)
    parser.add_argument("--no-fsync", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--kubeconfig", default=None)
    parser.add_argument("-v", "--verbose", action="store_true")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    if not (args.tls_cert_file and args.tls_key_file):
        print(
            "packgate audit collector: --tls-cert-file and --tls-key-file are required "
            "(sidecars send their tokens only over verified TLS)",
            file=sys.stderr,
        )
        return 2
    with contextlib.suppress(KeyboardInterrupt), asyncio.Runner(loop_factory=_loop()) as runner:
        runner.run(serve(args))
    return 0


def _loop() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop where installed (it is in the image), as in the sidecar: TLS and HTTP for every
    shipped batch run on this loop, and asyncio's pure-Python TLS layer was a tenth of the
    collector's CPU under the fleet benchmark."""
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


async def _site(
    app: web.Application, address: tuple[str, int], tls: ssl.SSLContext | None
) -> web.AppRunner:
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, address[0], address[1], ssl_context=tls, reuse_address=True).start()
    return runner


async def serve(args: argparse.Namespace) -> None:
    log = logging.getLogger("packgate.collector")
    # Three threads share the GIL: the event loop (TLS, HTTP), the storage thread (verify, append,
    # fsync) and the index writer (CPU-bound). Every TLS read or write, append and fsync lets the
    # GIL go and must win it back, which takes up to the switch interval while the index writer
    # holds it: Python's default 5 ms, paid several times per acknowledgement. 1 ms bounds that
    # wait five times tighter for a few more thread switches (the audit bench, back to back on
    # the same oversubscribed machine, load average 8-20: ack p99 1.6-1.7 s against 3.4 s).
    sys.setswitchinterval(SWITCH_INTERVAL)
    store = Store(Path(args.store), fsync=not args.no_fsync)
    await asyncio.to_thread(store.open)
    if store.replayed or store.recovered_tails or store.reindexed:
        log.info(
            "recovered: %d logged append(s) replayed, %d torn tail(s) cut, %d record(s) re-indexed",
            store.replayed,
            store.recovered_tails,
            store.reindexed,
        )
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(args.tls_cert_file, args.tls_key_file)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with Kube.from_environment(args.kubeconfig) as kube:
        events = EventAggregator(kube, args.events_interval)
        keyring = Keyring(kube, args.audit_key_secret)
        collector = Collector(
            store,
            Authenticator(kube, args.token_audience),
            Readers(kube),
            keyring,
            Retention(kube),
            events,
        )
        runners = [
            await _site(collector.ingest_app(), args.listen, tls),
            await _site(collector.read_app(), args.read_listen, None),
            await _site(collector.admin_app(), args.admin_listen, None),
        ]
        tasks = [
            asyncio.create_task(events.run(), name="events"),
            asyncio.create_task(_prune(store, keyring, args.prune_interval), name="prune"),
        ]
        log.info(
            "audit collector ready: ingest %s:%d, read %s:%d, store %s",
            *args.listen,
            *args.read_listen,
            args.store,
        )
        await stop.wait()
        for runner in runners:
            await runner.cleanup()
        for task in tasks:
            task.cancel()
        await events.flush()
    await asyncio.to_thread(store.close)
    log.info("audit collector stopped")


async def _prune(store: Store, keyring: Keyring, interval: float) -> None:
    log = logging.getLogger("packgate.collector")
    while True:
        try:
            # Each list of removed segments is sealed with its namespace's audit key (the
            # collector's own key where none is configured); a namespace whose key cannot be
            # read now keeps its segments until a later round.
            keys: dict[str, bytes] = {}
            for namespace in store.namespaces():
                try:
                    keys[namespace] = await keyring.current(namespace) or store.own_key
                except Refused as exc:
                    log.warning("retention skips namespace %s this round: %s", namespace, exc)
            removed = await store.prune(keys=keys)
            if removed:
                log.info("retention removed %s", ", ".join(removed))
        except Exception as exc:
            log.error("retention pruning failed: %s", exc)
        await asyncio.sleep(interval)
