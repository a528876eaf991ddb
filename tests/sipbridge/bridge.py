"""Run a real `sipbridge run` (supervisor + SIP workers) for a test, and read what it recorded."""

from __future__ import annotations

import json
import re
import signal
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt
import yaml

from .peers import CallerAudio, SniffedCall, call_and_sniff, sipp_scenario, write_ulaw
from .procs import LoggedProcess


@dataclass
class Bridge:
    proc: LoggedProcess
    sip_ports: list[int]
    http_port: int
    db_path: Path
    rec_dir: Path

    @classmethod
    def start(
        cls, work: Path, config: dict[str, Any], timeout: float = 90, env: dict[str, str] | None = None
    ) -> Bridge:
        work.mkdir(parents=True, exist_ok=True)
        base: dict[str, Any] = {
            "sip": {"port": 0},
            "http": {"port": 0},
            "storage": {
                "sqlite_path": str(work / "db.sqlite3"),
                "recordings_dir": str(work / "rec"),
                "record_calls": True,
            },
            # SIGTERM stops at once (the pre-drain behaviour most tests expect of `stop()`); the drain has its
            # own tests (test_drain.py), which set shutdown.drain_timeout_s themselves.
            "shutdown": {"drain_timeout_s": 0},
        }
        for section, values in config.items():
            base.setdefault(section, {}).update(values)
        cfg = work / "config.yaml"
        cfg.write_text(yaml.safe_dump(base))
        proc = LoggedProcess.start(
            ["run", "-c", str(cfg)], cwd=work, env={"OMP_NUM_THREADS": "1", **(env or {})}
        )
        ports = proc.wait_for(r"sip listening on \S+ port\(s\) ([\d, ]+) \(", timeout).group(1)
        http = int(proc.wait_for(r"http listening on http://127\.0\.0\.1:(\d+)", timeout).group(1))
        proc.wait_for("sipbridge ready", timeout)
        return cls(proc, [int(p) for p in ports.split(",")], http, work / "db.sqlite3", work / "rec")

    @property
    def port(self) -> int:
        return self.sip_ports[0]

    def health(self) -> dict[str, Any]:
        response = httpx.get(f"http://127.0.0.1:{self.http_port}/healthz", timeout=10)
        response.raise_for_status()
        data: dict[str, Any] = response.json()
        return data

    def metrics(self) -> dict[str, float]:
        """GET /metrics parsed: each sample line's name with its labels (as written) → its value."""
        response = httpx.get(f"http://127.0.0.1:{self.http_port}/metrics", timeout=10)
        response.raise_for_status()
        assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
        samples: dict[str, float] = {}
        for line in response.text.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                samples[name] = float(value)
        return samples

    def db(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.db_path, timeout=10)
        conn.row_factory = sqlite3.Row
        return conn

    def calls(self) -> list[sqlite3.Row]:
        with self.db() as conn:
            return list(conn.execute("SELECT * FROM calls ORDER BY created_at"))

    def calls_by_user(self) -> dict[str, sqlite3.Row]:
        """The calls keyed by the user part of the URI each caller dialled (`sipp_scenario(user=...)`)."""
        return {c["local_uri"].split(":")[1].split("@")[0]: c for c in self.calls()}

    def turns(self, call_id: str) -> list[sqlite3.Row]:
        with self.db() as conn:
            return list(conn.execute("SELECT * FROM turns WHERE call_id = ? ORDER BY idx", (call_id,)))

    def bot_said(self, call_id: str) -> list[str]:
        """The bot's turns as said: a turn cut by barge-in or hang-up stores the words heard
        (sipbridge/text/heard.py), its `heard` event the whole text, which is returned for it."""
        cut = [json.loads(e["data"]) for e in self.events(call_id, "heard")]
        said = []
        for turn in self.turns(call_id):
            if turn["who"] != "bot":
                continue
            text = turn["text"]
            if turn["interrupted"]:
                text = next((e["said"] for e in cut if e["heard"] == text), text)
            said.append(text)
        return said

    def events(self, call_id: str, kind: str) -> list[sqlite3.Row]:
        with self.db() as conn:
            return list(
                conn.execute("SELECT * FROM call_events WHERE call_id = ? AND kind = ?", (call_id, kind))
            )

    def latency(self, call_id: str) -> dict[str, Any]:
        """The timings the bridge measured for the call's last reply (its last `latency` event)."""
        data: dict[str, Any] = json.loads(self.events(call_id, "latency")[-1]["data"])
        return data

    def sipp_calls(
        self,
        scenarios: dict[str, str],
        *,
        work: Path,
        wait_s: float = 60,
        sipp_timeout_s: int = 40,
        recorded: str = "completed",
    ) -> dict[str, SniffedCall]:
        """SIPp callers at once (`peers.call_and_sniff`), then the bridge's `recorded: <recorded>` line for
        each call: its row is written once that is logged."""
        calls = call_and_sniff(
            self.sip_ports, scenarios, work=work, wait_s=wait_s, sipp_timeout_s=sipp_timeout_s
        )
        for _ in calls:
            self.wait_log(rf"recorded: {recorded}")
        return calls

    def sipp_call(
        self, scenario: str, *, work: Path, wait_s: float = 60, recorded: str = "completed"
    ) -> SniffedCall:
        """One SIPp caller: `sipp_calls` with one scenario (its files in `work`/caller)."""
        (call,) = self.sipp_calls({"caller": scenario}, work=work, wait_s=wait_s, recorded=recorded).values()
        return call

    def caller_plays(
        self,
        audio: CallerAudio | npt.NDArray[np.int16],
        *,
        work: Path,
        wait_s: float = 60,
        recorded: str = "completed",
        timeout_ms: int = 30000,
        sipp_timeout_s: int = 40,
    ) -> tuple[SniffedCall, sqlite3.Row]:
        """The usual one-call test: a SIPp caller plays `audio` (8 kHz, sent as µ-law from
        `work`/caller.ulaw), then waits up to `timeout_ms` for the bridge's BYE. Returns the call as sniffed
        and its row, the only one in the store."""
        work.mkdir(parents=True, exist_ok=True)
        ulaw = write_ulaw(work / "caller.ulaw", audio.pcm if isinstance(audio, CallerAudio) else audio)
        scenario = sipp_scenario(audio=ulaw, hangup="bridge", timeout_ms=timeout_ms)
        (wire,) = self.sipp_calls(
            {"caller": scenario}, work=work, wait_s=wait_s, sipp_timeout_s=sipp_timeout_s, recorded=recorded
        ).values()
        (row,) = self.calls()
        return wire, row

    def logged(self, pattern: str, timeout: float = 30) -> None:
        """A line matching `pattern` was logged already (maybe during start) or is logged within `timeout`."""
        if not any(re.search(pattern, line) for line in self.proc.seen):
            self.proc.wait_for(pattern, timeout)

    def wait_log(self, pattern: str, timeout: float = 30) -> str:
        return self.proc.wait_for(pattern, timeout).group(0)

    def stop(self) -> int:
        if self.proc.proc.poll() is None:
            self.proc.proc.send_signal(signal.SIGTERM)
        return self.proc.finish(timeout=30)
