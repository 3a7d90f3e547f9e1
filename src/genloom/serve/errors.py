"""Errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}` with the matching HTTP status.

Clients (the `openai` package, LangChain, evaluation harnesses) branch on the status and on `code`, so every
failure the server can name is an `ApiError`; FastAPI's own 422 for a malformed body becomes a 400 here, as
OpenAI answers it.
"""

from __future__ import annotations

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse


class ApiError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, object]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def bad_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


def unknown_model(name: str, known: list[str]) -> ApiError:
    return ApiError(404, f"the model {name!r} does not exist; this server has: {', '.join(known)}",
                    param="model", code="model_not_found")


def queue_full(depth: int) -> ApiError:
    return ApiError(429, f"the server is at capacity ({depth} requests waiting); retry shortly",
                    type_="rate_limit_error", code="rate_limit_exceeded", headers={"Retry-After": "1"})


async def api_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return exc.response()


async def validation_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """A body that does not parse, or a field of the wrong type or out of range: 400 naming the field.

    A field that takes several forms (`prompt`: a text, texts or token arrays) fails once per form, each error
    located under a name of the form; their common location is the field."""
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    first = errors[0] if errors else {}
    locations = [[str(part) for part in error.get("loc", ()) if part != "body"] for error in errors]
    common = _common_prefix(locations) if len(locations) > 1 else []
    param = ".".join(common or (locations[0] if locations else [])) or None
    message = str(first.get("msg", "invalid request"))
    if common:
        message = f"matches none of the forms this field takes (the first error: {message})"
    return bad_request(f"{param}: {message}" if param else message, param=param).response()


def _common_prefix(locations: list[list[str]]) -> list[str]:
    prefix = locations[0]
    for location in locations[1:]:
        n = 0
        while n < min(len(prefix), len(location)) and prefix[n] == location[n]:
            n += 1
        prefix = prefix[:n]
    return prefix
