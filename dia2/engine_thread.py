"""The engine thread: a daemon thread that runs one engine's steps back to back and, between two steps, the
commands other threads submit (open a call, speak, cancel ...). Nothing else ever touches the engine's
tensors while it runs, so the engine itself takes no lock. See docs/DIA2.md for why a thread and not an
asyncio task.

Between two steps the thread runs every command queued so far, in order; commands that start with a Mimi
encode (caller turns: :meth:`EngineThread.submit_encoded`) have their audio encoded together first, in one
batched run. One encode per turn was most of the engine thread's time when many callers stopped talking at
once (128 calls on an H100: ~3/4 of the thread's busy samples in Mimi's encoder, replies seconds late).
"""

from __future__ import annotations

import concurrent.futures
import functools
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from .encode_worker import EncodeMany, EncodeWorker

logger = logging.getLogger("dia2.engine")


@dataclass(frozen=True)
class _Encoded:
    """A command whose first part is a Mimi encode of ``audio``; ``then`` gets its codes."""

    audio: torch.Tensor
    then: Callable[[torch.Tensor], Any]
    codes: concurrent.futures.Future[torch.Tensor] | None = None  # being encoded on the EncodeWorker


_Command = Callable[[], Any] | _Encoded
_Queued = tuple[_Command, concurrent.futures.Future[Any]]


@dataclass
class ThreadTime:
    """Where the engine thread's time went (a load run's profile: a step that waits behind commands, or
    commands that wait behind steps, is what makes replies late or underrun)."""

    step_s: float = 0.0  # in steps that advanced at least one call
    command_s: float = 0.0  # in submitted commands (turns heard, replies started, cancels, ...)
    commands: int = 0
    longest_command_ms: float = 0.0
    longest_drain_ms: float = 0.0  # the longest run of commands between two steps: no call advanced in it
    encode_batches: int = 0  # batched Mimi encodes of queued turns (each one encoder pass)
    encoded: int = 0  # turns encoded in them
    encode_wait_s: float = 0.0  # waiting for the EncodeWorker's codes of a turn whose command came up
    holds: int = 0  # drains that left a turn (and what followed it) for later: its codes were not ready

    def as_dict(self) -> dict[str, float]:
        return {k: round(v, 3) for k, v in vars(self).items()}


class EngineThread:
    def __init__(
        self,
        step: Callable[[], bool],
        encode_many: EncodeMany | None = None,
        flush: Callable[[], None] | None = None,
        encoder: EncodeWorker | None = None,
        stream_priority: int | None = None,
    ) -> None:
        """``step`` advances the engine once; it returns False when no call is speaking (the thread then
        sleeps until the next command). ``encode_many`` encodes a drain's queued audio in one run;
        ``flush`` completes what encoded commands deferred (their batched prefill): it runs before any
        other command and at the end of the drain. With ``encoder`` the audio is encoded there instead, from
        the moment it is submitted (dia2/encode_worker.py); its command still runs in queue order."""
        self._step = step
        self._encoder = encoder
        self._priority = stream_priority  # CUDA: the thread's work on a stream of this priority
        self._encode_many = encode_many
        self._flush = flush
        self._commands: queue.SimpleQueue[_Queued] = queue.SimpleQueue()
        # Taken from the queue but not run yet: a turn whose codes the EncodeWorker has not finished, and
        # every command queued after it (command order is kept). The engine steps on meanwhile.
        self._held: list[_Queued] = []
        self._wake = threading.Event()
        self._stop = False
        self._thread: threading.Thread | None = None
        self.time = ThreadTime()

    def start(self) -> None:
        """Run the engine loop in a daemon thread (idempotent)."""
        if self._thread is None:
            if self._encoder is not None:
                self._encoder.start()
            self._thread = threading.Thread(target=self._run, name="dia2-engine", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._encoder is not None:
            self._encoder.stop()

    def submit(self, fn: Callable[[], Any]) -> concurrent.futures.Future[Any]:
        """Run ``fn()`` on the engine thread between two steps; thread-safe, returns a future."""
        return self.submit_command(fn)

    def submit_encoded(
        self, audio: torch.Tensor, then: Callable[[torch.Tensor], Any]
    ) -> concurrent.futures.Future[Any]:
        """Run ``then(codes)`` on the engine thread, ``codes`` being ``audio``'s Mimi codes, encoded in one
        batch with every other audio queued before the same drain; thread-safe, returns a future."""
        if self._encode_many is None:
            raise RuntimeError("this engine thread has no encoder (EngineThread(step, encode_many))")
        codes = (
            self._encoder.submit(audio) if self._encoder is not None and self._thread is not None else None
        )
        return self.submit_command(_Encoded(audio, then, codes))

    def submit_command(self, command: _Command) -> concurrent.futures.Future[Any]:
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
        if self._thread is None:
            raise RuntimeError("engine thread not started (call start(), or call the methods directly)")
        self._commands.put((command, fut))
        self._wake.set()
        return fut

    def _run(self) -> None:
        stream = torch.cuda.Stream(priority=self._priority) if self._priority is not None else None
        with torch.inference_mode(), torch.cuda.stream(stream):  # None: the current stream
            while not self._stop:
                self._drain_commands()
                t0 = time.perf_counter()
                if self._step():
                    self.time.step_s += time.perf_counter() - t0
                else:
                    self._wake.wait()
                    self._wake.clear()

    def _drain_commands(self) -> None:
        """Every command queued so far, in order (one that arrives meanwhile waits for the next drain, after
        a step); their audio encoded first, together. A turn whose codes the encode worker is still making
        is not waited for: it and the commands after it wait for a later drain while the engine steps
        (waiting here stalled every speaking call: 10-20 % of the engine thread at 128 calls on an H100)."""
        start = time.perf_counter()
        taken = [(c, f) for c, f in self._take_queued() if f.set_running_or_notify_cancel()]
        live, self._held = self._held + taken, []
        if not live:
            return
        # Without a worker every turn's codes come from this drain's batch; with one, every turn has a future.
        codes = self._encode([c.audio for c, _ in live if isinstance(c, _Encoded) and c.codes is None])
        for k, (command, fut) in enumerate(live):
            if isinstance(command, _Encoded):
                if command.codes is not None and not command.codes.done():
                    self._hold(live[k:], command.codes)
                    break
                got = next(codes) if command.codes is None else self._codes_of(command.codes)
                self._run_command(functools.partial(_then, command.then, got), fut)
            else:
                self._flush_deferred()
                self._run_command(command, fut)
        self._flush_deferred()
        drain_ms = (time.perf_counter() - start) * 1000
        self.time.longest_drain_ms = max(self.time.longest_drain_ms, drain_ms)

    def _hold(self, rest: list[_Queued], codes: concurrent.futures.Future[torch.Tensor]) -> None:
        """Keep `rest` for a later drain; the codes' arrival wakes a thread that has nothing to step."""
        self._held = rest
        self.time.holds += 1
        codes.add_done_callback(lambda _f: self._wake.set())

    def _flush_deferred(self) -> None:
        if self._flush is None:
            return
        t0 = time.perf_counter()
        try:
            self._flush()
        except Exception:  # the engine logged it; the thread and every other call go on
            logger.exception("engine flush failed")
        self.time.command_s += time.perf_counter() - t0

    def _take_queued(self) -> list[_Queued]:
        taken = []
        while True:
            try:
                taken.append(self._commands.get_nowait())
            except queue.Empty:
                return taken

    def _encode(self, audio: list[torch.Tensor]) -> Iterator[torch.Tensor | BaseException]:
        """The codes of each audio, in order; a failed batch gives each of its commands the error."""
        if not audio or self._encode_many is None:
            return iter(())
        t0 = time.perf_counter()
        try:
            codes: list[torch.Tensor | BaseException] = list(self._encode_many(audio))
        except Exception as exc:
            logger.exception("batched Mimi encode of %d turns failed", len(audio))
            codes = [exc] * len(audio)
        self.time.command_s += time.perf_counter() - t0
        self.time.encode_batches += 1
        self.time.encoded += len(audio)
        return iter(codes)

    def _codes_of(self, codes: concurrent.futures.Future[torch.Tensor]) -> torch.Tensor | BaseException:
        t0 = time.perf_counter()
        try:
            return codes.result()
        except BaseException as exc:  # the command's future gets it
            return exc
        finally:
            self.time.encode_wait_s += time.perf_counter() - t0

    def _run_command(self, fn: Callable[[], Any], fut: concurrent.futures.Future[Any]) -> None:
        t0 = time.perf_counter()
        try:
            fut.set_result(fn())
        except BaseException as exc:  # the caller gets it through the future
            logger.exception("engine command failed")
            fut.set_exception(exc)
        spent = time.perf_counter() - t0
        self.time.command_s += spent
        self.time.commands += 1
        self.time.longest_command_ms = max(self.time.longest_command_ms, spent * 1000)


def _then(then: Callable[[torch.Tensor], Any], codes: torch.Tensor | BaseException) -> Any:
    if isinstance(codes, BaseException):
        raise codes
    return then(codes)
