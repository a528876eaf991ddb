"""Concurrent calls through the SIP front: how many a box holds with audio both ways, and what each costs.

    python bench/sip_load.py --calls 32 64 100 [--hold-s 20] [--json docs/results/sip-load.json]

For each count N: a real `sipbridge run` with sip.max_calls = N (so ceil(N/4) workers behind Kamailio), then N
SIPp callers at the front's one address, started together; each streams G.711 audio (a quiet noise floor:
real RTP, no caller turns, so the numbers are the SIP + media path, not ASR) and hears the bot's greeting
(espeak) and then its silence frames, 50 packets/s. Once all N are up they are held `--hold-s`, then every
caller hangs up.

Per N, in the JSON:
- held: calls that were up at once; failed: SIPp callers that did not end cleanly; 503s;
- setup_ms p50/p95: INVITE sent to 200 OK received, as SIPp measured it (rtd);
- rtp (bot -> caller, sniffed on lo with kernel timestamps, over the hold): packets lost (sequence gaps) and
  late (arrived > 60 ms after the previous one, i.e. a gap of 3+ packet times), per call: mean and worst;
- underruns: frames the workers' playback had to fill with silence (what a caller hears as a glitch);
- cpu: CPU-seconds over the hold of the workers, the supervisor and the front (Kamailio), and per call as
  a percentage of one core;
- box: cores and the 1-minute load average before the run (this machine is shared: say what else ran).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.sipbridge.peers import RtpSniffer, free_media_ports, free_udp_port  # noqa: E402
from tests.sipbridge.peers import sipp_scenario as caller_scenario  # noqa: E402
from tests.sipbridge.procs import LoggedProcess  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
UP_S = 60.0  # the callers get this long to be all up; the hold starts then at the latest


def cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def noise_floor(path: Path, seconds: float) -> Path:
    """Quiet noise (~-60 dBFS) in u-law: every packet carries audio, the VAD hears no speech."""
    from audio import g711

    rng = np.random.default_rng(7)
    pcm = (rng.standard_normal(int(8000 * seconds)) * 30).astype(np.int16)
    path.write_bytes(bytes(g711.ulaw_encode(pcm)))
    return path


def start_bridge(work: Path, calls: int, vad: str) -> tuple[LoggedProcess, int, str]:
    config = {
        # The callers stand for a trunk, which a deployment exempts from the front's per-source limit
        # (sip.front.rate_limit_per_s, 100 by default): on a quiet box 100 SIPp callers start within a second
        # and their INVITEs and ACKs from one address went over it (dropped, retransmitted, 12 calls failed).
        "sip": {"port": 0, "max_calls": calls, "front": {"rate_limit_exempt": ["127.0.0.1/32"]}},
        "http": {"port": 0},
        "media": {"rtp_port_min": 20000, "rtp_port_max": 29999},
        "agent": {"kind": "echo"},
        "vad": {"backend": vad.removesuffix("-ungated"), "gate": not vad.endswith("-ungated")},
        "storage": {"sqlite_path": str(work / "db.sqlite3"), "recordings_dir": str(work / "rec"),
                    "record_calls": False},
        "logging": {"level": "INFO"},
    }  # fmt: skip
    return launch(work, config, {"OMP_NUM_THREADS": "1"}, cwd=work, ready_s=60)


def launch(
    work: Path, config: dict[str, Any], env: dict[str, str], *, cwd: Path, ready_s: float
) -> tuple[LoggedProcess, int, str]:
    """`sipbridge run` with `config` written to `work`, once it says ready: (process, SIP port, HTTP base).
    Shared by the load benches (bench/system_load.py)."""
    work.mkdir(parents=True, exist_ok=True)
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    proc = LoggedProcess.start(["run", "-c", str(work / "config.yaml")], cwd=cwd, env=env)
    port = int(proc.wait_for(r"sip listening on \S+ port\(s\) (\d+)", 120).group(1))
    http = proc.wait_for(r"http listening on (http://\S+) ", 60).group(1)
    proc.wait_for("sipbridge ready", ready_s)
    return proc, port, http


def sipp(scenario: str, port: int, work: Path, media_port: int) -> subprocess.Popen[bytes]:
    work.mkdir(parents=True, exist_ok=True)
    (work / "scenario.xml").write_text(scenario)
    args = [
        "sipp", "-sf", str(work / "scenario.xml"), "-i", "127.0.0.1", "-p", str(free_udp_port()),
        "-mi", "127.0.0.1", "-mp", str(media_port), "-m", "1", "-l", "1", "-nostdin",
        "-timeout", "300s", "-timeout_error", "-trace_err", "-error_file", str(work / "errors.log"),
        "-trace_rtt", "-rtt_freq", "1", f"127.0.0.1:{port}",
    ]  # fmt: skip
    return subprocess.Popen(args, cwd=work, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip


def failure(code: int, work: Path) -> dict[str, Any]:
    """A failed caller: SIPp's exit code and the last lines of its error log (why, in SIPp's words)."""
    log = work / "errors.log"
    text = log.read_text(errors="replace") if log.exists() else ""
    lines = [line for line in text.splitlines() if line.strip()]
    status = [line.strip()[:120] for line in lines if line.lstrip().startswith("SIP/2.0 ")]
    errors = [line[:200] for line in lines[-3:]]
    return {"caller": work.name, "exit": code, "responses": status[-3:], "sipp_errors": errors}


def rtt_ms(work: Path) -> float | None:
    for path in work.glob("*_rtt.csv"):
        rows = [line.split(";") for line in path.read_text().splitlines()[1:] if line.strip()]
        if rows:
            return float(rows[0][1])
    return None


def rtp_quality(packets: list[Any], start: float, end: float) -> tuple[int, int]:
    """(lost, late) among the bot's packets to one caller between `start` and `end`."""
    window = sorted((p for p in packets if start <= p.t <= end), key=lambda p: p.t)
    if len(window) < 2:
        return (int((end - start) * 50), 0)
    seqs = sorted({p.seq for p in window})
    lost = (seqs[-1] - seqs[0] + 1) - len(seqs) if seqs[-1] >= seqs[0] else 0
    late = sum(1 for a, b in itertools.pairwise(window) if b.t - a.t > 0.060)
    return lost, late


def metric_value(metrics: str, name: str) -> float:
    """One unlabelled (or fully spelled) sample of a /metrics text; 0 when absent."""
    found = re.search(rf"^{re.escape(name)} (\S+)$", metrics, re.M)
    return float(found.group(1)) if found else 0.0


def loop_lag(metrics: str) -> dict[str, Any]:
    """The supervisor's event-loop lag from /metrics (sipbridge/loop_lag.py): the largest since ready, and
    how many of its 20 ms ticks woke > 5 ms / > 20 ms / > 100 ms late."""
    name = "sipbridge_event_loop_lag_seconds"
    total = metric_value(metrics, f"{name}_count")
    late = {
        f"over_{ms}ms": int(total - metric_value(metrics, f'{name}_bucket{{le="{ms / 1000}"}}'))
        for ms in (5, 20, 100)
    }
    max_ms = round(1000 * metric_value(metrics, "sipbridge_event_loop_lag_max_seconds"), 1)
    return {"max_ms": max_ms, "ticks": int(total), **late}


def pct(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)), 1) if values else float("nan")


def run_one(calls: int, hold_s: float, work: Path, vad: str) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()[0]
    proc, port, http = start_bridge(work / "bridge", calls, vad)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        health = httpx.get(f"{http}/healthz", timeout=30).json()
        workers = [w["pid"] for w in health["sip"]["workers"]]
        front_pid = health["front"]["pid"]
        front_pids = [front_pid, *children(front_pid)]
        audio = noise_floor(work / "noise.ulaw", hold_s + 40)
        # Every caller talks through the set-up of the others (up to UP_S) and the hold.
        talk_ms = int((UP_S + hold_s + 10) * 1000)
        media = free_media_ports(calls)
        with RtpSniffer(set(media)) as sniffer:
            t0 = time.monotonic()
            procs += [
                sipp(caller_scenario(audio=audio, talk_ms=talk_ms), port, work / f"c{i}", m)
                for i, m in enumerate(media)
            ]
            held = 0
            deadline = t0 + UP_S
            while time.monotonic() < deadline:
                try:
                    held = httpx.get(f"{http}/healthz", timeout=30).json()["calls"]["active"]
                except httpx.HTTPError:
                    continue  # the supervisor is busy setting calls up: that is what is measured
                if held >= calls:
                    break
                time.sleep(0.25)
            all_up_s = time.monotonic() - t0
            cpu0 = {"workers": sum(map(cpu_s, workers)), "supervisor": cpu_s(proc.proc.pid),
                    "front": sum(map(cpu_s, front_pids))}  # fmt: skip
            h0 = time.monotonic()
            time.sleep(hold_s)  # the measurement window itself, not a synchronisation
            h1 = time.monotonic()
            cpu1 = {"workers": sum(map(cpu_s, workers)), "supervisor": cpu_s(proc.proc.pid),
                    "front": sum(map(cpu_s, front_pids))}  # fmt: skip
            codes = [p.wait(120) for p in procs]
        metrics = httpx.get(f"{http}/metrics", timeout=30).text
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        proc.proc.send_signal(signal.SIGTERM)
        proc.finish(timeout=60)
    ended = (re.search(r"recorded: \w+ \(\w+, (\d+) underruns", line) for line in proc.seen)
    underruns = [int(m.group(1)) for m in ended if m]
    quality = [rtp_quality(sniffer.sent_to(m), h0, h1) for m in media]
    setups = [v for i in range(calls) if (v := rtt_ms(work / f"c{i}")) is not None]
    busy = re.search(r"^sipbridge_front_busy_total (\S+)$", metrics, re.M)
    spent = {k: round(cpu1[k] - cpu0[k], 2) for k in cpu0}
    per_call = {k: round(100 * v / (held * (h1 - h0)), 2) if held else None for k, v in spent.items()}
    return {
        "calls": calls,
        "vad": vad,
        "workers": len(workers),
        "held": held,
        "all_up_s": round(all_up_s, 2),
        "failed": sum(c != 0 for c in codes),
        "failures": [failure(c, work / f"c{i}") for i, c in enumerate(codes) if c != 0],
        "busy_503": float(busy.group(1)) if busy else None,
        "front": {k: metric_value(metrics, f"sipbridge_front_{k}_total") for k in ("limited", "failover")},
        "setup_ms": {"p50": pct(setups, 50), "p95": pct(setups, 95), "max": pct(setups, 100)},
        "rtp_bot_to_caller_over_hold": {
            "hold_s": round(h1 - h0, 1),
            "lost_mean": round(statistics.mean(q[0] for q in quality), 2),
            "lost_max": max(q[0] for q in quality),
            "late_mean": round(statistics.mean(q[1] for q in quality), 2),
            "late_max": max(q[1] for q in quality),
        },
        "underruns": {"total": sum(underruns), "calls_with_any": sum(u > 0 for u in underruns)},
        "supervisor_loop_lag": loop_lag(metrics),  # whole run: set-up burst, hold and hang-ups
        "worker_deaths": sum("SIP worker" in line and " died " in line for line in proc.seen),
        "front_restarts": sum("kamailio (pid" in line and " died " in line for line in proc.seen),
        "cpu_s_over_hold": spent,
        "cpu_per_call_percent_of_one_core": per_call,
        "box": {"cores": os.cpu_count(), "load_1m_before": round(load_before, 2)},
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, nargs="+", default=[32, 64, 100])
    parser.add_argument("--hold-s", type=float, default=20.0)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--vad",
        choices=("silero", "silero-ungated", "webrtc"),
        default="silero",
        help="the workers' VAD: silero behind the webrtcvad gate (vad.gate, the default), silero on every"
        " window, or webrtc alone",
    )
    args = parser.parse_args()
    if shutil.which("kamailio") is None or shutil.which("sipp") is None:
        print("sip_load: needs kamailio and sipp (deploy/setup.sh --dev)", file=sys.stderr)
        return 2
    results = []
    with tempfile.TemporaryDirectory(prefix="sip-load-") as tmp:
        for n in args.calls:
            result = run_one(n, args.hold_s, Path(tmp) / f"n{n}", args.vad)
            print(json.dumps(result), file=sys.stderr)
            results.append(result)
    text = json.dumps({"bench": "sip_load", "results": results}, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
