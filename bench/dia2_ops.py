"""Operators per frame of the engine's phases, counted with the torch profiler on the CPU (issue 23).

    python bench/dia2_ops.py --out ops.json                  # tiny fixture checkpoint, CPU
    python bench/dia2_ops.py --preset 2b --out ops-2b.json   # Dia2-2B shapes, random weights (CPU, slow)
    TRITON_INTERPRET=1 python bench/dia2_ops.py --kernels --out ops-k.json   # + the Triton kernels

A proxy for launches on the GPU: every top-level torch operator a phase issues, eager, once per frame, for
the module path (``fused=False``) and the fused torch functions (``fused=True``, uncompiled here; on CUDA
they are compiled and then captured). ``kernel_ops`` leaves out the operators that only make views (no
kernel on a GPU); ``all_ops`` counts everything the profiler saw at the phase's top level. Reports per
phase (main step, depformer) and per depformer stage.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dia2.engine import BatchEngine, EngineOptions, SpeakOptions
from dia2.frame import depformer_phase, main_phase
from dia2.sampling import SamplingParams

ROOT = Path(__file__).resolve().parents[1]
VIEW_OPS = frozenset(
    "aten::" + n
    for n in (
        "view alias as_strided slice select transpose t permute reshape expand unsqueeze squeeze chunk split "
        "unflatten narrow detach unbind lift_fresh _unsafe_view view_as split_with_sizes empty_like "
        "empty result_type item _local_scalar_dense is_nonzero"
    ).split()
)
MAYBE_NOOP = frozenset({"aten::to", "aten::contiguous", "aten::reshape", "aten::type_as", "aten::expand_as"})


def _count(fn: Any) -> tuple[int, int, Counter[str]]:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        with torch.profiler.record_function("phase"):
            fn()
    top = [e for e in prof.events() if e.cpu_parent is not None and e.cpu_parent.name == "phase"]
    names = Counter(e.name for e in top)
    # A conversion or reshape that returns its input (no child op) launches nothing.
    kernels = sum(
        1 for e in top if e.name not in VIEW_OPS and not (e.name in MAYBE_NOOP and not e.cpu_children)
    )
    return len(top), kernels, names


def build(args: argparse.Namespace) -> Any:
    if args.preset:
        sys.argv = [sys.argv[0]]
        from bench.dia2_speed import build as build_full  # type: ignore[import-not-found]

        ns = argparse.Namespace(tiny=False, preset=args.preset, device="cpu")
        model, ids, encoder, mimi, _ = build_full(ns)
        return model, ids, encoder, mimi
    from dia2.reference import ReferenceFixture

    rt = ReferenceFixture.load(ROOT / "tests" / "fixtures" / "dia2-tiny").load_runtime("cpu", "float32")
    return rt.model, rt.ids, rt.tokenizer, rt.mimi


def measure(parts: Any, fused: bool, calls: int, kernels: bool = False) -> dict[str, Any]:
    """``kernels`` off: the torch path (``fused``: its shared functions); on: the Triton kernels (CPU:
    Triton's interpreter), Triton launches counted beside the torch operators (kernel_ops: both)."""
    model, ids, encoder, mimi = parts
    opts = EngineOptions(capacity=calls, fused=fused or kernels, kernels=kernels, cuda_graphs=False, seed=0)
    engine = BatchEngine(model, ids, encoder, mimi, opts)
    greedy = SamplingParams(0.0, 1)
    for _ in range(calls):
        engine.speak(
            engine.open_call(), "[S1] Hello there, how are you.", lambda c: None, SpeakOptions(greedy, greedy)
        )
    for _ in range(20):  # past the lead-in
        engine.step()
    buf = engine.buf.view(calls)
    gen = engine.graphs.gen
    from dia2 import kernels as triton_kernels
    from dia2.launch_count import count_launches

    with torch.inference_mode(), count_launches(triton_kernels) as main_triton:
        main_all, main_k, _ = _count(lambda: main_phase(model, buf, engine.consts, gen, engine.fused))
    with torch.inference_mode(), count_launches(triton_kernels) as dep_triton:
        dep_all, dep_k, names = _count(lambda: depformer_phase(model, buf, engine.consts, gen, engine.fused))
    depth = model.depformer.depth
    main_t, dep_t = sum(main_triton.values()), sum(dep_triton.values())
    # Triton's interpreter copies every launch's tensors to and from the host with torch operators, so
    # with the kernels on the CPU only the Triton launches are a launch count (the torch operators
    # around the stage loop are the same few per frame).
    interpreted = kernels and os.environ.get("TRITON_INTERPRET") == "1"
    main_ops = main_t if interpreted else main_k + main_t
    dep_ops = dep_t if interpreted else dep_k + dep_t
    return {
        "fused": fused,
        "triton_kernels": kernels,
        "calls": calls,
        "kernel_ops_are": "Triton launches only (interpreter)"
        if interpreted
        else "torch ops + Triton launches",
        "main": {"all_ops": main_all, "kernel_ops": main_ops, "triton_launches": main_t},
        "depformer": {
            "all_ops": dep_all,
            "kernel_ops": dep_ops,
            "kernel_ops_per_stage": dep_ops / depth,
            "triton_launches": dep_t,
            "triton_launches_per_stage": dep_t / depth,
            "triton_by_kernel": dict(dep_triton),
        },
        "depformer_top_ops": dict(names.most_common(12)),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--preset", default=None, choices=["2b", "1b"])
    p.add_argument("--calls", type=int, default=2)
    p.add_argument("--label", default="", help="a name for this run (e.g. before / after)")
    p.add_argument(
        "--kernels",
        action="store_true",
        help="also the Triton kernel path (CPU: set TRITON_INTERPRET=1)",
    )
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    parts = build(args)
    result = {
        "label": args.label,
        "model": args.preset or "tiny fixture",
        "torch": torch.__version__,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": "python " + " ".join(sys.argv),
        "runs": [measure(parts, fused, args.calls) for fused in (False, True)],
    }
    if args.kernels:
        result["runs"].append(measure(parts, True, args.calls, kernels=True))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for run in result["runs"]:
        d, m = run["depformer"], run["main"]
        print(
            f"fused={run['fused']} triton={run.get('triton_kernels', False)}: main {m['kernel_ops']} "
            f"kernel ops ({m['all_ops']} all); depformer "
            f"{d['kernel_ops']} ({d['kernel_ops_per_stage']:.1f} per stage; {d['all_ops']} all)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
