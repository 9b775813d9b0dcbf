"""OpenAI-style error bodies for every error the sidecar itself produces.

Why it exists: applications talk to the sidecar through the stock OpenAI SDK, which turns an HTTP
status plus `{"error": {"type", "code", "message", "param"}}` into a typed exception
(`BadRequestError`, `PermissionDeniedError`, ...). Producing exactly that shape in one place keeps
every path (bad JSON, policy blocks, upstream failures, not ready) consistent, and makes sure each
response carries the `x-packgate-request-id` an operator needs to find the matching log line.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

REQUEST_ID_HEADER = "x-packgate-request-id"


class ApiError(Exception):
    """An error the sidecar answers with itself; raised anywhere in request handling."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        type_: str | None = None,
        param: str | None = None,
        extra: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.type = type_ or _DEFAULT_TYPES.get(status, "api_error")
        self.param = param
        self.extra = extra or {}
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.type, self.code, self.message, self.param, self.extra)

    def response(self, request_id: str) -> web.Response:
        headers = {REQUEST_ID_HEADER: request_id, **self.headers}
        # The SDK retries 5xx by default; a decision that will not change on retry says so.
        if self.code in _FINAL_CODES:
            headers["x-should-retry"] = "false"
        return web.Response(
            status=self.status,
            body=json.dumps(self.body()).encode(),
            content_type="application/json",
            headers=headers,
        )


# OpenAI's own `type` values where one exists; our own names where it has none.
_DEFAULT_TYPES = {
    400: "invalid_request_error",
    403: "policy_violation",
    404: "invalid_request_error",
    405: "invalid_request_error",
    408: "invalid_request_error",
    413: "invalid_request_error",
    502: "upstream_error",
    503: "service_unavailable",
    504: "timeout_error",
}
_FINAL_CODES = frozenset({"pack_disabled"})


def error_body(
    type_: str,
    code: str,
    message: str,
    param: str | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    error: dict[str, Any] = {"type": type_, "code": code, "message": message, "param": param}
    if extra:
        error.update(extra)
    return {"error": error}


def policy_blocked(phase: str, policy: str, reason: str) -> ApiError:
    """The 403 a policy block turns into; `phase` is "request" or "response"."""
    code = "input_blocked" if phase == "request" else "output_blocked"
    what = "request" if phase == "request" else "response"
    message = f"The {what} was blocked by the {policy} policy"
    if reason:
        message += f": {reason}"
    return ApiError(403, code, message, type_="policy_violation", extra={"policy": policy})


def invalid_request(
    message: str, param: str | None = None, code: str = "invalid_request"
) -> ApiError:
    return ApiError(400, code, message, param=param)


def not_found(method: str, path: str) -> ApiError:
    return ApiError(
        404,
        "unknown_url",
        f"Invalid URL ({method} {path}): packgate serves /v1/chat/completions, /v1/completions, "
        "/v1/embeddings, /v1/responses and /v1/models",
    )


def method_not_allowed(method: str, path: str, allowed: list[str]) -> ApiError:
    return ApiError(
        405,
        "method_not_allowed",
        f"Method {method} is not allowed on {path}; use {', '.join(allowed)}",
        headers={"Allow": ", ".join(allowed)},
    )


def too_large(limit: int) -> ApiError:
    return ApiError(
        413, "request_too_large", f"The request body is larger than the limit of {limit} bytes"
    )


def sse_error_event(error: ApiError) -> bytes:
    """A server-sent event that ends a stream with an error.

    The OpenAI SDK raises `APIError` for any event whose data has an `error` key; the top-level
    `type`/`code`/`message` mirror the Responses API's own `error` event for raw SSE readers.
    """
    body = error.body()
    data = {"type": "error", "code": error.code, "message": error.message, **body}
    return b"event: error\ndata: " + json.dumps(data).encode() + b"\n\n"
