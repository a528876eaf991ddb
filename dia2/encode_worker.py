"""Caller turns' Mimi encodes on a thread (and CUDA stream) of their own, started when a turn is submitted.

Why: encoded on the engine thread, every turn's encode (~20 ms of eager Mimi launches at Dia2-2B on an
H100, 2026-12-05) delayed every speaking call's next step; at 32 calls the turns of one round added up to
~1 s of other calls' first audio. Here the encode runs beside the steps; the engine thread's command for
the turn keeps its place in the queue (a call's turn still lands before its reply) and only waits for the
codes when the encode is not done by the time the command's drain comes.

Audio queued while the worker is busy is encoded in one batch (``encode_many`` is causal: a turn's codes
do not depend on its batch). The codes come back on the host, so the engine thread never touches this
stream's tensors. Mimi's encoder path holds no state (no streaming cache), so it may run beside the engine
thread's Mimi decode.
"""

from __future__ import annotations

import concurrent.futures
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["EncodeWorker"]

logger = logging.getLogger("dia2.engine")

EncodeMany = Callable[[list[torch.Tensor]], list[torch.Tensor]]
_Item = tuple[torch.Tensor, concurrent.futures.Future[torch.Tensor]] | None  # None: stop


@dataclass
class EncodeStats:
    batches: int = 0
    encoded: int = 0


class EncodeWorker:
    def __init__(self, encode_many: EncodeMany, *, cuda: bool, priority: int | None = None) -> None:
        self._encode_many = encode_many
        self._cuda = cuda
        self._priority = priority  # CUDA stream priority (EngineOptions.stream_priority): None, the default
        self._queue: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self.stats = EncodeStats()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="dia2-encode", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def submit(self, audio: torch.Tensor) -> concurrent.futures.Future[torch.Tensor]:
        """The codes of ``audio`` (host tensor), encoded as soon as the worker is free."""
        if self._thread is None:
            raise RuntimeError("encode worker not started")
        fut: concurrent.futures.Future[torch.Tensor] = concurrent.futures.Future()
        self._queue.put((audio, fut))
        return fut

    def _run(self) -> None:
        stream = torch.cuda.Stream(priority=self._priority or 0) if self._cuda else None
        with torch.inference_mode(), torch.cuda.stream(stream):  # None: no stream of its own (CPU)
            while True:
                batch, stop = self._take()
                if batch:
                    self._encode(batch)
                if stop:
                    return

    def _take(self) -> tuple[list[tuple[torch.Tensor, concurrent.futures.Future[torch.Tensor]]], bool]:
        """Everything queued: the first item waits, the rest is what arrived meanwhile."""
        items = [self._queue.get()]
        while True:
            try:
                items.append(self._queue.get_nowait())
            except queue.Empty:
                break
        live = [i for i in items if i is not None and i[1].set_running_or_notify_cancel()]
        return live, any(i is None for i in items)

    def _encode(self, batch: list[tuple[torch.Tensor, concurrent.futures.Future[torch.Tensor]]]) -> None:
        try:
            codes = self._encode_many([audio for audio, _ in batch])
        except Exception as exc:  # every turn of the batch gets the error; the worker goes on
            logger.exception("Mimi encode of %d turns failed", len(batch))
            for _, fut in batch:
                fut.set_exception(exc)
            return
        self.stats.batches += 1
        self.stats.encoded += len(batch)
        for (_, fut), c in zip(batch, codes, strict=True):
            fut.set_result(c)
