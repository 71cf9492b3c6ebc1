"""OpenAI-style errors: ``{"error": {"message", "type", "param", "code"}}`` with the HTTP status."""

from __future__ import annotations

from typing import ClassVar

from fastapi.responses import JSONResponse


class ApiError(Exception):
    """An error answered as OpenAI's ``{"error": {...}}`` JSON; ``retry_after`` (s) adds ``Retry-After``."""

    TYPES: ClassVar[dict] = {
        400: "invalid_request_error",
        401: "authentication_error",
        404: "not_found_error",
        405: "invalid_request_error",
        408: "timeout_error",
        413: "invalid_request_error",
        429: "rate_limit_error",
        502: "upstream_error",
        503: "server_overloaded",
        504: "timeout_error",
    }

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.retry_after = status, message, param, code, retry_after

    def body(self) -> dict:
        kind = self.TYPES.get(self.status, "server_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        headers = {"Retry-After": str(max(1, round(self.retry_after)))} if self.retry_after is not None else None
        return JSONResponse(self.body(), status_code=self.status, headers=headers)
