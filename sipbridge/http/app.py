"""FastAPI application factory.

The app holds no state of its own: it reads the supervisor's components through `HealthSource` callables,
so tests can build it around real components and later issues add routers without touching this file's
callers. With a `ConversationService` it also serves the conversation API (sipbridge/http/routes.py,
docs/HTTP_API.md); the OpenAPI schema is at /openapi.json and /docs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse

from sipbridge import __version__
from sipbridge.config import HttpConfig
from sipbridge.http.errors import ApiError
from sipbridge.http.guards import BodyLimit
from sipbridge.metrics import CONTENT_TYPE

HealthSource = Callable[[], Mapping[str, Any]]

# Form fields (transcript, words, name) ride along with the file: allow this much over max_upload_bytes.
FORM_SLACK_BYTES = 256 * 1024


def create_app(
    health_sources: Mapping[str, HealthSource],
    conversations: Any = None,  # sipbridge.http.service.ConversationService (imported lazily)
    http: HttpConfig | None = None,
    metrics: Callable[[], str] | None = None,  # Prometheus exposition text (sipbridge.metrics.Metrics.render)
    readiness: Callable[[], Mapping[str, bool]] | None = None,  # Supervisor.readiness: check name -> holds
    dnc: Any = None,  # sipbridge.dialer.suppression.DncList: serves /dnc (sipbridge/http/dnc.py)
) -> FastAPI:
    app = FastAPI(title="sipbridge", version=__version__)

    if metrics is not None:

        @app.get("/metrics", response_class=PlainTextResponse)
        def prometheus() -> PlainTextResponse:
            """Prometheus scrape; no auth, like /healthz (counts and latencies, no call content)."""
            return PlainTextResponse(metrics(), media_type=CONTENT_TYPE)

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        """Liveness and a summary of every component; no auth (load balancers and probes call it)."""
        components = {name: dict(source()) for name, source in health_sources.items()}
        ok = all(component.get("ok", True) for component in components.values())
        return {"status": "ok" if ok else "degraded", "version": __version__, **components}

    if readiness is not None:

        @app.get("/readyz")
        def readyz() -> JSONResponse:
            """Readiness: 200 when this process takes new calls, 503 (with the failing checks) while it
            starts, drains or lacks a component; no auth, like /healthz."""
            checks = dict(readiness())
            ready = all(checks.values())
            body = {"status": "ready" if ready else "not ready", "checks": checks}
            return JSONResponse(body, status_code=200 if ready else 503)

    cfg = http or HttpConfig()
    # Every body, on every route (those added later too), is capped before anything reads it.
    app.add_middleware(
        BodyLimit,
        limit=cfg.limits.max_upload_bytes + FORM_SLACK_BYTES,
        key="http.limits.max_upload_bytes, plus 256 KiB for form fields",
    )
    _json_errors(app)

    if conversations is not None:
        from sipbridge.http.routes import build_router

        app.include_router(build_router(conversations, cfg, health_sources))

        # The ElevenLabs, OpenAI and Kyutai compatible surfaces (docs/COMPAT.md), on the same service.
        from sipbridge.http import elevenlabs, kyutai, openai

        for protocol in (elevenlabs, openai, kyutai):
            app.include_router(protocol.build_router(conversations, cfg))
    if dnc is not None:
        from sipbridge.http.dnc import build_dnc_router

        app.include_router(build_dnc_router(dnc, cfg))

    return app


def _validation_detail(exc: RequestValidationError) -> str:
    problems = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error.get("loc", ()) if part not in ("body", "query", "path"))
        problems.append(f"{where or 'request'}: {error.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(problems)


def _json_errors(app: FastAPI) -> None:
    """Every error body is `{"detail": "<one sentence>"}` (docs/HTTP_API.md), FastAPI's own ones included."""

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"detail": exc.message}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _validation_detail(exc)}, status_code=422)

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> JSONResponse:
        # Logged with its traceback by uvicorn; the client learns nothing of our internals.
        return JSONResponse({"detail": "internal error (logged by the server)"}, status_code=500)
