"""Backchannel bench: does the bot go on for "mm-hmm / yeah / okay" and stop for "no / wait / hold on"?

Every clip of audio/backchannel_testset.py (espeak-ng voices and rates, telephone band, µ-law) runs through
the worker's real Inbound over interruptible bot audio and the session's decision (bundled tiny.en ASR +
`is_backchannel`), via sipbridge/tools/backchannels.py `judge`, for each `vad.backchannel_ms` asked.

Per setting the JSON has: accuracy; the false-cut rate (backchannels that stopped the bot), split by cause
(the barge-in timer ran out before the words, or ASR heard other words); the missed-interruption rate
(interruptions the bot talked through); every wrong clip with what ASR heard; ASR time per turn.

    .venv/bin/python bench/backchannel.py --out backchannel.json [--quick] [--ms 700 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from audio.backchannel_testset import RATES, VOICES, build_clips
from sipbridge.asr import Transcriber
from sipbridge.config import AsrConfig
from sipbridge.tools.backchannels import judge


async def score(clips: list[Any], asr: Transcriber, backchannel_ms: int) -> dict[str, Any]:
    rows, causes = [], Counter()
    for clip in clips:
        j = await judge(clip.pcm, asr, backchannel_ms)
        ok = j.bot_goes_on == (clip.label == "backchannel")
        causes[(clip.label, j.why)] += 1
        rows.append({"text": clip.text, "label": clip.label, "voice": clip.voice, "rate": clip.rate,
                     "speech_ms": round(clip.speech_ms), "bot_goes_on": j.bot_goes_on, "why": j.why,
                     "heard": j.words, "asr_ms": round(j.asr_ms, 1), "ok": ok})  # fmt: skip
    back = [r for r in rows if r["label"] == "backchannel"]
    inter = [r for r in rows if r["label"] == "interruption"]
    asr_ms = [r["asr_ms"] for r in rows if r["asr_ms"]]
    return {
        "backchannel_ms": backchannel_ms,
        "clips": len(rows),
        "accuracy": round(sum(r["ok"] for r in rows) / len(rows), 3),
        "false_cut_rate": round(sum(not r["ok"] for r in back) / len(back), 3),
        "false_cuts_by_timer": sum(not r["ok"] and r["why"] == "timer" for r in back),
        "false_cuts_by_words": sum(not r["ok"] and r["why"] == "words" for r in back),
        "missed_interruption_rate": round(sum(not r["ok"] for r in inter) / len(inter), 3),
        "outcomes": {f"{label}/{why}": n for (label, why), n in sorted(causes.items())},
        "asr_ms_p50": round(float(np.median(asr_ms)), 1) if asr_ms else None,
        "wrong": [r for r in rows if not r["ok"]],
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--quick", action="store_true", help="one voice, one rate")
    parser.add_argument("--ms", type=int, nargs="+", default=[700, 1000], help="vad.backchannel_ms values")
    args = parser.parse_args()
    voices, rates = (VOICES[:1], RATES[-1:]) if args.quick else (VOICES, RATES)
    clips = build_clips(voices, rates)
    asr = Transcriber(AsrConfig())
    await asr.start()
    try:
        results = [await score(clips, asr, ms) for ms in args.ms]
    finally:
        asr.close()
    out = {"host": platform.node(), "voices": voices, "rates": rates, "settings": results}
    args.out.write_text(json.dumps(out, indent=2))
    for r in results:
        print(json.dumps({k: v for k, v in r.items() if k != "wrong"}))


if __name__ == "__main__":
    asyncio.run(main())
