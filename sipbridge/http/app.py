"""FastAPI application factory.

The app holds no state of its own: it reads the supervisor's components through `HealthSource` callables,
so tests can build it around real components and later issues add routers without touching this file's
callers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from fastapi import FastAPI

from sipbridge import __version__

HealthSource = Callable[[], Mapping[str, Any]]


def create_app(health_sources: Mapping[str, HealthSource]) -> FastAPI:
    app = FastAPI(title="sipbridge", version=__version__)

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        """Liveness and a summary of every component; no auth (load balancers and probes call it)."""
        components = {name: dict(source()) for name, source in health_sources.items()}
        ok = all(component.get("ok", True) for component in components.values())
        return {"status": "ok" if ok else "degraded", "version": __version__, **components}

    return app
