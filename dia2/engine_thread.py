"""The engine thread: a daemon thread that runs one engine's steps back to back and, between two steps, the
commands other threads submit (open a call, speak, cancel ...). Nothing else ever touches the engine's
tensors while it runs, so the engine itself takes no lock. See docs/DIA2.md for why a thread and not an
asyncio task.
"""

from __future__ import annotations

import concurrent.futures
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

import torch

logger = logging.getLogger("dia2.engine")


class EngineThread:
    def __init__(self, step: Callable[[], bool]) -> None:
        """``step`` advances the engine once; it returns False when no call is speaking (the thread then
        sleeps until the next command)."""
        self._step = step
        self._commands: queue.SimpleQueue[tuple[Callable[[], Any], concurrent.futures.Future[Any]]] = (
            queue.SimpleQueue()
        )
        self._wake = threading.Event()
        self._stop = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Run the engine loop in a daemon thread (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="dia2-engine", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def submit(self, fn: Callable[[], Any]) -> concurrent.futures.Future[Any]:
        """Run ``fn()`` on the engine thread between two steps; thread-safe, returns a future."""
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
        if self._thread is None:
            raise RuntimeError("engine thread not started (call start(), or call the methods directly)")
        self._commands.put((fn, fut))
        self._wake.set()
        return fut

    def _run(self) -> None:
        with torch.inference_mode():
            while not self._stop:
                self._drain_commands()
                if not self._step():
                    self._wake.wait()
                    self._wake.clear()

    def _drain_commands(self) -> None:
        while True:
            try:
                fn, fut = self._commands.get_nowait()
            except queue.Empty:
                return
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(fn())
                except BaseException as exc:  # the caller gets it through the future
                    logger.exception("engine command failed")
                    fut.set_exception(exc)
