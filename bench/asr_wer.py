"""ASR word error rate of caller turns through the real call path, for each VAD pre-roll setting.

Callers are SIPp processes sending 8 kHz µ-law RTP (espeak-ng speech, as the tests' callers) to a real
`sipbridge run` (pjsua2 worker: jitter buffer, Silero VAD turn segmenter; supervisor: whisper tiny.en, the
store). Each call says a share of SENTENCES with gaps longer than the stop hangover, so each sentence is one
turn; the caller turns the bridge stored are matched to the sentences by time and scored:

* WER: word edits (substitutions + deletions + insertions) / reference words, over all sentences, after
  lower-casing, dropping punctuation and writing spoken numbers as digits on both sides ("twenty nineteen"
  and "2019" are the same words);
* first-word accuracy: sentences whose first word was heard as said (what a clipped onset loses first);
* per sentence: reference, hypothesis, edits.

`--preroll` lists the `vad.preroll_ms` values to compare (0 is the segmenter as it was before pre-roll:
only the onset lag's ~60 ms before the detected start). `--offline` runs the same tracks through the
segmenter and tiny.en directly (no call, no jitter buffer, no CPU starvation: deterministic). JSON to stdout
or --out. Run from a checkout:

    .venv/bin/python bench/asr_wer.py [--preroll 0,200] [--calls 2] [--limit N] [--offline] [--out FILE]

Needs sip-tester (SIPp) and espeak-ng (deploy/setup.sh --dev) and the asr extra.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from audio import g711  # noqa: E402
from audio.testsignals import espeak, speech_extent  # noqa: E402
from sipbridge.agents.fields import spoken_numbers  # noqa: E402
from tests.sipbridge.bridge import Bridge  # noqa: E402
from tests.sipbridge.peers import RATE, sipp_scenario  # noqa: E402

# What employers say to a verification call, and everyday lines; many start softly (h, f, s, sh, th, a
# vowel), where a clipped onset shows first.
SENTENCES = (
    "She started in March twenty nineteen.",
    "Hello, I need some help with my account please.",
    "He has worked here for about five years.",
    "Sorry, she is out of the office today.",
    "Fine, thank you for asking.",
    "Yes, she still works here.",
    "He left the company last summer.",
    "Hold on, let me check the system.",
    "She is a senior software engineer.",
    "Sure, go ahead with your questions.",
    "Thanks for holding, I found the record.",
    "His last day was the first of June.",
    "Human resources is on the second floor.",
    "She joined us in the fall of twenty twenty.",
    "Feel free to send a written request.",
    "He works in the finance department.",
    "Three years ago he moved to the sales team.",
    "Actually, she was promoted last month.",
    "Happy to help with that.",
    "She was hired as a part time cashier.",
    "Hang on a second, please.",
    "Several people have that name here.",
    "Her title is office manager.",
    "Five people work in our payroll team.",
    "So the start date was April twenty eighteen.",
    "He is on vacation until next week.",
    "Has she given you permission to ask?",
    "Fourteen months, more or less.",
    "She left in December twenty twenty two.",
    "Hi, this is the front desk.",
    "Follow up with an email, please.",
    "Everything you need is on our website.",
    "He was a shift supervisor at the warehouse.",
    "Shall I transfer you to payroll?",
    "Somebody from HR will call you back.",
    "I think she started in the spring.",
    "Half of the team works from home.",
    "She never missed a day of work.",
    "Actually, he retired in twenty twenty one.",
    "Fax it to the number on our letterhead.",
    "He is a full time employee.",
    "Have you tried calling the main office?",
    "Seven years in total, I believe.",
    "She handles accounts payable.",
    "Honestly, I have no idea.",
    "Few people stay here that long.",
    "He was a registered nurse on the night shift.",
    "Sadly he passed away last year.",
    "Her manager can confirm the details.",
    "Since January she has been the team lead.",
    "Either way, we need it in writing.",
    "Hopefully that answers your question.",
    "Sixteen hours a week, part time.",
    "She transferred to our Boston office.",
    "How do you spell the last name?",
    "Thirty days notice is our policy.",
    "He quit after two months.",
    "Fridays are our busiest days.",
    "Uh, she was a teacher's aide.",
    "Ask for Susan in human resources.",
)

LEAD_S, GAP_S = 1.5, 2.2  # gap > stop hangover (500 ms) + the bot's reply does not matter


def caller_track(sentences: list[str]) -> tuple[bytes, list[tuple[float, float]]]:
    """µ-law audio of the sentences with gaps, and each sentence's span in it (ms)."""
    pieces, spans, t = [np.zeros(int(LEAD_S * RATE), np.float32)], [], LEAD_S
    for text in sentences:
        speech = espeak(text, RATE, speed=150)
        first, last = speech_extent(speech)
        speech = speech[first:last] * 0.7
        spans.append((t * 1000, (t + len(speech) / RATE) * 1000))
        pieces += [speech, np.zeros(int(GAP_S * RATE), np.float32)]
        t += len(speech) / RATE + GAP_S
    pcm = (np.concatenate(pieces) * 32767).astype(np.int16)
    return bytes(g711.ulaw_encode(pcm)), spans


def words_of(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", spoken_numbers(text.replace("-", " ")))


def edits(ref: list[str], hyp: list[str]) -> int:
    """Levenshtein distance over words."""
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1]


def assign(turns: list[dict[str, Any]], spans: list[tuple[float, float]]) -> list[list[str]]:
    """Each stored caller turn to the sentence it overlaps most (media time ≈ file time: SIPp streams the
    file from the answer); a sentence cut in two turns gets both."""
    heard: list[list[str]] = [[] for _ in spans]
    for turn in turns:
        overlaps = [min(turn["end_ms"], b) - max(turn["start_ms"], a) for a, b in spans]
        best = int(np.argmax(overlaps))
        if overlaps[best] > 0:
            heard[best].append(turn["text"] or "")
    return heard


def run_config(preroll_ms: int, sentences: list[str], calls: int, work: Path) -> dict[str, Any]:
    shares = [sentences[i::calls] for i in range(calls)]
    config = {
        "agent": {"kind": "echo"},
        "vad": {"preroll_ms": preroll_ms},
        "sip": {"max_calls": max(4, calls)},
    }
    bridge = Bridge.start(work / "bridge", config, env={"PYTHONPATH": str(ROOT)})
    try:
        scenarios, spans = {}, {}
        for i, share in enumerate(shares):
            audio, spans[f"c{i}"] = caller_track(share)
            path = work / f"c{i}.ulaw"
            path.write_bytes(audio)
            talk_ms = int(len(audio) / RATE * 1000) + 6000  # the last turn's ASR finishes before the BYE
            scenarios[f"c{i}"] = sipp_scenario(audio=path, talk_ms=talk_ms, user=f"c{i}")
        longest = max(int(len(s) * 6 + 40) for s in shares)
        t0 = time.monotonic()
        bridge.sipp_calls(scenarios, work=work / "sipp", wait_s=longest + 60, sipp_timeout_s=longest + 50)
        wall_s = time.monotonic() - t0
        by_user = {c["local_uri"].split(":")[1].split("@")[0]: c for c in bridge.calls()}
        rows: list[dict[str, Any]] = []
        for name, share in zip(scenarios, shares, strict=True):
            turns = [dict(t) for t in bridge.turns(by_user[name]["id"]) if t["who"] == "caller"]
            for ref, heard in zip(share, assign(turns, spans[name]), strict=True):
                hyp = " ".join(heard)
                r, h = words_of(ref), words_of(hyp)
                rows.append({"ref": ref, "hyp": hyp, "turns": len(heard), "words": len(r),
                             "edits": edits(r, h), "first_word": bool(h) and h[0] == r[0]})  # fmt: skip
    finally:
        bridge.stop()
    return summary(preroll_ms, rows, wall_s)


def run_offline(preroll_ms: int, sentences: list[str]) -> dict[str, Any]:
    """The same tracks without the network: µ-law decoded, the shipped segmenter, tiny.en, one by one.
    Deterministic (no jitter buffer, no CPU starvation), so it isolates what the pre-roll changes."""
    import asyncio

    from audio.vad import TurnEnd, make_segmenter
    from sipbridge.asr import Transcriber
    from sipbridge.config import AsrConfig, load_config

    settings = load_config(None, [f"vad.preroll_ms={preroll_ms}"], env={}).config.vad.segmenter_settings()
    asr = Transcriber(AsrConfig())
    asyncio.run(asr.start())
    rows: list[dict[str, Any]] = []
    try:
        for text in sentences:
            audio, _ = caller_track([text])
            pcm = g711.ulaw_decode(np.frombuffer(audio, np.uint8))
            seg = make_segmenter(settings, RATE)
            events = [e for i in range(0, len(pcm) - 159, 160) for e in seg.process(pcm[i : i + 160])]
            turns = [e for e in [*events, *seg.flush()] if isinstance(e, TurnEnd)]
            heard = [asyncio.run(asr.transcribe(t.pcm, RATE)) for t in turns]
            r, h = words_of(text), words_of(" ".join(heard))
            rows.append({"ref": text, "hyp": " ".join(heard), "turns": len(turns), "words": len(r),
                         "edits": edits(r, h), "first_word": bool(h) and h[0] == r[0]})  # fmt: skip
    finally:
        asr.close()
    return summary(preroll_ms, rows, 0.0)


def summary(preroll_ms: int, rows: list[dict[str, Any]], wall_s: float) -> dict[str, Any]:
    total = sum(r["words"] for r in rows)
    return {
        "preroll_ms": preroll_ms,
        "sentences": len(rows),
        "reference_words": total,
        "wer": round(sum(r["edits"] for r in rows) / total, 4),
        "first_word_accuracy": round(sum(r["first_word"] for r in rows) / len(rows), 4),
        "sentences_without_error": sum(r["edits"] == 0 for r in rows),
        "sentences_split": sum(r["turns"] > 1 for r in rows),
        "sentences_missed": sum(r["turns"] == 0 for r in rows),
        "wall_s": round(wall_s, 1),
        "per_sentence": rows,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preroll", default="0,200", help="vad.preroll_ms values, comma separated")
    parser.add_argument("--calls", type=int, default=2, help="calls at once (the sentences split among them)")
    parser.add_argument("--limit", type=int, default=len(SENTENCES), help="use the first N sentences")
    parser.add_argument("--out", help="write the JSON here instead of stdout")
    parser.add_argument(
        "--offline", action="store_true", help="segmenter + ASR on the decoded tracks, no call (repeatable)"
    )
    args = parser.parse_args()
    os.environ.setdefault("PYTHONPATH", str(ROOT))
    sentences = list(SENTENCES[: args.limit])
    results = []
    with tempfile.TemporaryDirectory(prefix="asr-wer-") as tmp:
        for value in [int(v) for v in args.preroll.split(",")]:
            if args.offline:
                results.append(run_offline(value, sentences))
            else:
                results.append(run_config(value, sentences, args.calls, Path(tmp) / f"preroll{value}"))
            print(f"preroll_ms={value}: WER {results[-1]['wer']:.3f}, first words "
                  f"{results[-1]['first_word_accuracy']:.3f}", file=sys.stderr)  # fmt: skip
    doc = {
        "bench": "asr_wer",
        "command": "bench/asr_wer.py " + " ".join(sys.argv[1:]),
        "path": "u-law tracks -> Silero segmenter -> tiny.en (no call)"
        if args.offline
        else "SIPp u-law RTP -> pjsua2 worker (jitter buffer, Silero VAD) -> supervisor ASR (tiny.en)",
        "results": results,
    }
    text = json.dumps(doc, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
