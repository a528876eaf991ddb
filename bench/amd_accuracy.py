"""Answering-machine detection accuracy on the espeak-ng test set (audio/amd_testset.py).

For each AMD configuration: the confusion matrix (truth human/machine × decided human/machine/not_sure),
decision time (p50/p95/max, ms of audio after answer) per truth class and per noise level; for the machines
with a beep, whether the beep was found and its start error; for every case, beeps found where none was
placed (false beeps); and for machines, when the voicemail message would start relative to the beep end (or
the greeting end when there is no beep). CPU µs per 20 ms frame. JSON to stdout or --out. Run:

    .venv/bin/python bench/amd_accuracy.py [--quick] [--configs default,energy] [--out results.json]

Needs espeak-ng. Does not import sipbridge.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from audio.amd import AmdSettings, AnsweringMachineDetector, Decision, MessageCue
from audio.amd_testset import NOISE_RMS, AmdCase, build_cases
from audio.beep import BeepDetector

log = logging.getLogger("amd_accuracy")

CONFIGS: dict[str, AmdSettings] = {
    "default": AmdSettings(),
    "greeting=1500": AmdSettings(greeting_ms=1500),
    "greeting=2000": AmdSettings(greeting_ms=2000),
    "greeting=3000": AmdSettings(greeting_ms=3000),
    "words=3": AmdSettings(maximum_number_of_words=3),
    "words=6": AmdSettings(maximum_number_of_words=6),
    "after_silence=1200": AmdSettings(after_greeting_silence_ms=1200),
    "webrtc": AmdSettings(vad="webrtc"),
    "energy (Asterisk-like)": AmdSettings(vad="energy"),
    "asterisk defaults": AmdSettings(
        vad="energy", greeting_ms=1500, maximum_number_of_words=2, between_words_silence_ms=50
    ),
}
BEEP_TOLERANCE_MS = 40


def _pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 1) if values else None


def run_case(case: AmdCase, settings: AmdSettings) -> tuple[Decision, MessageCue | None, float, int]:
    """Decision, message cue (machines decided as machine), CPU seconds, frames processed."""
    amd = AnsweringMachineDetector(settings)
    frames = case.frames()
    decision: Decision | None = None
    cue: MessageCue | None = None
    started = time.perf_counter()
    i = 0
    for i, frame in enumerate(frames):  # noqa: B007 - i is used after the loop
        decision = amd.process(frame)
        if decision is not None:
            break
    if decision is None:
        decision = amd.finish()
    if decision.kind == "machine":
        waiter = amd.wait_for_beep()
        cue = waiter.process(None)
        for frame in frames[i + 1 :]:
            cue = cue or waiter.process(frame)
            if cue is not None:
                break
        i = len(frames) - 1 if cue is None else i
    return decision, cue, time.perf_counter() - started, len(frames)


def beep_scan(case: AmdCase) -> list[tuple[int, int | None]]:
    """Every beep the detector reports over the whole case: (start, end)."""
    det = BeepDetector(8000, 20, AmdSettings().beep)
    found: list[tuple[int, int | None]] = []
    for frame in case.frames():
        beep = det.process(frame)
        if beep is not None and beep.end_ms is None:
            found.append((beep.start_ms, None))
        elif beep is not None and found:
            found[-1] = (found[-1][0], beep.end_ms)
    return found


def score(cases: list[AmdCase], settings: AmdSettings) -> dict[str, Any]:
    matrix: Counter[tuple[str, str]] = Counter()
    times: dict[str, list[float]] = {"human": [], "machine": []}
    per_noise: dict[str, Counter[str]] = {noise: Counter() for noise in NOISE_RMS}
    reasons: Counter[str] = Counter()
    cue_errors_beep: list[float] = []
    cue_errors_nobeep: list[float] = []
    cue_reasons: Counter[str] = Counter()
    cue_before_beep_end = 0
    wrong: list[str] = []
    cpu = 0.0
    frames = 0
    for case in cases:
        decision, cue, seconds, n = run_case(case, settings)
        cpu += seconds
        frames += n
        matrix[(case.kind, decision.kind)] += 1
        times[case.kind].append(decision.decided_at_ms)
        ok = decision.kind == case.kind
        per_noise[case.noise]["correct" if ok else "wrong"] += 1
        reasons[decision.reasons[0].split(":")[0].split(" (")[0].rstrip("0123456789 ms>=")] += 1
        if not ok:
            wrong.append(
                f"{case.name} -> {decision.kind} at {decision.decided_at_ms} ms: {decision.reasons[0]}"
            )
        if case.kind == "machine" and cue is not None:
            cue_reasons[cue.reason] += 1
            if case.beep is not None:
                cue_errors_beep.append(cue.at_ms - case.beep[1])
                cue_before_beep_end += cue.at_ms < case.beep[1] - BEEP_TOLERANCE_MS
            else:
                cue_errors_nobeep.append(cue.at_ms - case.greeting_end_ms)
    total = len(cases)
    correct = matrix[("human", "human")] + matrix[("machine", "machine")]
    return {
        "cases": total,
        "accuracy": round(correct / total, 4),
        "confusion": {
            truth: {got: matrix[(truth, got)] for got in ("human", "machine", "not_sure")}
            for truth in ("human", "machine")
        },
        "decision_ms": {
            truth: {"p50": _pct(v, 50), "p95": _pct(v, 95), "max": max(v) if v else None}
            for truth, v in times.items()
        },
        "accuracy_by_noise": {
            noise: round(c["correct"] / max(1, c["correct"] + c["wrong"]), 4)
            for noise, c in per_noise.items()
        },
        "deciding_rules": dict(reasons.most_common()),
        "message_cue": {
            "reasons": dict(cue_reasons),
            "after_beep_end_ms": {
                "p50": _pct(cue_errors_beep, 50),
                "max": max(cue_errors_beep, default=None),
            },
            "started_before_beep_end": cue_before_beep_end,
            "after_greeting_end_ms_no_beep": {
                "p50": _pct(cue_errors_nobeep, 50),
                "max": max(cue_errors_nobeep, default=None),
            },
        },
        "cpu_us_per_frame": round(1e6 * cpu / max(1, frames), 1),
        "wrong": wrong,
    }


def longest_tone_outside_beeps(case: AmdCase) -> int:
    """Longest run of tonal, pitch-steady frames that is not the placed beep: the margin below min_ms."""
    det = BeepDetector(8000, 20, dataclasses.replace(AmdSettings().beep, min_ms=20))
    longest = 0
    frames = case.frames()
    for frame in [*frames, None]:
        beep = det.process(frame) if frame is not None else det.flush()
        if beep is None or beep.end_ms is None:
            continue
        if case.beep is not None and abs(beep.start_ms - case.beep[0]) <= BEEP_TOLERANCE_MS:
            continue
        longest = max(longest, beep.end_ms - beep.start_ms)
    return longest


def score_beeps(cases: list[AmdCase]) -> dict[str, Any]:
    placed = found = 0
    longest_false_tone = 0
    start_errors: list[float] = []
    end_errors: list[float] = []
    false_beeps: list[str] = []
    for case in cases:
        detections = beep_scan(case)
        longest_false_tone = max(longest_false_tone, longest_tone_outside_beeps(case))
        truth = case.beep
        for start, _end in detections:
            if truth is not None and abs(start - truth[0]) <= BEEP_TOLERANCE_MS:
                continue
            false_beeps.append(f"{case.name}: beep at {start} ms")
        if truth is None:
            continue
        placed += 1
        hits = [(s, e) for s, e in detections if abs(s - truth[0]) <= BEEP_TOLERANCE_MS]
        if hits:
            found += 1
            start_errors.append(hits[0][0] - truth[0])
            if hits[0][1] is not None:
                end_errors.append(hits[0][1] - truth[1])
    return {
        "placed": placed,
        "found_within_40ms": found,
        "recall": round(found / max(1, placed), 4),
        "start_error_ms": {
            "mean": round(float(np.mean(start_errors)), 1) if start_errors else None,
            "max_abs": max((abs(e) for e in start_errors), default=None),
        },
        "end_error_ms": {
            "mean": round(float(np.mean(end_errors)), 1) if end_errors else None,
            "max_abs": max((abs(e) for e in end_errors), default=None),
        },
        "cases_scanned": len(cases),
        "false_beeps": len(false_beeps),
        "false_beep_cases": false_beeps[:20],
        "longest_steady_tone_outside_beeps_ms": longest_false_tone,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="two voices instead of five")
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated names from CONFIGS")
    parser.add_argument("--out", type=Path, help="write the JSON here as well as to stdout")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    names = [name.strip() for name in args.configs.split(",") if name.strip()]
    unknown = [name for name in names if name not in CONFIGS]
    if unknown:
        parser.error(f"unknown config(s) {unknown}; known: {list(CONFIGS)}")

    started = time.perf_counter()
    cases = build_cases(quick=args.quick)
    built = time.perf_counter() - started
    result: dict[str, Any] = {
        "cases": {
            "human": sum(c.kind == "human" for c in cases),
            "machine": sum(c.kind == "machine" for c in cases),
            "machine_with_beep": sum(c.beep is not None for c in cases),
            "noise_levels": list(NOISE_RMS),
        },
        "build_s": round(built, 1),
        "default_settings": {
            k: v for k, v in dataclasses.asdict(AmdSettings()).items() if k not in ("machine_phrases",)
        },
        "beep_detection": score_beeps(cases),
        "configs": {},
    }
    for name in names:
        result["configs"][name] = score(cases, CONFIGS[name])
        log.warning("%s: accuracy %.3f", name, result["configs"][name]["accuracy"])
    result["total_s"] = round(time.perf_counter() - started, 1)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
