"""Word timestamps for one batch: transformers' `return_token_timestamps` vs sipbridge's (plain generate, one
alignment forward, our DTW, sipbridge/word_times.py), on the same random Whisper and batch.

    python bench/asr_word_times.py --shape tiny --device cpu --rows 16 --turn-s 3 [--reps 5] [--threads 1]

The encoder runs once, before the timings (both paths are given its output, as the product does). Reported,
median over `--reps` after a warm-up: batch ms of each path, ours split into generate / alignment forward /
normalise+DTW, the interpreter's own time in each (cProfile self-time of Python functions, not the torch and
numpy calls: what holds the GIL against the Dia2 engine thread), and whether the times are equal (in float32;
in float16 transformers z-scores in float16, ours in float32, so a token may move by a frame). The model is
bench/asr_batch.py's (random weights, real shapes, tiny.en's tokenizer).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.asr_batch import SHAPES, build, tokenizer_path
from sipbridge.asr import _to_whisper
from sipbridge.asr_batch import BatchedWhisper, _StepRecorder, token_cap
from sipbridge.word_times import alignment_weights, encoder_frames, token_times


def python_ms(fn: Any) -> float:
    """Self-time of Python-defined functions while `fn` runs (C calls, where torch may drop the GIL, not)."""
    prof = cProfile.Profile()
    prof.enable()
    fn()
    prof.disable()
    stats = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    return 1000 * sum(v[2] for k, v in stats.items() if not k[0].startswith("~") and k[0] != "<string>")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None, help="float32 on cpu, float16 on cuda by default")
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--turn-s", type=float, default=3.0, help="turns last this plus 0/0.25/0.5/0.75 s")
    ap.add_argument("--tokens-per-s", type=float, default=4.0)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--tokenizer-json", default=None)
    ap.add_argument("--model-dir", default=None)
    args = ap.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = args.dtype or ("float32" if args.device == "cpu" else "float16")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.model_dir or tmp) / f"whisper-{args.shape}-random"
        if not (folder / "config.json").exists():
            build(args.shape, folder, tokenizer_path(args.tokenizer_json))
        whisper = BatchedWhisper(
            str(folder), device=args.device, dtype=dtype, language="en", window_ms=0, max_batch=args.rows,
            max_tokens_per_second=args.tokens_per_s,
        )  # fmt: skip
    model, rng = whisper._model, np.random.default_rng(1)
    audio = [
        _to_whisper(
            (rng.standard_normal(int(8000 * (args.turn_s + 0.25 * (i % 4)))) * 2000).astype(np.int16), 8000
        )
        for i in range(args.rows)
    ]
    inputs = whisper._processor.feature_extractor(
        audio, sampling_rate=16000, return_tensors="pt", return_attention_mask=True
    )
    feats = inputs.input_features.to(args.device, whisper._dtype)
    mask = inputs.attention_mask.to(args.device)
    frames = encoder_frames(inputs.attention_mask.sum(-1).tolist())
    new_tokens = max(token_cap(len(a) / 16000, args.tokens_per_s) for a in audio)
    heads, width = model.generation_config.alignment_heads, model.config.median_filter_width
    with torch.inference_mode():
        encoded = model.get_encoder()(feats)

    def theirs() -> Any:
        with torch.inference_mode():
            out = model.generate(
                encoder_outputs=encoded, return_dict_in_generate=True, return_token_timestamps=True,
                attention_mask=mask, max_new_tokens=new_tokens,
            )  # fmt: skip
        return out["token_timestamps"].cpu()

    split: list[tuple[float, float, float]] = []

    def ours() -> Any:
        t0 = time.perf_counter()
        steps = _StepRecorder()
        with torch.inference_mode():
            model.generate(encoder_outputs=encoded, logits_processor=[steps], max_new_tokens=new_tokens)
            t1 = time.perf_counter()
            weights = alignment_weights(model, steps.fed, encoded.last_hidden_state, heads, max(frames))
        t2 = time.perf_counter()
        times = token_times(weights, frames, steps.prompt, width)
        split.append((t1 - t0, t2 - t1, time.perf_counter() - t2))
        return times

    ms: dict[str, list[float]] = {"transformers": [], "ours": []}
    for rep in range(args.reps + 1):  # the first round warms both up
        for name, fn in (("transformers", theirs), ("ours", ours)):
            t0 = time.perf_counter()
            result = fn()
            if rep:
                ms[name].append((time.perf_counter() - t0) * 1000)
            if name == "transformers":
                ref = result
            else:
                equal = all(np.array_equal(ref[r, 2:].numpy(), result[r]) for r in range(args.rows))
    parts = np.median(np.array(split[1:]), axis=0) * 1000
    out = {
        "shape": args.shape, "device": args.device, "dtype": dtype, "rows": args.rows, "turn_s": args.turn_s,
        "max_new_tokens": new_tokens, "frames": [min(frames), max(frames)],
        "batch_ms": {k: round(statistics.median(v), 1) for k, v in ms.items()},
        "ours_split_ms": {"generate": round(parts[0], 1), "alignment_forward": round(parts[1], 1),
                          "normalise_dtw": round(parts[2], 1)},
        "python_self_ms": {"transformers": round(python_ms(theirs), 1), "ours": round(python_ms(ours), 1)},
        "times_equal": equal,
    }  # fmt: skip
    if args.device.startswith("cuda"):
        out["gpu"] = torch.cuda.get_device_name()
    whisper.close()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
