"""Test helper: run a real `sipbridge` process and wait for what it logs (no sleeps)."""

from __future__ import annotations

import os
import queue
import re
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

SIPBRIDGE = [sys.executable, "-m", "sipbridge.cli"]
# Every process a test started, so a failing test cannot leave a bridge (and its workers) running: fixtures
# in conftest.py stop what a test or a session left behind (an orphaned bridge costs CPU the next tests need).
STARTED: list[LoggedProcess] = []


@dataclass
class LoggedProcess:
    proc: subprocess.Popen[str]
    lines: queue.Queue[str | None] = field(default_factory=queue.Queue)
    seen: list[str] = field(default_factory=list)

    @classmethod
    def start(cls, args: Sequence[str], *, cwd: Path, env: dict[str, str] | None = None) -> LoggedProcess:
        proc = subprocess.Popen(
            [*SIPBRIDGE, *args],
            cwd=cwd,
            env={**os.environ, **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        logged = cls(proc)
        STARTED.append(logged)
        threading.Thread(target=logged._pump, daemon=True).start()
        return logged

    def _pump(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def wait_for(self, pattern: str, timeout: float = 30.0) -> re.Match[str]:
        """Block until a log line matches; fail with everything logged so far if it never comes."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"no log line matching {pattern!r} in {timeout}s:\n" + "\n".join(self.seen)
                )
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(
                    f"process exited ({self.proc.wait()}) before logging {pattern!r}:\n"
                    + "\n".join(self.seen)
                )
            self.seen.append(line)
            match = regex.search(line)
            if match:
                return match

    def finish(self, timeout: float = 30.0) -> int:
        code = self.proc.wait(timeout=timeout)
        while (line := self.lines.get(timeout=timeout)) is not None:
            self.seen.append(line)
        return code


def stop_left_running(processes: Sequence[LoggedProcess], grace_s: float = 15.0) -> None:
    """SIGTERM (the supervisor stops its workers and front), then SIGKILL what is still there."""
    alive = [p for p in processes if p.proc.poll() is None]
    for p in alive:
        p.proc.terminate()
    deadline = time.monotonic() + grace_s
    for p in alive:
        try:
            p.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.proc.kill()
            p.proc.wait()
