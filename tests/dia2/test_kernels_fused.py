"""dia2/kernels_fused.py: the fused stage kernels against the kernels they replace (dia2/kernels.py), and
the engine on them against the engine on the 22-launch stages and on the torch functions.

Without CUDA everything runs in Triton's CPU interpreter (``TRITON_INTERPRET=1``, set here and in
conftest.py before Triton is imported). The split q/k/v projection sums its K chunks in another order than
one projection does, so its outputs are compared within the kernel tests' tolerance; the head + sampler
kernel runs the same code as ``linear`` + ``sample_stage`` and is compared exactly.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from dia2 import kernels, kernels_fused
from dia2.engine import BatchEngine, EngineOptions, SpeakOptions
from dia2.frame import RING
from dia2.launch_count import count_launches
from dia2.reference import ReferenceFixture
from dia2.runtime import Dia2
from dia2.sampling import SamplingParams

from .kernel_kit import DEV, TOL, rel


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("rows", "ksplit"), [(2, 1), (2, 2), (6, 3), (80, 4)])
def test_qkv_attention_equals_projection_then_attention(dtype: torch.dtype, rows: int, ksplit: int) -> None:
    """Stage after stage, one fused launch gives the attention output and cache slots of
    ``linear(norm)`` + ``attention_stage``; the tickets are zero again after every launch. K = 40 is
    not a multiple of the chunks (masks); 80 rows are two row tiles (tickets per tile)."""
    gen = torch.Generator().manual_seed(rows * 10 + ksplit)
    heads, hd, dim, depth, slots, eps = 2, 8, 40, 5, 8, 1e-6

    def rnd(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=gen) * scale).to(DEV, dtype)

    w = rnd(3 * heads * hd, dim, scale=dim**-0.5)
    norm, qn, kn = rnd(dim).abs() + 0.5, rnd(hd).abs() + 0.5, rnd(hd).abs() + 0.5
    pos = torch.arange(depth).float()[:, None] / (10.0 ** (torch.arange(hd // 2).float() / hd))[None, :]
    cos = torch.cat([pos.cos(), pos.cos()], -1).to(DEV, dtype)
    sin = torch.cat([pos.sin(), pos.sin()], -1).to(DEV, dtype)
    cache = [torch.zeros(rows, heads, slots, hd, dtype=dtype, device=DEV) for _ in range(4)]
    keys, values, keys_f, values_f = cache
    partials = torch.zeros(ksplit, rows, 3 * heads * hd, dtype=torch.float32, device=DEV)
    tickets = torch.zeros(2 * heads, dtype=torch.int32, device=DEV)
    qkv = torch.empty(rows, 3 * heads * hd, dtype=dtype, device=DEV)
    for s in range(depth):
        x = rnd(rows, dim)
        want = torch.empty(rows, heads * hd, dtype=dtype, device=DEV)
        kernels.linear(x, w, qkv, norm=norm, eps=eps)
        kernels.attention_stage(qkv, keys, values, qn, kn, cos, sin, want, s, eps)
        got = torch.full_like(want, float("nan"))
        kernels_fused.qkv_attention(
            x, w, norm, keys_f, values_f, qn, kn, cos, sin, got, s, eps, partials, tickets, ksplit=ksplit
        )
        assert rel(got, want) < TOL[dtype], s
        assert rel(keys_f, keys) < TOL[dtype] and rel(values_f, values) < TOL[dtype], s
        assert int(tickets.abs().sum()) == 0
    splits = kernels_fused.split_plan(dim, ksplit)[2]
    assert splits == min(ksplit, 3)  # 40 inputs: at most 3 chunks of whole 16-wide steps
    assert (partials[:splits, :rows] != 0).all()  # every split wrote its partial sums


def _sampler_inputs(n: int, br: int, scale: float, temperature: float) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(int(10 * scale + temperature * 3) + n)
    vocab, limit, depth, dim = 2050, 2048, 4, 24
    return {
        "x": torch.randn(n * br, dim, generator=gen).to(DEV),
        "head": (torch.randn(vocab, dim, generator=gen) * 0.6).to(DEV),
        "norm": (torch.rand(dim, generator=gen) + 0.5).to(DEV),
        "noise": torch.empty(n, limit).exponential_(generator=gen).to(DEV),
        "cfg": torch.full((n,), scale, device=DEV),
        "temp": torch.full((n,), temperature, device=DEV),
        "top_k": torch.tensor([50, 0, 1, 64, 100, 7] * n, device=DEV)[:n],
        "ring": torch.randint(0, limit, (n, depth, RING), generator=gen).to(DEV),
        "step": torch.tensor([30, 30, 5, 40, 18, 60] * n, device=DEV)[:n],
        "known": torch.tensor([0, 100, 0, 30, 0, 61] * n, device=DEV)[:n],
        "active": torch.tensor([True, True, True, False, True, True] * n, device=DEV)[:n],
        "table": torch.randn(vocab, dim, generator=gen).to(DEV),
        "din": torch.randn(n * br, dim, generator=gen).to(DEV),
    }


@pytest.mark.parametrize("n", [1, 6])
@pytest.mark.parametrize(("scale", "temperature"), [(2.0, 0.8), (1.0, 0.0), (0.3, 0.8)])
def test_head_sample_equals_head_projection_then_sampler(n: int, scale: float, temperature: float) -> None:
    """One launch, the same logits, token, ring write, code and next-stage input as ``linear`` (final
    norm + head) + ``sample_stage``, including writing the next input over the head's own input.
    The head runs in 9 column tiles there, so the sampling waits for the last of them."""
    br, limit, top = 2, 2048, 64
    t = _sampler_inputs(n, br, scale, temperature)
    outs = []
    for fused in (False, True):
        x, ring = t["x"].clone(), t["ring"].clone()
        logits = torch.full((n * br, 2050), float("nan"), device=DEV)
        code = torch.full((n,), -1, dtype=torch.long, device=DEV)
        calls = (t["cfg"], t["temp"], t["top_k"], t["noise"], ring, t["step"], t["known"], t["active"], code)
        opts: dict[str, Any] = {
            "codebook": 2,
            "delay": 18,
            "branches": br,
            "vocab_limit": limit,
            "filter_k": 50,
            "top_k_cap": top,
            "next_din": t["din"],
            "next_table": t["table"],
        }
        if fused:
            tickets = torch.zeros(1, dtype=torch.int32, device=DEV)
            blocks = kernels.LinearBlocks(16, 256, 32)  # 9 column tiles: only the last may sample
            head = (x, t["head"], t["norm"], 1e-6, logits, tickets)
            kernels_fused.head_sample(*head, *calls, x_next=x, blocks=blocks, **opts)
            assert int(tickets.item()) == 0
        else:
            kernels.linear(x, t["head"], logits, norm=t["norm"], eps=1e-6)
            kernels.sample_stage(logits, *calls, x=x, **opts)
        outs.append((logits, ring, code, x))
    for want, got in zip(*outs, strict=True):
        assert torch.equal(got, want)
    assert bool((outs[1][2] >= 0).all()) and not torch.equal(outs[1][1], t["ring"])  # it did sample


@pytest.fixture(scope="module")
def here(runtime: Dia2, reference: ReferenceFixture) -> Dia2:
    return runtime if DEV.type == "cpu" else reference.load_runtime("cuda", "float32")


def _engine(runtime: Dia2, kernels_on: bool, fuse_calls: int = 0) -> BatchEngine:
    return BatchEngine(
        runtime.model,
        runtime.ids,
        runtime.tokenizer,
        runtime.mimi,
        EngineOptions(
            capacity=4,
            max_reply_steps=160,
            reply_reserve_steps=40,
            fused=True,
            kernels=kernels_on,
            seed=7,
            cuda_graphs=False,
            lead_in_lane=False,
            stage_fusion_max_calls=fuse_calls,
        ),
    )


@pytest.mark.parametrize(
    ("case", "ksplit"),
    [
        ("cfg", 1),
        ("cfg", 2),
        pytest.param(
            "sampled",
            2,
            marks=pytest.mark.skipif(
                DEV.type == "cuda", reason="bit-identical float arithmetic only in the interpreter"
            ),
        ),
    ],
)
def test_engine_on_fused_stages_writes_the_same_codes(
    here: Dia2, reference: ReferenceFixture, case: str, ksplit: int
) -> None:
    """Three engines in lock step: depformer on the torch functions, on the 22-launch kernels, on the
    fused stages: identical rings after every step (greedy CFG; production sampling over two calls), and
    the fused engine's depformer launches 17 kernels a stage against 22 (counted, one frame)."""
    opts = reference.options("cfg")
    script = reference.inputs["cases"]["cfg"]["script"]
    speak = SpeakOptions(opts.text, opts.audio, opts.cfg_scale)
    calls = 1
    if case == "sampled":
        speak = SpeakOptions(SamplingParams(0.6, 50), SamplingParams(0.8, 50), 2.0)
        calls = 2
    engines = [_engine(here, False), _engine(here, True), _engine(here, True, fuse_calls=calls)]
    fused = engines[2].fused
    assert fused is not None and fused.kernels is not None and fused.kernels.fuse is not None
    fused.kernels.fuse.set_ksplit(ksplit)
    for engine in engines:
        for _ in range(calls):
            engine.speak(engine.open_call(), script, lambda chunk: None, speak)
    launches: list[list[dict[str, int]]] = []
    while engines[0].steps_run - engines[0].lead_steps < 3:
        step: list[dict[str, int]] = []
        for engine in engines[1:]:
            with count_launches(kernels, kernels_fused) as counted:
                assert engine.step()
            step.append(dict(counted))
        launches.append(step)
        assert engines[0].step()
        rings = [e.buf.ring for e in engines]
        assert torch.equal(rings[1], rings[0]) and torch.equal(rings[2], rings[0]), engines[0].steps_run
    # The last step ran the depformer (past the lead-in): its launches per stage, by kernel.
    plain, fused_counts = launches[-1]
    depth, layers = here.model.depformer.depth, len(here.model.depformer.layers)
    assert plain["kernels._attention_kernel"] == depth * layers and plain["kernels._sample_kernel"] == depth
    assert "kernels._attention_kernel" not in fused_counts and "kernels._sample_kernel" not in fused_counts
    assert fused_counts["kernels_fused._qkv_attention_kernel"] == depth * layers
    assert fused_counts["kernels_fused._head_sample_kernel"] == depth
    # Projections: per stage 4 a layer + the head (plain) against 3 a layer (fused); the main step alike.
    assert plain["kernels._linear_kernel"] - fused_counts["kernels._linear_kernel"] == depth * (layers + 1)
    assert sum(plain.values()) - sum(fused_counts.values()) == depth * (layers + 1)  # Dia2-2B: 22 → 17
