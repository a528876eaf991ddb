"""Tile sizes for dia2/kernels.py's projection kernel on this GPU, shape by shape (JSON out).

For each Dia2-2B projection shape the depformer (and the main decoder) runs, and for 2 / 128 / 256
rows (1 / 64 / 128 calls with CFG), every candidate tiling is timed inside a CUDA graph of 50 launches
(how the engine runs them) and compared with ``F.linear`` (cuBLAS) on the same graph footing; GB/s is
the weight bytes over the time. The winners go into ``kernels.TUNED``.

    python bench/dia2_kernels.py --out kernels.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dia2 import kernels

logger = logging.getLogger("dia2_kernels")

# (name, out rows N, in K, swiglu, norm, residual, fp32 out)
SHAPES = [
    ("dep_qkv", 3072, 1024, False, True, False, False),
    ("dep_out", 1024, 1024, False, False, True, False),
    ("dep_wi", 6144, 1024, True, True, False, False),
    ("dep_wo", 1024, 3072, False, False, True, False),
    ("dep_head", 2050, 1024, False, True, False, True),
    ("main_qkv", 4096, 2048, False, True, False, False),
    ("main_o", 2048, 2048, False, False, True, False),
    ("main_wi", 12288, 2048, True, True, False, False),
    ("main_wo", 2048, 6144, False, False, True, False),
]


def tile_candidates(m: int) -> list[kernels.LinearBlocks]:
    """First pass: tile width and depth at 4 warps / 3 stages (second pass: warps and stages)."""
    return [kernels.LinearBlocks(m, n, k, 4, 3) for n in (16, 32, 64) for k in (128, 256, 512)]


def launch_candidates(best: kernels.LinearBlocks) -> list[kernels.LinearBlocks]:
    return [kernels.LinearBlocks(best.m, best.n, best.k, w, st) for w in (2, 4, 8) for st in (2, 3, 4, 5)]


def graph_us(fn: Any, reps: int = 50) -> float:
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(reps):
            fn()
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    best = float("inf")
    for _ in range(5):
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        best = min(best, 1000 * start.elapsed_time(end) / reps)
    return best


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--rows", default="2")
    p.add_argument("--only-launch", action="store_true", help="sampler and attention warps only")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    dev = torch.device("cuda")
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "shapes": [],
    }
    for rows in [] if args.only_launch else [int(r) for r in args.rows.split(",")]:
        for name, n, k, swiglu, norm, res, f32 in SHAPES:
            w = torch.randn(n, k, device=dev, dtype=torch.bfloat16) / 32
            x = torch.randn(rows, k, device=dev, dtype=torch.bfloat16)
            nw = torch.ones(k, device=dev, dtype=torch.bfloat16) if norm else None
            out = torch.empty(
                rows, n // 2 if swiglu else n, device=dev, dtype=torch.float32 if f32 else torch.bfloat16
            )
            cublas = graph_us(lambda w=w, x=x: F.linear(x, w))
            flags = {"norm": nw, "residual": out if res else None, "swiglu": swiglu}

            def timed(
                b: kernels.LinearBlocks,
                w: torch.Tensor = w,
                x: torch.Tensor = x,
                out: torch.Tensor = out,
                flags: dict[str, Any] = flags,
            ) -> float:
                try:
                    return graph_us(lambda: kernels.linear(x, w, out, blocks=b, **flags))
                except Exception as exc:  # a tiling the compiler refuses (shared memory): skip it
                    logger.debug("%s: %s", b, exc)
                    return float("inf")

            m = max(16, triton_pow2(rows)) if rows <= 64 else 64
            timings = sorted(((timed(b), b) for b in tile_candidates(m)), key=lambda t: t[0])
            timings = sorted(
                timings + [(timed(b), b) for b in launch_candidates(timings[0][1])], key=lambda t: t[0]
            )
            best_us, best = timings[0]
            default_us = timed(kernels.pick_blocks(rows, n // 2 if swiglu else n, k, n))
            gb = w.numel() * 2 / 1e9
            row = {
                "shape": name,
                "rows": rows,
                "n": n,
                "k": k,
                "cublas_us": round(cublas, 2),
                "default_us": round(default_us, 2),
                "best_us": round(best_us, 2),
                "best": [best.m, best.n, best.k, best.warps, best.stages],
                "best_gb_s": round(gb / best_us * 1e6, 1),
                "cublas_gb_s": round(gb / cublas * 1e6, 1),
                "top5": [[round(t, 2), [b.m, b.n, b.k, b.warps, b.stages]] for t, b in timings[:5]],
            }
            logger.info("%s", row)
            result["shapes"].append(row)
            args.out.write_text(json.dumps(result, indent=2) + "\n")
    result["sampler"] = sampler_warps(dev)
    result["attention"] = attention_warps(dev)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print("sampler (1 call, CFG, T 0.8, top-k 50) us by warps:", result["sampler"])
    print("depformer attention (2 rows, stage 30) us by warps:", result["attention"])
    for r in result["shapes"]:
        print(
            f"{r['shape']:9s} rows {r['rows']:3d}: cuBLAS {r['cublas_us']:7.2f} us, "
            f"ours {r['default_us']:7.2f}, best {r['best_us']:7.2f} {r['best']} ({r['best_gb_s']} GB/s)"
        )
    return 0


def sampler_warps(dev: torch.device) -> dict[int, float]:
    """The depformer's per-stage sampler for one call (2 logit rows of 2050), by warps."""
    gen = torch.Generator(device=dev).manual_seed(0)
    logits = torch.randn(2, 2050, device=dev, generator=gen) * 3
    noise = torch.empty(1, 2048, device=dev).exponential_(generator=gen)
    ring = torch.zeros(1, 32, 32, dtype=torch.long, device=dev)
    one = torch.ones(1, device=dev)
    args = (
        logits,
        one * 2.0,
        one * 0.8,
        torch.full((1,), 50, device=dev),
        noise,
        ring,
        torch.full((1,), 40, device=dev),
        torch.zeros(1, dtype=torch.long, device=dev),
        torch.ones(1, dtype=torch.bool, device=dev),
        torch.zeros(1, dtype=torch.long, device=dev),
    )
    din = torch.randn(2, 1024, device=dev, dtype=torch.bfloat16)
    table = torch.randn(2050, 1024, device=dev, dtype=torch.bfloat16)
    x = torch.empty(2, 1024, device=dev, dtype=torch.bfloat16)
    out = {}
    for w in (1, 2, 4, 8, 16):
        out[w] = round(
            graph_us(
                lambda w=w: kernels.sample_stage(
                    *args,
                    codebook=5,
                    delay=18,
                    branches=2,
                    vocab_limit=2048,
                    filter_k=50,
                    top_k_cap=64,
                    next_din=din,
                    next_table=table,
                    x=x,
                    warps=w,
                )
            ),
            2,
        )
    return out


def attention_warps(dev: torch.device) -> dict[int, float]:
    qkv = torch.randn(2, 3072, device=dev, dtype=torch.bfloat16)
    keys = torch.randn(2, 8, 32, 128, device=dev, dtype=torch.bfloat16)
    values = torch.randn_like(keys)
    norm = torch.ones(128, device=dev, dtype=torch.bfloat16)
    cos = torch.ones(31, 128, device=dev, dtype=torch.bfloat16)
    out_t = torch.empty(2, 1024, device=dev, dtype=torch.bfloat16)
    return {
        w: round(
            graph_us(
                lambda w=w: kernels.attention_stage(
                    qkv, keys, values, norm, norm, cos, cos, out_t, 30, 1e-6, warps=w
                )
            ),
            2,
        )
        for w in (1, 2, 4, 8)
    }


def triton_pow2(n: int) -> int:
    return 1 << (n - 1).bit_length()


if __name__ == "__main__":
    raise SystemExit(main())
