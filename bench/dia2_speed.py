"""Speed of the Dia2 conversation engine (issue 4): full Dia2-2B shapes, random bf16 weights, CUDA.

    python bench/dia2_speed.py --out speed.json            # GPU, Dia2-2B shapes (about 5 minutes on an H100)
    python bench/dia2_speed.py --tiny --out tiny.json      # CPU smoke test on the tiny fixture checkpoint

Reports (JSON): ms/frame and frames/s for one call with CFG on and off; time to first audio (TTFA:
``speak()`` called → first 24 kHz chunk ready on the host) p50/p95 over 20 turns on a call with a warm
30 s context; turn ingest ms per second of caller audio (Mimi encode + one prefill); per-call frames/s
and p95 TTFA at 1, 8, 32, 64, 128, 192, 256, 384 concurrent calls (`--calls`), whether each holds real time
(12.5 frames/s) with p95 TTFA <= 200 ms, and peak GPU memory per size. Memory: the engine's breakdown by
component (``dia2.memory``: predicted from shapes and summed over the live engine's tensors), allocated and
reserved after capture and per size; sizes whose predicted memory does not fit the card are skipped and
named (``skipped``). ``--paged-kv --kv-pool-steps N`` runs the paged KV cache (docs/DIA2.md); its attention
reads the blocks in place (dia2/paged_attention.py) unless ``--paged-gather``.
Weights are random, so the words the model "says" mean nothing; every number here is a function of shapes
only (TTFA is 18 steps by construction of the delay pattern, whatever the weights).
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import math
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dia2.engine import AudioChunk, BatchEngine, CallState, EngineOptions, SpeakOptions
from dia2.memory import GIB, activation_estimate, engine_memory, engine_tensor_bytes
from dia2.mimi import MimiCodec
from dia2.model import Dia2Model
from dia2.prefix import PrefixWord
from dia2.random_weights import random_runtime
from dia2.state_machine import TokenIds

logger = logging.getLogger("dia2_speed")
ROOT = Path(__file__).resolve().parents[1]
REPLY = " ".join(["[S1] Thank you for calling, let me check that booking for you right away."] * 6)


def build(args: argparse.Namespace) -> tuple[Dia2Model, TokenIds, Any, MimiCodec, str]:
    if args.tiny:
        from dia2.reference import ReferenceFixture

        ref = ReferenceFixture.load(ROOT / "tests" / "fixtures" / "dia2-tiny")
        rt = ref.load_runtime(args.device, "float32")
        return rt.model, rt.ids, rt.tokenizer, rt.mimi, "tiny fixture (float32)"
    rt = random_runtime(args.preset, device=str(args.device), dtype="bfloat16")
    return rt.model, rt.ids, rt.tokenizer, rt.mimi, f"Dia2-{args.preset.upper()} shapes, random bf16"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def words_for(seconds: float) -> list[PrefixWord]:
    return [PrefixWord("word", 0.4 * i + 0.05, 0.4 * i + 0.35) for i in range(int(seconds / 0.4))]


def noise(seconds: float, gen: torch.Generator) -> torch.Tensor:
    return 0.1 * torch.randn(int(24000 * seconds), generator=gen)


class Turn:
    """A reply whose first chunk time is recorded."""

    def __init__(self, engine: BatchEngine | None = None) -> None:
        self.start = time.perf_counter()
        self.first: float | None = None
        self.chunks = 0
        # Where a reply's wait goes: engine steps (full / lane) between speak() and the first chunk.
        self._engine = engine
        self._at = (engine.steps_run, engine.lane_steps) if engine is not None else (0, 0)
        self.waited: tuple[int, int] | None = None

    def __call__(self, chunk: AudioChunk | None) -> None:
        if chunk is not None:
            self.chunks += 1
            if self.first is None:
                self.first = time.perf_counter()
                if self._engine is not None:
                    eng = self._engine
                    self.waited = (eng.steps_run - self._at[0], eng.lane_steps - self._at[1])

    @property
    def ttfa_ms(self) -> float | None:
        return None if self.first is None else 1000 * (self.first - self.start)


def start_reply(engine: BatchEngine, call: CallState, opts: SpeakOptions) -> Turn:
    turn = Turn(engine)
    # More text "promised" forever: the reply never ends by itself, like an LLM still talking.
    engine.speak(call, REPLY, turn, opts, more_text=True)
    return turn


def frames_per_second(engine: BatchEngine, calls: int, steps: int, opts: SpeakOptions) -> dict[str, float]:
    opened = [engine.open_call() for _ in range(calls)]
    for call in opened:
        start_reply(engine, call, opts)
    # Past the lead-in (lane steps), then full steps only: frames/s counts full steps.
    while engine.steps_run < 10 or any(engine.stepper.in_lead_in(c) for c in opened):
        engine.step()
    sync(engine.device)
    full0 = engine.steps_run
    t0 = time.perf_counter()
    while engine.steps_run < full0 + steps:
        engine.step()
    sync(engine.device)
    ms = 1000 * (time.perf_counter() - t0) / steps
    for call in opened:
        engine.close_call(call)
    return {"calls": calls, "ms_per_frame": ms, "frames_per_s_per_call": 1000 / ms}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def ttfa_warm(
    engine: BatchEngine, opts: SpeakOptions, context_s: float, turns: int, caller_s: float
) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(1)
    call = engine.open_call()
    engine.set_voice(call, noise(min(context_s, 10.0), gen), words_for(min(context_s, 10.0)))
    remaining = context_s - min(context_s, 10.0)
    if remaining > 0:
        engine.user_spoke(call, noise(remaining, gen), words_for(remaining))
    warm_frames = call.frames
    ttfa, ingest = [], []
    for _ in range(turns):
        audio = noise(caller_s, gen)
        sync(engine.device)
        t0 = time.perf_counter()
        engine.user_spoke(call, audio, words_for(caller_s))
        sync(engine.device)
        ingest.append(1000 * (time.perf_counter() - t0) / caller_s)
        turn = start_reply(engine, call, opts)
        while turn.first is None:
            engine.step()
        ttfa.append(turn.ttfa_ms or 0.0)
        for _ in range(4):  # a few more frames, then the caller barges in
            engine.step()
        engine.cancel(call)
    engine.close_call(call)
    return {
        "context_frames_at_start": warm_frames,
        "turns": turns,
        "caller_seconds_per_turn": caller_s,
        "ttfa_ms": ttfa,
        "ttfa_p50_ms": statistics.median(ttfa),
        "ttfa_p95_ms": pct(ttfa, 0.95),
        "ingest_ms_per_s": ingest,
        "ingest_ms_per_s_median": statistics.median(ingest),
    }


def concurrency(engine: BatchEngine, calls: int, steps: int, opts: SpeakOptions) -> dict[str, Any]:
    """All calls speaking; each step one call (round robin) barges in and starts a new reply."""
    gen = torch.Generator().manual_seed(2)
    opened = [engine.open_call() for _ in range(calls)]
    for call in opened:
        engine.user_spoke(call, noise(2.0, gen), words_for(2.0))
    turns = {call.slot: start_reply(engine, call, opts) for call in opened}
    # Steady state first: every call past its lead-in (the simultaneous start is not what is measured).
    while engine.steps_run < 10 or any(engine.stepper.in_lead_in(c) for c in opened):
        engine.step()
    restart_every = max(1, 40 // calls)
    ttfa: list[float] = []
    waits: list[tuple[float, int, int]] = []  # (TTFA ms, full steps, lane steps) per reply
    sync(engine.device)
    # Restarts are paced by *full* steps (every speaking call advances one frame per full step); lane
    # steps for lead-ins run in between as the engine's scheduler allows. frames/s per call = full steps/s.
    full0, lane0, restarted_at = engine.steps_run, engine.lane_steps, -1
    t0 = time.perf_counter()
    while (i := engine.steps_run - full0) < steps:
        if i % restart_every == 0 and i < steps - 30 and i != restarted_at:
            restarted_at = i
            call = opened[(i // restart_every) % calls]
            engine.cancel(call)
            turns[call.slot] = start_reply(engine, call, opts)
            turns[call.slot].restarted = True  # type: ignore[attr-defined]
        engine.step()
        for turn in turns.values():
            if getattr(turn, "restarted", False) and turn.first is not None:
                ttfa.append(turn.ttfa_ms or 0.0)
                full, lane = turn.waited or (0, 0)
                waits.append((turn.ttfa_ms or 0.0, full, lane))
                turn.restarted = False  # type: ignore[attr-defined]
    sync(engine.device)
    ms = 1000 * (time.perf_counter() - t0) / steps
    lane_steps = engine.lane_steps - lane0
    pool = engine.pool
    blocks = None if pool is None else pool.total_blocks - pool.free_blocks
    for call in opened:
        engine.close_call(call)
    return {
        "kv_blocks_in_use": blocks,
        "kv_pool_ends": engine.kv_pool_ends,
        "calls": calls,
        "ms_per_step": ms,
        "frames_per_s_per_call": 1000 / ms,
        "lane_steps": lane_steps,
        "ttfa_samples": len(ttfa),
        "ttfa_p50_ms": statistics.median(ttfa) if ttfa else None,
        "ttfa_p95_ms": pct(ttfa, 0.95) if ttfa else None,
        # The slowest tenth of the replies: how many full and lane steps each waited for its first chunk.
        "slowest_replies": [
            {"ttfa_ms": round(t, 1), "full_steps": f, "lane_steps": ln}
            for t, f, ln in sorted(waits, reverse=True)[: max(1, len(waits) // 10)]
        ],
        "median_wait_steps": {
            "full": statistics.median(w[1] for w in waits) if waits else None,
            "lane": statistics.median(w[2] for w in waits) if waits else None,
        },
    }


def fitting(
    model: Dia2Model, device: torch.device, counts: list[int], common: dict[str, Any]
) -> tuple[list[int], list[dict[str, Any]]]:
    """The sizes whose engine (persistent buffers + largest transients, predicted by dia2.memory) fits the
    card beside what is already allocated; the others are reported, not run (an engine holds max(counts))."""
    if device.type != "cuda":
        return counts, []
    free = torch.cuda.mem_get_info(device)[0] + torch.cuda.memory_allocated(device)
    known = {k: v for k, v in common.items() if v is not None and k in EngineOptions.__dataclass_fields__}
    skipped = []
    while counts:
        opts = EngineOptions(capacity=max(counts), cfg=True, **known)
        need = engine_memory(model.config, opts)["total"] + sum(
            activation_estimate(model.config, opts).values()
        )
        if need < 0.95 * free:
            break
        skipped.append({"calls": max(counts), "predicted_gib": need / GIB, "available_gib": free / GIB})
        logger.warning("%d calls skipped: predicted %.1f GiB > %.1f GiB", max(counts), need / GIB, free / GIB)
        counts = [c for c in counts if c != max(counts)]
    return counts, skipped


def memory_report(engine: BatchEngine, device: torch.device) -> dict[str, Any]:
    """The engine's memory by component: predicted from shapes and summed over its tensors (GiB)."""
    kernels = engine.fused is not None and engine.fused.kernels is not None
    dtype_bytes = engine.model.dtype.itemsize
    predicted = engine_memory(engine.model.config, engine.options, dtype_bytes=dtype_bytes, kernels=kernels)
    report: dict[str, Any] = {
        "predicted_gib": {k: v / GIB for k, v in predicted.items()},
        "tensors_gib": {k: v / GIB for k, v in engine_tensor_bytes(engine).items()},
        "activations_estimate_gib": {
            k: v / GIB for k, v in activation_estimate(engine.model.config, engine.options).items()
        },
    }
    if device.type == "cuda":
        report["allocated_after_capture_gib"] = torch.cuda.memory_allocated(device) / GIB
        report["reserved_after_capture_gib"] = torch.cuda.memory_reserved(device) / GIB
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--tiny", action="store_true", help="tiny fixture checkpoint (CPU smoke test)")
    p.add_argument("--preset", default="2b", choices=["2b", "1b"])
    p.add_argument("--device", default=None)
    p.add_argument("--calls", default="1,8,32,64,128,192,256,384")
    p.add_argument("--paged-kv", action="store_true", help="paged KV cache (EngineOptions.paged_kv)")
    p.add_argument(
        "--kv-pool-steps",
        type=int,
        default=None,
        help="paged KV pool: average cache steps per call (EngineOptions.kv_pool_steps; default the context)",
    )
    p.add_argument("--kv-block-size", type=int, default=16, help="paged KV block size in steps")
    p.add_argument(
        "--paged-gather",
        action="store_true",
        help="paged KV attention on a gathered copy of the blocks, not the in-place kernel "
        "(EngineOptions.paged_attention_kernel=False; the kernel is the CUDA default)",
    )
    p.add_argument(
        "--max-context-steps",
        type=int,
        default=None,
        help="cache slots per call (default: the config's 1500); smaller only to fit more calls",
    )
    p.add_argument("--no-graphs", action="store_true")
    p.add_argument(
        "--load-only",
        action="store_true",
        help="only the concurrency section (skips CFG off, 1 call and the warm-context TTFA)",
    )
    p.add_argument("--no-lane", action="store_true", help="lead-in in line (no lane steps): the old policy")
    p.add_argument("--no-overlap", action="store_true", help="Mimi decode in line, not on a second stream")
    p.add_argument("--no-kernels", action="store_true", help="depformer on the compiled torch functions")
    p.add_argument(
        "--pdl",
        action="store_true",
        help="insist on programmatic dependent launch (default: on where it can run)",
    )
    p.add_argument(
        "--no-pdl", action="store_true", help="Triton kernels without programmatic dependent launch"
    )
    p.add_argument(
        "--kernel-max-calls",
        type=int,
        default=None,
        help="buckets of more calls run the compiled torch functions "
        "(EngineOptions.kernel_max_calls; default: the engine's; 0: kernels at every size)",
    )
    p.add_argument(
        "--no-first-chunk-first",
        action="store_true",
        help="lane steps up to the rate budget even while a call waits for its first chunk",
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args.device = args.device or ("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    if args.tiny:
        torch.set_num_threads(1)
        args.calls = "1,2,4" if args.calls == "1,8,32,64,128,192,256,384" else args.calls
    device = torch.device(args.device)
    counts = [int(c) for c in args.calls.split(",")]
    steps = 40 if args.tiny else 100
    context_s, turns, caller_s = (4.0, 3, 1.0) if args.tiny else (30.0, 20, 2.0)
    opts = SpeakOptions()  # production defaults: text T=0.6/50, audio T=0.8/50, CFG 2.0
    t_build = time.perf_counter()
    model, ids, encoder, mimi, what = build(args)
    result: dict[str, Any] = {
        "model": what,
        "device": (
            torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
        ),
        "torch": torch.__version__,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": "python " + " ".join(sys.argv),
        "sampling": {"text": [0.6, 50], "audio": [0.8, 50], "cfg_scale": 2.0},
    }
    logger.info("model ready in %.1f s", time.perf_counter() - t_build)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    common = {
        "cuda_graphs": not args.no_graphs,
        "seed": 0,
        "lead_in_lane": not args.no_lane,
        "overlap_mimi": not args.no_overlap,
        "first_chunk_first": not args.no_first_chunk_first,
        "kernels": False if args.no_kernels else None,
        "pdl": False if args.no_pdl else (True if args.pdl else None),
        "max_context_steps": args.max_context_steps,
        "paged_kv": args.paged_kv,
        "kv_pool_steps": args.kv_pool_steps,
        "kv_block_size": args.kv_block_size,
        "paged_attention_kernel": False if args.paged_gather else None,
    }
    if args.kernel_max_calls is not None:
        common["kernel_max_calls"] = args.kernel_max_calls or None
    if args.tiny:  # the fixture's context is 160 steps: a 4 s voice and short replies must fit in it
        common.update(reply_reserve_steps=40, max_reply_steps=100)
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:  # after every section, so a run cut short still leaves its numbers
        args.out.write_text(json.dumps(result, indent=2) + "\n")

    if not args.load_only:  # one call, CFG off: its own engine with one row per call
        t0 = time.perf_counter()
        solo = BatchEngine(model, ids, encoder, mimi, EngineOptions(capacity=1, cfg=False, **common))
        result["capture_s_cfg_off"] = time.perf_counter() - t0
        result["one_call_cfg_off"] = frames_per_second(solo, 1, steps, SpeakOptions(cfg_scale=1.0))
        logger.info("1 call, CFG off: %s", result["one_call_cfg_off"])
        save()
        del solo

    counts, result["skipped"] = fitting(model, device, counts, common)
    t0 = time.perf_counter()
    engine = BatchEngine(model, ids, encoder, mimi, EngineOptions(capacity=max(counts), cfg=True, **common))
    result["memory"] = memory_report(engine, device)
    result["capture_s"] = time.perf_counter() - t0
    result["buckets"] = engine.buckets
    result["graphs_captured"] = sorted(engine.graphs.steps)
    result["graph_errors"] = engine.graph_errors
    dep = engine.fused.kernels if engine.fused is not None else None
    result["path"] = {
        "fused": engine.fused is not None,
        "kernels": dep is not None,
        "pdl": bool(dep and dep.pdl),
        "max_context_steps": engine.max_steps,
        "kernel_max_calls": engine.options.kernel_max_calls,
        "buckets": engine.buckets,
        "paged_kv": engine.pool is not None,
        "paged_attention_kernel": engine.pool is not None and engine.pool.cache.in_place,
        "kv_pool_steps": engine.options.kv_pool_steps,
        "kv_buckets": engine.kv_buckets,
    }
    if not args.load_only:
        result["one_call_cfg_on"] = frames_per_second(engine, 1, steps, opts)
        logger.info("1 call: %s", result["one_call_cfg_on"])
        save()
        result["ttfa_warm_context"] = ttfa_warm(engine, opts, context_s, turns, caller_s)
        warm = result["ttfa_warm_context"]
        logger.info(
            "TTFA p50 %.1f p95 %.1f ms, ingest %.1f ms/s",
            warm["ttfa_p50_ms"],
            warm["ttfa_p95_ms"],
            warm["ingest_ms_per_s_median"],
        )
        save()
    if device.type == "cuda":
        result["gpu_memory_after_capture_gib"] = torch.cuda.memory_allocated(device) / 2**30
    result["concurrency"] = []
    for n in counts:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        row = concurrency(engine, n, steps + 2 * n // 8, opts)
        if device.type == "cuda":
            row["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
            row["reserved_gpu_memory_gib"] = torch.cuda.memory_reserved(device) / 2**30
        # Issue 23's bar: every call at real time (12.5 frames/s) and p95 first audio <= 200 ms.
        p95 = row["ttfa_p95_ms"]
        row["real_time"] = row["frames_per_s_per_call"] >= 12.5
        row["holds"] = row["real_time"] and p95 is not None and p95 <= 200.0
        logger.info("%d calls: %s", n, row)
        result["concurrency"].append(row)
        save()
    if device.type == "cuda":
        result["peak_gpu_memory_gib"] = max(
            [r["peak_gpu_memory_gib"] for r in result["concurrency"]]
            + [result["gpu_memory_after_capture_gib"]]
        )
        result["kv_cache_gib"] = (
            sum(t.numel() * t.element_size() for t in (engine.buf.cache.keys, engine.buf.cache.values))
            / 2**30
        )
    save()

    print(f"{what} on {result['device']}")
    mem = result["memory"]["predicted_gib"]
    print("memory (GiB, predicted): " + ", ".join(f"{k} {v:.2f}" for k, v in mem.items()))
    for skip in result["skipped"]:
        print(f"{skip['calls']} calls skipped: predicted {skip['predicted_gib']:.1f} GiB")
    if not args.load_only:
        one, off, w = result["one_call_cfg_on"], result["one_call_cfg_off"], result["ttfa_warm_context"]
        for label, row in (("CFG on ", one), ("CFG off", off)):
            ms, fps = row["ms_per_frame"], row["frames_per_s_per_call"]
            print(f"1 call {label}: {ms:.2f} ms/frame, {fps:.1f} frames/s")
        print(
            f"TTFA warm: p50 {w['ttfa_p50_ms']:.1f} ms, p95 {w['ttfa_p95_ms']:.1f} ms; "
            f"ingest {w['ingest_ms_per_s_median']:.1f} ms per s of audio"
        )
    for row in result["concurrency"]:
        print(
            f"{row['calls']:4d} calls: {row['frames_per_s_per_call']:.1f} frames/s per call, "
            f"TTFA p50 {row['ttfa_p50_ms']} p95 {row['ttfa_p95_ms']} ms, {row['lane_steps']} lane steps, "
            f"holds {row.get('holds')}, peak {row.get('peak_gpu_memory_gib', 0):.1f} GiB"
        )
    if "peak_gpu_memory_gib" in result:
        print(f"peak GPU memory {result['peak_gpu_memory_gib']:.1f} GiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
