"""What every part of one call shares: its identity, where its frames go, the store and metrics, and its life.

The life is the call's tasks (cancelled together at the end), the first failure on our side (recorded as the
call's reason) and the one Hangup the worker is sent. Everything here runs on the supervisor's event loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from sipbridge import frames as f
from sipbridge.config import Config
from sipbridge.engine import EngineSession
from sipbridge.metrics import Metrics
from sipbridge.sip.pool import WorkerHandle
from sipbridge.store_writer import StoreWriter

log = logging.getLogger("sipbridge.session")


@dataclass
class CallContext:
    start: f.CallStarted
    worker: WorkerHandle
    config: Config
    store: StoreWriter  # queues the call's writes: they never block the loop
    metrics: Metrics
    engine_session: EngineSession | None = None  # opened by CallSession.open, closed at the end
    failure: str | None = None
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    hangup_sent: bool = False

    @property
    def call_id(self) -> str:
        return self.start.call_id

    @property
    def rate(self) -> int:
        return self.config.media.clock_rate

    def send(self, frame: f.Frame) -> None:
        self.worker.send(frame)

    def event(self, kind: str, data: dict[str, Any]) -> None:
        self.store.add_event(self.call_id, kind, data)

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str, *, watched: bool = True) -> asyncio.Task[Any]:
        """A task of this call, cancelled when it ends. `watched`: its exception fails the call (an
        unwatched one, e.g. a speculative transcription, handles its own errors)."""
        task = asyncio.create_task(coro, name=f"{name}-{self.call_id[:8]}")
        self.tasks.add(task)
        task.add_done_callback(self._task_done if watched else self.tasks.discard)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            log.error("call %s: %s failed: %r", self.call_id, task.get_name(), exc, exc_info=exc)
            self.fail(f"{task.get_name().split('-')[0]}: {exc}")

    def fail(self, reason: str) -> None:
        """Something on our side broke mid-call: end the call cleanly and record why."""
        if self.failure is None:
            self.failure = reason
            log.error("call %s failed: %s; hanging up", self.call_id, reason)
        self.hangup(500, reason)

    def hangup(self, code: int = 200, reason: str = "") -> None:
        if not self.hangup_sent and not self.ended.is_set():
            self.hangup_sent = True
            self.send(f.Hangup(self.call_id, code, reason))

    def cancel_tasks(self) -> None:
        for task in list(self.tasks):
            task.cancel()
