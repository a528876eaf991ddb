"""Soak: a real `sipbridge run` answers SIPp calls at a fixed concurrency for a while; memory and open fds of
the supervisor, every worker and the front are sampled at a fixed interval.

    python bench/soak.py [--concurrency 8] [--duration 1200] [--call-s 8] [--sample-every 60]
                         [--warmup 180] [--headroom 2] [--json out.json]

Pass line (issue 19): no failed call (SIPp counts every call successful and exits 0), every call recorded in
the store (one `inbound` row per SIPp call, ended, none `failed`), the private memory (RssAnon, see `sample`)
of no process grown by 5 % or more after the warm-up (the mean of the first two samples after it against the
mean of the last two), and the open fds of no process grown by 5 % or more from idle before the first call
to idle after the last one. The JSON on stdout (and --json) has the samples and the verdict; the exit code
is 0 on a pass. With more than one worker `sipbridge run` puts its Kamailio front before them
(sip.front.mode `auto`): one SIPp caller holds --concurrency calls up at the front's address, which spreads
them over the workers (the front's processes are sampled too). With one worker the caller dials the worker.
The caller sends audio-less calls that the echo agent greets (espeak) and hangs up after --call-s.

bench/ never imports sipbridge: the service runs as `python -m sipbridge.cli run`, as deployed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CALLS_PER_WORKER = 4
IDLE_SETTLE_S = 5.0

_SCENARIO = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="sipbridge soak caller">
  <send retrans="500"><![CDATA[
      INVITE sip:soak@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: "soak" <sip:soak@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:soak@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 1 INVITE
      Contact: sip:soak@[local_ip]:[local_port]
      Max-Forwards: 70
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=soak 1 1 IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
      m=audio [media_port] RTP/AVP 0
      a=rtpmap:0 PCMU/8000
      a=ptime:20
  ]]></send>
  <recv response="100" optional="true"/>
  <recv response="180" optional="true"/>
  <recv response="200" rtd="true" rrs="true"/>
  <send><![CDATA[
      ACK [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: "soak" <sip:soak@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:soak@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: 1 ACK
      Contact: sip:soak@[local_ip]:[local_port]
      [routes]
      Max-Forwards: 70
      Content-Length: 0
  ]]></send>
  <pause milliseconds="{talk_ms}"/>
  <send retrans="500"><![CDATA[
      BYE [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: "soak" <sip:soak@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:soak@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: 2 BYE
      Contact: sip:soak@[local_ip]:[local_port]
      [routes]
      Max-Forwards: 70
      Content-Length: 0
  ]]></send>
  <recv response="200" crlf="true"/>
</scenario>
"""


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_media_port() -> int:
    """An even UDP port whose next three are free too (SIPp binds RTP and RTCP, audio and video, from -mp): a
    fixed port collides with any other SIPp or bridge on the machine, and SIPp exits when it cannot bind."""
    for _ in range(100):
        base = free_port(socket.SOCK_DGRAM) & ~1
        socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(4)]
        try:
            for off, sock in enumerate(socks):
                sock.bind(("127.0.0.1", base + off))
            return base
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise RuntimeError("no four free UDP ports in a row for SIPp's media")


def wait_for_log(log: Path, pattern: str, proc: subprocess.Popen[bytes], timeout: float) -> re.Match[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(pattern, log.read_text(errors="replace"))
        if found:
            return found
        if proc.poll() is not None:
            raise RuntimeError(f"sipbridge exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        time.sleep(0.2)  # polling a log file: there is nothing to block on
    raise TimeoutError(f"no {pattern!r} in {log} after {timeout}s")


def children(pid: int) -> list[int]:
    """Every descendant of `pid` (workers and their helpers), from /proc."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            parents.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _kib(status: str, key: str) -> int:
    found = re.search(rf"^{key}:\s+(\d+)", status, re.M)
    return int(found.group(1)) if found else 0


def open_fds(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def sample(pid: int, fd_reads: int = 10) -> dict[str, dict[str, int]]:
    """RSS, its private part (RssAnon, KiB) and open fds of the supervisor and each descendant, keyed by a
    stable name. The pass line reads the private part: Kamailio's processes share one fixed shared-memory
    pool, and each one's RSS counts the pages of it that process has touched so far, which grows for a long
    time without any allocation (a front child at 4 MB of RSS reaches 11 MB in its first minute of calls).
    Open fds are the fewest seen in `fd_reads` reads 0.1 s apart: each greeting's espeak-ng run holds a few
    pipes in the supervisor for a moment (15 fds at rest, up to 29 in a single read with 8 calls starting),
    which one read per minute would take for growth or hide; a leak raises the floor."""
    procs = [pid, *children(pid)]
    fewest: dict[int, int] = {}
    for i in range(fd_reads):
        if i:
            time.sleep(0.1)  # spacing the reads of one sample, not synchronisation
        for p in procs:
            n = open_fds(p)
            if n is not None:
                fewest[p] = min(n, fewest.get(p, n))
    out = {}
    for p in procs:
        try:
            status = Path(f"/proc/{p}/status").read_text()
            cmd = Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if p not in fewest:
            continue
        name = "supervisor" if p == pid else f"{p}:{' '.join(cmd.split()[-3:])[:60]}"
        out[name] = {"rss_kib": _kib(status, "VmRSS"), "anon_kib": _kib(status, "RssAnon"), "fds": fewest[p]}
    return out


def growth(samples: list[dict[str, Any]], warmup: float) -> dict[str, dict[str, float]]:
    after = [s for s in samples if s["t"] >= warmup]
    if len(after) < 4:
        raise ValueError(f"only {len(after)} samples after the warm-up: run longer or sample more often")
    first, last = after[:2], after[-2:]
    result: dict[str, dict[str, float]] = {}
    for name in first[0]["procs"]:
        if not all(name in s["procs"] for s in first + last):
            continue  # a process that came or went (it would show as a failed call anyway)
        result[name] = {}
        for key in ("rss_kib", "anon_kib"):
            a = sum(s["procs"][name][key] for s in first) / 2
            b = sum(s["procs"][name][key] for s in last) / 2
            result[name][key] = round(100 * (b - a) / a, 2) if a else 0.0
    return result


def sipp_counts(stat_file: Path) -> dict[str, int]:
    lines = [line for line in stat_file.read_text(errors="replace").splitlines() if line.strip()]
    header, last = lines[0].split(";"), lines[-1].split(";")
    row = dict(zip(header, last, strict=False))
    return {"successful": int(row["SuccessfulCall(C)"]), "failed": int(row["FailedCall(C)"])}


def recorded(db_path: Path) -> dict[str, int]:
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10)
    try:
        rows = db.execute(
            "SELECT COALESCE(outcome, state) AS o, COUNT(*) FROM calls WHERE direction = 'inbound' GROUP BY o"
        ).fetchall()
    finally:
        db.close()
    return {str(o): int(n) for o, n in rows}


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(args.work or tempfile.mkdtemp(prefix="sipbridge-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    workers = max(1, -(-(args.concurrency + args.headroom) // CALLS_PER_WORKER))
    config = {
        "sip": {"port": 0, "max_calls": workers * CALLS_PER_WORKER},
        "http": {"port": 0},
        "engine": {"kind": "espeak"},
        "storage": {"sqlite_path": str(work / "db.sqlite3"), "recordings_dir": str(work / "rec")},
    }
    (work / "config.json").write_text(json.dumps(config))  # YAML is a superset of JSON
    log = work / "sipbridge.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    with log.open("wb") as out:
        bridge = subprocess.Popen(
            [sys.executable, "-m", "sipbridge.cli", "run", "-c", str(work / "config.json")],
            cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    callers: list[subprocess.Popen[bytes]] = []
    try:
        listening = wait_for_log(log, r"sip listening on \S+ port\(s\) ([\d, ]+) \((front)?", bridge, 120)
        wait_for_log(log, "sipbridge ready", bridge, 120)
        ports = [int(p) for p in listening.group(1).split(",")]
        (work / "soak.xml").write_text(_SCENARIO.replace("{talk_ms}", str(int(args.call_s * 1000))))
        if listening.group(2):  # one address (the front) for every worker: one caller holds them all up
            targets = [(ports[0], args.concurrency)]
        else:  # no front: a caller per worker port, each holding up to a worker's cap
            per_worker = [CALLS_PER_WORKER] * (args.concurrency // CALLS_PER_WORKER)
            if args.concurrency % CALLS_PER_WORKER:
                per_worker.append(args.concurrency % CALLS_PER_WORKER)
            targets = list(zip(ports, per_worker, strict=False))
        idle_before = sample(bridge.pid)
        # Calls each caller places: keep `limit` up for the whole duration.
        for i, (port, limit) in enumerate(targets):
            total = max(limit, int(limit * args.duration / (args.call_s + 0.5)))
            callers.append(
                subprocess.Popen(
                    [
                        "sipp",
                        "-sf",
                        str(work / "soak.xml"),
                        "-i",
                        "127.0.0.1",
                        "-p",
                        str(free_port(socket.SOCK_DGRAM)),
                        "-mi",
                        "127.0.0.1",
                        "-mp",
                        str(free_media_port()),
                        "-l",
                        str(limit),
                        "-m",
                        str(total),
                        "-r",
                        "10",
                        "-nostdin",
                        "-timeout",
                        f"{int(args.duration * 3 + 120)}s",
                        "-timeout_error",
                        "-trace_stat",
                        "-stf",
                        str(work / f"stat{i}.csv"),
                        "-fd",
                        "5",
                        "-trace_err",
                        "-error_file",
                        str(work / f"errors{i}.log"),
                        f"127.0.0.1:{port}",
                    ],
                    cwd=work,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        t0 = time.monotonic()
        samples: list[dict[str, Any]] = []
        next_at = 0.0
        while any(c.poll() is None for c in callers):
            now = time.monotonic() - t0
            if now >= next_at:
                samples.append({"t": round(now, 1), "procs": sample(bridge.pid)})
                next_at += args.sample_every
            time.sleep(0.5)  # a sampling clock, not synchronisation
        # No sample after the callers finish: with no call up the workers' fds drop, which would hide growth.
        elapsed = time.monotonic() - t0
        codes = [c.returncode for c in callers]
        # Open fds are compared idle to idle: during the run they follow the calls each process has up at
        # that moment (2 RTP/RTCP sockets a call in a worker, 3 pipes per running espeak-ng in the
        # supervisor), so windows of samples tell a leak from load poorly. An ended call's RTP sockets close
        # with it; its conference port is kept for the next call (sipbridge/sip/call.py, PortPool).
        time.sleep(IDLE_SETTLE_S)  # a settling period before the idle sample, not synchronisation
        idle_after = sample(bridge.pid)
    finally:
        for c in callers:
            if c.poll() is None:
                c.kill()
        bridge.send_signal(signal.SIGTERM)
        try:
            bridge.wait(timeout=60)
        except subprocess.TimeoutExpired:
            bridge.kill()
            bridge.wait()
    counts = [sipp_counts(work / f"stat{i}.csv") for i in range(len(callers))]
    placed = {k: sum(c[k] for c in counts) for k in ("successful", "failed")}
    stored = recorded(work / "db.sqlite3")
    grew = growth(samples, args.warmup)
    worst = {k: max((g[k] for g in grew.values()), default=0.0) for k in ("rss_kib", "anon_kib")}
    idle_growth = {
        name: round(100 * (idle_after[name]["fds"] - before["fds"]) / before["fds"], 2)
        for name, before in idle_before.items()
        if name in idle_after and before["fds"]
    }
    ok_calls = placed["successful"]
    checks = {
        "no_failed_calls": placed["failed"] == 0 and all(code == 0 for code in codes) and ok_calls > 0,
        "every_call_recorded": sum(stored.values()) == ok_calls and not {"failed", "active"} & stored.keys(),
        "memory_flat": worst["anon_kib"] < 5.0,
        "fds_flat": all(g < 5.0 for g in idle_growth.values()),
    }  # fmt: skip
    return {
        "concurrency": args.concurrency,
        "call_slots": workers * CALLS_PER_WORKER,
        "workers": workers,
        "front": len(callers) == 1 and workers > 1,
        "duration_s": round(elapsed, 1),
        "call_s": args.call_s,
        "calls": placed,
        "sipp_exit_codes": codes,
        "stored_outcomes": stored,
        "growth_pct_after_warmup": grew,
        "idle_fds_before_after": {n: [idle_before[n]["fds"], idle_after[n]["fds"]] for n in idle_growth},
        "idle_fds_growth_pct": idle_growth,
        "worst_growth_pct": worst,
        "checks": checks,
        "pass": all(checks.values()),
        "samples": samples,
        "work": str(work),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=8, help="calls up at once (4 per worker)")
    parser.add_argument(
        "--headroom",
        type=int,
        default=2,
        help="call slots beyond --concurrency (workers are added for them). At 100 %% of its slots, on a "
        "loaded CPU, the front answers 503 to some calls placed the instant another ends: the front frees"
        " the slot at the BYE, the worker's PJSIP still counts the ended call ('too many calls', 486)"
        " and every other worker is full. The soak measures endurance, not that edge (docs/RELIABILITY.md)",
    )
    parser.add_argument("--duration", type=float, default=1200, help="seconds of calling")
    parser.add_argument("--call-s", type=float, default=8.0, help="seconds from ACK to BYE")
    parser.add_argument("--sample-every", type=float, default=60.0, help="seconds between samples")
    parser.add_argument("--warmup", type=float, default=180.0, help="seconds before growth is measured")
    parser.add_argument("--work", help="directory for config, database, logs (default: a new temp dir)")
    parser.add_argument("--json", metavar="FILE", help="also write the result here")
    args = parser.parse_args()
    result = run(args)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0 if result["pass"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
