"""The HTTP API's errors: `ApiError` (status, detail, headers, per-field errors) and the
handlers that turn every failure into a JSON answer (404 "not found" for anything unknown, V12;
503 + Retry-After for a store failure; 500 for a bug, logged with the request id).
"""

from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from adapters.errors import StoreError
from domain.errors import NotFound

log = structlog.get_logger("crmsync.http")


class ApiError(Exception):
    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None,
                 errors: list[dict[str, str]] | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.headers, self.errors = status, detail, headers, errors


def invalid(field: str, reason: str) -> ApiError:
    return ApiError(422, f"{field}: {reason}", errors=[{"field": field, "reason": reason}])


def add_base_handlers(app: FastAPI) -> None:
    """What every app of ours answers alike (the API and the webhook receiver): an HTTP error
    as JSON, 404 as "not found" whatever the detail (V12), a bug as 500 without its details."""

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = "not found" if exc.status_code == 404 else str(exc.detail)
        return JSONResponse({"detail": detail}, exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal_error", request_id=getattr(request.state, "request_id", None),
                      path=request.url.path)
        return JSONResponse({"detail": "internal error"}, 500)


def add_error_handlers(app: FastAPI) -> None:
    add_base_handlers(app)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        body: dict[str, Any] = {"detail": exc.detail}
        if exc.errors is not None:
            body["errors"] = exc.errors
        return JSONResponse(body, exc.status, headers=exc.headers)

    @app.exception_handler(NotFound)
    async def _not_found(request: Request, exc: NotFound) -> JSONResponse:
        return JSONResponse({"detail": "not found"}, 404)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"field": ".".join(str(p) for p in e["loc"][1:]) or str(e["loc"][0]),
                   "reason": str(e["msg"])} for e in exc.errors()]
        detail = "; ".join(f"{e['field']}: {e['reason']}" for e in errors)
        return JSONResponse({"detail": detail, "errors": errors}, 422)

    @app.exception_handler(StoreError)
    async def _store(request: Request, exc: StoreError) -> JSONResponse:
        log.error("store_failure", request_id=request.state.request_id, error=str(exc))
        return JSONResponse({"detail": "store unavailable; retry"}, 503,
                            headers={"Retry-After": "1"})

