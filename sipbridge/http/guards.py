"""What every HTTP request meets before a route reads its body: a byte cap on the body and the bearer token.

Both exist because of the order FastAPI works in: a route's declared body (`File`, `Form`, a model) is read
and parsed *before* its dependencies run, so a token check written as a dependency lets anyone stream an
unbounded multipart upload into the parser's temporary file first. Hence:

- `BodyLimit` (ASGI middleware, whole app): a declared `Content-Length` over the cap is answered 413 before
  the app runs; a chunked body is counted as it arrives and refused with 413 the moment it passes the cap, so
  nothing ever reads, parses or spools more than the cap. The 413 names the config key.
- `auth_first_route(check)`: an `APIRoute` class whose handler runs `check(request)` (`BearerToken.check`)
  before FastAPI reads the body. Routers of protected endpoints use it as `route_class`; the endpoints keep
  their `File`/`Form` parameters (and their OpenAPI). New routers (other wire protocols, other auth headers)
  build their own check and reuse both pieces.

FastAPI >= 0.165 has a `max_body_size` of its own, but it answers a bare "Content Too Large" and our range
starts far below it; this is the same idea with the limit named.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from fastapi import HTTPException, Request, Response
from fastapi.routing import APIRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyTooLarge(HTTPException):
    """Raised from `receive` once a body passes the cap; FastAPI lets HTTPExceptions through untouched."""

    def __init__(self, detail: str) -> None:
        # The client may still be sending: close the connection after the answer instead of reading on.
        super().__init__(413, detail, headers={"Connection": "close"})


def _declared_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


class BodyLimit:
    """Refuse request bodies over `limit` bytes, declared or streamed, with a JSON 413 naming `key`."""

    def __init__(self, app: ASGIApp, *, limit: int, key: str) -> None:
        self.app, self.limit, self.key = app, limit, key

    def detail(self, size: int | None) -> str:
        got = "the request body" if size is None else f"the request body of {size} bytes"
        return f"{got} is over the limit of {self.limit} bytes ({self.key})"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _declared_length(scope)
        if declared is not None and declared > self.limit:
            await _send_json(send, 413, self.detail(declared))
            return
        seen = 0
        started = False

        async def counted_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise BodyTooLarge(self.detail(None))
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except BodyTooLarge as exc:  # raised where no exception handler turned it into the response
            if started:
                raise
            await _send_json(send, 413, str(exc.detail))


async def _send_json(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"connection", b"close")]  # fmt: skip
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class BearerToken:
    """`Authorization: Bearer <token>` compared in constant time; no token configured = everyone passes."""

    def __init__(self, token: str | None) -> None:
        self._token = token.encode() if token is not None else None

    def ok(self, presented: str | None) -> bool:
        if self._token is None:
            return True
        return presented is not None and hmac.compare_digest(presented.encode(), self._token)

    @staticmethod
    def presented(request: Request) -> str | None:
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        return value.strip() if scheme.lower() == "bearer" else None

    def check(self, request: Request) -> None:
        """401 before the body is read; the connection is closed so an unread upload is not drained."""
        if not self.ok(self.presented(request)):
            raise HTTPException(
                401, "missing or wrong bearer token (Authorization: Bearer ...)",
                headers={"WWW-Authenticate": "Bearer", "Connection": "close"},
            )  # fmt: skip


RequestCheck = Callable[[Request], None]


def auth_first_route(check: RequestCheck) -> type[APIRoute]:
    """An APIRoute class that runs `check` (raising HTTPException) before the route reads its body."""

    class AuthFirstRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler: Callable[[Request], Awaitable[Response]] = super().get_route_handler()

            async def checked(request: Request) -> Response:
                check(request)
                return await handler(request)

            return checked

    return AuthFirstRoute
