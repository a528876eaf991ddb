"""End-of-turn bench: does Smart Turn v3.2 tell a finished caller turn from a mid-sentence pause, at 16 kHz
and on the phone (8 kHz µ-law)? And what do early ASR's words add?

The labelled set is made here with espeak-ng (several voices and rates):

* ``complete``: a whole sentence (answers an employment-verification caller gives);
* ``comma``: the same kind of sentence cut in its first inner pause (a comma or an "um": espeak-ng speaks
  the words before it with a continuing, not falling, pitch) — the caller has paused mid-sentence;
* ``fragment``: a sentence prefix synthesised *on its own* ("I worked there from"): espeak ends it with a
  sentence's falling pitch, so only the words say it is unfinished (the hard case for a prosody model).

Each clip (+ 1 s of silence) runs through the real segmenter (Silero, ``pause_ms``) exactly as a call's
audio does; the model judges the ``SpeechPaused`` audio the supervisor would get, optionally with
``--tail-ms`` of silence appended. Rates: 16 kHz, and 8 kHz after a µ-law round trip (what a call carries).

Per condition the JSON has: each clip's probability, and for every threshold in a grid the accuracy, the
premature cut-off rate (incomplete clips judged complete: the bot would answer a caller mid-sentence) and the
share of complete turns ended early; plus the decision cost (features + model, ms). With ``--asr`` the same
clips are transcribed with the bundled tiny.en, and the word rule of ``turn.end_of_turn: words`` (ends in
. ? ! and not on a continuation word) is scored alone and ANDed with the model.

    .venv/bin/python bench/turn_eot.py --out turn.json [--quick] [--asr]

Needs espeak-ng and the pipecat-ai wheel (installed --no-deps). Does not import sipbridge (except ``--asr``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import soxr

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from audio import g711
from audio.testsignals import espeak
from audio.turn import SmartTurn
from audio.turn.words import ends_sentence
from audio.vad import SpeechPaused, VadSettings, make_segmenter

# Sentences with an inner pause (comma or filler) in their first half or middle: cut there -> "comma".
PAUSED = [
    "I worked at Acme Corporation, from twenty fifteen to twenty nineteen.",
    "I was a, um, software engineer in the payments team.",
    "My name is John Smith, and I am calling about a reference.",
    "Yes, she worked for us as a nurse for three years.",
    "He left the company in, uh, March of last year.",
    "The best number to reach me is, let me see, five five five, two one two one.",
    "We hired him in June, and he is still with us today.",
    "Her title was, I think, senior accountant.",
    "I can confirm the dates, but not the salary.",
    "Well, I would have to check with human resources first.",
    "So, the start date was the first of April.",
    "Actually, he was a contractor, not an employee.",
]
# Complete answers without an inner pause.
WHOLE = [
    "Yes, that is correct.",
    "No.",
    "That is right.",
    "She was a full time employee.",
    "I do not have that information.",
    "Can you send the request by email?",
    "He worked here for five years.",
    "Thank you, goodbye.",
]
# Prefixes spoken on their own: sentence-final pitch on an unfinished sentence.
FRAGMENTS = [
    "I worked there from",
    "My name is John and",
    "He was employed as a",
    "The dates were from January to",
    "She left because",
    "I think it was um",
    "We can confirm that",
    "Her salary was",
]
VOICES = [("en-us", 150), ("en-gb", 175), ("en-us+f3", 135), ("en-gb-scotland", 195), ("en-029", 160)]
QUICK_VOICES = VOICES[:2]
GAP_MS = 80  # an inner silence at least this long (10 ms envelope) is a pause
THRESHOLDS = [round(t, 2) for t in np.arange(0.3, 1.0, 0.05)] + [0.97, 0.98, 0.99]


@dataclass
class Clip:
    kind: str  # complete | comma | fragment
    text: str
    voice: str
    speed: int
    audio16: npt.NDArray[np.float32]  # speech only, 16 kHz

    @property
    def complete(self) -> bool:
        return self.kind == "complete"


def _trim(x: npt.NDArray[np.float32], thr: float = 0.01) -> npt.NDArray[np.float32]:
    idx = np.flatnonzero(np.abs(x) > thr)
    return x[idx[0] : idx[-1] + 1]


def _first_inner_gap(x: npt.NDArray[np.float32], rate: int) -> int | None:
    """Sample index where the first silence of >= GAP_MS after 15 % of the speech begins."""
    hop = rate // 100
    env = np.abs(x[: len(x) // hop * hop]).reshape(-1, hop).max(axis=1)
    quiet = env < 0.01
    need = GAP_MS // 10
    run = 0
    for i, q in enumerate(quiet):
        run = run + 1 if q else 0
        if run == need and (i - need + 1) > 0.15 * len(quiet):
            return (i - need + 1) * hop
    return None


def make_clips(voices: list[tuple[str, int]]) -> list[Clip]:
    clips: list[Clip] = []
    for (voice, speed), text in itertools.product(voices, PAUSED):
        full = _trim(espeak(text, 16000, voice=voice, speed=speed))
        clips.append(Clip("complete", text, voice, speed, full))
        cut = _first_inner_gap(full, 16000)
        if cut is not None:
            clips.append(Clip("comma", text, voice, speed, full[:cut]))
    for (voice, speed), text in itertools.product(voices, WHOLE):
        clips.append(
            Clip("complete", text, voice, speed, _trim(espeak(text, 16000, voice=voice, speed=speed)))
        )
    for (voice, speed), text in itertools.product(voices, FRAGMENTS):
        clips.append(
            Clip("fragment", text, voice, speed, _trim(espeak(text, 16000, voice=voice, speed=speed)))
        )
    return clips


def at_rate(clip: Clip, rate: int) -> npt.NDArray[np.int16]:
    """The clip as a call carries it: 16 kHz linear, or 8 kHz through a µ-law round trip; with 0.5 s of
    silence before and 1 s after (the segmenter's pause comes inside that)."""
    x = clip.audio16 * 0.7
    if rate != 16000:
        x = soxr.resample(x, 16000, rate, quality="HQ").astype(np.float32)
    x = np.concatenate((np.zeros(rate // 2, np.float32), x, np.zeros(rate, np.float32)))
    pcm = (np.clip(x, -1, 1) * 32767).astype(np.int16)
    if rate == 8000:
        pcm = g711.ulaw_decode(g711.ulaw_encode(pcm))
    return pcm


def paused_audio(
    pcm: npt.NDArray[np.int16], rate: int, pause_ms: int
) -> tuple[npt.NDArray[np.int16], int] | None:
    """What the supervisor gets: the first SpeechPaused's audio of the clip's turn, and when it came (ms
    after the turn's lag-corrected end)."""
    seg = make_segmenter(VadSettings(pause_ms=pause_ms), rate)
    n = seg.frame_samples
    last = None
    for i in range(len(pcm) // n):
        for ev in seg.process(pcm[i * n : (i + 1) * n]):
            if isinstance(ev, SpeechPaused):
                last = (ev.pcm, seg.now_ms - ev.end)
        # the clip holds one turn; the last pause before its end is the one at the turn's end
    return last


def scores(probs: list[float], truth: list[bool], kinds: list[str]) -> list[dict[str, float]]:
    out = []
    p = np.array(probs)
    t = np.array(truth)
    k = np.array(kinds)
    for thr in THRESHOLDS:
        said = p >= thr
        row = {
            "threshold": thr,
            "accuracy": float(np.mean(said == t)),
            "cutoff_rate": float(np.mean(said[~t])),  # incomplete judged complete
            "complete_ended_early": float(np.mean(said[t])),
        }
        for kind in ("comma", "fragment"):
            if np.any(k == kind):
                row[f"cutoff_{kind}"] = float(np.mean(said[k == kind]))
        out.append(row)
    return out


def word_scores(
    probs: list[float], unfinished: list[bool], truth: list[bool], kinds: list[str], thr: float
) -> dict[str, dict[str, float]]:
    t = np.array(truth)
    k = np.array(kinds)
    u = np.array(unfinished)
    rules = {"words_only": ~u, "model_and_words": (np.array(probs) >= thr) & ~u}
    out = {}
    for name, said in rules.items():
        out[name] = {
            "accuracy": float(np.mean(said == t)),
            "cutoff_rate": float(np.mean(said[~t])),
            "cutoff_comma": float(np.mean(said[k == "comma"])),
            "cutoff_fragment": float(np.mean(said[k == "fragment"])),
            "complete_ended_early": float(np.mean(said[t])),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--quick", action="store_true", help="2 voices instead of 5")
    ap.add_argument("--pause-ms", type=int, default=150, help="the segmenter's pause_ms (decision point)")
    ap.add_argument("--tail-ms", type=int, nargs="+", default=[0, 200], help="silence appended to the audio")
    ap.add_argument("--asr", action="store_true", help="also score early ASR's words (tiny.en)")
    args = ap.parse_args()

    t_start = time.time()
    clips = make_clips(QUICK_VOICES if args.quick else VOICES)
    model = SmartTurn()
    transcriber = None
    if args.asr:
        from faster_whisper import WhisperModel

        from sipbridge.asr import resolve_model

        transcriber = WhisperModel(
            resolve_model("bundled:tiny.en"), device="cpu", compute_type="int8", cpu_threads=1
        )
    result: dict[str, object] = {
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "load_avg_at_start": os.getloadavg(),
        "pause_ms": args.pause_ms,
        "clips": {k: sum(c.kind == k for c in clips) for k in ("complete", "comma", "fragment")},
        "conditions": {},
    }
    for rate in (16000, 8000):
        staged = []
        for c in clips:
            got = paused_audio(at_rate(c, rate), rate, args.pause_ms)
            staged.append(got)
        words: list[str] = []
        if transcriber is not None:
            for got in staged:
                audio = got[0].astype(np.float32) / 32768 if got else np.zeros(1, np.float32)
                if rate != 16000:
                    audio = soxr.resample(audio, rate, 16000, quality="HQ").astype(np.float32)
                segs, _ = transcriber.transcribe(
                    audio,
                    language="en",
                    beam_size=1,
                    vad_filter=False,
                    condition_on_previous_text=False,
                    temperature=0.0,
                )
                words.append(" ".join(s.text.strip() for s in segs))
        for tail in args.tail_ms:
            probs, cost, truth, kinds, rows = [], [], [], [], []
            for c, got in zip(clips, staged, strict=True):
                if got is None:  # no pause event: the segmenter saw no turn (should not happen)
                    p, ms_ = 0.0, 0.0
                else:
                    pcm = np.concatenate((got[0], np.zeros(rate * tail // 1000, np.int16)))
                    t0 = time.perf_counter()
                    p = model.complete_prob(pcm, rate)
                    ms_ = (time.perf_counter() - t0) * 1000
                probs.append(p)
                cost.append(ms_)
                truth.append(c.complete)
                kinds.append(c.kind)
                rows.append(
                    {"kind": c.kind, "text": c.text, "voice": c.voice, "speed": c.speed, "p": round(p, 4)}
                )
            if words:
                for row, w in zip(rows, words, strict=True):
                    row["asr"] = w
            grid = scores(probs, truth, kinds)
            cond: dict[str, object] = {
                "rate": rate,
                "tail_ms": tail,
                "decision_ms_p50": float(np.percentile(cost, 50)),
                "decision_ms_p95": float(np.percentile(cost, 95)),
                "grid": grid,
                "clips": rows,
            }
            # The highest-accuracy threshold whose cut-off rate is within 3 %.
            ok = [g for g in grid if g["cutoff_rate"] <= 0.03]
            cond["best_within_3pct_cutoff"] = max(ok, key=lambda g: g["complete_ended_early"]) if ok else None
            if words:
                unfinished = [not ends_sentence(w) for w in words]
                best = cond["best_within_3pct_cutoff"]
                thr = best["threshold"] if best else 0.9
                cond["words"] = word_scores(probs, unfinished, truth, kinds, thr)
                both = [
                    g
                    for g in (
                        {
                            "threshold": t2,
                            **word_scores(probs, unfinished, truth, kinds, t2)["model_and_words"],
                        }
                        for t2 in THRESHOLDS
                    )
                    if g["cutoff_rate"] <= 0.03
                ]
                cond["model_and_words_best_within_3pct"] = (
                    max(both, key=lambda g: g["complete_ended_early"]) if both else None
                )
            result["conditions"][f"{rate}Hz_tail{tail}"] = cond  # type: ignore[index]
            summary = {k: v for k, v in cond.items() if k not in ("grid", "clips")}
            print(json.dumps({f"{rate}Hz_tail{tail}": summary}), flush=True)
    result["seconds"] = round(time.time() - t_start, 1)
    result["load_avg_at_end"] = os.getloadavg()
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
