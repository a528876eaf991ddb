"""Local HTTP servers the webhook and llm agents talk to in tests (real sockets on loopback, stdlib only)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Handler = Callable[["Request"], Any]


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    body: bytes
    t: float  # monotonic arrival time

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class LocalServer:
    """Serves `handle(request)` on 127.0.0.1:<free port>; records every request."""

    handle: Callable[[Request, BaseHTTPRequestHandler], None]
    requests: list[Request] = field(default_factory=list)

    def __enter__(self) -> LocalServer:
        outer = self

        class _H(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                req = Request(self.path, dict(self.headers.items()), body, time.monotonic())
                outer.requests.append(req)
                outer.handle(req, self)

            def log_message(self, *args: object) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _H)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def send_json(handler: BaseHTTPRequestHandler, status: int, data: Any) -> None:
    body = json.dumps(data).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)
