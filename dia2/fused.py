"""The frame's math as plain functions over weight tensors, so that one compiled artifact serves every
main-decoder layer and every depformer stage.

Why: a Dia2-2B frame is latency-bound, not bandwidth-bound (docs/PERFORMANCE.md, "Per-phase
breakdown"): eager PyTorch issues ~50 small kernels per transformer layer (RMSNorm alone is several,
rotate-half RoPE another five per tensor) and ~35 per sampled codebook, about 9,000 per frame, and even
inside a CUDA graph each costs a few microseconds. Written as functions that take the weights as
*arguments*, the 28 main layers share one compiled function and the 31 depformer stages (4 layers
each, different weight groups) share another; Inductor fuses the element-wise chains into a handful of
Triton kernels, and the result is captured in the engine's frame graphs like the eager code.

Only pure functions are compiled. Everything that writes into a persistent buffer (the KV caches, the
ring of recent frames) stays eager, so no compiled function mutates its inputs (mutating a graph input
makes Inductor copy the whole buffer back). The math is the model's (``dia2/model.py``,
``dia2/sampling.py``, ``dia2/frame.py``), op for op; uncompiled (the CPU test) it gives the same tokens
as the modules, and compiled it differs only in float rounding order.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from .frame import RING, FrameBuffers, FrameConstants
from .model import DecoderStepOutput, Dia2Model, StepKVCache
from .paged_kv import PagedDecoderCache
from .sampling import race_rows

__all__ = [
    "DepformerKernels",
    "FusedFrame",
    "MainKernels",
    "choose_token",
    "code_update_fn",
    "kernels_supported",
]

logger = logging.getLogger(__name__)

_ACT: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "silu": F.silu,
    "swish": F.silu,
    "swiglu": F.silu,
    "gelu": F.gelu,
    "geglu": F.gelu,
    "relu": F.relu,
    "linear": lambda x: x,
}


def _attention_in(
    eps: float, heads: int, kv_heads: int, head_dim: int, fused_qkv: bool
) -> Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Pre-attention half of a layer: norm, q/k/v projections, QK-norm, RoPE → ``q, k, v [B, H, 1, Dh]``."""

    def attention_in(
        x: torch.Tensor, w: Sequence[torch.Tensor], cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b = x.shape[0]
        h = F.rms_norm(x, (x.shape[-1],), w[0], eps)
        if fused_qkv:  # depformer: one [q; k; v] matrix
            qkv = F.linear(h, w[1]).view(b, 1, 3, heads, head_dim)
            q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
            qn, kn = w[2], w[3]
        else:  # main decoder: separate matrices (GQA: fewer k/v heads)
            q = F.linear(h, w[1]).view(b, 1, heads, head_dim)
            k = F.linear(h, w[2]).view(b, 1, kv_heads, head_dim)
            v = F.linear(h, w[3]).view(b, 1, kv_heads, head_dim)
            qn, kn = w[4], w[5]
        q = F.rms_norm(q, (head_dim,), qn, eps).transpose(1, 2)
        k = F.rms_norm(k, (head_dim,), kn, eps).transpose(1, 2)
        v = v.transpose(1, 2)
        if fused_qkv:  # q and k of one shape: one RoPE over both (4 element-wise ops, not 8)
            qk = rope_signed(torch.stack((q, k)), cos, sin)
            return qk[0], qk[1], v
        return rope_signed(q, cos, sin), rope_signed(k, cos, sin), v

    return attention_in


def signed_sin(sin: torch.Tensor) -> torch.Tensor:
    """``sin`` with its first half negated: the table :func:`rope_signed` takes."""
    half = sin.shape[-1] // 2
    return torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)


def rope_signed(x: torch.Tensor, cos: torch.Tensor, sin_signed: torch.Tensor) -> torch.Tensor:
    """``model.apply_rope`` bit for bit in 4 element-wise ops instead of 5: ``cat(-x2, x1) * sin`` equals
    ``roll(x, half) * signed_sin(sin)`` exactly (a negation moves between the factors of a product
    without rounding), so the negation and the concatenation become one roll."""
    return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * sin_signed


def _attention_out(
    eps: float, heads: int, head_dim: int, hidden: int, act_gate: str, act_up: str
) -> Callable[..., torch.Tensor]:
    """Post-attention half: output projection, residual, norm, gated MLP, residual."""
    gate_fn, up_fn = _ACT[act_gate], _ACT[act_up]

    def attention_out(
        x: torch.Tensor,
        attn: torch.Tensor,
        wo_attn: torch.Tensor,
        post: torch.Tensor,
        wi: torch.Tensor,
        wo: torch.Tensor,
    ) -> torch.Tensor:
        b = x.shape[0]
        x = x + F.linear(attn.transpose(1, 2).reshape(b, heads * head_dim), wo_attn)
        h = F.rms_norm(x, (x.shape[-1],), post, eps)
        proj = F.linear(h, wi).unflatten(-1, (2, hidden))
        return x + F.linear(gate_fn(proj[..., 0, :]) * up_fn(proj[..., 1, :]), wo)

    return attention_out


def _stage_in(branches: int) -> Callable[..., torch.Tensor]:
    def stage_in(
        din: torch.Tensor,
        prev: torch.Tensor,
        table: torch.Tensor,
        extra: torch.Tensor,
    ) -> torch.Tensor:
        # Same association as the module: depformer_in(hidden) + (token embedding [+ text embedding]);
        # ``din`` = depformer_in(hidden) of the stage's weight group, projected once per frame per group.
        return din + (F.embedding(prev.repeat_interleave(branches), table) + extra)

    return stage_in


def choose_token(
    branches: int, vocab_limit: int, filter_k: int, max_top_k: int
) -> Callable[..., torch.Tensor]:
    """CFG candidate filter and top-k sampling over float32 ``logits [N*branches, >= vocab_limit]``:
    ``sampling.cfg_filter_rows`` and ``sampling.race_rows`` with the exponential noise ``[N, vocab_limit]``
    passed in (drawn eagerly once per frame, so compiled code holds no RNG state). Shared with the
    kernels' tests (dia2/kernels.py implements the same rule)."""

    def choose(
        logits: torch.Tensor,
        scale: torch.Tensor,
        temperature: torch.Tensor,
        top_k: torch.Tensor,
        noise: torch.Tensor,
    ) -> torch.Tensor:
        logits = logits[:, :vocab_limit].reshape(-1, branches, vocab_limit)
        cond = logits[:, 0]
        if branches > 1 and filter_k > 0:
            guided = torch.lerp(logits[:, 1], cond, scale.view(-1, 1).float())
            k = min(filter_k, vocab_limit)
            threshold = torch.topk(guided, k=k, dim=-1, sorted=True).values[..., -1:]  # k-th largest
            filtered = torch.where(guided >= threshold, cond, torch.full_like(cond, float("-inf")))
            cond = torch.where((scale != 1.0).view(-1, 1), filtered, cond)
        return race_rows(cond, temperature, top_k, max_top_k, noise)

    return choose


def _head_sample(
    eps: float, branches: int, vocab_limit: int, filter_k: int, max_top_k: int
) -> Callable[..., torch.Tensor]:
    """Final norm, codebook head, then :func:`choose_token`, in one function."""
    choose = choose_token(branches, vocab_limit, filter_k, max_top_k)

    def head_sample(
        x: torch.Tensor,
        norm: torch.Tensor,
        head: torch.Tensor,
        scale: torch.Tensor,
        temperature: torch.Tensor,
        top_k: torch.Tensor,
        noise: torch.Tensor,
    ) -> torch.Tensor:
        logits = F.linear(F.rms_norm(x, (x.shape[-1],), norm, eps), head).float()
        return choose(logits, scale, temperature, top_k, noise)

    return head_sample


def code_update_fn(ring_len: int) -> Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``frame._write_code`` without the store: returns (flat ring index, value to store, token the
    frame really has). The caller scatters eagerly (no compiled mutation)."""

    def code_update(
        ring: torch.Tensor,
        step: torch.Tensor,
        known: torch.Tensor,
        active: torch.Tensor,
        delay: torch.Tensor,
        k: torch.Tensor,
        token: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        frame = step + 1 - delay
        index = (k * ring_len + frame.remainder(ring_len)).view(-1, 1)
        old = ring.gather(1, index).squeeze(1)
        forced = (frame < known) & (frame >= 0)
        keep = forced | (frame < 0) | ~active
        return index, torch.where(keep, old, token).view(-1, 1), torch.where(forced, old, token)

    return code_update


class FusedFrame:
    """The main decoder step and the depformer stages of :mod:`dia2.frame` over flat weight lists.

    ``compile=True`` wraps the pure pieces in ``torch.compile`` (CUDA: Inductor/Triton); the first
    call of each shape compiles, so the engine runs its warm-up before capturing graphs. Calls that
    differ only in which weights they get (layer i, stage s) reuse one artifact.
    """

    def __init__(
        self,
        model: Dia2Model,
        consts: FrameConstants,
        branches: int,
        *,
        compile: bool,
        kernels: bool = False,
        capacity: int = 0,
        pdl: bool = False,
        kernel_max_rows: int | None = None,
    ) -> None:
        cfg = model.config
        eps = cfg.model.normalization_layer_epsilon
        dec, dep = cfg.model.decoder, cfg.model.depformer
        self.model, self.consts, self.branches = model, consts, branches
        main, depf = model.transformer, model.depformer
        self.main_w = [
            (
                (
                    lay.pre_norm.weight,
                    lay.attn.q_proj.weight,
                    lay.attn.k_proj.weight,
                    lay.attn.v_proj.weight,
                    lay.attn.q_norm.weight,
                    lay.attn.k_norm.weight,
                ),
                (lay.attn.o_proj.weight, lay.post_norm.weight, lay.mlp.wi.weight, lay.mlp.wo.weight),
            )
            for lay in main.layers
        ]
        self.dep_w: list[dict[str, Any]] = []
        for stage in range(depf.depth):
            g = depf.schedule[stage]
            layers = [
                (
                    (
                        lay.pre_norm.weight,
                        lay.self_attention.in_proj[g].weight,
                        lay.self_attention.q_norm.weight,
                        lay.self_attention.k_norm.weight,
                    ),
                    (
                        lay.self_attention.out_proj[g].weight,
                        lay.post_norm.weight,
                        lay.mlp.wi.weight,
                        lay.mlp.wo.weight,
                    ),
                )
                for lay in depf.layers
            ]
            self.dep_w.append(
                {
                    "table": depf.audio_embeds[stage].weight,
                    "head": depf.logits[stage].weight,
                    "layers": layers,
                }
            )
        dev = model.device
        depth = depf.depth
        # Per-stage constants as separate tensors (not views of one table): a compiled function then
        # sees identical metadata at every stage.
        self.stage_k = [torch.tensor(s + 1, device=dev) for s in range(depth)]
        self.stage_delay = [consts.delays[s + 1].clone() for s in range(depth)]
        self.stage_valid = [(torch.arange(depth, device=dev) <= s).view(1, 1, 1, -1) for s in range(depth)]
        # Per-stage RoPE rows in the model's dtype (and the signed sine of rope_signed), made once: the
        # module path slices and converts them in every stage of every frame. No RoPE: cos 1, sin 0.
        dtype = model.dtype
        if dep.apply_rope:
            self.dep_cos = [depf.rope_cos[s].to(dtype).clone() for s in range(depth)]
            self.dep_sin = [signed_sin(depf.rope_sin[s]).to(dtype) for s in range(depth)]
        else:
            self.dep_cos = [torch.ones((), dtype=dtype, device=dev) for _ in range(depth)]
            self.dep_sin = [torch.zeros((), dtype=dtype, device=dev) for _ in range(depth)]
        # The main decoder's signed sine table (float32, indexed by position like rope_sin).
        self.main_sin = signed_sin(main.rope_sin)
        # depformer_in(hidden) depends on the weight group only: one projection per group and frame
        # (Dia2-2B: 5, not 31); stage s reads the slot of its group.
        groups = list(dict.fromkeys(depf.schedule))
        self.group_w = [depf.depformer_in[g].weight for g in groups]
        self.group_of = [groups.index(g) for g in depf.schedule]
        self.text_embed = depf.text_embed
        self.depth = depth
        mlp_acts = cfg.model.mlp_activations
        fns: dict[str, Callable[..., Any]] = {
            "main_in": _attention_in(eps, dec.gqa_query_heads, dec.kv_heads, dec.gqa_head_dim, False),
            "main_out": _attention_out(eps, dec.gqa_query_heads, dec.gqa_head_dim, dec.n_hidden, *mlp_acts),
            "dep_in": _attention_in(eps, dep.gqa_query_heads, dep.gqa_query_heads, dep.gqa_head_dim, True),
            "dep_out": _attention_out(
                eps, dep.gqa_query_heads, dep.gqa_head_dim, dep.n_hidden, *dep.mlp_activations
            ),
            "stage_in": _stage_in(branches),
            "head_sample": _head_sample(
                eps, branches, depf.vocab_limit, consts.cfg_filter_k, consts.max_top_k
            ),
            "code_update": code_update_fn(RING),
        }
        if compile:
            import torch._dynamo as dynamo

            # Bucket sizes 1..capacity: after the second size Dynamo marks the batch dynamic, so each
            # function compiles about three times in all; the limit only needs to clear that.
            dynamo.config.cache_size_limit = max(dynamo.config.cache_size_limit, 64)
            fns = {name: torch.compile(fn, fullgraph=True) for name, fn in fns.items()}
        self.fn = fns
        self.kernels: DepformerKernels | None = None
        self.main_kernels: MainKernels | None = None
        # Batches of more decoder rows than this take the compiled torch functions (EngineOptions.
        # kernel_max_calls); decided per call from static shapes, so each captured bucket keeps one path.
        self.kernel_max_rows = kernel_max_rows
        if kernels:
            self.kernels = DepformerKernels(model, consts, branches, capacity, pdl=pdl)
            self.main_kernels = MainKernels(model, capacity * branches, pdl=pdl)

    # ---------------------------------------------------------------------------------------------

    def _kernel_rows(self, rows: int) -> bool:
        return self.kernel_max_rows is None or rows <= self.kernel_max_rows

    def main(
        self, tokens: torch.Tensor, positions: torch.Tensor, cache_index: torch.Tensor, cache: StepKVCache
    ) -> DecoderStepOutput:
        """``MainDecoder.forward`` with the layers through the shared functions."""
        if self.main_kernels is not None and self._kernel_rows(tokens.shape[0]):
            return self.main_kernels.run(tokens, positions, cache_index, cache)
        tr = self.model.transformer
        dtype = tr.norm.weight.dtype
        x = tr.embed(tokens)
        cos = tr.rope_cos[positions].to(dtype)[:, None, None, :]
        sin = self.main_sin[positions].to(dtype)[:, None, None, :]
        slots = torch.arange(cache.max_steps, device=tokens.device)
        valid = (slots[None, :] <= cache_index[:, None])[:, None, None, :]
        index = cache_index.view(-1, 1)
        attn_in, attn_out = self.fn["main_in"], self.fn["main_out"]
        for i, (w_in, w_out) in enumerate(self.main_w):
            q, k, v = attn_in(x, w_in, cos, sin)
            cache.write(i, index, k, v)
            # SDPA over the cache (model.attend_slots), or a paged cache's in-place kernel.
            a = cache.attend(i, q, cache_index, valid)
            x = attn_out(x, a, *w_out)
        return tr.output(x)

    def depformer(
        self, buf: FrameBuffers, consts: FrameConstants, gen: torch.Generator | None = None
    ) -> None:
        """Codebooks 1..K-1 for every call of ``buf`` (``frame.depformer_phase``'s stage loop)."""
        if self.kernels is not None and self._kernel_rows(buf.hidden.shape[0]):
            self.kernels.run(buf, gen)
            return
        depf = self.model.depformer
        n = buf.step.shape[0]
        dtype = buf.hidden.dtype
        # One draw of Exp(1) noise for all stages (one kernel instead of 31).
        noise = torch.empty(self.depth, n, depf.vocab_limit, device=buf.hidden.device)
        noise.exponential_(generator=gen)
        extra0 = torch.zeros((), dtype=dtype, device=buf.hidden.device)
        if self.text_embed is not None:
            extra0 = self.text_embed(buf.text_in[:, 0], buf.text_in[:, 1])
        zero = torch.zeros((), dtype=dtype, device=buf.hidden.device)
        ring = buf.ring.view(n, -1)
        cache = buf.dep_cache
        f = self.fn
        prev = buf.code
        din = [F.linear(buf.hidden, w) for w in self.group_w]
        for s, w in enumerate(self.dep_w):
            x = f["stage_in"](din[self.group_of[s]], prev, w["table"], extra0 if s == 0 else zero)
            cos, sin = self.dep_cos[s], self.dep_sin[s]
            for i, (w_in, w_out) in enumerate(w["layers"]):
                q, kk, v = f["dep_in"](x, w_in, cos, sin)
                cache.keys[i][:, :, s : s + 1] = kk
                cache.values[i][:, :, s : s + 1] = v
                a = F.scaled_dot_product_attention(
                    q, cache.keys[i], cache.values[i], attn_mask=self.stage_valid[s], scale=1.0
                )
                x = f["dep_out"](x, a, *w_out)
            token = f["head_sample"](
                x,
                depf.norm.weight,
                w["head"],
                buf.cfg_scale,
                buf.audio.temperature,
                buf.audio.top_k,
                noise[s],
            )
            index, store, prev = f["code_update"](
                ring, buf.step, buf.known, buf.active, self.stage_delay[s], self.stage_k[s], token
            )
            ring.scatter_(1, index, store)


def kernels_supported(model: Dia2Model) -> str | None:
    """Why :class:`DepformerKernels` cannot run this model here (None: it can)."""
    if model.device.type != "cuda" and not _triton_interpreting():
        return "needs CUDA (or TRITON_INTERPRET=1)"
    try:
        import triton  # noqa: F401
    except ImportError:
        return "Triton is not installed"
    if tuple(model.config.model.depformer.mlp_activations) != ("silu", "linear"):
        return "the kernels implement the SiLU-gated MLP only"
    return None


def _triton_interpreting() -> bool:
    import os

    return os.environ.get("TRITON_INTERPRET", "") == "1"


class DepformerKernels:
    """The depformer stage loop on :mod:`dia2.kernels`: 22 launches per stage (see that module).

    Scratch buffers are allocated once for ``capacity`` calls and sliced per batch bucket, so every
    captured graph keeps pointing at the same storage. The depformer's own K/V cache lives here too:
    32 slots per layer (a power of two for the attention kernel; stage s uses slot s).
    The projection of the decoder's hidden state through ``depformer_in`` depends only on the weight
    group, not the stage, so it is computed once per frame for every group (Dia2-2B: 5 groups instead
    of 31 projections).
    """

    def __init__(
        self, model: Dia2Model, consts: FrameConstants, branches: int, capacity: int, *, pdl: bool = False
    ) -> None:
        from . import kernels

        self.k = kernels
        self.pdl = pdl  # programmatic dependent launch: see kernels.pdl_supported
        cfg = model.config
        dep = cfg.model.depformer
        depf = model.depformer
        self.model, self.branches = model, branches
        self.eps = cfg.model.normalization_layer_epsilon
        self.depth = depf.depth
        self.vocab_limit = depf.vocab_limit
        self.filter_k = min(consts.cfg_filter_k, depf.vocab_limit)
        self.top = min(consts.max_top_k, depf.vocab_limit)
        self.delays = [int(d) for d in consts.delays.tolist()]
        groups = list(dict.fromkeys(depf.schedule))
        self.group_of = [groups.index(g) for g in depf.schedule]
        self.dim = dep.n_embd
        self.w_in = torch.cat([depf.depformer_in[g].weight for g in groups]).contiguous()
        self.layers = [
            (
                lay.pre_norm.weight,
                [lay.self_attention.in_proj[g].weight for g in groups],
                lay.self_attention.q_norm.weight,
                lay.self_attention.k_norm.weight,
                [lay.self_attention.out_proj[g].weight for g in groups],
                lay.post_norm.weight,
                lay.mlp.wi.weight,
                lay.mlp.wo.weight,
            )
            for lay in depf.layers
        ]
        self.tables = [depf.audio_embeds[s].weight for s in range(self.depth)]
        self.heads = [depf.logits[s].weight for s in range(self.depth)]
        self.final_norm = depf.norm.weight
        self.text_embed = depf.text_embed
        dtype, dev = model.dtype, model.device
        if dep.apply_rope:
            self.cos = depf.rope_cos.to(dtype).contiguous()
            self.sin = depf.rope_sin.to(dtype).contiguous()
        else:
            self.cos = torch.ones(self.depth, dep.gqa_head_dim, dtype=dtype, device=dev)
            self.sin = torch.zeros(self.depth, dep.gqa_head_dim, dtype=dtype, device=dev)
        rows = capacity * branches
        heads, hd = dep.gqa_query_heads, dep.gqa_head_dim
        slots = 1 << max(0, (self.depth - 1).bit_length())
        vocab = depf.logits[0].weight.shape[0]

        def alloc(*shape: int, dt: torch.dtype = dtype) -> torch.Tensor:
            return torch.zeros(*shape, dtype=dt, device=dev)

        self.x = alloc(rows, self.dim)
        self.din = alloc(rows, len(groups) * self.dim)
        self.qkv = alloc(rows, 3 * heads * hd)
        self.attn = alloc(rows, heads * hd)
        self.hid = alloc(rows, dep.n_hidden)
        self.logits = alloc(rows, vocab, dt=torch.float32)
        self.keys = alloc(dep.n_layer, rows, heads, slots, hd)
        self.values = alloc(dep.n_layer, rows, heads, slots, hd)
        self.prev = torch.zeros(capacity, dtype=torch.long, device=dev)

    def run(self, buf: FrameBuffers, gen: torch.Generator | None) -> None:
        k, eps, br, pdl = self.k, self.eps, self.branches, self.pdl
        n = buf.step.shape[0]
        r = n * br
        x, din, qkv, attn, hid, logits = (
            t[:r] for t in (self.x, self.din, self.qkv, self.attn, self.hid, self.logits)
        )
        keys, values, prev = self.keys[:, :r], self.values[:, :r], self.prev[:n]
        noise = torch.empty(self.depth, n, self.vocab_limit, device=x.device).exponential_(generator=gen)
        k.linear(buf.hidden, self.w_in, din, pdl=pdl)
        d = self.dim
        extra: torch.Tensor | float = 0.0
        if self.text_embed is not None:
            extra = self.text_embed(buf.text_in[:, 0], buf.text_in[:, 1])
        g0 = self.group_of[0]
        x.copy_(
            din[:, g0 * d : (g0 + 1) * d]
            + (F.embedding(buf.code.repeat_interleave(br), self.tables[0]) + extra)
        )
        ring = buf.ring
        for s in range(self.depth):
            g = self.group_of[s]
            for i, (pre, w_qkv, qn, kn, w_o, post, wi, wo) in enumerate(self.layers):
                k.linear(x, w_qkv[g], qkv, norm=pre, eps=eps, pdl=pdl)
                k.attention_stage(qkv, keys[i], values[i], qn, kn, self.cos, self.sin, attn, s, eps, pdl=pdl)
                k.linear(attn, w_o[g], x, residual=x, pdl=pdl)
                k.linear(x, wi, hid, norm=post, eps=eps, swiglu=True, pdl=pdl)
                k.linear(hid, wo, x, residual=x, pdl=pdl)
            k.linear(x, self.heads[s], logits, norm=self.final_norm, eps=eps, pdl=pdl)
            last = s + 1 == self.depth
            gn = self.group_of[s + 1] if not last else 0
            k.sample_stage(
                logits,
                buf.cfg_scale,
                buf.audio.temperature,
                buf.audio.top_k,
                noise[s],
                ring,
                buf.step,
                buf.known,
                buf.active,
                prev,
                codebook=s + 1,
                delay=self.delays[s + 1],
                branches=br,
                vocab_limit=self.vocab_limit,
                filter_k=self.filter_k,
                top_k_cap=self.top,
                next_din=None if last else din[:, gn * d : (gn + 1) * d],
                next_table=None if last else self.tables[s + 1],
                x=None if last else x,
                pdl=pdl,
            )


def stacked_rows(*params: torch.nn.Parameter) -> torch.Tensor:
    """One ``[sum(rows), in]`` matrix holding ``params`` one after another, without a second copy: the
    parameters are re-pointed at views of it (same values), so the model and the kernels share memory."""
    first = params[0]
    total = sum(p.shape[0] for p in params)
    base = first.untyped_storage().data_ptr()
    adjacent = all(p.is_contiguous() and p.untyped_storage().data_ptr() == base for p in params) and all(
        b.data_ptr() == a.data_ptr() + a.numel() * a.element_size() for a, b in itertools.pairwise(params)
    )
    if adjacent:  # already stacked (an earlier engine on the same model did it)
        return first.data.as_strided((total, first.shape[1]), (first.shape[1], 1))
    stacked = torch.cat([p.data for p in params]).contiguous()
    start = 0
    for p in params:
        p.data = stacked[start : start + p.shape[0]]
        start += p.shape[0]
    return stacked


class MainKernels:
    """The main decoder's 28 layers on :mod:`dia2.kernels`: per layer one projection for q/k/v (RMSNorm
    folded in), one kernel for QK-norm + RoPE + the cache write, SDPA, and three projections (output +
    residual, norm + gate/up + SwiGLU, MLP output + residual): 6 launches plus SDPA, instead of ~25.

    The q/k/v weights are stacked into one matrix per layer (the module's three parameters become views
    of it, no extra memory); activations live in scratch buffers sized for ``rows`` decoder rows, so
    captured graphs keep pointing at the same storage."""

    def __init__(self, model: Dia2Model, rows: int, *, pdl: bool = False) -> None:
        from . import kernels

        self.k = kernels
        self.pdl = pdl
        cfg = model.config
        dec = cfg.model.decoder
        self.model = model
        self.eps = cfg.model.normalization_layer_epsilon
        self.qh, self.kvh, self.hd = dec.gqa_query_heads, dec.kv_heads, dec.gqa_head_dim
        tr = model.transformer
        self.layers = [
            (
                lay.pre_norm.weight,
                stacked_rows(lay.attn.q_proj.weight, lay.attn.k_proj.weight, lay.attn.v_proj.weight),
                lay.attn.q_norm.weight,
                lay.attn.k_norm.weight,
                lay.attn.o_proj.weight,
                lay.post_norm.weight,
                lay.mlp.wi.weight,
                lay.mlp.wo.weight,
            )
            for lay in tr.layers
        ]
        self.books = len(tr.audio_embeds)
        self.tables = stacked_rows(*(e.weight for e in tr.audio_embeds))
        dtype, dev = model.dtype, model.device
        self.x = torch.zeros(rows, dec.n_embd, dtype=dtype, device=dev)
        self.qkv = torch.zeros(rows, (self.qh + 2 * self.kvh) * self.hd, dtype=dtype, device=dev)
        self.q = torch.zeros(rows, self.qh, self.hd, dtype=dtype, device=dev)
        self.hid = torch.zeros(rows, dec.n_hidden, dtype=dtype, device=dev)
        # Paged KV: this step's key/value of every row before the pool write.
        self.k_new = torch.zeros(rows, self.kvh, 1, self.hd, dtype=dtype, device=dev)
        self.v_new = torch.zeros(rows, self.kvh, 1, self.hd, dtype=dtype, device=dev)
        self.zero_index = torch.zeros(rows, dtype=torch.long, device=dev)

    def run(
        self, tokens: torch.Tensor, positions: torch.Tensor, cache_index: torch.Tensor, cache: StepKVCache
    ) -> DecoderStepOutput:
        k, eps, pdl = self.k, self.eps, self.pdl
        tr = self.model.transformer
        r = tokens.shape[0]
        x, qkv, q, hid = self.x[:r], self.qkv[:r], self.q[:r], self.hid[:r]
        x.copy_(tr.text_embed(tokens[:, 0], tokens[:, 1]))
        k.embed_sum(x, tokens, self.tables, 2, self.books, pdl=pdl)  # 32 lookups and adds: one kernel, not 64
        slots = torch.arange(cache.max_steps, device=tokens.device)
        # An additive mask built once per step: a boolean one is converted inside every SDPA call.
        bias = torch.where(slots[None, :] <= cache_index[:, None], 0.0, float("-inf")).to(x.dtype)
        bias = bias[:, None, None, :]
        paged = isinstance(cache, PagedDecoderCache)
        if paged:  # the kernel writes into a one-slot scratch, the pool write follows (dia2/paged_kv.py)
            at, into = self.zero_index[:r], cache_index.view(-1, 1)
            k_new, v_new = self.k_new[:r], self.v_new[:r]
        for i, (pre, w_qkv, qn, kn, w_o, post, wi, wo) in enumerate(self.layers):
            k.linear(x, w_qkv, qkv, norm=pre, eps=eps, pdl=pdl)
            if paged:
                k.qk_rope_cache(
                    qkv, q, k_new, v_new, qn, kn, tr.rope_cos, tr.rope_sin, positions, at, eps, pdl=pdl
                )
                cache.write(i, into, k_new, v_new)
            else:  # dense: the kernel writes straight into the layer's cache
                keys, values = cache.read(i)
                k.qk_rope_cache(
                    qkv,
                    q,
                    keys,
                    values,
                    qn,
                    kn,
                    tr.rope_cos,
                    tr.rope_sin,
                    positions,
                    cache_index,
                    eps,
                    pdl=pdl,
                )
            # SDPA over the cache (gathered, if paged), or a paged cache's in-place kernel.
            a = cache.attend(i, q.unsqueeze(2), cache_index, bias)
            k.linear(a.reshape(r, self.qh * self.hd), w_o, x, residual=x, pdl=pdl)
            k.linear(x, wi, hid, norm=post, eps=eps, swiglu=True, pdl=pdl)
            k.linear(hid, wo, x, residual=x, pdl=pdl)
        return tr.output(x)
