"""How much of a CPU transcription is Whisper's 30 s window, and what cutting it costs in words (issue 17).

faster-whisper pads every clip's log-mel to 3 000 frames (30 s) before the encoder; a caller's turn is 1-5 s.
This runs `bench/asr_wer.py --offline`'s 60 sentences (espeak-ng, µ-law 8 kHz, the shipped segmenter, bundled
tiny.en) once as shipped and once per margin with the encoder given only the clip rounded up to 1 s plus
`margin` frames (10 ms each), by replacing faster-whisper's pad in its transcribe module for this process.
It is a measurement, not a product option: the text is what decides. JSON to stdout or --out.

    .venv/bin/python bench/asr_context.py --margins 100 300 1000 --out results.json     # ≈ 2 min
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import asr_wer  # noqa: E402
import faster_whisper.transcribe as fw_transcribe  # noqa: E402
from faster_whisper.audio import pad_or_trim  # noqa: E402

FULL = 3000  # frames: Whisper's 30 s window


def clip_pad(margin: int) -> Any:
    """A pad that gives the encoder the clip rounded up to 100 frames plus ``margin`` (at most 30 s)."""

    def pad(array: np.ndarray, length: int = FULL, *, axis: int = -1) -> np.ndarray:
        frames = array.shape[axis]
        return pad_or_trim(array, min(FULL, -(-(frames + margin) // 100) * 100), axis=axis)

    return pad


def run(label: str, sentences: list[str]) -> dict[str, Any]:
    start = time.perf_counter()
    result = asr_wer.run_offline(200, sentences)
    keep = ("wer", "first_word_accuracy", "sentences_without_error", "sentences")
    return (
        {"encoder_input": label, "wall_s": round(time.perf_counter() - start, 1)}
        | {k: result[k] for k in keep}
        | {"per_sentence": result["per_sentence"]}
    )


def main() -> int:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=fmt)
    parser.add_argument("--margins", type=int, nargs="+", default=[100, 300, 1000])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    sentences = list(asr_wer.SENTENCES)
    runs = [run("30 s (as shipped)", sentences)]
    for margin in args.margins:
        fw_transcribe.pad_or_trim = clip_pad(margin)
        runs.append(run(f"clip + {margin} frames", sentences))
    fw_transcribe.pad_or_trim = pad_or_trim
    text = json.dumps({"bench": "asr_context", "runs": runs}, indent=1)
    if args.out:
        args.out.write_text(text)
    for r in runs:
        print(r["encoder_input"], {k: v for k, v in r.items() if k not in ("per_sentence", "encoder_input")})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
