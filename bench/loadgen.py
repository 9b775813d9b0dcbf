"""Closed-loop HTTP/1.1 load generator: fixed concurrency, per-request latency and first byte.

Why our own and not wrk: the issue asks for time to first byte of streamed answers, exact p50 and
p99 from every request, and many short alternating rounds; wrk gives none of the first, an
approximate second, and a Lua script per setup. This one runs as its own process (pinned to the
load core by the harness, so it never shares the proxy's core), on uvloop with a bare asyncio
protocol: the request is bytes prepared once, and the response is only framed (status line,
Content-Length or chunked encoding), never parsed, so it costs a few tens of microseconds per
request. Its own CPU time is reported, so a run where the generator was the bottleneck shows.
With `--vary` every request carries a new case tag in its prompt (`payloads.tag`), so a proxy's
verdict caches never hit: real traffic repeats system prompts and earlier turns, not every text.

Each of `--concurrency` connections sends a request, waits for the whole answer, and sends the
next (keep-alive). The warm-up lasts `--warmup` seconds and at least one answer per connection;
the window then counts the answers that complete in it (`--duration` seconds, stretched for a
slow server until it holds two answers per connection). TTFB is the time from
sending the request to the first byte of the response *body* (for a stream, its first event).

    python bench/loadgen.py --port 8081 --body body.json --concurrency 32 --duration 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any, cast

if __package__ in (None, ""):  # run as a script by the harness: bench.payloads importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.payloads import TAG_DEFAULT, TAG_PREFIX, tag

_HEAD, _FIXED, _CHUNK_SIZE, _CHUNK_DATA, _TRAILER, _UNTIL_CLOSE = range(6)


class Answer:
    __slots__ = ("end", "first", "ok", "status")

    def __init__(self) -> None:
        self.status = 0
        self.first = 0.0
        self.end = 0.0
        self.ok = False


class Client(asyncio.Protocol):
    """One keep-alive connection; `request()` sends and resolves when the answer is complete."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.state = _HEAD
        self.remaining = 0
        self.answer = Answer()
        self.done: asyncio.Future[Answer] | None = None
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing asyncio.Transport.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.done is not None and not self.done.done():
            if self.state == _UNTIL_CLOSE:
                self.answer.end = time.perf_counter()
                self.answer.ok = True
                self.done.set_result(self.answer)
            else:
                self.done.set_exception(ConnectionError("connection closed mid-answer"))
        if not self.closed.done():
            self.closed.set_result(None)

    def request(self, data: bytes) -> asyncio.Future[Answer]:
        assert self.transport is not None
        self.answer = Answer()
        self.state = _HEAD
        self.buffer.clear()
        self.done = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return self.done

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        buf = self.buffer
        buf += data
        answer = self.answer
        pos = 0
        while True:
            state = self.state
            if state == _HEAD:
                end = buf.find(b"\r\n\r\n", pos)
                if end < 0:
                    break
                head = bytes(buf[pos:end]).lower()
                answer.status = int(head[9:12])
                pos = end + 4
                at = head.find(b"\r\ncontent-length:")
                if at >= 0:
                    stop = head.find(b"\r\n", at + 2)
                    self.remaining = int(head[at + 17 : stop if stop >= 0 else None])
                    self.state = _FIXED
                    if self.remaining == 0:
                        answer.first = now
                        self._finish(now)
                        break
                elif b"\r\ntransfer-encoding: chunked" in head:
                    self.state = _CHUNK_SIZE
                else:
                    self.state = _UNTIL_CLOSE
            elif state == _FIXED:
                available = len(buf) - pos
                if available <= 0:
                    break
                if not answer.first:
                    answer.first = now
                take = min(available, self.remaining)
                pos += take
                self.remaining -= take
                if self.remaining == 0:
                    self._finish(now)
                    break
            elif state == _CHUNK_SIZE:
                end = buf.find(b"\r\n", pos)
                if end < 0:
                    break
                size = int(bytes(buf[pos:end]).split(b";", 1)[0], 16)
                pos = end + 2
                if size == 0:
                    self.state = _TRAILER
                else:
                    if not answer.first:
                        answer.first = now
                    self.remaining = size + 2
                    self.state = _CHUNK_DATA
            elif state == _CHUNK_DATA:
                available = len(buf) - pos
                if available <= 0:
                    break
                take = min(available, self.remaining)
                pos += take
                self.remaining -= take
                if self.remaining == 0:
                    self.state = _CHUNK_SIZE
            elif state == _TRAILER:
                end = buf.find(b"\r\n", pos)
                if end < 0:
                    break
                line_empty = end == pos
                pos = end + 2
                if line_empty:
                    self._finish(now)
                    break
            else:  # _UNTIL_CLOSE
                if len(buf) > pos and not answer.first:
                    answer.first = now
                pos = len(buf)
                break
        del buf[:pos]

    def _finish(self, now: float) -> None:
        self.answer.end = now
        self.answer.ok = True
        self.state = _HEAD
        if self.done is not None and not self.done.done():
            self.done.set_result(self.answer)


def build_request(host: str, port: int, path: str, body: bytes, auth: str) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Accept: application/json\r\nAuthorization: Bearer {auth}\r\n"
        f"User-Agent: packgate-bench\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def run(args: argparse.Namespace) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    body = open(args.body, "rb").read()  # noqa: ASYNC230, SIM115 - read once before the run
    data = build_request(args.host, args.port, args.path, body, args.auth)
    at = data.find(TAG_PREFIX + TAG_DEFAULT) + len(TAG_PREFIX)
    if args.vary and at < len(TAG_PREFIX):
        raise SystemExit(f"--vary: the body has no {(TAG_PREFIX + TAG_DEFAULT).decode()!r}")
    sent_count = 0

    def next_request() -> bytes:
        nonlocal sent_count
        if not args.vary:
            return data
        sent_count += 1
        return data[:at] + tag(sent_count) + data[at + len(TAG_DEFAULT) :]

    done: list[tuple[float, int, float, float]] = []  # (end, status, latency, first byte)
    errors: dict[str, int] = {}
    started = time.perf_counter()
    hard_stop = started + args.warmup + args.duration + args.max_extra
    # A slow server (seconds per answer at this concurrency) would finish nothing in a short
    # window, so the warm-up also waits for one answer per connection, and the window is
    # stretched until it holds at least two answers per connection.
    needed = 2 * args.concurrency
    window: dict[str, float] = {}
    warm = 0

    def finished(sent: float, answer: Answer) -> None:
        nonlocal warm
        if "from" not in window:
            warm += 1
            if answer.end - started >= args.warmup and warm >= args.concurrency:
                window["from"] = answer.end
                window["until"] = answer.end + args.duration
            return
        done.append((answer.end, answer.status, answer.end - sent, answer.first - sent))

    def more() -> bool:
        now = time.perf_counter()
        if now >= hard_stop:
            return False
        return "from" not in window or now < window["until"] or len(done) < needed

    async def connect() -> Client:
        _, client = await loop.create_connection(Client, args.host, args.port)
        return client

    async def worker() -> None:
        client = await connect()
        while more():
            sent = time.perf_counter()
            try:
                answer = await asyncio.wait_for(client.request(next_request()), args.timeout)
            except (ConnectionError, OSError, TimeoutError) as exc:
                name = type(exc).__name__
                errors[name] = errors.get(name, 0) + 1
                if client.transport is not None:
                    client.transport.close()
                await asyncio.sleep(0.01)
                client = await connect()
                continue
            finished(sent, answer)
        if client.transport is not None:
            client.transport.close()

    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    wall = time.perf_counter() - started
    done.sort()
    span = 0.0
    if "from" in window:
        # Counted by completion time, over the planned window or the stretched one.
        until = window["until"]
        if sum(1 for end, *_ in done if end <= until) < needed and len(done) >= needed:
            until = done[needed - 1][0]
        done = [d for d in done if d[0] <= until]
        span = until - window["from"]
    statuses: dict[str, int] = {}
    for _, status, _, _ in done:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    good = [d for d in done if d[1] == 200]
    return {
        "ok": len(good),
        "statuses": dict(sorted(statuses.items())),
        "errors": errors,
        "window_s": round(span, 3),
        "stretched": span > args.duration + 1e-6,
        "rps": len(good) / span if span else 0.0,
        "latency_ms": _summary(sorted(d[2] for d in good)),
        "ttfb_ms": _summary(sorted(d[3] for d in good)),
        "loadgen_cpu_pct": round(100 * cpu / wall, 1) if wall else None,
    }


def _summary(sorted_seconds: list[float]) -> dict[str, float | None]:
    n = len(sorted_seconds)
    if not n:
        return {"p50": None, "p90": None, "p99": None, "mean": None, "max": None}

    def pick(q: float) -> float:
        rank = max(1, min(n, round(q / 100 * n + 0.5)))
        return round(sorted_seconds[rank - 1] * 1000, 4)

    return {
        "p50": pick(50),
        "p90": pick(90),
        "p99": pick(99),
        "mean": round(sum(sorted_seconds) / n * 1000, 4),
        "max": round(sorted_seconds[-1] * 1000, 4),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/v1/chat/completions")
    parser.add_argument("--body", required=True, help="file with the JSON request body")
    parser.add_argument("--auth", default="sk-bench-client")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=1.0, help="uncounted seconds first")
    parser.add_argument("--timeout", type=float, default=30.0, help="per request")
    parser.add_argument(
        "--max-extra", type=float, default=60.0, help="longest stretch of a slow server's window"
    )
    parser.add_argument(
        "--vary", action="store_true", help="a new case tag in the prompt of every request"
    )
    args = parser.parse_args(argv)
    try:
        import uvloop

        result = uvloop.run(run(args))
    except ImportError:  # pragma: no cover
        result = asyncio.run(run(args))
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    sys.stdout.flush()
    os._exit(0)  # don't wait for sockets the server may hold open


if __name__ == "__main__":
    main()
