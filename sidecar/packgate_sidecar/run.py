"""`packgate gateway run`: start the sidecar, serve until SIGTERM, then drain.

Why it exists: the same program runs on a laptop (`packgate gateway run --listen 0.0.0.0:41002
--policy-config policy-config.yaml`, the seed document's command) and as the injected sidecar. It
loads and watches the config, serves the API and the admin port, and on SIGTERM or SIGINT stops
accepting connections, lets in-flight requests finish, and exits 0 within `--drain-seconds` in
total: streams still open near the deadline end with an SSE error event and are audited as
`drained`.
A config that is invalid at start does not stop the process: the sidecar stays up, not ready
(every request gets 503 with the reason), and picks up the file as soon as it is fixed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from aiohttp import web

from . import gc_tuning, subscribe
from .app import Gateway, GatewayOptions, Handler
from .audit import ship
from .chain import builtin_registry
from .conn_guard import ConnectionGuard
from .logs import configure, get_logger, log
from .metrics import Metrics
from .policy import PodIdentity, PolicyRuntime
from .reload import ConfigHolder, FileWatcher

_log = get_logger("run")
DRAIN_SECONDS = 25.0  # default of --drain-seconds; the injector sizes the grace period with it
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMG]i?B?|B)?\s*$", re.IGNORECASE)
_UNITS = {
    "": 1,
    "B": 1,
    "K": 1000,
    "M": 1000**2,
    "G": 1000**3,
    "KI": 1024,
    "MI": 1024**2,
    "GI": 1024**3,
}


def parse_size(text: str) -> int:
    """`8MiB`, `8M`, `8388608` -> bytes."""
    match = _SIZE.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 8MiB)")
    unit = (match.group(2) or "").upper().removesuffix("B")
    return int(float(match.group(1)) * _UNITS[unit])


def parse_address(text: str) -> tuple[str, int]:
    """`host:port`, `[v6]:port` or `:port` (all interfaces)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104 - an explicit ":port" asks for it


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--listen",
        type=parse_address,
        default="127.0.0.1:41002",
        metavar="HOST:PORT",
        help="API address (default 127.0.0.1:41002)",
    )
    parser.add_argument(
        "--policy-config",
        required=True,
        metavar="FILE",
        help="policy config file; watched and reloaded when it changes",
    )
    parser.add_argument(
        "--admin-listen",
        type=parse_address,
        default="127.0.0.1:41003",
        metavar="HOST:PORT",
        help="/healthz, /readyz and /metrics address (default 127.0.0.1:41003)",
    )
    parser.add_argument(
        "--connect-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="timeout to connect to a provider target (default 10)",
    )
    parser.add_argument(
        "--read-timeout",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="longest silence from a provider target before it counts as timed "
        "out, also between streamed chunks (default 300)",
    )
    parser.add_argument(
        "--max-body-bytes",
        type=parse_size,
        default=8 * 1024 * 1024,
        metavar="SIZE",
        help="largest request body accepted (default 8MiB)",
    )
    parser.add_argument(
        "--body-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="longest time to receive a whole request body (default 30)",
    )
    parser.add_argument(
        "--header-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="longest time to receive request headers, from the accept or the end of the "
        "previous request on the connection (default 10)",
    )
    parser.add_argument(
        "--idle-timeout",
        type=float,
        default=15.0,
        metavar="SECONDS",
        help="idle keep-alive connections are closed after this long (default 15)",
    )
    parser.add_argument(
        "--max-connections",
        type=int,
        default=1024,
        metavar="N",
        help="most client connections open at once; more get 503 (default 1024)",
    )
    parser.add_argument(
        "--max-response-bytes",
        type=parse_size,
        default=16 * 1024 * 1024,
        metavar="SIZE",
        help="largest whole (not streamed) provider response, enforced while reading, before "
        "buffering (default 16MiB)",
    )
    parser.add_argument(
        "--max-embeddings-response-bytes",
        type=parse_size,
        default=64 * 1024 * 1024,
        metavar="SIZE",
        help="the same for /v1/embeddings answers (default 64MiB)",
    )
    parser.add_argument(
        "--max-error-body-bytes",
        type=parse_size,
        default=64 * 1024,
        metavar="SIZE",
        help="provider error bodies are cut at this size (default 64KiB)",
    )
    parser.add_argument(
        "--no-durable-audit",
        dest="durable_audit",
        action="store_false",
        help="do not wait for audit records to be fsynced before answering (faster, but a "
        "kill -9 can lose the records of the last answers); for measuring the cost",
    )
    parser.add_argument(
        "--drain-seconds",
        type=float,
        default=DRAIN_SECONDS,
        metavar="SECONDS",
        help="how long in-flight requests may finish after SIGTERM (default 25)",
    )
    parser.add_argument(
        "--poll-interval",
        type=float,
        default=0.5,
        metavar="SECONDS",
        help="how often the config file is checked for changes (default 0.5)",
    )
    parser.add_argument(
        "--data-dir",
        default=os.environ.get("PACKGATE_DATA_DIR"),
        metavar="DIR",
        help="where policies keep files such as the audit log",
    )
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run(args: argparse.Namespace) -> int:
    configure(args.log_level)
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(serve(args))


class _GuardedSite(web.TCPSite):
    """A TCP site whose connections pass through a ConnectionGuard (conn_guard.py)."""

    def __init__(
        self, runner: web.AppRunner, host: str, port: int, guard: ConnectionGuard | None
    ) -> None:
        super().__init__(runner, host, port, backlog=1024, reuse_address=True)
        self.guard = guard

    async def start(self) -> None:
        if self.guard is None:
            return await super().start()
        await web.BaseSite.start(self)
        server = self._runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            self.guard.wrap(server),
            self._host,
            self._port,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
        )


async def start_site(
    app: web.Application,
    address: tuple[str, int],
    drain: float,
    cancel_on_disconnect: bool,
    guard: ConnectionGuard | None = None,
    direct: Callable[[Handler], Handler] | None = None,
) -> web.AppRunner:
    """Serve `app` on `address` (port 0 picks a free one; see `runner.addresses`). `direct`,
    given the app's own request handler, returns the handler the server calls instead
    (`Gateway.direct`); the app may then have no middlewares or response-prepare signals,
    which that handler would skip."""
    if direct is not None and (app.middlewares or app.on_response_prepare):
        raise ValueError("an app served with a direct handler cannot have middlewares or signals")
    extra: dict[str, Any] = {}
    if guard is not None:
        extra["keepalive_timeout"] = guard.idle_timeout
    runner = web.AppRunner(
        app,
        access_log=None,
        handle_signals=False,
        shutdown_timeout=drain,
        handler_cancellation=cancel_on_disconnect,
        **extra,
    )
    await runner.setup()
    if direct is not None:
        server = runner.server
        assert server is not None
        # Read by each connection's protocol when it is made: set before the site listens.
        server.request_handler = direct(server.request_handler)
    site = _GuardedSite(runner, address[0], address[1], guard)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner


async def serve(args: argparse.Namespace) -> int:
    metrics = Metrics()
    data_dir = Path(args.data_dir) if args.data_dir else None
    runtime = PolicyRuntime(PodIdentity.from_env(), metrics, data_dir)
    holder = ConfigHolder(builtin_registry(), runtime, metrics)
    watcher = FileWatcher(args.policy_config, holder, args.poll_interval)
    watcher.check()
    gateway = Gateway(
        holder,
        metrics,
        runtime,
        GatewayOptions(
            max_body_bytes=args.max_body_bytes,
            connect_timeout=args.connect_timeout,
            read_timeout=args.read_timeout,
            body_timeout=args.body_timeout,
            max_response_bytes=args.max_response_bytes,
            max_embeddings_response_bytes=args.max_embeddings_response_bytes,
            max_error_body_bytes=args.max_error_body_bytes,
            header_timeout=args.header_timeout,
            idle_timeout=args.idle_timeout,
            max_connections=args.max_connections,
            durable_audit=args.durable_audit,
        ),
    )
    try:
        # The API cancels a handler when its client disconnects, so the upstream call stops too.
        api = await start_site(
            gateway.app(), args.listen, args.drain_seconds, True, gateway.guard, gateway.direct
        )
        admin = await start_site(gateway.admin_app(), args.admin_listen, 1.0, False)
    except OSError as exc:
        log(_log, 50, "cannot listen", error=str(exc))
        return 2
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    watch = loop.create_task(watcher.run())
    try:
        # Pushes from the operator, when the injector configured a subscription; the mounted
        # file stays the durable source either way.
        subscription = subscribe.start(holder)
    except subscribe.SubscribeConfigError as exc:
        log(_log, 50, "bad subscription settings", error=str(exc))
        watch.cancel()
        await _quietly(api.cleanup())
        await _quietly(admin.cleanup())
        return 2
    # The start-up heap (modules, the policies' models) is frozen out of garbage collection,
    # again after each config change once the old config is idle: see gc_tuning.py.
    gc_tuning.settle()
    settler = gc_tuning.Settler(
        lambda: holder.current, lambda old: old.retired and old.inflight == 0
    )
    settling = loop.create_task(settler.run())
    ready, _ = holder.readiness()
    log(
        _log,
        20,
        "listening",
        api=f"http://{_show(args.listen)}/v1",
        admin=f"http://{_show(args.admin_listen)}",
        ready=ready,
        config=str(args.policy_config),
    )
    await stop.wait()
    log(_log, 20, "draining", seconds=args.drain_seconds)
    # One deadline for the whole shutdown: requests, their audit records, closing the policies.
    deadline = loop.time() + args.drain_seconds
    gateway.draining = True
    watch.cancel()
    settling.cancel()
    if subscription is not None:
        subscription.cancel()
    for site in list(api.sites):
        await _quietly(site.stop())  # no new connections from here on
    # Streams still open this long before the deadline are ended (SSE error event, `drained`),
    # leaving time to write their audit records and close the audit log.
    reserve = min(1.0, args.drain_seconds * 0.2)
    await _quietly(gateway.drain(deadline - reserve))
    await _quietly(api.cleanup())
    # Closing the policies ships the audit records still unacknowledged: that flush has time of
    # its own after the requests' deadline, so a request that ran until then does not cut it
    # short (the injector sizes the pod's grace period for both: operator inject.py).
    await _quietly(_until(deadline + ship.flush_seconds(os.environ), holder.close()))
    await _quietly(admin.cleanup())
    log(_log, 20, "stopped", drained=len(gateway.drained))
    return 0


async def _until(deadline: float, step: Coroutine[Any, Any, Any]) -> None:
    remaining = deadline - asyncio.get_running_loop().time()
    await asyncio.wait_for(step, max(0.05, remaining))


def _show(address: tuple[str, int]) -> str:
    host = f"[{address[0]}]" if ":" in address[0] else address[0]
    return f"{host}:{address[1]}"


async def _quietly(step: Coroutine[Any, Any, Any]) -> None:
    try:
        await step
    except Exception as exc:
        log(_log, 40, "shutdown step failed", error=type(exc).__name__)
