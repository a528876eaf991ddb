"""Per-phase breakdown of one Dia2 engine frame on CUDA (full Dia2-2B shapes, random bf16 weights).

    python bench/dia2_profile.py --out profile.json [--variants eager,fused] [--calls 1,64]

For each variant (``eager``: the model's modules; ``fused``: dia2/fused.py's shared layer/stage
functions through torch.compile) and each batch (calls with CFG, 2 rows each) it reports:

* graph replay time of each captured phase, timed alone with CUDA events (median of 30): main step
  (embeddings, 28 layers, heads, action/codebook-0 CFG + sampling), depformer (31 stages with
  per-stage CFG + sampling and ring writes), lead-in tail (what replaces the depformer on lead-in
  steps), streaming Mimi decode;
* kernels launched per phase and their summed GPU time (torch.profiler over one eager run: with
  graphs every kernel is still a node, and its count is what makes the frame latency-bound);
* the whole ``BatchEngine.step`` wall time (host state machine and the one sync included), steady state
  and lead-in, so host overhead = step − sum of phases;
* time to first audio on a warm 30 s context (5 turns) for one call.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dia2.engine import BatchEngine, EngineOptions, SpeakOptions
from dia2.frame import depformer_phase, finish_phase, main_phase

logger = logging.getLogger("dia2_profile")


def time_graph(graph: Any, reps: int = 30) -> float:
    """Median ms of one replay, each bracketed by CUDA events."""
    times = []
    for _ in range(3):
        graph.replay()
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        graph.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def count_kernels(fn: Any) -> dict[str, float]:
    """Kernels launched by one eager call of ``fn`` and their summed device time (ms)."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    total = sum(e.device_time for e in kernels) / 1000.0
    by_name: dict[str, list[float]] = {}
    for e in kernels:
        by_name.setdefault(e.name[:80], []).append(e.device_time)
    top = sorted(by_name.items(), key=lambda kv: -sum(kv[1]))[:12]
    return {
        "kernels": len(kernels),
        "kernel_ms": total,
        # Where the kernel time goes: name → (launches, total ms, mean us), the 12 largest.
        "top": {name: [len(t), round(sum(t) / 1000, 3), round(sum(t) / len(t), 2)] for name, t in top},
    }


def step_ms(engine: BatchEngine, steps: int) -> float:
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        engine.step()
    torch.cuda.synchronize()
    return 1000 * (time.perf_counter() - t0) / steps


def profile_variant(
    model: Any, ids: Any, enc: Any, mimi: Any, variant: str, counts: list[int]
) -> dict[str, Any]:
    """``eager``: the model's modules; ``fused``: dia2/fused.py compiled, depformer on torch;
    ``kernels``: fused + the depformer on dia2/kernels.py (the CUDA default); ``kernels-pdl``: the same
    with programmatic dependent launch."""
    fused = variant != "eager"
    from dia2_speed import start_reply, ttfa_warm

    t0 = time.perf_counter()
    cap = max(counts)
    engine = BatchEngine(
        model,
        ids,
        enc,
        mimi,
        EngineOptions(
            capacity=cap,
            cfg=True,
            buckets=tuple(counts),
            seed=0,
            fused=fused,
            compile=fused,
            kernels=variant.startswith("kernels"),
            pdl=variant == "kernels-pdl",
            kernel_max_calls=None,
        ),
    )
    out: dict[str, Any] = {"startup_s": time.perf_counter() - t0, "graph_errors": engine.graph_errors}
    logger.info("%s: engine ready in %.1f s", variant, out["startup_s"])
    opts = SpeakOptions()
    for n in counts:
        calls = [engine.open_call() for _ in range(n)]
        for c in calls:
            start_reply(engine, c, opts)
        lead = step_ms(engine, 10)  # the first 10 steps of a reply are lead-in steps
        for _ in range(10):
            engine.step()
        steady = step_ms(engine, 40)
        g_main, g_dep, g_mimi, g_lead = engine.graphs.steps[n]
        row: dict[str, Any] = {
            "calls": n,
            "step_ms_lead_in": lead,
            "step_ms_steady": steady,
            "main_ms": time_graph(g_main),
            "depformer_ms": time_graph(g_dep),
            "lead_tail_ms": time_graph(g_lead),
            "mimi_ms": time_graph(g_mimi) if g_mimi is not None else None,
        }
        gpu = row["main_ms"] + row["depformer_ms"] + (row["mimi_ms"] or 0.0)
        row["host_and_sync_ms"] = steady - gpu
        view = engine.buf.view(n)
        with torch.inference_mode():
            row["kernels_main"] = count_kernels(
                lambda v=view: main_phase(engine.model, v, engine.consts, None, engine.fused)
            )
            row["kernels_depformer"] = count_kernels(
                lambda v=view: depformer_phase(engine.model, v, engine.consts, None, engine.fused)
            )
            row["kernels_lead_tail"] = count_kernels(lambda v=view: finish_phase(v, engine.consts))
            row["kernels_mimi"] = count_kernels(lambda m=n: engine.mimi_rows.decode(m))
        logger.info("%s %s", variant, row)
        out[f"calls_{n}"] = row
        for c in calls:
            engine.close_call(c)
    out["ttfa"] = ttfa_warm(engine, opts, 30.0, 5, 2.0)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--variants", default="fused,kernels", help="any of eager, fused, kernels, kernels-pdl")
    p.add_argument("--calls", default="1,64")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from dia2_speed import build

    args.tiny, args.preset, args.device = False, "2b", "cuda"
    model, ids, enc, mimi, what = build(args)
    counts = [int(c) for c in args.calls.split(",")]
    result: dict[str, Any] = {
        "model": what,
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "command": "python " + " ".join(sys.argv),
    }
    for variant in args.variants.split(","):
        try:
            result[variant] = profile_variant(model, ids, enc, mimi, variant, counts)
        except Exception as exc:  # keep the other variant's numbers
            logger.exception("variant %s failed", variant)
            result[variant] = {"error": repr(exc)}
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{what} on {result['device']}")
    print("variant calls step(lead) step main depf lead_tail mimi host | kernels main/depf/mimi | TTFA p50")
    for variant in args.variants.split(","):
        r = result[variant]
        if "error" in r:
            print(variant, r["error"])
            continue
        for n in counts:
            x = r[f"calls_{n}"]
            print(
                f"{variant:7s} {n:4d}  {x['step_ms_lead_in']:7.2f} {x['step_ms_steady']:7.2f} "
                f"{x['main_ms']:6.2f} "
                f"{x['depformer_ms']:6.2f} {x['lead_tail_ms']:6.3f} {x['mimi_ms'] or 0:6.2f} "
                f"{x['host_and_sync_ms']:6.2f} | {x['kernels_main']['kernels']}/"
                f"{x['kernels_depformer']['kernels']}/{x['kernels_mimi']['kernels']} | "
                f"{r['ttfa']['ttfa_p50_ms']:.1f}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
