"""`packgate operator run`: kopf, the admission webhook, the subscription endpoint and /metrics.

Why one process: the webhook needs the same settings as the reconciler, and the subscription
endpoint needs the in-memory hub the ConfigMap watch feeds; keeping them in one event loop keeps
the state in one place. kopf runs standalone by default (one replica); with --peering several
replicas share the work, and every replica serves the webhook and subscriptions.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import socket
import ssl
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import kopf
from aiohttp import web

from . import handlers, memory, signer, tls, webhook
from . import replicas as replicas_mod
from . import settings as settings_mod
from .context import Context
from .convergence import Reporter
from .kube import Kube
from .metrics import Metrics, admin_app
from .propagate import Authenticator, PodPacks, SubscriptionServer, feed_hub
from .settings import Settings, SettingsError

log = logging.getLogger("packgate.operator")
SA_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    settings_mod.add_arguments(parser)
    parser.add_argument(
        "--kubeconfig", default=None, help="kubeconfig file (default: KUBECONFIG or in-cluster)"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    if not args.verbose:
        # kopf logs every handler run; with a handler per pod event that is noise at scale.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    logging.getLogger("kopf.objects").addFilter(_RejectionsAreNotErrors())
    try:
        settings = settings_mod.from_args(args)
    except SettingsError as exc:
        print(f"packgate operator run: {exc}", file=sys.stderr)
        return 2
    try:
        signer.load(settings)
    except SettingsError as exc:
        print(f"packgate operator run: {exc}", file=sys.stderr)
        return 2
    try:
        Kube.from_environment(args.kubeconfig)
    except Exception as exc:  # the kubernetes package raises a few unrelated types here
        print(
            f"packgate operator run: no Kubernetes credentials ({exc}); set KUBECONFIG, pass "
            "--kubeconfig, or run in a pod with a service account",
            file=sys.stderr,
        )
        return 2
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(settings, kubeconfig=args.kubeconfig))
    return 0


class _RejectionsAreNotErrors(logging.Filter):
    """kopf logs a denied pod as a handler failure (ERROR); it is the webhook working."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "failed permanently: packgate:" in record.getMessage():
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def tls_files(settings: Settings) -> tls.TlsFiles:
    if settings.tls_cert_file:
        return tls.TlsFiles(
            Path(settings.tls_cert_file),
            Path(settings.tls_key_file),
            Path(settings.tls_ca_file or settings.tls_cert_file),
        )
    return tls.generate(settings_mod.tls_dir_default(settings), settings.tls_sans)


def kopf_settings(
    settings: Settings, files: tls.TlsFiles, started: float | None = None
) -> kopf.OperatorSettings:
    ks = kopf.OperatorSettings()
    # kopf keeps its own bookkeeping on PolicyPacks only (pods get event handlers, no state),
    # under packgate's annotation prefix rather than kopf.zalando.org.
    ks.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="packgate.dev")
    ks.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="packgate.dev", key="last-handled-configuration"
    )
    ks.persistence.finalizer = "packgate.dev/kopf-finalizer"
    # packgate posts its own Events (with the words users need); kopf's would repeat them.
    ks.posting.enabled = False
    ks.batching.batch_window = 0.02  # an edit should reach sidecars fast; batching costs latency
    # kopf's default retries back off up to 21 s (and give up after 54 s, ending the operator):
    # after an apiserver restart the first edit waited for that. Retry every 2 s at most, for
    # about two minutes.
    ks.networking.error_backoffs = [0.5] + [1.0] * 10 + [2.0] * 55
    ks.admission.server = kopf.WebhookServer(
        addr=settings.webhook_host,
        port=settings.webhook_port,
        certfile=str(files.cert_file),
        pkeyfile=str(files.key_file),
        cafile=str(files.ca_file),
    )
    ks.peering.standalone = not settings.peering
    if settings.peering:
        ks.peering.name = settings.peering
        ks.peering.mandatory = True
        # Distinct priorities (kopf pauses all replicas that share one); a dead replica's entry
        # expires after `lifetime`, then the next one takes over.
        ks.peering.priority = replicas_mod.priority(time.time() if started is None else started)
        ks.peering.lifetime = 20
    return ks


def replica_identity() -> tuple[str, str, str, str]:
    """(kopf peer id, pod name, pod namespace, pod uid) from the chart's downward-API env."""
    pod = os.environ.get("PACKGATE_POD_NAME") or socket.gethostname()
    namespace = os.environ.get("PACKGATE_POD_NAMESPACE", "")
    if not namespace:
        with contextlib.suppress(OSError):
            namespace = Path(SA_NAMESPACE).read_text().strip()
    return (
        f"{pod}/{os.getpid()}",
        pod,
        namespace or "default",
        os.environ.get("PACKGATE_POD_UID", ""),
    )


async def _site(
    app: web.Application, host: str, port: int, context: ssl.SSLContext | None
) -> web.AppRunner:
    # Long polls would hold shutdown for their whole wait; cut them: sidecars just reconnect.
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, host, port, ssl_context=context, reuse_address=True).start()
    return runner


async def serve(
    settings: Settings,
    *,
    kubeconfig: str | None = None,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[Context], Awaitable[None] | None] | None = None,
) -> None:
    """Run the operator until `stop` is set (or forever)."""
    memory.shrink_tls_buffers()
    files = tls_files(settings)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(str(files.cert_file), str(files.key_file))
    metrics = Metrics()
    stop = stop or asyncio.Event()
    async with Kube.from_environment(kubeconfig) as kube:
        key = signer.load(settings)
        ctx = Context(
            settings=settings,
            kube=kube,
            metrics=metrics,
            ca_pem=files.ca_pem,
            signer=key,
            trusted_env=signer.trusted_env(key, settings),
        )
        identity, pod_name, pod_namespace, pod_uid = replica_identity()
        if settings.peering:
            ctx.replicas = replicas_mod.Replicas(
                kube,
                settings.peering,
                identity,
                pod_namespace,
                pod_name,
                pod_uid,
                settings.clusterwide,
                tuple(settings.namespaces),
            )
        registry = kopf.OperatorRegistry()

        # kopf authenticates with the credentials kube.py loaded (--kubeconfig, KUBECONFIG or the
        # in-cluster service account); called again by kopf whenever they stop working.
        @kopf.on.login(registry=registry)
        def login(**_: object) -> kopf.ConnectionInfo:
            return kopf.ConnectionInfo(**kube.connection_info())

        handlers.register(registry, ctx)
        webhook.register(registry, ctx)
        kopf_ready = asyncio.Event()
        hub_ready = ctx.hub.ready
        subscriptions = SubscriptionServer(
            ctx.hub,
            Authenticator(kube, settings.token_audience),
            PodPacks(kube, ctx.pods, settings.serves),
            metrics,
            settings.poll_wait_seconds,
        )
        tasks: list[asyncio.Task[None]] = []
        runners = [
            await _site(
                subscriptions.app(), settings.subscribe_host, settings.subscribe_port, server_tls
            )
        ]
        if settings.admin_port:

            def alive() -> bool:
                return all(not task.done() for task in tasks)

            async def is_ready() -> bool:
                # kopf reports ready before its webhook server listens (and stays up if that
                # fails), so readiness also asks whether the webhook port accepts connections.
                if not (kopf_ready.is_set() and hub_ready.is_set()):
                    return False
                if ctx.replicas is not None and not ctx.replicas.state.leader_exists:
                    return False  # no replica reconciles (peering broken): say so
                return await _accepts(settings.webhook_host, settings.webhook_port)

            runners.append(
                await _site(
                    admin_app(metrics, alive, is_ready),
                    settings.admin_host,
                    settings.admin_port,
                    None,
                )
            )
        tasks[:] = [
            asyncio.create_task(
                kopf.operator(
                    registry=registry,
                    settings=kopf_settings(settings, files),
                    clusterwide=settings.clusterwide,
                    namespaces=list(settings.namespaces),
                    stop_flag=stop,
                    ready_flag=kopf_ready,
                    memo=kopf.Memo(),
                    identity=cast(Any, identity),  # kopf's Identity is a NewType of str
                ),
                name="kopf",
            ),
            *_feeds(kube, ctx, settings, hub_ready),
            asyncio.create_task(Reporter(ctx).run(), name="reporter"),
            asyncio.create_task(
                memory.trim_when_connections_drop(lambda: ctx.hub.subscriptions), name="trim"
            ),
        ]
        if ctx.replicas is not None:
            tasks.append(
                asyncio.create_task(
                    ctx.replicas.run(ctx.hub.pack_reports, ctx.dirty.mark), name="replicas"
                )
            )
        try:
            ready = asyncio.create_task(_both(kopf_ready, hub_ready), name="ready")
            await asyncio.wait([ready, *tasks], return_when=asyncio.FIRST_COMPLETED)
            if ready.done():
                ctx.started.set()
                log.info(
                    "packgate operator ready: webhook :%d, subscriptions :%d, %s",
                    settings.webhook_port,
                    settings.subscribe_port,
                    "cluster-wide" if settings.clusterwide else ",".join(settings.namespaces),
                )
                if on_ready is not None:
                    result = on_ready(ctx)
                    if result is not None:
                        await result
                stopping = asyncio.create_task(stop.wait(), name="stop")
                await asyncio.wait([stopping, *tasks], return_when=asyncio.FIRST_COMPLETED)
                stopping.cancel()
            ready.cancel()
        finally:
            stop.set()  # kopf stops on its stop flag, cleanly
            for task in tasks[1:]:
                task.cancel()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 15)
            for runner in runners:
                await runner.cleanup()
        failed = [t for t in tasks if t.done() and not t.cancelled() and t.exception()]
        if failed:
            raise RuntimeError(f"operator task {failed[0].get_name()} failed") from failed[
                0
            ].exception()


async def _accepts(host: str, port: int) -> bool:
    target = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host  # noqa: S104
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(target, port), 1)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


async def _both(first: asyncio.Event, second: asyncio.Event) -> None:
    await first.wait()
    await second.wait()


def _feeds(
    kube: Kube, ctx: Context, settings: Settings, ready: asyncio.Event
) -> list[asyncio.Task[None]]:
    """One ConfigMap watch per served namespace, or one cluster-wide watch filtered by pattern."""
    patterns = settings.namespaces
    repairs: set[asyncio.Task[None]] = set()

    def damaged(namespace: str, pack: str, problem: str) -> None:
        task = asyncio.get_running_loop().create_task(
            handlers.repair(ctx, namespace, pack, problem)
        )
        repairs.add(task)
        task.add_done_callback(repairs.discard)

    if patterns and not any(ch in p for p in patterns for ch in "*?[!"):
        events = [asyncio.Event() for _ in patterns]

        async def all_ready() -> None:
            await asyncio.gather(*(e.wait() for e in events))
            ready.set()

        feeds = [
            asyncio.create_task(
                feed_hub(kube, ctx.hub, ns, ev, None, damaged, ctx.trusted), name=f"feed {ns}"
            )
            for ns, ev in zip(patterns, events, strict=True)
        ]
        # Not one of the returned tasks: serve() stops when any of those ends, and this one ends
        # as soon as every feed has listed its namespace.
        waiter = asyncio.create_task(all_ready(), name="feeds ready")
        for feed in feeds:
            feed.add_done_callback(lambda _: waiter.cancel())
        return feeds

    return [
        asyncio.create_task(
            feed_hub(kube, ctx.hub, None, ready, settings.serves, damaged, ctx.trusted),
            name="feed",
        )
    ]
