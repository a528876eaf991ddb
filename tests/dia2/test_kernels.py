"""dia2/kernels.py: each Triton kernel against the torch math it replaces, and the depformer on the
kernels against the compiled-path functions of dia2/fused.py (token-exact in float32).

Without CUDA the kernels run in Triton's CPU interpreter (``TRITON_INTERPRET=1``, set below before
dia2.kernels is imported): the same kernel source, executed with numpy. On CUDA the same tests run
compiled, and tests/dia2/test_engine_gpu.py checks the engine's default (kernel) path against the
parity loop.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dia2 import kernels
from dia2.engine import BatchEngine, EngineOptions, SpeakOptions
from dia2.frame import RING
from dia2.fused import choose_token, code_update_fn
from dia2.launch_count import count_launches
from dia2.model import apply_rope
from dia2.reference import ReferenceFixture
from dia2.runtime import Dia2
from dia2.sampling import SamplingParams

from .kernel_kit import DEV, TOL, rel


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [2, 6, 40])
def test_linear_prologue_and_epilogues_match_torch(dtype: torch.dtype, rows: int) -> None:
    gen = torch.Generator().manual_seed(rows)
    k, n = 48, 40  # not multiples of the tiles: the masks matter
    x = torch.randn(rows, k, generator=gen).to(DEV, dtype)
    w = (torch.randn(2 * n, k, generator=gen) / 7).to(DEV, dtype)
    nw = (torch.rand(k, generator=gen) + 0.5).to(DEV, dtype)
    res = torch.randn(rows, 2 * n, generator=gen).to(DEV, dtype)

    out = kernels.linear(x, w, torch.empty(rows, 2 * n, dtype=dtype, device=DEV), norm=nw, eps=1e-6)
    assert rel(out, F.linear(F.rms_norm(x, (k,), nw, 1e-6), w)) < TOL[dtype]
    inplace = res.clone()
    kernels.linear(x, w, inplace, residual=inplace)
    assert rel(inplace, res + F.linear(x, w)) < TOL[dtype]
    gated = kernels.linear(x, w, torch.empty(rows, n, dtype=dtype, device=DEV), swiglu=True)
    proj = F.linear(x, w).unflatten(-1, (2, n))
    assert rel(gated, F.silu(proj[..., 0, :]) * proj[..., 1, :]) < TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_attention_stage_matches_sdpa_with_cache(dtype: torch.dtype) -> None:
    """Stage by stage, the kernel's output equals QK-norm + RoPE + SDPA over the slots so far, and the
    cache holds each stage's rotated key and value."""
    gen = torch.Generator().manual_seed(3)
    rows, heads, hd, depth, slots, eps = 4, 2, 8, 5, 8, 1e-5
    qn = (torch.rand(hd, generator=gen) + 0.5).to(DEV, dtype)
    kn = (torch.rand(hd, generator=gen) + 0.5).to(DEV, dtype)
    pos = torch.arange(depth).float()[:, None] / (10.0 ** (torch.arange(hd // 2).float() / hd))[None, :]
    cos = torch.cat([pos.cos(), pos.cos()], -1).to(DEV, dtype)
    sin = torch.cat([pos.sin(), pos.sin()], -1).to(DEV, dtype)
    keys = torch.zeros(rows, heads, slots, hd, dtype=dtype, device=DEV)
    values = torch.zeros_like(keys)
    ref_k, ref_v = [], []
    for s in range(depth):
        qkv = torch.randn(rows, 3 * heads * hd, generator=gen).to(DEV, dtype)
        out = kernels.attention_stage(
            qkv,
            keys,
            values,
            qn,
            kn,
            cos,
            sin,
            torch.empty(rows, heads * hd, dtype=dtype, device=DEV),
            s,
            eps,
        )
        q, k, v = qkv.view(rows, 1, 3, heads, hd).unbind(2)
        q = apply_rope(F.rms_norm(q, (hd,), qn, eps).transpose(1, 2), cos[s], sin[s])
        k = apply_rope(F.rms_norm(k, (hd,), kn, eps).transpose(1, 2), cos[s], sin[s])
        ref_k.append(k)
        ref_v.append(v.transpose(1, 2))
        want = F.scaled_dot_product_attention(q, torch.cat(ref_k, 2), torch.cat(ref_v, 2), scale=1.0)
        assert rel(out, want.transpose(1, 2).reshape(rows, -1)) < TOL[dtype], s
        assert rel(keys[:, :, : s + 1], torch.cat(ref_k, 2)) < TOL[dtype]
        assert torch.equal(values[:, :, s], v.transpose(1, 2)[:, :, 0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_qk_rope_cache_matches_the_main_layer(dtype: torch.dtype) -> None:
    """Main decoder (GQA): normed, rotated queries out; each row's rotated key and its value land in
    the cache at that row's slot, nothing else in the cache changes."""
    gen = torch.Generator().manual_seed(5)
    rows, qh, kvh, hd, slots, eps = 3, 4, 2, 8, 16, 1e-5
    qkv = torch.randn(rows, (qh + 2 * kvh) * hd, generator=gen).to(DEV, dtype)
    qn = (torch.rand(hd, generator=gen) + 0.5).to(DEV, dtype)
    kn = (torch.rand(hd, generator=gen) + 0.5).to(DEV, dtype)
    pos = torch.arange(40).float()[:, None] / (10.0 ** (torch.arange(hd // 2).float() / hd))[None, :]
    cos, sin = torch.cat([pos.cos()] * 2, -1).to(DEV), torch.cat([pos.sin()] * 2, -1).to(DEV)
    positions = torch.tensor([0, 7, 39], device=DEV)
    index = torch.tensor([3, 0, 15], device=DEV)
    keys = torch.randn(rows, kvh, slots, hd, generator=gen).to(DEV, dtype)
    values = torch.randn(rows, kvh, slots, hd, generator=gen).to(DEV, dtype)
    want_k, want_v = keys.clone(), values.clone()
    q = kernels.qk_rope_cache(
        qkv,
        torch.empty(rows, qh, hd, dtype=dtype, device=DEV),
        keys,
        values,
        qn,
        kn,
        cos,
        sin,
        positions,
        index,
        eps,
    )
    c, s_ = cos[positions].to(dtype)[:, None, :], sin[positions].to(dtype)[:, None, :]
    q_ref, k_ref, v_ref = qkv.split([qh * hd, kvh * hd, kvh * hd], dim=1)
    q_ref = apply_rope(F.rms_norm(q_ref.view(rows, qh, hd), (hd,), qn, eps), c, s_)
    k_ref = apply_rope(F.rms_norm(k_ref.view(rows, kvh, hd), (hd,), kn, eps), c, s_)
    for r in range(rows):
        want_k[r, :, index[r]] = k_ref[r]
        want_v[r, :, index[r]] = v_ref.view(rows, kvh, hd)[r]
    assert rel(q, q_ref) < TOL[dtype]
    assert rel(keys, want_k) < TOL[dtype]
    assert torch.equal(values, want_v)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_embed_sum_equals_the_chain_of_adds(dtype: torch.dtype) -> None:
    """Bit-exact (on CUDA; float32 anywhere): the module adds one codebook embedding at a time, rounding
    after each add."""
    gen = torch.Generator().manual_seed(9)
    rows, books, vocab, dim = 3, 5, 11, 40
    tables = torch.randn(books * vocab, dim, generator=gen).to(DEV, dtype)
    tokens = torch.randint(0, vocab, (rows, 2 + books), generator=gen).to(DEV)
    x = torch.randn(rows, dim, generator=gen).to(DEV, dtype)
    want = x.clone()
    for k in range(books):
        want = want + tables[k * vocab + tokens[:, 2 + k]]
    kernels.embed_sum(x, tokens, tables, 2, books)
    if dtype == torch.bfloat16 and DEV.type == "cpu":
        # The interpreter's numpy emulation of bfloat16 does not round to nearest-even like the GPU.
        assert rel(x, want) < TOL[dtype]
    else:
        assert torch.equal(x, want)


@pytest.mark.parametrize("scale", [1.0, 2.0, 0.3])
@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_sample_stage_matches_head_sample_and_ring_write(scale: float, temperature: float) -> None:
    """Same logits and noise → the same token as dia2/fused.py's head_sample, the same ring write as
    code_update (including known frames, frames before 0 and inactive calls), and the next stage's input."""
    gen = torch.Generator().manual_seed(int(10 * scale + temperature * 3))
    n, br, vocab, limit, top, depth = 6, 2, 2050, 2048, 64, 4
    logits = (3 * torch.randn(n * br, vocab, generator=gen)).to(DEV)
    noise = torch.empty(n, limit).exponential_(generator=gen).to(DEV)
    cfg = torch.full((n,), scale, device=DEV)
    temp = torch.full((n,), temperature, device=DEV)
    top_k = torch.tensor([50, 0, 1, 64, 100, 7], device=DEV)
    ring = torch.randint(0, limit, (n, depth, RING), generator=gen).to(DEV)
    step = torch.tensor([30, 30, 5, 40, 18, 60], device=DEV)
    known = torch.tensor([0, 100, 0, 30, 0, 61], device=DEV)
    active = torch.tensor([True, True, True, False, True, True], device=DEV)
    delay, book = 18, 2
    table = torch.randn(vocab, 8, generator=gen).to(DEV)
    din = torch.randn(n * br, 8, generator=gen).to(DEV)

    want_ring = ring.clone()
    token = choose_token(br, limit, 50, top)(logits, cfg, temp, top_k, noise)
    index, store, prev = code_update_fn(RING)(
        want_ring.view(n, -1),
        step,
        known,
        active,
        torch.tensor(delay, device=DEV),
        torch.tensor(book, device=DEV),
        token,
    )
    want_ring.view(n, -1).scatter_(1, index, store)
    assert bool((prev != token).any()) and bool((prev == token).any())  # both branches exercised

    code = torch.empty(n, dtype=torch.long, device=DEV)
    x = torch.empty(n * br, 8, device=DEV)
    kernels.sample_stage(
        logits,
        cfg,
        temp,
        top_k,
        noise,
        ring,
        step,
        known,
        active,
        code,
        codebook=book,
        delay=delay,
        branches=br,
        vocab_limit=limit,
        filter_k=50,
        top_k_cap=top,
        next_din=din,
        next_table=table,
        x=x,
    )
    assert torch.equal(code, prev)
    assert torch.equal(ring, want_ring)
    assert torch.equal(x, din + table[prev.repeat_interleave(br)])


@pytest.fixture(scope="module")
def here(runtime: Dia2, reference: ReferenceFixture) -> Dia2:
    """The fixture runtime on the device the kernels run on (CUDA when there is one)."""
    return runtime if DEV.type == "cpu" else reference.load_runtime("cuda", "float32")


def _engine(runtime: Dia2, kernels_on: bool, kernel_max_calls: int | None = None) -> BatchEngine:
    engine = BatchEngine(
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
            kernel_max_calls=kernel_max_calls,
        ),
    )
    assert (engine.fused is not None and engine.fused.kernels is not None) == kernels_on
    return engine


@pytest.mark.parametrize(
    "case",
    [
        "cfg",
        # Sampled runs are compared where both paths do the same float arithmetic (the interpreter runs the
        # kernels' ops in the torch path's order). On CUDA the compiled torch functions and the kernels sum
        # in different orders (~1e-6 apart), and a sampled draw may part at a near-tie of the top-k or CFG
        # boundary: there the sampler is checked on given logits (test_sample_stage_*) and the engine greedy.
        pytest.param(
            "sampled",
            marks=pytest.mark.skipif(
                DEV.type == "cuda", reason="bit-identical float arithmetic only in the interpreter"
            ),
        ),
    ],
)
def test_engine_on_kernels_writes_the_same_codes(here: Dia2, reference: ReferenceFixture, case: str) -> None:
    """Two engines in lock step, depformer on the kernels vs on the torch functions: after every step
    the rings of recent frames (every codebook the depformer wrote) are identical, for the fixture's
    CFG case (greedy) and for production sampling (same seed, so the same noise) over two calls. The
    interpreter is slow, so: through the lead-in (no depformer) and three full frames past it. The last
    step's launches are counted: one attention kernel per stage and layer, one sampler per stage."""
    opts = reference.options("cfg")
    script = reference.inputs["cases"]["cfg"]["script"]
    speak = SpeakOptions(opts.text, opts.audio, opts.cfg_scale)
    calls = 1
    if case == "sampled":
        speak = SpeakOptions(SamplingParams(0.6, 50), SamplingParams(0.8, 50), 2.0)
        calls = 2
    engines = [_engine(here, False), _engine(here, True)]
    for engine in engines:
        for _ in range(calls):
            engine.speak(engine.open_call(), script, lambda chunk: None, speak)
    depformer_steps = 0
    while depformer_steps < 3:
        assert engines[0].step()
        with count_launches(kernels) as launches:
            assert engines[1].step()
        torch_ring, kernel_ring = (e.buf.ring for e in engines)
        assert torch.equal(kernel_ring, torch_ring), engines[0].steps_run
        depformer_steps = engines[0].steps_run - engines[0].lead_steps
    assert engines[1].steps_run - engines[1].lead_steps == 3
    depth, layers = here.model.depformer.depth, len(here.model.depformer.layers)
    assert launches["kernels._attention_kernel"] == depth * layers
    assert launches["kernels._sample_kernel"] == depth


def test_kernel_max_calls_routes_larger_batches_to_the_torch_functions(
    here: Dia2, reference: ReferenceFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``EngineOptions.kernel_max_calls``: a batch of more calls runs the compiled torch functions (main
    step and depformer), a batch within it the kernels, and both write the same codes."""
    opts = reference.options("cfg")
    script = reference.inputs["cases"]["cfg"]["script"]
    speak = SpeakOptions(opts.text, opts.audio, opts.cfg_scale)
    engines = [_engine(here, True), _engine(here, True, kernel_max_calls=1)]
    runs = [0, 0]
    for i, engine in enumerate(engines):
        fused = engine.fused
        assert fused is not None and fused.kernels is not None and fused.main_kernels is not None
        real = fused.kernels.run

        def counted(*args: object, i: int = i, real: object = real) -> None:
            runs[i] += 1
            real(*args)  # type: ignore[operator]

        monkeypatch.setattr(fused.kernels, "run", counted)
        for _ in range(2):  # two calls: bucket 2 (4 decoder rows with CFG)
            engine.speak(engine.open_call(), script, lambda chunk: None, speak)
    assert engines[0].fused._kernel_rows(4) and not engines[1].fused._kernel_rows(4)  # type: ignore[union-attr]
    while engines[0].steps_run - engines[0].lead_steps < 3:
        for engine in engines:
            assert engine.step()
        assert torch.equal(engines[0].buf.ring, engines[1].buf.ring), engines[0].steps_run
    assert runs[0] == 3 and runs[1] == 0


def _layer_chain(
    x: torch.Tensor,
    w: dict[str, torch.Tensor],
    keys: torch.Tensor,
    values: torch.Tensor,
    scratch: dict[str, torch.Tensor],
    stages: int,
    pdl: bool,
) -> None:
    """The depformer's per-stage kernel sequence (projection, attention, projection + residual, gated
    MLP, projection + residual), each kernel reading what the one before wrote."""
    for s in range(stages):
        kernels.linear(x, w["qkv"], scratch["qkv"], norm=w["norm"], pdl=pdl)
        kernels.attention_stage(
            scratch["qkv"],
            keys,
            values,
            w["qn"],
            w["kn"],
            w["cos"],
            w["sin"],
            scratch["attn"],
            s,
            1e-6,
            pdl=pdl,
        )
        kernels.linear(scratch["attn"], w["o"], x, residual=x, pdl=pdl)
        kernels.linear(x, w["wi"], scratch["hid"], norm=w["norm"], swiglu=True, pdl=pdl)
        kernels.linear(scratch["hid"], w["wo"], x, residual=x, pdl=pdl)


@pytest.mark.skipif(
    DEV.type != "cuda" or kernels.pdl_supported(DEV) is not None,
    reason="programmatic dependent launch needs a Hopper GPU",
)
def test_pdl_launches_equal_plain_launches_eager_and_in_a_graph() -> None:
    """Under PDL each kernel starts (and prefetches its weights) while the previous one finishes and
    waits for its writes before reading: a chain of dependent kernels at the depformer's sizes gives
    bit-identical results to plain launches, eagerly and replayed from a captured CUDA graph."""
    gen = torch.Generator().manual_seed(11)
    rows, dim, heads, hd, hidden, stages = 2, 1024, 8, 128, 3072, 6

    def rnd(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=gen) * scale).to(DEV, torch.bfloat16)

    pos = torch.arange(8).float()[:, None] / (10.0 ** (torch.arange(hd // 2).float() / hd))[None, :]
    w = {
        "qkv": rnd(3 * dim, dim, scale=dim**-0.5),
        "o": rnd(dim, dim, scale=dim**-0.5),
        "wi": rnd(2 * hidden, dim, scale=dim**-0.5),
        "wo": rnd(dim, hidden, scale=hidden**-0.5),
        "norm": rnd(dim).abs() + 0.5,
        "qn": rnd(hd).abs() + 0.5,
        "kn": rnd(hd).abs() + 0.5,
        "cos": torch.cat([pos.cos(), pos.cos()], -1).to(DEV, torch.bfloat16),
        "sin": torch.cat([pos.sin(), pos.sin()], -1).to(DEV, torch.bfloat16),
    }
    x0 = rnd(rows, dim)

    def fresh() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        cache = torch.zeros(rows, heads, 8, hd, dtype=torch.bfloat16, device=DEV)
        scratch = {
            "qkv": torch.zeros(rows, 3 * dim, dtype=torch.bfloat16, device=DEV),
            "attn": torch.zeros(rows, dim, dtype=torch.bfloat16, device=DEV),
            "hid": torch.zeros(rows, hidden, dtype=torch.bfloat16, device=DEV),
        }
        return x0.clone(), cache, cache.clone(), scratch

    x, keys, values, scratch = fresh()
    _layer_chain(x, w, keys, values, scratch, stages, pdl=False)
    want = (x.clone(), keys.clone(), values.clone())
    x, keys, values, scratch = fresh()
    _layer_chain(x, w, keys, values, scratch, stages, pdl=True)
    torch.cuda.synchronize()
    assert all(torch.equal(a, b) for a, b in zip((x, keys, values), want, strict=True))

    x, keys, values, scratch = fresh()
    _layer_chain(x, w, keys, values, scratch, stages, pdl=True)  # compiled already; warm the launcher
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.cuda.graph(graph, stream=stream):
        _layer_chain(x, w, keys, values, scratch, stages, pdl=True)
    torch.cuda.current_stream().wait_stream(stream)
    for _ in range(3):
        x.copy_(x0)
        keys.zero_()
        values.zero_()
        graph.replay()
        torch.cuda.synchronize()
        assert all(torch.equal(a, b) for a, b in zip((x, keys, values), want, strict=True))


def test_pdl_option_runs_where_supported_and_names_why_not(here: Dia2) -> None:
    """``EngineOptions.pdl=True``: where the kernels cannot launch with PDL (the CPU interpreter, older
    GPUs) building the engine fails and says why; where they can, they do. The default (``None``) is
    on exactly where it can run, and builds everywhere."""
    opts = EngineOptions(
        capacity=1,
        max_reply_steps=160,
        reply_reserve_steps=40,
        fused=True,
        kernels=True,
        pdl=True,
        cuda_graphs=False,
        lead_in_lane=False,
    )
    why = kernels.pdl_supported(DEV)
    if why is None:
        engine = BatchEngine(here.model, here.ids, here.tokenizer, here.mimi, opts)
        assert engine.fused is not None and engine.fused.kernels is not None and engine.fused.kernels.pdl
    else:
        with pytest.raises(ValueError, match="pdl=True") as err:
            BatchEngine(here.model, here.ids, here.tokenizer, here.mimi, opts)
        assert why in str(err.value)
    plain = BatchEngine(
        here.model, here.ids, here.tokenizer, here.mimi, EngineOptions(**{**opts.__dict__, "pdl": False})
    )
    assert plain.fused is not None and plain.fused.kernels is not None and not plain.fused.kernels.pdl
    default = BatchEngine(
        here.model, here.ids, here.tokenizer, here.mimi, EngineOptions(**{**opts.__dict__, "pdl": None})
    )
    assert default.fused is not None and default.fused.kernels is not None
    assert default.fused.kernels.pdl == (why is None)
