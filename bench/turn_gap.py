"""Turn gap on the wire: caller stops -> first reply packet, per end-of-turn mode, on real SIPp calls.

One `sipbridge run` per mode (espeak engine, script agent answering "Okay." to every turn), one SIPp caller
that says N utterances 7 s apart, the way docs/PERFORMANCE.md measures the call path: a raw socket on lo
timestamps every RTP packet (kernel receive time); "caller stops" is the end of an utterance's last voiced
packet, "first reply packet" the bridge's first voiced packet after it. Some utterances hold a 350 ms
mid-sentence pause: a bot reply that *starts* inside an utterance (its first voiced packet after 300 ms
without any) is a premature cut-off.

    .venv/bin/python bench/turn_gap.py --out gap.json [--modes hangover words model] [--turns 12]
        [--speculative on off]     # turn.speculative_reply per run (default: the config's default)

Needs what tests/sipbridge needs (pjsua2, SIPp, espeak-ng, root for the raw socket).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from audio import g711
from tests.sipbridge.bridge import Bridge
from tests.sipbridge.peers import caller_audio, sipp_scenario, voiced_packets

WHOLE = [
    "Yes, that is correct.",
    "She was a full time employee.",
    "He worked here for five years.",
    "I do not have that information.",
    "Can you send the request by email?",
    "No, he left in March.",
]
PAUSED = [  # (before the pause, after it): one sentence with a 350 ms pause in it
    ("I worked at Acme", "from twenty fifteen to twenty nineteen."),
    ("My name is John Smith and", "I am calling about a reference."),
]
SPACING_S = 7.0  # one utterance's start to the next: a reply even 3 s late ends before the next one
MID_PAUSE_S = 0.35


def caller_track(turns: int) -> tuple[np.ndarray, list[str]]:
    """The caller's 8 kHz audio and what each utterance is (whole / paused)."""
    pieces, kinds = [], []
    for i in range(turns):
        if i % 4 == 3:
            before, after = PAUSED[(i // 4) % len(PAUSED)]
            a = caller_audio(before, lead_s=0.0, tail_s=MID_PAUSE_S).pcm
            b = caller_audio(after, lead_s=0.0, tail_s=0.0).pcm
            speech = np.concatenate([a, b])
            kinds.append("paused")
        else:
            speech = caller_audio(WHOLE[i % len(WHOLE)], lead_s=0.0, tail_s=0.0).pcm
            kinds.append("whole")
        pad = int(SPACING_S * 8000) - len(speech)
        pieces.append(np.concatenate([speech, np.zeros(max(pad, 8000), np.int16)]))
    lead = np.zeros(int(3.5 * 8000), np.int16)  # the greeting plays first
    return np.concatenate([lead, *pieces, np.zeros(6 * 8000, np.int16)]), kinds


def utterances(sent: list[Any]) -> list[tuple[float, float]]:
    """(start, stop) of each caller utterance on the wire: voiced packets closer than 1 s are one."""
    voiced = [p.t for p in voiced_packets(sent)]
    spans: list[list[float]] = []
    for t in voiced:
        if spans and t - spans[-1][1] < 1.0:
            spans[-1][1] = t
        else:
            spans.append([t, t])
    return [(a, b + 0.02) for a, b in spans]


def run_mode(mode: str, turns: int, work: Path, speculative: bool | None = None) -> dict[str, Any]:
    flow = {"greeting": {"say": "Hello.", "interruptible": False}, "turns": []}
    flow["turns"] = [{"say": "Okay."} for _ in range(2 * turns)]  # the caller hangs up at the end
    (work / "flow.yaml").write_text(yaml.safe_dump(flow))
    config: dict[str, Any] = {
        "agent": {"kind": "script", "script": {"flow": str(work / "flow.yaml")}},
        "turn": {"end_of_turn": mode},
    }
    if speculative is not None:
        config["turn"]["speculative_reply"] = speculative
    track, kinds = caller_track(turns)
    ulaw = work / "caller.ulaw"
    ulaw.write_bytes(bytes(g711.ulaw_encode(track)))
    bridge = Bridge.start(work / "bridge", config)
    try:
        timeout_ms = int(len(track) / 8 + 30000)
        (wire,) = bridge.sipp_calls(
            {"caller": sipp_scenario(audio=ulaw, hangup="caller", talk_ms=int(len(track) / 8))},
            work=work / "sipp",
            wait_s=timeout_ms / 1000 + 30,
            sipp_timeout_s=timeout_ms // 1000 + 20,
        ).values()
        health = bridge.health()
        (call,) = bridge.calls()
        latency = [json.loads(e["data"]) for e in bridge.events(call["id"], "latency")]
        guesses = [json.loads(e["data"]) for e in bridge.events(call["id"], "speculative_reply")]
    finally:
        bridge.stop()
    bot = [p.t for p in voiced_packets(wire.bot)]
    onsets = [t for i, t in enumerate(bot) if i == 0 or t - bot[i - 1] > 0.3]
    spans = utterances(wire.sent)
    gaps, cutoffs = [], 0
    for (start, stop), kind in zip(spans, kinds, strict=False):
        if any(start < t < stop for t in onsets):
            cutoffs += 1  # a reply began while the caller was mid-sentence
        after = [t for t in bot if t > stop]
        if after and after[0] - stop < SPACING_S - 1.0:  # a reply before the next utterance
            gaps.append({"kind": kind, "gap_ms": round((after[0] - stop) * 1000, 1)})
    values = [g["gap_ms"] for g in gaps]
    return {
        "mode": mode,
        "speculative_reply": speculative,
        "utterances": len(spans),
        "replies_measured": len(values),
        "gap_ms_p50": float(np.percentile(values, 50)) if values else None,
        "gap_ms_p95": float(np.percentile(values, 95)) if values else None,
        "gap_ms_min": min(values, default=None),
        "gap_ms_max": max(values, default=None),
        "premature_cutoffs": cutoffs,
        "paused_utterances": kinds.count("paused"),
        "end_of_turn": health.get("end_of_turn"),
        "gaps": gaps,
        # The bridge's own split of each reply (ms after the turn's end was detected) and its guesses.
        "latency": latency,
        "speculative_used": sum(1 for g in guesses if g["used"]),
        "speculative_discarded": sum(1 for g in guesses if not g["used"]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--modes", nargs="+", default=["hangover", "words"])
    ap.add_argument("--turns", type=int, default=12)
    ap.add_argument("--speculative", nargs="+", choices=["on", "off"], default=[])
    args = ap.parse_args()
    result: dict[str, Any] = {"cpus": os.cpu_count(), "load_avg_at_start": os.getloadavg(), "runs": []}
    settings = [s == "on" for s in args.speculative] or [None]
    for mode, speculative in [(m, s) for m in args.modes for s in settings]:
        with tempfile.TemporaryDirectory(prefix=f"turn-gap-{mode}-") as tmp:
            t0 = time.time()
            run = run_mode(mode, args.turns, Path(tmp), speculative)
            run["seconds"] = round(time.time() - t0, 1)
            run["load_avg_after"] = os.getloadavg()
        print(json.dumps({k: v for k, v in run.items() if k not in ("gaps", "latency")}), flush=True)
        result["runs"].append(run)
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
