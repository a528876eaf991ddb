"""FastAPI application factory.

The app holds no state of its own: it reads the supervisor's components through `HealthSource` callables,
so tests can build it around real components and later issues add routers without touching this file's
callers. With a `ConversationService` it also serves the conversation API (sipbridge/http/routes.py,
docs/HTTP_API.md); the OpenAPI schema is at /openapi.json and /docs.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse

from sipbridge import __version__
from sipbridge.config import HttpConfig

HealthSource = Callable[[], Mapping[str, Any]]

# Form fields (transcript, words, name) ride along with the file: allow this much over max_upload_bytes.
_FORM_SLACK_BYTES = 256 * 1024


def create_app(
    health_sources: Mapping[str, HealthSource],
    conversations: Any = None,  # sipbridge.http.service.ConversationService (imported lazily)
    http: HttpConfig | None = None,
    metrics: Callable[[], str] | None = None,  # Prometheus exposition text (sipbridge.metrics.Metrics.render)
) -> FastAPI:
    app = FastAPI(title="sipbridge", version=__version__)

    if metrics is not None:

        @app.get("/metrics", response_class=PlainTextResponse)
        def prometheus() -> PlainTextResponse:
            """Prometheus scrape; no auth, like /healthz (counts and latencies, no call content)."""
            return PlainTextResponse(metrics(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        """Liveness and a summary of every component; no auth (load balancers and probes call it)."""
        components = {name: dict(source()) for name, source in health_sources.items()}
        ok = all(component.get("ok", True) for component in components.values())
        return {"status": "ok" if ok else "degraded", "version": __version__, **components}

    if conversations is not None:
        from sipbridge.http.routes import build_router
        from sipbridge.http.service import ApiError

        cfg = http or HttpConfig()
        limit = cfg.limits.max_upload_bytes + _FORM_SLACK_BYTES

        @app.exception_handler(ApiError)
        async def api_error(request: Request, exc: ApiError) -> JSONResponse:
            return JSONResponse({"detail": exc.message}, status_code=exc.status)

        @app.middleware("http")
        async def refuse_large_bodies(
            request: Request, call_next: Callable[[Request], Awaitable[Response]]
        ) -> Response:
            # Before the multipart parser spools the body to disk: a declared length over the limit is
            # refused at once. Chunked bodies are measured after parsing (read_upload).
            length = request.headers.get("content-length", "")
            if length.isdigit() and int(length) > limit:
                return JSONResponse(
                    {
                        "detail": f"request body of {length} bytes is over the upload limit of"
                        f" {cfg.limits.max_upload_bytes} bytes (http.limits.max_upload_bytes)"
                    },
                    status_code=413,
                )
            return await call_next(request)

        app.include_router(build_router(conversations, cfg, health_sources))

        # The ElevenLabs, OpenAI and Kyutai compatible surfaces (docs/COMPAT.md), on the same service.
        from sipbridge.http import elevenlabs, kyutai, openai

        for protocol in (elevenlabs, openai, kyutai):
            app.include_router(protocol.build_router(conversations, cfg))

    return app
