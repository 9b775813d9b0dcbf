"""The floor: the thinnest honest aiohttp reverse proxy for chat completions.

Why it exists: packgate is an aiohttp server that forwards with an aiohttp client, so its cost
splits into what this stack costs anyway and what packgate adds (parsing, the chain, metrics,
logs, SSE inspection). This proxy is the first part alone: same server and client library, same
event loop (uvloop), one pooled client session, no access log; it reads the body, posts it to
the one upstream with the proxy's own key, and relays the answer (JSON whole, SSE chunk by chunk
as it arrives). Nothing is parsed or checked, so no governing proxy on this stack can be faster.

    python bench/floor.py --port 8081 --upstream http://127.0.0.1:8080/v1
"""

from __future__ import annotations

import argparse

import aiohttp
from aiohttp import web

PASS = ("x-request-id", "openai-", "x-ratelimit-", "retry-after")


def make_app(upstream: str, key: str) -> web.Application:
    state: dict[str, aiohttp.ClientSession] = {}
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
    base = upstream.rstrip("/")

    async def start(_app: web.Application) -> None:
        connector = aiohttp.TCPConnector(limit=1024)
        state["session"] = aiohttp.ClientSession(connector=connector)

    async def stop(_app: web.Application) -> None:
        await state["session"].close()

    async def proxy(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        url = base + request.path.removeprefix("/v1")
        async with state["session"].post(url, data=body, headers=headers) as answer:
            passed = {k: v for k, v in answer.headers.items() if k.lower().startswith(PASS)}
            if answer.content_type == "text/event-stream":
                passed.update({"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
                response = web.StreamResponse(status=answer.status, headers=passed)
                await response.prepare(request)
                async for chunk in answer.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
                return response
            data = await answer.read()
            passed["Content-Type"] = answer.headers.get("Content-Type", "application/json")
            return web.Response(status=answer.status, body=data, headers=passed)

    async def health(_request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application(client_max_size=8 * 1024 * 1024)
    app.router.add_get("/healthz", health)
    app.router.add_post("/v1/{tail:.*}", proxy)
    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--upstream", required=True, help="base URL, e.g. http://127.0.0.1:8080/v1")
    parser.add_argument("--key", default="sk-bench-upstream")
    args = parser.parse_args(argv)
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover
        loop_factory = None
    web.run_app(
        make_app(args.upstream, args.key),
        host=args.host,
        port=args.port,
        access_log=None,
        print=None,
        loop=loop_factory() if loop_factory else None,
        backlog=1024,
    )


if __name__ == "__main__":
    main()
