"""Graceful drain (issue 18): SIGTERM stops new calls and lets live ones finish; a second signal stops now.

Real `sipbridge run`, real SIPp callers over loopback; every wait is on a log line or a process exit.
"""

from __future__ import annotations

import signal
from pathlib import Path

import httpx

from sipbridge.config import ShutdownConfig
from sipbridge.outcomes import call_outcome

from .bridge import Bridge
from .peers import Sipp, refused_call, sipp_scenario

SHUTDOWN = call_outcome("shutdown", None)  # a call our stop hung up (sipbridge/outcomes.py)


def readyz(bridge: Bridge) -> tuple[int, dict[str, object]]:
    response = httpx.get(f"http://127.0.0.1:{bridge.http_port}/readyz", timeout=10)
    return response.status_code, response.json()


def start_bridge(work: Path, drain_timeout_s: float) -> Bridge:
    return Bridge.start(work, {"agent": {"kind": "echo"}, "shutdown": {"drain_timeout_s": drain_timeout_s}})


def start_call(bridge: Bridge, work: Path, **scenario: object) -> Sipp:
    sipp = Sipp.call(sipp_scenario(**scenario), bridge.port, work=work)  # type: ignore[arg-type]
    bridge.wait_log(r"call \S+ media up")
    return sipp


def test_sigterm_drains_a_live_call_to_its_normal_end_and_refuses_new_ones(tmp_path: Path) -> None:
    bridge = start_bridge(tmp_path / "bridge", 120)
    code, body = readyz(bridge)
    assert code == 200 and body["status"] == "ready", body
    assert set(body["checks"]) >= {"not_draining", "workers", "engine", "asr", "store"}  # type: ignore[arg-type]

    live = start_call(bridge, tmp_path / "live", hangup="caller", talk_ms=9000)
    bridge.proc.proc.send_signal(signal.SIGTERM)
    bridge.wait_log(r"draining \(SIGTERM\): no new calls, 1 active call")

    code, body = readyz(bridge)
    assert code == 503 and body["checks"]["not_draining"] is False, body  # type: ignore[index]
    assert bridge.health()["status"] in ("ok", "degraded")  # liveness still answers

    late_work = tmp_path / "late"
    refused_call(bridge.port, 503, work=late_work)

    # The live call goes on until the caller's own BYE, then the process stops by itself, exit 0.
    assert live.wait(60) == 0, live.errors()
    assert bridge.proc.finish(timeout=60) == 0
    assert any("stopping: drained: no call left" in line for line in bridge.proc.seen), bridge.proc.seen

    live_row, refused = sorted(bridge.calls(), key=lambda row: row["sip_status"] or 0)
    assert live_row["outcome"] == "completed" and live_row["reason"].startswith("remote"), dict(live_row)
    assert refused["sip_status"] == 503 and refused["reason"] == "draining", dict(refused)


def test_drain_timeout_hangs_up_with_bye_and_records_shutdown(tmp_path: Path) -> None:
    bridge = start_bridge(tmp_path / "bridge", 1)
    call = start_call(bridge, tmp_path / "call", hangup="bridge", timeout_ms=60000)
    bridge.proc.proc.send_signal(signal.SIGTERM)
    assert call.wait(60) == 0, call.errors()  # it got our BYE
    assert bridge.proc.finish(timeout=60) == 0
    (row,) = bridge.calls()
    assert row["outcome"] == SHUTDOWN and "drain timeout (1 s)" in row["reason"], dict(row)


def test_second_sigterm_stops_at_once(tmp_path: Path) -> None:
    bridge = start_bridge(tmp_path / "bridge", ShutdownConfig().drain_timeout_s)  # the default, 300 s
    call = start_call(bridge, tmp_path / "call", hangup="bridge", timeout_ms=60000)
    bridge.proc.proc.send_signal(signal.SIGTERM)
    bridge.wait_log("draining")
    bridge.proc.proc.send_signal(signal.SIGINT)
    assert call.wait(60) == 0, call.errors()
    assert bridge.proc.finish(timeout=30) == 0
    (row,) = bridge.calls()
    assert row["outcome"] == SHUTDOWN and "SIGINT again during the drain" in row["reason"], dict(row)
