"""A local prompt-injection classifier server for tests: the second opinion's counterpart.

Why it exists: the `prompt-injection` policy's `backend` talks HTTP to a model server in the
cluster; tests need a real server on loopback that speaks both supported shapes (packgate's JSON
at `/score`, KServe v2 at `/v2/models/guard/infer`) and can be told to be slow, to fail or to
answer nonsense. Its "model" is a marker word, so a test decides what the classifier thinks of a
text regardless of the local model: a text containing `MARKER` scores 0.97, any other 0.02.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

MARKER = "pineapple"


def verdict(text: str) -> float:
    return 0.97 if MARKER in text.lower() else 0.02


class ClassifierServer:
    """`json_url` and `kserve_url` once started; `texts` holds every text received, in order."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.calls = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.delay = 0.0
        self.status = 200
        self.garbage = False
        self.kserve_shape_2d = True  # answer [n, 2] class probabilities (else [n] scores)
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def json_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/score"

    @property
    def kserve_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v2/models/guard/infer"

    async def _enter(self) -> None:
        self.calls += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        if self.delay:
            await asyncio.sleep(self.delay)

    async def _score(self, request: web.Request) -> web.StreamResponse:
        await self._enter()
        try:
            body = await request.json()
            texts = [str(t) for t in body["texts"]]
            self.texts.extend(texts)
            if self.status != 200:
                return web.json_response({"error": "down"}, status=self.status)
            if self.garbage:
                return web.json_response({"scores": [1.5] * len(texts)})
            return web.json_response({"scores": [verdict(t) for t in texts]})
        finally:
            self.in_flight -= 1

    async def _infer(self, request: web.Request) -> web.StreamResponse:
        await self._enter()
        try:
            body = await request.json()
            tensor = body["inputs"][0]
            assert tensor["datatype"] == "BYTES" and tensor["shape"] == [len(tensor["data"])]
            texts = [str(t) for t in tensor["data"]]
            self.texts.extend(texts)
            scores = [verdict(t) for t in texts]
            output: dict[str, Any]
            if self.kserve_shape_2d:
                flat = [v for s in scores for v in (round(1 - s, 4), s)]
                output = {"name": "probs", "shape": [len(texts), 2], "datatype": "FP32"}
                output["data"] = flat
            else:
                output = {"name": "score", "shape": [len(texts)], "datatype": "FP32"}
                output["data"] = scores
            return web.json_response({"model_name": "guard", "outputs": [output]})
        finally:
            self.in_flight -= 1

    async def __aenter__(self) -> ClassifierServer:
        app = web.Application()
        app.router.add_post("/score", self._score)
        app.router.add_post("/v2/models/guard/infer", self._infer)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
