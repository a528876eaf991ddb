"""The whole system under N callers who talk: SIP front, workers, VAD, ASR, script agent, TTS, RTP.

    python bench/system_load.py --calls 8 32 64 [--engine espeak] [--json out.json]
    python bench/system_load.py --cpu            # the CI scale-down: 8 calls, espeak, tiny.en

For each N: a real `sipbridge run` (sip.max_calls = N, so ceil(N/4) workers behind Kamailio; agent = the
employment-verification script; ASR = `--asr-model` on `--asr-backend`), then N SIPp callers at the front's
one address, started together. Each caller streams one G.711 file with SIPp's rtp_stream: silence through the
bot's greeting, then three spoken answers (espeak) with `--pause-s` of silence after each, so every call has
three caller turns and three bot replies.

Everything is measured on the wire (lo, kernel timestamps) except the ASR wait and CPU:
- turn gap: the caller's last speech packet of a turn (known from the file: its packet index) -> the bot's
  first packet with audio above the silence floor after it; p50/p95/p99 over all turns; a turn with no reply
  before the caller speaks again is `unanswered`;
- rtp bot -> caller over the whole call: lost (sequence gaps) and late (> 60 ms after the previous packet);
- underruns (the workers' playback filling silence), failed callers (SIPp exit status), worker deaths;
- asr: sipbridge_asr_wait_seconds (turn end -> words) mean and count, from /metrics;
- cpu: CPU-seconds of the workers, the supervisor and the front over the calls, and per call;
- supervisor_loop_lag: how late its event loop woke a 20 ms timer (max, and ticks > 5/20/100 ms late).

`--engine dia2` runs Dia2 with RANDOM weights of `--dia2-shape` (2b: full Dia2-2B shapes, bf16) through the
benchmark-only switch of sipbridge/engine/dia2.py (two environment variables this script sets; no config key
reaches it); `--dia2-tiny` proves that path on the CPU at the tiny fixture's shapes. Random ASR weights hear
nonsense, so such runs use `--agent echo` (a reply to every turn). bench/system_load_gpu.sh is the whole GPU
run in one command: docs/PERFORMANCE.md, "The whole system on one GPU host".
"""

from __future__ import annotations

import argparse
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from audio import g711  # noqa: E402
from bench.pyspy_summary import summarise  # noqa: E402
from bench.sip_load import children, cpu_s, launch, loop_lag, rtp_quality, sipp  # noqa: E402
from tests.sipbridge.peers import RtpSniffer, caller_audio, free_media_ports  # noqa: E402
from tests.sipbridge.peers import sipp_scenario as caller_scenario  # noqa: E402
from tests.sipbridge.procs import LoggedProcess  # noqa: E402

# The first answer is one tiny.en hears as a yes however it arrives: "Yes, I can help you with that" came back
# as "I can tell you with that" (unsure) from clean espeak audio, and as "I can't ..." (a refusal, the bot
# hangs up) in two loaded runs; "Yes, sure, go ahead." read as a yes with 0-9 packets of it dropped.
ANSWERS = ("Yes, sure, go ahead.", "Yes, she works here.", "She started in March twenty nineteen.")
GREETING_S = 12.0  # the flow's intro is not interruptible and lasts ~9 s in espeak: the caller waits it out
PACKET_S = 0.020
REPLY_RMS = 300.0  # a bot packet louder than this is reply audio (its silence frames are ~0)


@dataclass(frozen=True)
class Script:
    path: Path
    turn_ends: list[float]  # seconds into the file where each answer's speech stops
    turn_starts: list[float]
    seconds: float


def caller_script(path: Path, pause_s: float) -> Script:
    parts = [np.zeros(int(GREETING_S * 8000), np.int16)]
    starts, ends, at = [], [], GREETING_S
    for text in ANSWERS:
        spoken = caller_audio(text, lead_s=0.0, tail_s=0.0)
        starts.append(at)
        at += len(spoken.pcm) / 8000
        ends.append(at)
        parts += [spoken.pcm, np.zeros(int(pause_s * 8000), np.int16)]
        at += pause_s
    pcm = np.concatenate(parts)
    path.write_bytes(bytes(g711.ulaw_encode(pcm)))
    return Script(path, ends, starts, len(pcm) / 8000)


def engine_section(args: argparse.Namespace) -> dict[str, Any]:
    if args.engine == "espeak":
        return {"kind": "espeak"}
    # model names a folder that does not exist: with random weights the engine must never read it.
    dia2 = {"model": "/nonexistent/random-weights-benchmark", "device": args.dia2_device,
            "dtype": args.dia2_dtype, "max_batch": max(args.calls)}  # fmt: skip
    if args.dia2_lane_capacity:
        dia2["lane_capacity"] = args.dia2_lane_capacity
    if args.dia2_no_first_chunk_first:
        dia2["first_chunk_first"] = False
    if args.dia2_gpu_priority:
        dia2["gpu_priority"] = True
    if args.dia2_gil_switch_ms:
        dia2["gil_switch_ms"] = args.dia2_gil_switch_ms
    return {"kind": "dia2", "dia2": dia2}


def turn_section(args: argparse.Namespace | None) -> dict[str, Any]:
    """turn.end_of_turn and turn.speculative_reply (issue 17's settings; the defaults unless asked)."""
    if args is None:
        return {}
    turn: dict[str, Any] = {"end_of_turn": args.end_of_turn}
    if args.speculative_reply:
        turn["speculative_reply"] = True
    return turn


def bench_env(args: argparse.Namespace) -> dict[str, str]:
    """The benchmark-only switch (sipbridge/engine/dia2.py): random Dia2 weights of `--dia2-shape`."""
    if args.engine != "dia2":
        return {}
    from sipbridge.engine.dia2 import BENCH_CONFIRM_ENV, BENCH_CONFIRM_VALUE, BENCH_RANDOM_ENV

    return {BENCH_RANDOM_ENV: args.dia2_shape, BENCH_CONFIRM_ENV: BENCH_CONFIRM_VALUE}


def save_script(script: Script, folder: Path) -> None:
    """The caller's file and turn times, to carry to a box without espeak-ng (bench/system_load_gpu.sh)."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(script.path, folder / "caller.ulaw")
    times = {"turn_ends": script.turn_ends, "turn_starts": script.turn_starts, "seconds": script.seconds}
    (folder / "caller.json").write_text(json.dumps(times))


def load_script(folder: Path) -> Script:
    times = json.loads((folder / "caller.json").read_text())
    return Script(folder / "caller.ulaw", times["turn_ends"], times["turn_starts"], times["seconds"])


def gpu_memory_mib() -> dict[str, Any] | None:
    """GPU memory in use on the box (nvidia-smi), None without one: the engine's and ASR's share of it."""
    if shutil.which("nvidia-smi") is None:
        return None
    out = subprocess.run(
        ["nvidia-smi", "--query-gpu=name,memory.used,memory.total", "--format=csv,noheader,nounits"],
        capture_output=True, text=True, timeout=30,
    ).stdout.strip().splitlines()  # fmt: skip
    cards = [[x.strip() for x in line.split(",")] for line in out if line.count(",") == 2]
    return {"cards": [{"name": n, "used_mib": int(u), "total_mib": int(t)} for n, u, t in cards]}


def start_bridge(
    work: Path, calls: int, asr_backend: str, asr_model: str, args: argparse.Namespace | None = None
) -> tuple[LoggedProcess, str]:
    config = {
        "sip": {"port": 0, "max_calls": calls},
        "http": {"port": 0},
        "media": {"rtp_port_min": 20000, "rtp_port_max": 29999},
        "agent": {"kind": args.agent if args else "script"},
        "asr": {"backend": asr_backend, "model": asr_model, "device": args.asr_device if args else "cpu"}
        | ({"max_tokens_per_second": args.asr_tokens_per_s} if args and args.asr_tokens_per_s else {}),
        "engine": engine_section(args) if args else {"kind": "espeak"},
        "turn": turn_section(args),
        "storage": {"sqlite_path": str(work / "db.sqlite3"), "recordings_dir": str(work / "rec"),
                    "record_calls": False},
        "logging": {"level": "INFO"},
    }  # fmt: skip
    for item in (args.set if args else None) or []:
        apply_setting(config, item)
    env = {"OMP_NUM_THREADS": "1", **(bench_env(args) if args else {})}
    proc, port, http = launch(work, config, env, cwd=ROOT, ready_s=120)
    return proc, f"{port}|{http}"


def apply_setting(config: dict[str, Any], item: str) -> None:
    """`--set asr.encoder_graphs=false`: one config key by its dotted path, the value read as YAML."""
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise SystemExit(f"--set {item!r}: expected KEY=VALUE (a dotted config key)")
    *parents, leaf = key.split(".")
    node = config
    for name in parents:
        node = node.setdefault(name, {})
    node[leaf] = yaml.safe_load(value)


def turn_gaps(sniffer: RtpSniffer, media: int, script: Script) -> tuple[list[float], int]:
    """Per turn: caller-stops -> first reply packet (ms), and how many turns got no reply in time."""
    sent = sorted(sniffer.sent_from(media), key=lambda p: p.t)
    heard = sorted(sniffer.sent_to(media), key=lambda p: p.t)
    if not sent:
        return [], len(script.turn_ends)
    loud = [p.t for p in heard if rms(p.payload) > REPLY_RMS]
    gaps, missed = [], 0
    for i, end in enumerate(script.turn_ends):
        k = int(end / PACKET_S)
        if k >= len(sent):
            missed += 1
            continue
        stop = sent[k].t
        # the reply must come before the caller's next answer starts (else it was not a reply to this one)
        nxt = int(script.turn_starts[i + 1] / PACKET_S) if i + 1 < len(script.turn_starts) else len(sent)
        until = sent[nxt].t if nxt < len(sent) else stop + 30
        reply = next((t for t in loud if stop < t < until), None)
        if reply is None:
            missed += 1
        else:
            gaps.append((reply - stop) * 1000)
    return gaps, missed


def failure(i: int, code: int, work: Path) -> dict[str, Any]:
    """A failed caller: SIPp's exit status and the start of its error log (what it saw go wrong)."""
    log = work / "errors.log"
    text = log.read_text(errors="replace") if log.exists() else ""
    return {"caller": i, "sipp_exit": code, "error": text[:600]}


def rms(payload: bytes) -> float:
    return float(np.sqrt(np.mean(g711.ulaw_decode(payload).astype(np.float64) ** 2)))


def metric(text: str, name: str) -> float | None:
    m = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(m.group(1)) if m else None


def pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 1) if values else None


def run_one(n: int, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    script = load_script(args.caller) if args.caller else caller_script(work / "caller.ulaw", args.pause_s)
    load_before = os.getloadavg()[0]
    proc, where = start_bridge(work / "bridge", n, args.asr_backend, args.asr_model, args)
    port, http = int(where.split("|")[0]), where.split("|")[1]
    procs: list[subprocess.Popen[bytes]] = []
    spy: subprocess.Popen[bytes] | None = None
    try:
        health = httpx.get(f"{http}/healthz", timeout=30).json()
        workers = [w["pid"] for w in health["sip"]["workers"]]
        fpid = health["front"].get("pid")  # no front below 5 calls (sip.front.mode auto)
        front = [fpid, *children(fpid)] if fpid else []
        pids = {"workers": workers, "supervisor": [proc.proc.pid], "front": front}
        cpu0 = {k: sum(map(cpu_s, v)) for k, v in pids.items()}
        steps0 = health["engine"].get("steps_run", 0)
        engine0, asr0 = health["engine"], health.get("asr", {})
        media = free_media_ports(n)
        talk_ms = int((script.seconds + 2) * 1000)
        spy = profiler(proc.proc.pid, talk_ms / 1000 + 30, args.log_dir, n)
        with RtpSniffer(set(media)) as sniffer:
            t0 = time.monotonic()
            scenario = caller_scenario(audio=script.path, talk_ms=talk_ms)
            for i, m in enumerate(media):
                # Callers arrive `--stagger-s` apart (pacing the load, as real calls do; no synchronisation):
                # N answers in the same 20 ms would only measure a queue no phone line ever builds.
                time.sleep(max(0.0, t0 + i * args.stagger_s - time.monotonic()))
                procs.append(sipp(scenario, port, work / f"c{i}", m))
            codes = [p.wait(talk_ms / 1000 + 120) for p in procs]
            wall = time.monotonic() - t0
        cpu1 = {k: sum(map(cpu_s, v)) for k, v in pids.items()}
        metrics = httpx.get(f"{http}/metrics", timeout=30).text
        health = httpx.get(f"{http}/healthz", timeout=30).json()
        engine = health["engine"]
        gpu = gpu_memory_mib()
    finally:
        if spy is not None:
            spy.wait(timeout=120)
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        proc.proc.send_signal(signal.SIGTERM)
        proc.finish(timeout=60)
        if args.log_dir:  # the supervisor's whole log, for a run whose numbers need explaining
            args.log_dir.mkdir(parents=True, exist_ok=True)
            (args.log_dir / f"supervisor-{n}.log").write_text("\n".join(proc.seen) + "\n")
    per_call = [turn_gaps(sniffer, m, script) for m in media]
    gaps = [g for call, _ in per_call for g in call]
    quality = [rtp_quality(sniffer.sent_to(m), t0 + 1.0, t0 + script.seconds - 1.0) for m in media]
    ended = (re.search(r"recorded: \w+ \(\w+, (\d+) underruns", line) for line in proc.seen)
    underruns = [int(m.group(1)) for m in ended if m]
    asr_sum = metric(metrics, "sipbridge_asr_wait_seconds_sum")
    asr_n = metric(metrics, "sipbridge_asr_wait_seconds_count")
    spent = {k: round(cpu1[k] - cpu0[k], 2) for k in cpu0}
    return {
        "calls": n,
        "engine": engine.get("model", engine.get("kind")) if args.engine == "dia2" else "espeak",
        # Dia2: one engine step advances every speaking call one 80 ms frame, so steps/s is each speaking
        # call's frames/s (12.5 is real time); averaged over the whole run, pauses included.
        "engine_steps_per_s": round((engine.get("steps_run", 0) - steps0) / wall, 2)
        if args.engine == "dia2"
        else None,
        "gpu_memory": gpu,
        "asr": f"{args.asr_backend}:{args.asr_model}",
        "settings": args.set or [],
        "profile": profile_of(args.log_dir, n),
        "workers": len(workers),
        "failed": sum(c != 0 for c in codes),
        "failures": [failure(i, c, work / f"c{i}") for i, c in enumerate(codes) if c != 0],
        "turns": {
            "expected": n * len(ANSWERS),
            "answered": len(gaps),
            "unanswered": sum(m for _, m in per_call),
            "unanswered_per_call": [m for _, m in per_call],
        },
        "turn_gap_ms": {
            "p50": pct(gaps, 50),
            "p95": pct(gaps, 95),
            "p99": pct(gaps, 99),
            "max": pct(gaps, 100),
        },
        "rtp_bot_to_caller": {
            "lost_per_call": [q[0] for q in quality],
            "late_per_call": [q[1] for q in quality],
            "lost_mean": round(statistics.mean(q[0] for q in quality), 2),
            "late_mean": round(statistics.mean(q[1] for q in quality), 2),
            "capture_dropped": sniffer.dropped,  # the sniffer's own losses: lost figures need this 0
        },
        "underruns": {
            "total": sum(underruns),
            "calls_recorded": len(underruns),
            # which utterance of which call (0 = the greeting): where to look first
            "utterances": [
                m.group(1)
                for line in proc.seen
                if (m := re.search(r"(utterance \d+ had \d+ underruns)", line))
            ],
        },
        "asr_wait_ms_mean": round(1000 * asr_sum / asr_n, 1) if asr_sum is not None and asr_n else None,
        "asr_turns": asr_n,
        "asr_batches": asr_batches(asr0, health.get("asr", {})),
        "engine_thread": engine_thread(engine0.get("thread", {}), engine.get("thread", {}), wall),
        "supervisor_loop_lag": loop_lag(metrics),  # since ready: set-up burst, turns, hang-ups
        "worker_deaths": sum("SIP worker" in line and " died " in line for line in proc.seen),
        "cpu_s": spent,
        "cpu_per_call_percent_of_one_core": {k: round(100 * v / (n * wall), 2) for k, v in spent.items()},
        "wall_s": round(wall, 1),
        "box": {"cores": os.cpu_count(), "load_1m_before": round(load_before, 2)},
    }


def profiler(pid: int, seconds: float, log_dir: Path | None, n: int) -> subprocess.Popen[bytes] | None:
    """py-spy (when on PATH and a log folder is given) sampling the supervisor's threads for the calls' span:
    collapsed stacks per thread in supervisor-N.pyspy (who holds the event loop, engine and ASR threads)."""
    exe = shutil.which("py-spy")
    if exe is None or log_dir is None:
        return None
    log_dir.mkdir(parents=True, exist_ok=True)
    out = log_dir / f"supervisor-{n}.pyspy"
    cmd = [exe, "record", "--pid", str(pid), "--rate", "50", "--threads", "--nonblocking", "--format", "raw"]
    cmd += ["--duration", str(int(seconds)), "--output", str(out)]
    if os.environ.get("PYSPY_GIL"):  # only the thread holding the GIL: who keeps the others waiting for it
        cmd.append("--gil")
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=(log_dir / f"pyspy-{n}.log").open("wb"))


def profile_of(log_dir: Path | None, n: int) -> dict[str, Any] | None:
    """The supervisor's py-spy samples per thread and their top places (bench/pyspy_summary.py), if taken."""
    path = log_dir / f"supervisor-{n}.pyspy" if log_dir else None
    if path is None or not path.exists():
        return None
    return summarise(path.read_text(encoding="utf-8", errors="replace").splitlines(), top=6)


def asr_batches(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any] | None:
    """The batched (transformers) ASR over the run: batches, rows, mean rows and mean generate time."""
    if "batch_s" not in after:
        return None
    batches = after["batches"] - before.get("batches", 0)
    rows = after["rows"] - before.get("rows", 0)
    spent = after["batch_s"] - before.get("batch_s", 0.0)
    return {
        "batches": batches,
        "rows": rows,
        "mean_rows": round(rows / batches, 2) if batches else None,
        "mean_batch_ms": round(1000 * spent / batches, 1) if batches else None,
        "peak_batch": after["peak_batch"],
    }


def engine_thread(before: dict[str, float], after: dict[str, float], wall: float) -> dict[str, Any] | None:
    """Dia2's engine thread over the run: the share of wall time in steps and in commands (turns heard,
    replies started), and the longest run of commands during which no call advanced."""
    if not after:
        return None
    step = after["step_s"] - before.get("step_s", 0.0)
    command = after["command_s"] - before.get("command_s", 0.0)
    commands = after["commands"] - before.get("commands", 0)
    return {
        "steps_share": round(step / wall, 3),
        "commands_share": round(command / wall, 3),
        "commands": commands,
        "mean_command_ms": round(1000 * command / commands, 2) if commands else None,
        "longest_command_ms": after["longest_command_ms"],
        "longest_drain_ms": after["longest_drain_ms"],
        # waiting for a turn's Mimi codes (the encode worker) when its command came up: neither of the above
        "encode_wait_share": round(
            (after.get("encode_wait_s", 0) - before.get("encode_wait_s", 0)) / wall, 3
        ),
    }


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, nargs="+", default=[8])
    ap.add_argument("--cpu", action="store_true", help="the CI scale-down: 8 calls, espeak, bundled tiny.en")
    ap.add_argument("--asr-backend", default="faster-whisper", choices=("faster-whisper", "transformers"))
    ap.add_argument("--asr-model", default="bundled:tiny.en")
    ap.add_argument("--pause-s", type=float, default=7.0, help="caller silence after each answer")
    ap.add_argument("--stagger-s", type=float, default=0.5, help="between two callers' arrivals")
    ap.add_argument("--asr-device", default="cpu", help="cpu or cuda (asr.device)")
    ap.add_argument(
        "--asr-tokens-per-s",
        type=float,
        help="asr.max_tokens_per_second: random ASR weights never stop, so this is each turn's decode length",
    )
    ap.add_argument(
        "--agent",
        default="script",
        choices=("script", "echo"),
        help="echo answers every turn whatever it heard: for ASR with random weights",
    )
    ap.add_argument("--engine", default="espeak", choices=("espeak", "dia2"))
    ap.add_argument(
        "--dia2-shape",
        default="2b",
        help="dia2 random-weights shape: a preset (2b, 1b) or a checkpoint folder (its shapes)",
    )
    ap.add_argument("--dia2-device", default="cuda")
    ap.add_argument("--dia2-dtype", default="bfloat16", choices=("bfloat16", "float32"))
    ap.add_argument("--dia2-lane-capacity", type=int, help="engine.dia2.lane_capacity")
    ap.add_argument(
        "--dia2-no-first-chunk-first", action="store_true", help="engine.dia2.first_chunk_first: false"
    )
    ap.add_argument("--dia2-gpu-priority", action="store_true", help="engine.dia2.gpu_priority: true")
    ap.add_argument("--dia2-gil-switch-ms", type=float, default=None, help="engine.dia2.gil_switch_ms")
    ap.add_argument(
        "--end-of-turn",
        default="hangover",
        choices=("hangover", "words", "model", "model_and_words"),
        help="turn.end_of_turn (model needs the pipecat-ai wheel's Smart Turn file)",
    )
    ap.add_argument("--speculative-reply", action="store_true", help="turn.speculative_reply: true")
    ap.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="any config key by its dotted path, the value as YAML (repeatable): asr.encoder_graphs=false",
    )
    ap.add_argument(
        "--dia2-tiny",
        action="store_true",
        help="dia2 with random weights at the tiny fixture's shapes on the CPU (proves the path)",
    )
    ap.add_argument("--caller", type=Path, help="read the caller's audio and turn times from this folder")
    ap.add_argument(
        "--save-caller", type=Path, help="write the caller's audio and turn times here, then exit"
    )
    ap.add_argument("--json", type=Path)
    ap.add_argument("--log-dir", type=Path, help="write each run's supervisor log here")
    args = ap.parse_args(argv)
    if args.cpu:
        args.asr_backend, args.asr_model, args.asr_device = "faster-whisper", "bundled:tiny.en", "cpu"
    if args.dia2_tiny:
        args.engine, args.dia2_device, args.dia2_dtype = "dia2", "cpu", "float32"
        args.dia2_shape = str(ROOT / "tests" / "fixtures" / "dia2-tiny")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if not args.save_caller and (shutil.which("kamailio") is None or shutil.which("sipp") is None):
        print("system_load: needs kamailio and sipp (deploy/setup.sh --dev)", file=sys.stderr)
        return 2
    if args.save_caller:
        with tempfile.TemporaryDirectory(prefix="system-load-") as tmp:
            save_script(caller_script(Path(tmp) / "caller.ulaw", args.pause_s), args.save_caller)
        print(f"caller audio and turn times in {args.save_caller}", file=sys.stderr)
        return 0
    results = []
    with tempfile.TemporaryDirectory(prefix="system-load-") as tmp:
        for n in args.calls:
            results.append(run_one(n, args, Path(tmp) / f"n{n}"))
            print(json.dumps(results[-1]), file=sys.stderr)
    text = json.dumps({"bench": "system_load", "results": results}, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
