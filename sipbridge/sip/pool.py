"""The supervisor's side of the SIP workers: spawn them, talk to them, respawn the ones that die.

Each worker is `python -m sipbridge.sip.worker` with its settings on stdin; it connects back to one Unix
socket the pool listens on and announces itself with `WorkerReady`. Frames from a worker are handed to
`on_frame` on the event loop in arrival order. When a worker process exits unexpectedly, `on_lost` gets
the calls it held (the supervisor records them as failed) and a new worker takes its place and its port.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sipbridge import frames as f
from sipbridge.config import Config
from sipbridge.sip.ipc import ChannelClosed, ProtocolError, read_frame, write_frame
from sipbridge.sip.settings import worker_settings

log = logging.getLogger(__name__)

_READY_TIMEOUT_S = 30.0
_STOP_TIMEOUT_S = 5.0
_MAX_BACKOFF_S = 5.0


class WorkerStartError(Exception):
    """A worker could not start (port in use, pjsua2 missing, ...)."""


@dataclass
class WorkerHandle:
    index: int
    proc: asyncio.subprocess.Process | None = None
    writer: asyncio.StreamWriter | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    info: f.WorkerReady | None = None
    registration: f.Registration | None = None
    calls: set[str] = field(default_factory=set)
    restarts: int = 0
    started_at: float = 0.0
    exit_code: int | None = None
    connected: asyncio.Event = field(default_factory=asyncio.Event)  # set while a connection is open

    def kill(self) -> bool:
        """SIGKILL the process (its watcher records its calls and respawns it); False if it is not running."""
        if self.proc is None or self.proc.returncode is not None:
            return False
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        return True

    def send(self, frame: f.Frame) -> bool:
        if self.writer is None or self.writer.is_closing():
            return False
        write_frame(self.writer, frame)
        return True


FrameHandler = Callable[[WorkerHandle, f.Frame], None]
LostHandler = Callable[[WorkerHandle, set[str], str], None]


@dataclass
class WorkerPool:
    config: Config
    on_frame: FrameHandler
    on_lost: LostHandler
    workers: list[WorkerHandle] = field(default_factory=list)
    # Behind the SIP front (sipbridge/sip/front.py): how the workers reach it; they bind private ports then.
    front_uri: str | None = None
    _dir: Path | None = None
    _server: asyncio.AbstractServer | None = None
    _stopping: bool = False
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    draining: str | None = None  # the drain's reason, once drain() was called

    @property
    def ipc_path(self) -> str:
        assert self._dir is not None
        return str(self._dir / "workers.sock")

    async def start(self) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="sipbridge-ipc-"))
        self._server = await asyncio.start_unix_server(self._accept, self.ipc_path)
        self.workers = [WorkerHandle(i) for i in range(self.config.sip.workers)]
        for handle in self.workers:
            await self._spawn(handle)
        for handle in self.workers:
            await self._wait_ready(handle)

    async def _wait_ready(self, handle: WorkerHandle) -> None:
        assert handle.proc is not None
        ready = asyncio.create_task(handle.ready.wait())
        exited = asyncio.create_task(handle.proc.wait())
        await asyncio.wait({ready, exited}, timeout=_READY_TIMEOUT_S, return_when="FIRST_COMPLETED")
        ready.cancel()
        exited.cancel()
        if not handle.ready.is_set():
            code = handle.proc.returncode
            raise WorkerStartError(
                f"SIP worker {handle.index} "
                + (f"exited with code {code} during start" if code is not None else "did not start in time")
                + " (its log above says why)"
            )

    async def _spawn(self, handle: WorkerHandle) -> None:
        # A respawned worker binds the port its predecessor had (which matters with sip.port: 0).
        port = handle.info.sip_udp_port if handle.info is not None else None
        settings = worker_settings(self.config, handle.index, self.ipc_path, port, self.front_uri)
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        handle.ready.clear()
        handle.info = None
        handle.writer = None
        handle.started_at = time.monotonic()
        handle.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "sipbridge.sip.worker",
            stdin=asyncio.subprocess.PIPE,
            # PJSIP prints start-up noise on stdout before its log level applies; real messages go through
            # Python logging on stderr.
            stdout=asyncio.subprocess.DEVNULL,
            env=env,
            # Own process group: a terminal's Ctrl+C goes to the supervisor, which stops workers in order.
            start_new_session=True,
        )
        assert handle.proc.stdin is not None
        handle.proc.stdin.write(settings.to_json().encode())
        await handle.proc.stdin.drain()
        handle.proc.stdin.close()
        self._track(self._watch(handle, handle.proc), f"watch-worker-{handle.index}")

    def _track(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _watch(self, handle: WorkerHandle, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        handle.exit_code = code
        if self._stopping or not handle.ready.is_set():
            return  # a worker that never got ready fails start(), not the running service
        lost, handle.calls = handle.calls, set()
        if handle.writer is not None:
            handle.writer.close()
            handle.writer = None
        log.error(
            "SIP worker %d (pid %d) died with code %s; %d call(s) lost, respawning",
            handle.index,
            proc.pid,
            code,
            len(lost),
        )
        self.on_lost(handle, lost, f"worker {handle.index} died (exit code {code})")
        handle.restarts += 1
        # Back off when a worker dies over and over (e.g. a bad network config) instead of spinning.
        if time.monotonic() - handle.started_at < 10:
            await asyncio.sleep(min(_MAX_BACKOFF_S, 0.5 * handle.restarts))
        if self._stopping:
            return
        try:
            await self._spawn(handle)
            await self._wait_ready(handle)
        except (WorkerStartError, OSError) as exc:
            log.error("respawning SIP worker %d failed: %s", handle.index, exc)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            hello = await read_frame(reader)
        except (ChannelClosed, ProtocolError) as exc:
            log.warning("worker connection closed before it said hello: %s", exc)
            writer.close()
            return
        if not isinstance(hello, f.WorkerReady) or not 0 <= hello.index < len(self.workers):
            log.error("unexpected first frame from a worker: %r", hello)
            writer.close()
            return
        handle = self.workers[hello.index]
        handle.writer = writer
        handle.info = hello
        handle.connected.set()
        handle.ready.set()
        if self.draining is not None:
            handle.send(f.Drain(self.draining))  # a worker respawned mid-drain takes no new calls either
        try:
            while True:
                frame = await read_frame(reader)
                try:
                    self.on_frame(handle, frame)
                except Exception:  # the handler's own guard failed too: never close the link for it
                    log.exception(
                        "worker %d: a %s frame could not be handled", handle.index, type(frame).__name__
                    )
        except ChannelClosed:
            pass
        except ProtocolError as exc:
            log.error("worker %d sent a bad frame, restarting it: %s", handle.index, exc)
            if handle.proc is not None and handle.proc.returncode is None:
                handle.proc.kill()
        finally:
            writer.close()
            handle.connected.clear()

    def ports(self) -> list[int]:
        return [h.info.sip_udp_port if h.info else 0 for h in self.workers]

    def health(self) -> dict[str, Any]:
        workers = []
        for h in self.workers:
            workers.append(
                {
                    "index": h.index,
                    "ready": h.ready.is_set(),
                    "pid": h.info.pid if h.info else None,
                    "sip_port": h.info.sip_udp_port if h.info else None,
                    "calls": len(h.calls),
                    "restarts": h.restarts,
                }
            )
        reg = next((h.registration for h in self.workers if h.registration is not None), None)
        registration: dict[str, Any] | None = None
        if self.config.sip.trunk.register_:
            registration = (
                {"registered": False, "code": None, "reason": "pending"}
                if reg is None
                else {
                    "registered": reg.registered,
                    "code": reg.code,
                    "reason": reg.reason,
                    "expires_s": reg.expires_s,
                }
            )
        ok = all(w["ready"] for w in workers) and (registration is None or registration["registered"])
        return {"ok": ok, "workers": workers, "registration": registration}

    def drain(self, reason: str) -> None:
        """Every worker answers new INVITEs 503 from now on; its calls go on (graceful drain)."""
        self.draining = reason
        for handle in self.workers:
            handle.send(f.Drain(reason))

    async def stop(self, reason: str = "supervisor stopping") -> None:
        self._stopping = True
        for handle in self.workers:
            handle.send(f.Shutdown(reason))
        for handle in self.workers:
            proc = handle.proc
            if proc is None or proc.returncode is not None:
                continue
            try:
                await asyncio.wait_for(proc.wait(), _STOP_TIMEOUT_S)
            except TimeoutError:
                log.warning("SIP worker %d did not stop in %.0f s, killing it", handle.index, _STOP_TIMEOUT_S)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        # Let the connection readers deliver what the workers sent before exiting (CallEnded ...).
        for handle in self.workers:
            for _ in range(100):
                if not handle.connected.is_set():
                    break
                await asyncio.sleep(0.01)
        for task in list(self._tasks):
            task.cancel()
        if self._server is not None:
            self._server.close()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
