"""Dia2 network: main decoder (one step per 80 ms frame) and depformer (31 stages per frame).

Module and parameter names mirror upstream's ``Dia2Model.state_dict()`` keys exactly, so a checkpoint
loads by name without any renaming table. Everything a CUDA graph would touch has a static shape:
the KV caches are preallocated and written in place at per-row indices, masks are computed from
those indices, and no Python branch depends on tensor values.

Shapes used below: ``B`` batch rows (2 per call with the CFG branch), ``C`` channels per frame
(2 text + ``K`` codebooks), ``D`` model width, ``S`` cache slots, ``H`` heads, ``Dh`` head width.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from .config import Dia2Config


class KVCache(Protocol):
    """What the main decoder's layers need of a KV cache: :class:`DecoderCache` (dense, ``S`` slots per
    row) and ``dia2.paged_kv.PagedDecoderCache`` (a block table per row over a shared pool) both fill it."""

    @property
    def max_steps(self) -> int: ...

    def write(self, layer: int, index: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None: ...

    def read(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]: ...


class StepKVCache(KVCache, Protocol):
    """What a one-frame step needs besides: the cache attends itself, so a paged cache can read its blocks
    in place (``dia2/paged_attention.py``) where the dense one runs SDPA (prefill only writes and reads)."""

    def attend(
        self, layer: int, q: torch.Tensor, cache_index: torch.Tensor, valid: torch.Tensor
    ) -> torch.Tensor: ...


__all__ = [
    "DecoderCache",
    "DecoderStepOutput",
    "Depformer",
    "DepformerCache",
    "Dia2Model",
    "KVCache",
    "MainDecoder",
    "StepKVCache",
    "attend_slots",
]


# --------------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


def rope_table(
    head_dim: int, min_timescale: float, max_timescale: float, length: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables ``[length, head_dim]`` for rotate-half RoPE.

    Computed in float32 with the same operation order as upstream so that the tables agree bit for
    bit (the fixture's tolerance leaves little room for a different rounding of the angles).
    """
    half = head_dim // 2
    fraction = (2.0 * torch.arange(0, half, device=device)) / head_dim
    timescale = min_timescale * (max_timescale / min_timescale) ** fraction
    inv_freq = (1.0 / timescale).to(torch.float32)
    t = torch.arange(length, device=device, dtype=torch.float32)
    freqs = torch.einsum("i,j->ij", t, inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE. ``x [B, H, T, Dh]``, ``cos``/``sin`` broadcastable to it."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    return x * cos + rotated * sin


_ACTIVATIONS: dict[str, nn.Module] = {
    "silu": nn.SiLU(),
    "swish": nn.SiLU(),
    "swiglu": nn.SiLU(),
    "gelu": nn.GELU(),
    "geglu": nn.GELU(),
    "relu": nn.ReLU(),
    "linear": nn.Identity(),
}


class GatedMlp(nn.Module):
    """``wo(act0(gate) * act1(up))`` with ``wi`` holding [gate; up] stacked on the output rows."""

    def __init__(self, dim: int, hidden: int, activations: tuple[str, str]) -> None:
        super().__init__()
        self.hidden = hidden
        self.wi = nn.Linear(dim, 2 * hidden, bias=False)
        self.wo = nn.Linear(hidden, dim, bias=False)
        self.act_gate = _ACTIVATIONS[activations[0]]
        self.act_up = _ACTIVATIONS[activations[1]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        proj = self.wi(x).unflatten(-1, (2, self.hidden))
        return self.wo(self.act_gate(proj[..., 0, :]) * self.act_up(proj[..., 1, :]))


class TextEmbedding(nn.Module):
    """Both text streams share one table; the second stream only counts where it is not pad.

    ``low_rank_dim`` (when set) is the width of the table, projected up to the model width.
    """

    def __init__(self, vocab: int, dim: int, pad_id: int, low_rank_dim: int | None) -> None:
        super().__init__()
        base = low_rank_dim if low_rank_dim is not None else dim
        self.pad_id = pad_id
        self.embedding = nn.Embedding(vocab, base)
        self.main_proj = nn.Linear(base, dim, bias=False)
        self.second_proj = nn.Linear(base, dim, bias=False)

    def forward(self, main: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        out_main = self.main_proj(self.embedding(main))
        out_second = self.second_proj(self.embedding(second))
        keep = (second != self.pad_id).unsqueeze(-1)
        return out_main + torch.where(keep, out_second, torch.zeros_like(out_second))


def attend_slots(
    q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, valid: torch.Tensor
) -> torch.Tensor:
    """SDPA with scale 1.0: the learned QK-norm weights carry the 1/sqrt(d) factor in Dia2."""
    return F.scaled_dot_product_attention(
        q, keys, values, attn_mask=valid, scale=1.0, enable_gqa=q.shape[1] != keys.shape[1]
    )


# --------------------------------------------------------------------------------------------------
# Caches
# --------------------------------------------------------------------------------------------------


@dataclass
class DecoderCache:
    """Static KV cache of the main decoder: ``keys``/``values`` are ``[L, B, Hkv, S, Dh]``.

    The slot written by a step is passed in per row (``cache_index [B]``) and attention sees slots
    ``0..cache_index[b]`` of row b, so rows can sit at different positions (batched calls later).
    The layers reach it only through :meth:`write` / :meth:`read` / :meth:`attend` (and the engine through
    :meth:`rows` / :meth:`limit`), the interface ``dia2.paged_kv.PagedDecoderCache`` shares: a block table
    per row instead of ``S`` slots per row.
    """

    keys: torch.Tensor
    values: torch.Tensor

    @property
    def max_steps(self) -> int:
        return self.keys.shape[3]

    def write(self, layer: int, index: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store ``k``/``v [B, Hkv, T, Dh]`` of ``layer`` at slots ``index [B, T]`` of each row."""
        b, t = index.shape
        keys, values = self.keys[layer], self.values[layer]
        idx = index.view(b, 1, t, 1).expand(-1, keys.shape[1], -1, keys.shape[3])
        keys.scatter_(2, idx, k.to(keys.dtype))
        values.scatter_(2, idx, v.to(values.dtype))

    def read(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``layer``'s keys and values ``[B, Hkv, S, Dh]`` (slot s of row b = step s of that row)."""
        return self.keys[layer], self.values[layer]

    def attend(
        self, layer: int, q: torch.Tensor, cache_index: torch.Tensor, valid: torch.Tensor
    ) -> torch.Tensor:
        """One query frame ``q [B, H, 1, Dh]`` over ``layer``'s slots where ``valid [B, 1, 1, S]`` (bool, or
        an additive mask); ``cache_index`` is what ``valid`` was built from (a paged cache's kernel reads it
        instead). ``[B, H, 1, Dh]``."""
        keys, values = self.read(layer)
        return attend_slots(q, keys, values, valid)

    def rows(self, rows: slice | torch.Tensor) -> DecoderCache:
        """The cache of some rows: a view for a slice, a copy for an index tensor."""
        if isinstance(rows, slice):
            return DecoderCache(self.keys[:, rows], self.values[:, rows])
        return DecoderCache(self.keys.index_select(1, rows), self.values.index_select(1, rows))

    def limit(self, kv_len: int) -> DecoderCache:
        """Attention over the first ``kv_len`` slots only (every row's next slot lies below it)."""
        if kv_len >= self.max_steps:
            return self
        return DecoderCache(self.keys[..., :kv_len, :], self.values[..., :kv_len, :])

    @classmethod
    def allocate(
        cls, config: Dia2Config, batch: int, max_steps: int, device: torch.device, dtype: torch.dtype
    ) -> DecoderCache:
        dec = config.model.decoder
        shape = (dec.n_layer, batch, dec.kv_heads, max_steps, dec.gqa_head_dim)
        return cls(
            torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype)
        )


@dataclass
class DepformerCache:
    """Per-frame cache of the depformer, ``[L, B, H, depth, Dh]``; slot s belongs to stage s.

    It needs no reset between frames: stage s only attends to slots 0..s, all rewritten this frame.
    """

    keys: torch.Tensor
    values: torch.Tensor

    @classmethod
    def allocate(
        cls, config: Dia2Config, batch: int, device: torch.device, dtype: torch.dtype
    ) -> DepformerCache:
        dep = config.model.depformer
        shape = (dep.n_layer, batch, dep.gqa_query_heads, config.depth, dep.gqa_head_dim)
        return cls(
            torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype)
        )


# --------------------------------------------------------------------------------------------------
# Main decoder
# --------------------------------------------------------------------------------------------------


class DecoderAttention(nn.Module):
    def __init__(self, config: Dia2Config) -> None:
        super().__init__()
        dec = config.model.decoder
        eps = config.model.normalization_layer_epsilon
        self.heads, self.kv_heads, self.head_dim = dec.gqa_query_heads, dec.kv_heads, dec.gqa_head_dim
        self.q_proj = nn.Linear(dec.n_embd, self.heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(dec.n_embd, self.kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(dec.n_embd, self.kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.heads * self.head_dim, dec.n_embd, bias=False)
        self.q_norm = RMSNorm(self.head_dim, eps)
        self.k_norm = RMSNorm(self.head_dim, eps)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        cache: StepKVCache,
        layer: int,
        cache_index: torch.Tensor,
        valid: torch.Tensor,
    ) -> torch.Tensor:
        b = x.shape[0]
        q = self.q_norm(self.q_proj(x).view(b, 1, self.heads, self.head_dim)).transpose(1, 2)
        k = self.k_norm(self.k_proj(x).view(b, 1, self.kv_heads, self.head_dim)).transpose(1, 2)
        v = self.v_proj(x).view(b, 1, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        cache.write(layer, cache_index.view(-1, 1), k, v)
        # The cache attends: a paged one may read its blocks in place (dia2/paged_attention.py).
        out = cache.attend(layer, q, cache_index, valid)
        return self.o_proj(out.transpose(1, 2).reshape(b, self.heads * self.head_dim))

    def forward_many(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        cache: KVCache,
        layer: int,
        cache_index: torch.Tensor,
        valid: torch.Tensor,
    ) -> torch.Tensor:
        """``T`` frames at once (prefill): ``x [B, T, D]``, ``cache_index [B, T]``, ``valid [B, 1, T, S]``.

        Kept apart from :meth:`forward` so the one-frame path (the one the parity tests pin) is untouched.
        """
        b, t, _ = x.shape
        q = self.q_norm(self.q_proj(x).view(b, t, self.heads, self.head_dim)).transpose(1, 2)
        k = self.k_norm(self.k_proj(x).view(b, t, self.kv_heads, self.head_dim)).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        cache.write(layer, cache_index, k, v)
        keys, values = cache.read(layer)
        out = attend_slots(q, keys, values, valid)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, self.heads * self.head_dim))


class DecoderLayer(nn.Module):
    def __init__(self, config: Dia2Config) -> None:
        super().__init__()
        dec = config.model.decoder
        eps = config.model.normalization_layer_epsilon
        self.pre_norm = RMSNorm(dec.n_embd, eps)
        self.attn = DecoderAttention(config)
        self.post_norm = RMSNorm(dec.n_embd, eps)
        self.mlp = GatedMlp(dec.n_embd, dec.n_hidden, config.model.mlp_activations)


@dataclass
class DecoderStepOutput:
    hidden: torch.Tensor  # [B, D] final-norm output, the depformer's input
    action_logits: torch.Tensor  # [B, action_vocab] float32
    cb0_logits: torch.Tensor  # [B, audio_vocab] float32, before any masking


class MainDecoder(nn.Module):
    """Upstream's ``transformer.*`` subtree."""

    def __init__(self, config: Dia2Config, rope_length: int) -> None:
        super().__init__()
        data, dec = config.data, config.model.decoder
        self.config = config
        self.rope_length = rope_length
        self.text_embed = TextEmbedding(
            data.text_vocab_size, dec.n_embd, data.text_pad_token_id, dec.low_rank_dim
        )
        self.audio_embeds = nn.ModuleList(
            nn.Embedding(data.audio_vocab_size, dec.n_embd) for _ in range(data.num_codebooks)
        )
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(dec.n_layer))
        self.norm = RMSNorm(dec.n_embd, config.model.normalization_layer_epsilon)
        self.action_head = nn.Linear(dec.n_embd, data.action_vocab_size, bias=False)
        self.cb0_head = nn.Linear(dec.n_embd, data.audio_vocab_size, bias=False)
        self.register_buffer("rope_cos", torch.empty(rope_length, dec.gqa_head_dim), persistent=False)
        self.register_buffer("rope_sin", torch.empty(rope_length, dec.gqa_head_dim), persistent=False)

    def reset_buffers(self) -> None:
        m = self.config.model
        cos, sin = rope_table(
            m.decoder.gqa_head_dim,
            m.rope_min_timescale,
            m.rope_max_timescale,
            self.rope_length,
            self.rope_cos.device,
        )
        self.rope_cos, self.rope_sin = cos, sin

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """``tokens [B, C]`` → ``[B, D]``: text embedding plus every codebook's embedding."""
        x = self.text_embed(tokens[:, 0], tokens[:, 1])
        for k, table in enumerate(self.audio_embeds):
            x = x + table(tokens[:, 2 + k])
        return x

    def output(self, x: torch.Tensor) -> DecoderStepOutput:
        """The last layer's output ``x`` → final norm, the action and codebook-0 heads (float32 logits).
        Shared by every path through the layers (modules, fused functions, Triton kernels)."""
        hidden = self.norm(x)
        return DecoderStepOutput(
            hidden=hidden,
            action_logits=self.action_head(hidden).float(),
            cb0_logits=self.cb0_head(hidden).float(),
        )

    def forward(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        cache_index: torch.Tensor,
        cache: StepKVCache,
    ) -> DecoderStepOutput:
        """One frame for every row: ``tokens [B, C]``, rotary ``positions [B]``, ``cache_index [B]``.

        Position and cache slot are separate inputs on purpose: upstream's prefix warm-up leaves
        them one apart (see docs/DIA2.md), and batched calls need them per row.
        """
        dtype = self.norm.weight.dtype
        x = self.embed(tokens)
        # Index-based gather raises on positions past the table, like upstream (documented quirk).
        cos = self.rope_cos[positions].to(dtype)[:, None, None, :]
        sin = self.rope_sin[positions].to(dtype)[:, None, None, :]
        slots = torch.arange(cache.max_steps, device=tokens.device)
        valid = (slots[None, :] <= cache_index[:, None])[:, None, None, :]
        for i, layer in enumerate(self.layers):
            x = x + layer.attn(layer.pre_norm(x), cos, sin, cache, i, cache_index, valid)
            x = x + layer.mlp(layer.post_norm(x))
        return self.output(x)

    def prefill(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        cache_index: torch.Tensor,
        cache: KVCache,
    ) -> DecoderStepOutput:
        """``T`` known frames in one causal forward: ``tokens [B, T, C]``, ``positions``/``cache_index
        [B, T]``. Frame i of row b attends to slots ``<= cache_index[b, i]`` (earlier turns plus frames
        0..i of this call), which is what T single steps would see; outputs are ``[B, T, ...]``.

        Used to ingest a turn whose text and audio are all known (voice prefix, caller audio, re-warm).
        """
        dtype = self.norm.weight.dtype
        b, t, c = tokens.shape
        x = self.embed(tokens.reshape(b * t, c)).view(b, t, -1)
        cos = self.rope_cos[positions].to(dtype)[:, None]  # [B, 1, T, Dh]
        sin = self.rope_sin[positions].to(dtype)[:, None]
        slots = torch.arange(cache.max_steps, device=tokens.device)
        valid = (slots[None, None, :] <= cache_index[:, :, None])[:, None]  # [B, 1, T, S]
        for i, layer in enumerate(self.layers):
            x = x + layer.attn.forward_many(layer.pre_norm(x), cos, sin, cache, i, cache_index, valid)
            x = x + layer.mlp(layer.post_norm(x))
        return self.output(x)


# --------------------------------------------------------------------------------------------------
# Depformer
# --------------------------------------------------------------------------------------------------


class ScheduleAttention(nn.Module):
    """Depformer attention: fused [q; k; v] projection per weight group, shared QK norms."""

    def __init__(self, config: Dia2Config) -> None:
        super().__init__()
        dep = config.model.depformer
        eps = config.model.normalization_layer_epsilon
        self.heads, self.head_dim = dep.gqa_query_heads, dep.gqa_head_dim
        groups = [str(g) for g in config.runtime.weight_groups]
        inner = self.heads * self.head_dim
        self.in_proj = nn.ModuleDict({g: nn.Linear(dep.n_embd, 3 * inner, bias=False) for g in groups})
        self.out_proj = nn.ModuleDict({g: nn.Linear(inner, dep.n_embd, bias=False) for g in groups})
        self.q_norm = RMSNorm(self.head_dim, eps)
        self.k_norm = RMSNorm(self.head_dim, eps)

    def forward(
        self,
        x: torch.Tensor,
        group: str,
        stage: int,
        rope: tuple[torch.Tensor, torch.Tensor] | None,
        keys: torch.Tensor,
        values: torch.Tensor,
    ) -> torch.Tensor:
        b = x.shape[0]
        qkv = self.in_proj[group](x).view(b, 1, 3, self.heads, self.head_dim)
        q = self.q_norm(qkv[:, :, 0]).transpose(1, 2)
        k = self.k_norm(qkv[:, :, 1]).transpose(1, 2)
        v = qkv[:, :, 2].transpose(1, 2)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        keys[:, :, stage : stage + 1] = k
        values[:, :, stage : stage + 1] = v
        # Slots after `stage` still hold the previous frame's values: the mask hides them.
        valid = (torch.arange(keys.shape[2], device=x.device) <= stage).view(1, 1, 1, -1)
        out = attend_slots(q, keys, values, valid)
        return self.out_proj[group](out.transpose(1, 2).reshape(b, self.heads * self.head_dim))


class DepformerLayer(nn.Module):
    def __init__(self, config: Dia2Config) -> None:
        super().__init__()
        dep = config.model.depformer
        eps = config.model.normalization_layer_epsilon
        self.pre_norm = RMSNorm(dep.n_embd, eps)
        self.self_attention = ScheduleAttention(config)
        self.post_norm = RMSNorm(dep.n_embd, eps)
        self.mlp = GatedMlp(dep.n_embd, dep.n_hidden, dep.mlp_activations)


class Depformer(nn.Module):
    """Upstream's ``depformer.*`` subtree: stage s predicts codebook s+1 from the decoder state
    and the token chosen for codebook s."""

    def __init__(self, config: Dia2Config) -> None:
        super().__init__()
        data, dep = config.data, config.model.depformer
        self.config = config
        self.depth = config.depth
        self.schedule = [str(g) for g in config.runtime.weights_schedule[: self.depth]]
        self.vocab_limit = min(data.audio_pad_token_id, data.audio_bos_token_id)
        self.audio_embeds = nn.ModuleList(
            nn.Embedding(data.audio_vocab_size, dep.n_embd) for _ in range(self.depth)
        )
        # The depformer's own text table is always full width (upstream passes no low_rank_dim).
        self.text_embed = (
            TextEmbedding(data.text_vocab_size, dep.n_embd, data.text_pad_token_id, None)
            if dep.text_embedding
            else None
        )
        self.depformer_in = nn.ModuleDict(
            {
                str(g): nn.Linear(config.model.decoder.n_embd, dep.n_embd, bias=False)
                for g in config.runtime.weight_groups
            }
        )
        self.layers = nn.ModuleList(DepformerLayer(config) for _ in range(dep.n_layer))
        self.norm = RMSNorm(dep.n_embd, config.model.normalization_layer_epsilon)
        self.logits = nn.ModuleList(
            nn.Linear(dep.n_embd, data.audio_vocab_size, bias=False) for _ in range(self.depth)
        )
        self.register_buffer("rope_cos", torch.empty(self.depth, dep.gqa_head_dim), persistent=False)
        self.register_buffer("rope_sin", torch.empty(self.depth, dep.gqa_head_dim), persistent=False)

    def reset_buffers(self) -> None:
        m = self.config.model
        # Stage index is the rotary position, so a table of `depth` rows is all that is ever read.
        cos, sin = rope_table(
            m.depformer.gqa_head_dim,
            m.rope_min_timescale,
            m.rope_max_timescale,
            self.depth,
            self.rope_cos.device,
        )
        self.rope_cos, self.rope_sin = cos, sin

    def forward(
        self,
        stage: int,
        prev_audio: torch.Tensor,
        hidden: torch.Tensor,
        cache: DepformerCache,
        main_text: torch.Tensor | None = None,
        second_text: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits ``[B, vocab_limit]`` (float32) for codebook ``stage + 1``.

        ``prev_audio [B]`` is the token of codebook ``stage``; ``hidden [B, D]`` the decoder output.
        Stage 0 also embeds the frame's text tokens when the checkpoint has a depformer text table.
        """
        group = self.schedule[stage]
        token_emb = self.audio_embeds[stage](prev_audio)
        if stage == 0 and self.text_embed is not None:
            if main_text is None or second_text is None:
                raise ValueError("depformer stage 0 needs the frame's text tokens")
            token_emb = token_emb + self.text_embed(main_text, second_text)
        x = self.depformer_in[group](hidden) + token_emb
        rope = None
        if self.config.model.depformer.apply_rope:
            dtype = x.dtype
            rope = (self.rope_cos[stage].to(dtype), self.rope_sin[stage].to(dtype))
        for i, layer in enumerate(self.layers):
            x = x + layer.self_attention(
                layer.pre_norm(x), group, stage, rope, cache.keys[i], cache.values[i]
            )
            x = x + layer.mlp(layer.post_norm(x))
        logits = self.logits[stage](self.norm(x)).float()
        return logits[:, : self.vocab_limit]


class Dia2Model(nn.Module):
    """Top-level module; ``state_dict()`` keys equal upstream's ``Dia2Model`` keys."""

    def __init__(self, config: Dia2Config, rope_length: int | None = None) -> None:
        super().__init__()
        self.config = config
        self.transformer = MainDecoder(config, rope_length or config.runtime.max_context_steps)
        self.depformer = Depformer(config)

    def reset_buffers(self) -> None:
        """Recompute non-persistent buffers (needed after materialising from the meta device)."""
        self.transformer.reset_buffers()
        self.depformer.reset_buffers()

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer.norm.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.transformer.norm.weight.device

    def allocate_decoder_cache(self, batch: int, max_steps: int) -> DecoderCache:
        return DecoderCache.allocate(self.config, batch, max_steps, self.device, self.dtype)

    def allocate_depformer_cache(self, batch: int) -> DepformerCache:
        return DepformerCache.allocate(self.config, batch, self.device, self.dtype)
