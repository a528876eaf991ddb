"""One layer's decode attention at Dia2-2B shapes on this GPU: dense cache, paged gather, paged kernel.

Issue 23: the paged KV cache's step was slower than the dense one's because ``PagedDecoderCache.read``
gathers every row's blocks into a dense copy per layer and step; ``dia2/paged_attention.py`` reads them in
place. For each (rows, context) this times, inside a CUDA graph of 20 launches (how the engine runs them):

* ``dense``: SDPA over the dense cache ``[B, 8, S, 128]`` with the additive mask (what the dense engine runs),
* ``gather``: ``PagedDecoderCache.attend`` with ``in_place`` off (gather + the same SDPA),
* ``kernel``: the in-place kernel, for each (warps, tile) candidate,

every row at the context's last slot (the worst case: all blocks visible), blocks handed out interleaved
across rows as a pool that has been running a while would hold them. GB/s is the K/V bytes a row's
visible slots hold over the time; ``max_abs_err`` the kernel's distance from the gather.

    python bench/dia2_paged_attention.py --out paged_attention.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.dia2_kernels import graph_us  # one graph-replay timer for the kernel benches
from dia2.model import attend_slots
from dia2.paged_attention import paged_decode
from dia2.paged_kv import PagedDecoderCache

logger = logging.getLogger("dia2_paged_attention")

HEADS, KV_HEADS, HEAD_DIM = 16, 8, 128  # Dia2-2B's main decoder


def paged_cache(rows: int, steps: int, block_size: int, dev: torch.device) -> PagedDecoderCache:
    """One layer's pool holding ``steps`` slots per row; row r's w-th block is block ``1 + w * rows + r``
    (interleaved, not contiguous per row); block 0 is the trash."""
    width = -(-steps // block_size)
    shape = (1, 1 + rows * width, KV_HEADS, block_size, HEAD_DIM)
    keys = torch.randn(shape, device=dev, dtype=torch.bfloat16)
    values = torch.randn(shape, device=dev, dtype=torch.bfloat16)
    w = torch.arange(width, device=dev)
    table = 1 + w[None, :] * rows + torch.arange(rows, device=dev)[:, None]
    return PagedDecoderCache(keys, values, table, block_size)


def case(
    rows: int, steps: int, block_size: int, candidates: list[tuple[int, int]], dev: torch.device
) -> dict[str, Any]:
    cache = paged_cache(rows, steps, block_size, dev)
    dense_k, dense_v = cache.read(0)  # the same values, dense: [B, 8, W * size, 128]
    dense_k, dense_v = dense_k.contiguous(), dense_v.contiguous()
    at = torch.full((rows,), steps - 1, device=dev)
    q = torch.randn(rows, HEADS, 1, HEAD_DIM, device=dev, dtype=torch.bfloat16)
    slots = torch.arange(cache.max_steps, device=dev)
    bias = torch.where(slots[None, :] <= at[:, None], 0.0, float("-inf")).to(q.dtype)[:, None, None, :]
    gather = replace(cache, in_place=False)
    want = gather.attend(0, q, at, bias)
    out = torch.empty(rows, HEADS, HEAD_DIM, device=dev, dtype=q.dtype)
    kv_bytes = 2 * rows * KV_HEADS * steps * HEAD_DIM * 2
    result: dict[str, Any] = {"rows": rows, "steps": steps, "block_size": block_size}

    def timed(name: str, fn: Any) -> None:
        us = graph_us(fn, reps=20)
        result[name] = {"us": round(us, 2), "gb_s": round(kv_bytes / us / 1e3, 1)}

    timed("dense", lambda: attend_slots(q, dense_k, dense_v, bias))
    timed("gather", lambda: gather.attend(0, q, at, bias))
    kernel: dict[str, Any] = {}
    for warps, tile in candidates:
        paged_decode(q[:, :, 0], cache.keys[0], cache.values[0], cache.table, at, out, warps=warps, tile=tile)
        err = float((out.float() - want[:, :, 0].float()).abs().max())
        us = graph_us(
            lambda warps=warps, tile=tile: paged_decode(
                q[:, :, 0], cache.keys[0], cache.values[0], cache.table, at, out, warps=warps, tile=tile
            ),
            reps=20,
        )
        kernel[f"w{warps}_t{tile}"] = {
            "us": round(us, 2),
            "gb_s": round(kv_bytes / us / 1e3, 1),
            "max_abs_err": err,
        }
    result["kernel"] = kernel
    best = min(kernel.items(), key=lambda kv: kv[1]["us"])
    result["kernel_best"] = best[0]
    logger.info(
        "rows %d steps %d: dense %.1f us, gather %.1f us, kernel %s %.1f us",
        rows,
        steps,
        result["dense"]["us"],
        result["gather"]["us"],
        best[0],
        best[1]["us"],
    )
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--rows", default="2,128,512", help="decoder rows (2 per call with CFG)")
    p.add_argument("--steps", default="256,750,1500", help="context slots per row")
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--warps", default="2,4,8")
    p.add_argument("--tiles", default="16,32,64,128")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    candidates = [(int(w), int(t)) for w in args.warps.split(",") for t in args.tiles.split(",")]
    report: dict[str, Any] = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "cases": []}
    for rows in (int(r) for r in args.rows.split(",")):
        for steps in (int(s) for s in args.steps.split(",")):
            report["cases"].append(case(rows, steps, args.block_size, candidates, torch.device("cuda")))
            args.out.write_text(
                json.dumps(report, indent=2) + "\n"
            )  # after each case: a cut run keeps its numbers
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
