"""The store's writer thread: call records are written off the supervisor's event loop.

The loop schedules every call's 20 ms audio; an SQLite COMMIT with `synchronous = FULL` is an fsync (ms, and
tens of ms on a busy disk), and at 128 calls a few writes per turn add up to a loop that stalls. So the loop
only *queues* its writes: each is a typed command (one frozen dataclass per write, below) put on one FIFO
queue, and one thread, `store-writer`, applies them in order. It takes everything queued at once (up to
`batch_max`) into one transaction (`Store.batch`): one fsync per batch instead of one per write, each write
its own savepoint, so one that fails is undone alone and the rest commit.

Guarantees the rest of the supervisor relies on:
- order: writes are applied in the order queued (one queue, one thread), so a call's end never lands before
  its start or its turns;
- nothing lost on stop: `close()` applies everything queued before it returns (the supervisor closes the
  writer after the calls' sessions closed, before the store); a call ended just before SIGTERM is recorded.
  A SIGKILL loses only what was still queued (one batch, milliseconds); the next start records calls it
  left active as failed (`Store.fail_unfinished`), as before;
- errors are surfaced, not swallowed: each command's `Future` holds its result or its exception; a failed
  write is logged with its command and call, counted (`errors`, `sipbridge_store_write_errors_total`) and
  kept as `last_error` for /healthz; a caller that must react (a call whose row cannot be created is hung
  up) watches its future;
- "committed" means committed: a future completes only after its batch's COMMIT returned, so a line logged
  from it (`call ... recorded`) may be followed by a read of the database from any process.

Reads do not go through the queue: the store's other users (the dialer, /healthz, the CLI) share the
connection through `Store`'s lock, and see what the writer has committed; `flush()` waits for what is queued.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

from sipbridge.store import Direction, Store, StoreError

log = logging.getLogger(__name__)

T = TypeVar("T")

BATCH_MAX = 256  # writes per transaction at most: a long queue still commits (and frees the lock) often


class Write(Generic[T]):
    """A command for the writer thread: one store write. A `call_id` field names its call in errors."""

    def apply(self, store: Store) -> T:
        raise NotImplementedError


@dataclass(frozen=True)
class CreateCall(Write[str]):
    direction: Direction
    call_id: str
    remote_uri: str | None = None
    local_uri: str | None = None
    remote_addr: str | None = None
    worker: int | None = None
    variables: dict[str, Any] | None = None
    now: float = field(default_factory=time.time)  # when it happened, not when the writer got to it

    def apply(self, store: Store) -> str:
        return store.create_call(
            self.direction,
            remote_uri=self.remote_uri,
            local_uri=self.local_uri,
            remote_addr=self.remote_addr,
            worker=self.worker,
            variables=self.variables,
            call_id=self.call_id,
            now=self.now,
        )


@dataclass(frozen=True)
class AddEvent(Write[None]):
    call_id: str
    kind: str
    data: dict[str, Any] | None = None
    now: float = field(default_factory=time.time)

    def apply(self, store: Store) -> None:
        store.add_event(self.call_id, self.kind, self.data, now=self.now)


@dataclass(frozen=True)
class MarkAnswered(Write[None]):
    call_id: str
    now: float = field(default_factory=time.time)

    def apply(self, store: Store) -> None:
        store.mark_answered(self.call_id, now=self.now)


@dataclass(frozen=True)
class EndCall(Write[bool]):
    call_id: str
    outcome: str
    reason: str | None = None
    sip_status: int | None = None
    results: dict[str, Any] | None = None
    now: float = field(default_factory=time.time)

    def apply(self, store: Store) -> bool:
        return store.end_call(
            self.call_id,
            self.outcome,
            reason=self.reason,
            sip_status=self.sip_status,
            results=self.results,
            now=self.now,
        )


@dataclass(frozen=True)
class SetRtpQuality(Write[None]):
    call_id: str
    packets: int
    lost: int
    late: int
    jitter_ms: float
    jitter_max_ms: float

    def apply(self, store: Store) -> None:
        store.set_rtp_quality(
            self.call_id,
            packets=self.packets,
            lost=self.lost,
            late=self.late,
            jitter_ms=self.jitter_ms,
            jitter_max_ms=self.jitter_max_ms,
        )


@dataclass(frozen=True)
class SetCallMedia(Write[None]):
    call_id: str
    codec: str | None
    recording_path: str | None

    def apply(self, store: Store) -> None:
        store.set_call_media(self.call_id, codec=self.codec, recording_path=self.recording_path)


@dataclass(frozen=True)
class SetAgentResults(Write[None]):
    call_id: str
    agent: str | None = None
    results: dict[str, Any] | None = None
    outcome: str | None = None

    def apply(self, store: Store) -> None:
        store.set_agent_results(self.call_id, agent=self.agent, results=self.results, outcome=self.outcome)


@dataclass(frozen=True)
class AddTurn(Write[int]):
    call_id: str
    who: Literal["caller", "bot"]
    text: str
    start_ms: int | None
    end_ms: int | None
    audio_path: str | None = None
    interrupted: bool = False

    def apply(self, store: Store) -> int:
        return store.add_turn(
            self.call_id,
            self.who,
            self.text,
            start_ms=self.start_ms,
            end_ms=self.end_ms,
            audio_path=self.audio_path,
            interrupted=self.interrupted,
        )


@dataclass(frozen=True)
class AddRefusals(Write[None]):
    counts: tuple[tuple[str, int, str, int], ...]
    now: float = field(default_factory=time.time)

    def apply(self, store: Store) -> None:
        store.add_refusals(list(self.counts), now=self.now)


@dataclass(frozen=True)
class Flush(Write[None]):
    """Writes nothing: its future completes once everything queued before it is committed."""

    def apply(self, store: Store) -> None:
        return None


@dataclass(frozen=True)
class _Queued:
    write: Write[Any]
    future: Future[Any]


class StoreWriter:
    """The one thread that writes the supervisor's call records (module docstring). Its methods are called
    on the event loop and return at once, with the write's `Future`."""

    def __init__(self, store: Store, *, batch_max: int = BATCH_MAX) -> None:
        self.store = store
        self.batch_max = batch_max
        self.written = 0  # writes committed
        self.batches = 0  # transactions committed
        self.errors = 0  # writes that failed (each logged)
        self.last_error: str | None = None
        self._queue: queue.SimpleQueue[_Queued | None] = queue.SimpleQueue()
        self._closed = False
        self._closing = threading.Lock()  # a submit and close() never interleave: nothing lands after the end
        self._thread = threading.Thread(target=self._run, name="store-writer", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------------------ queueing

    def submit(self, write: Write[T]) -> Future[T]:
        future: Future[T] = Future()
        with self._closing:
            if self._closed:
                raise StoreError(f"{type(write).__name__} after the store writer closed: it would be lost")
            self._queue.put(_Queued(write, future))
        return future

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    def flush(self) -> Future[None]:
        """Completes once everything queued so far is committed (or failed)."""
        return self.submit(Flush())

    def close(self, timeout: float | None = None) -> None:
        """Apply everything queued, then stop the thread. Blocks (ms; a full queue's fsync at most)."""
        with self._closing:
            if self._closed:
                return
            self._closed = True
            self._queue.put(None)
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error(
                "store %s: the writer is stuck; %d write(s) still queued after %.0f s are lost",
                self.store.where,
                self.queued,
                timeout or 0,
            )

    def health(self) -> dict[str, Any]:
        return {
            "queued": self.queued,
            "written": self.written,
            "batches": self.batches,
            "write_errors": self.errors,
            "last_error": self.last_error,
        }

    # ------------------------------------------------------------------------------ the write methods

    def create_call(
        self,
        direction: Direction,
        *,
        call_id: str,
        remote_uri: str | None = None,
        local_uri: str | None = None,
        remote_addr: str | None = None,
        worker: int | None = None,
        variables: dict[str, Any] | None = None,
    ) -> Future[str]:
        return self.submit(
            CreateCall(direction, call_id, remote_uri, local_uri, remote_addr, worker, variables)
        )

    def add_event(self, call_id: str, kind: str, data: dict[str, Any] | None = None) -> Future[None]:
        return self.submit(AddEvent(call_id, kind, data))

    def mark_answered(self, call_id: str) -> Future[None]:
        return self.submit(MarkAnswered(call_id))

    def end_call(
        self,
        call_id: str,
        outcome: str,
        *,
        reason: str | None = None,
        sip_status: int | None = None,
        results: dict[str, Any] | None = None,
    ) -> Future[bool]:
        return self.submit(EndCall(call_id, outcome, reason, sip_status, results))

    def set_rtp_quality(
        self, call_id: str, *, packets: int, lost: int, late: int, jitter_ms: float, jitter_max_ms: float
    ) -> Future[None]:
        return self.submit(SetRtpQuality(call_id, packets, lost, late, jitter_ms, jitter_max_ms))

    def set_call_media(self, call_id: str, *, codec: str | None, recording_path: str | None) -> Future[None]:
        return self.submit(SetCallMedia(call_id, codec, recording_path))

    def set_agent_results(
        self,
        call_id: str,
        *,
        agent: str | None = None,
        results: dict[str, Any] | None = None,
        outcome: str | None = None,
    ) -> Future[None]:
        return self.submit(SetAgentResults(call_id, agent, results, outcome))

    def add_turn(
        self,
        call_id: str,
        who: Literal["caller", "bot"],
        text: str,
        *,
        start_ms: int | None,
        end_ms: int | None,
        audio_path: str | None = None,
        interrupted: bool = False,
    ) -> Future[int]:
        return self.submit(AddTurn(call_id, who, text, start_ms, end_ms, audio_path, interrupted))

    def add_refusals(self, counts: list[tuple[str, int, str, int]]) -> Future[None]:
        return self.submit(AddRefusals(tuple(counts)))

    # ------------------------------------------------------------------------------ the thread

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            batch = [] if first is None else [first]
            stopping = first is None
            while not stopping and len(batch) < self.batch_max:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                stopping = more is None
                if more is not None:
                    batch.append(more)
            if batch:
                self._write(batch)

    def _write(self, batch: list[_Queued]) -> None:
        done: list[tuple[_Queued, Any, BaseException | None]] = []
        try:
            with self.store.batch():
                for item in batch:
                    try:
                        done.append((item, item.write.apply(self.store), None))
                    except Exception as exc:  # this write's savepoint is undone; the others go on
                        done.append((item, None, exc))
        except Exception as exc:  # BEGIN or COMMIT failed (disk full, server gone): none of it is written
            for i, item in enumerate(batch):
                self._failed(item, exc, trace=i == 0)  # each write named; the traceback once
            return
        self.batches += 1
        for item, value, error in done:
            if error is None:
                self.written += 1
                item.future.set_result(value)
            else:
                self._failed(item, error)

    def _failed(self, item: _Queued, exc: BaseException, trace: bool = True) -> None:
        self.errors += 1
        call_id = getattr(item.write, "call_id", None)
        call = f" of call {call_id}" if call_id else ""
        self.last_error = f"{type(item.write).__name__}{call}: {type(exc).__name__}: {exc}"
        log.error("store %s: %s failed", self.store.where, self.last_error, exc_info=exc if trace else None)
        item.future.set_exception(exc)


def after(future: Future[Any], then: Callable[[], None]) -> None:
    """Run `then` (on the writer thread) once `future`'s write is committed; nothing if it failed (the
    writer has logged and counted that)."""

    def done(f: Future[Any]) -> None:
        if not f.cancelled() and f.exception() is None:
            then()

    future.add_done_callback(done)
