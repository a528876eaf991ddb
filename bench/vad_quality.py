"""VAD quality bench: both backends and a few settings on generated espeak-ng calls with known truth.

Each scene is a short "call": utterances from several espeak-ng voices and speeds, separated by 1.2-1.8 s
gaps, some gaps holding a loud noise burst, everything under stationary white noise at one of several levels.
Every scene is scored wideband (16 kHz) and telephone-band (300-3400 Hz, 8 kHz, µ-law round trip).

Per configuration it prints (JSON): start/end boundary errors in ms (bias = mean signed error, mean |error|,
p95 and max |error|), missed turns, false turns (detected turns that overlap no utterance, e.g. a burst),
split turns, and CPU µs per 20 ms frame (classifier + segmenter). Run:

    .venv/bin/python bench/vad_quality.py [--quick] [--out results.json]

Needs espeak-ng. Does not import sipbridge.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from audio.testsignals import Scene, SceneBuilder, espeak, telephone_band
from audio.vad import TurnEnd, VadSettings, make_classifier, make_segmenter

log = logging.getLogger("vad_quality")

TEXTS = [
    "Hello, I would like to book a table for two people tomorrow evening.",
    "Yes, that is correct. Thank you very much.",
    "Can you tell me when the next train to the city leaves?",
    "My account number is four five seven, two two one, nine.",
    "No.",
    "I need help with my order, it never arrived.",
    "Okay, please hold the line for a moment.",
]
VOICES = [("en-us", 150), ("en-gb", 175), ("en-us+f3", 130), ("en-gb-scotland", 200), ("en-us+m3", 160)]
NOISE_RMS = {"clean": 0.0, "noise-50dBFS": 0.003, "noise-40dBFS": 0.01, "noise-30dBFS": 0.03}

CONFIGS: list[tuple[str, VadSettings]] = [
    ("silero thr=0.3", VadSettings(backend="silero", threshold=0.3)),
    ("silero thr=0.5", VadSettings(backend="silero", threshold=0.5)),
    ("silero thr=0.5 gated", VadSettings(backend="silero", threshold=0.5, gate=True)),
    ("silero thr=0.7", VadSettings(backend="silero", threshold=0.7)),
    ("silero thr=0.5 stop=300", VadSettings(backend="silero", threshold=0.5, stop_hangover_ms=300)),
    ("webrtc mode=0", VadSettings(backend="webrtc", aggressiveness=0)),
    ("webrtc mode=1", VadSettings(backend="webrtc", aggressiveness=1)),
    ("webrtc mode=2", VadSettings(backend="webrtc", aggressiveness=2)),
    ("webrtc mode=3", VadSettings(backend="webrtc", aggressiveness=3)),
]


def make_scenes(
    n_scenes: int, rate: int = 16000, gain: tuple[float, float] = (0.3, 1.0)
) -> list[tuple[str, Scene]]:
    """``n_scenes`` base scenes x every noise level; utterances cycle through texts and voices, each scaled
    by a random gain in ``gain`` (1.0 = espeak's own level, peaks near full scale)."""
    utterances = [
        espeak(text, rate, voice=voice, speed=speed)
        for text, (voice, speed) in zip(TEXTS * 3, itertools.islice(itertools.cycle(VOICES), 21), strict=True)
    ]
    rng = np.random.default_rng(7)
    scenes: list[tuple[str, Scene]] = []
    for k in range(n_scenes):
        for noise_name, noise_rms in NOISE_RMS.items():
            b = SceneBuilder(rate, seed=100 * k + len(scenes)).silence(800)
            for j in range(3):
                b.speech(utterances[(3 * k + j) % len(utterances)], gain=float(rng.uniform(*gain)))
                if j % 2 == k % 2:  # a burst in about half the gaps, white or rumble
                    b.silence(float(rng.uniform(500, 700)))
                    b.burst(
                        float(rng.uniform(300, 800)),
                        rms=float(rng.uniform(0.05, 0.15)),
                        kind="white" if (k + j) % 2 else "brown",
                    )
                    b.silence(float(rng.uniform(500, 700)))
                else:
                    b.silence(float(rng.uniform(1200, 1800)))
            scenes.append((f"scene{k}/{noise_name}", b.build(noise_rms=noise_rms)))
    return scenes


def run_config(settings: VadSettings, scene: Scene) -> tuple[list[tuple[int, int]], float, int]:
    """Detected turns (start, end ms), CPU seconds and frames for one scene."""
    seg = make_segmenter(settings, scene.sample_rate)
    pcm = scene.int16()
    n = seg.frame_samples
    frames = [pcm[i : i + n] for i in range(0, len(pcm) - n + 1, n)]
    turns: list[tuple[int, int]] = []
    t0 = time.process_time()
    for f in frames:
        for ev in seg.process(f):
            if isinstance(ev, TurnEnd):
                turns.append((ev.start, ev.end))
    cpu = time.process_time() - t0
    turns += [(ev.start, ev.end) for ev in seg.flush() if isinstance(ev, TurnEnd)]
    return turns, cpu, len(frames)


def score(truth: list[tuple[float, float]], found: list[tuple[int, int]]) -> dict[str, list[float] | int]:
    """Match detected turns to utterances by overlap. Boundary errors are detected - true, in ms."""

    def overlaps(a: tuple[float, float], b: tuple[float, float]) -> bool:
        return a[0] < b[1] and b[0] < a[1]

    starts: list[float] = []
    ends: list[float] = []
    missed = split = 0
    for t in truth:
        hits = [f for f in found if overlaps(t, f)]
        if not hits:
            missed += 1
            continue
        split += len(hits) > 1
        starts.append(hits[0][0] - t[0])
        ends.append(hits[-1][1] - t[1])
    false = sum(1 for f in found if not any(overlaps(t, f) for t in truth))
    merged = sum(1 for f in found if sum(overlaps(t, f) for t in truth) > 1)
    return {
        "start_err": starts,
        "end_err": ends,
        "missed": missed,
        "split": split,
        "false": false,
        "merged": merged,
    }


def summarize(errors: list[float]) -> dict[str, float]:
    e = np.asarray(errors, dtype=float)
    if len(e) == 0:
        return {}
    a = np.abs(e)
    return {
        "bias": round(float(e.mean()), 1),
        "mean_abs": round(float(a.mean()), 1),
        "p95_abs": round(float(np.percentile(a, 95)), 1),
        "max_abs": round(float(a.max()), 1),
        "within_80ms": round(float(np.mean(a <= 80)), 3),
    }


COUNTS = ("missed", "false", "split", "merged")


def evaluate(settings: VadSettings, scenes: list[tuple[str, Scene]]) -> dict[str, object]:
    """Score one configuration on a list of scenes: overall and per noise level."""
    groups: dict[str, dict[str, list[float] | int]] = {}
    cpu = 0.0
    frames = 0
    for scene_name, scene in scenes:
        found, c, f = run_config(settings, scene)
        cpu += c
        frames += f
        s = score(scene.turns, found)
        for key in ("all", scene_name.split("/")[1]):
            g = groups.setdefault(key, {"start_err": [], "end_err": [], **dict.fromkeys(COUNTS, 0)})
            g["start_err"] += s["start_err"]  # type: ignore[operator]
            g["end_err"] += s["end_err"]  # type: ignore[operator]
            for k in COUNTS:
                g[k] += s[k]  # type: ignore[operator]
    out: dict[str, object] = {
        "settings": asdict(settings),
        "cpu_us_per_frame": round(1e6 * cpu / max(frames, 1), 1),
    }
    for key, g in groups.items():
        out[key] = {
            "start_ms": summarize(g["start_err"]),
            "end_ms": summarize(g["end_err"]),  # type: ignore[arg-type]
            **{k: g[k] for k in COUNTS},
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 base scenes instead of 6")
    ap.add_argument("--out", type=Path, help="also write the JSON here")
    ap.add_argument("--only", help="run only the configurations whose name contains this (e.g. 'thr=0.5')")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)

    base = make_scenes(2 if args.quick else 6)
    # Quiet callers (peaks around -20 dBFS): where a high threshold starts to miss turns.
    quiet = make_scenes(1 if args.quick else 3, gain=(0.1, 0.1))
    conditions = {
        "wideband16k": base,
        "telephone8k": [(name, telephone_band(s)) for name, s in base],
        "quiet-wideband16k": quiet,
        "quiet-telephone8k": [(name, telephone_band(s)) for name, s in quiet],
    }
    n_turns = sum(len(s.turns) for _, s in base)
    n_bursts = sum(len(s.bursts) for _, s in base)
    log.info("%d scenes, %d utterances, %d bursts per condition", len(base), n_turns, n_bursts)

    lags = {
        f"{b}@{r}": [c.onset_lag_ms, c.offset_lag_ms]
        for b in ("silero", "webrtc")
        for r in (8000, 16000)
        for c in [make_classifier(b, r)]
    }
    results: dict[str, object] = {
        "scenes": len(base),
        "turns": n_turns,
        "bursts": n_bursts,
        "lag_correction_ms": lags,
        "configs": {},
    }
    configs = [(n, c) for n, c in CONFIGS if args.only is None or args.only in n]
    for (cond, scenes), (name, settings) in itertools.product(conditions.items(), configs):
        entry = evaluate(settings, scenes)
        results["configs"][f"{cond} | {name}"] = entry  # type: ignore[index]
        a = entry["all"]
        log.info(
            "%-12s %-24s start %s end %s missed %d false %d split %d merged %d cpu %.1f us",
            cond,
            name,
            a["start_ms"],
            a["end_ms"],
            a["missed"],
            a["false"],
            a["split"],
            a["merged"],  # type: ignore[index]
            entry["cpu_us_per_frame"],
        )
    text = json.dumps(results, indent=1)
    sys.stdout.write(text + "\n")
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
