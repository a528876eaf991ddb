"""Greedy Whisper decoding on a static KV cache, one CUDA graph per batch size: the batched ASR's decoder.

Why: transformers' `generate` runs each decoding step as ~150 eager kernels plus its own Python (cache
objects, logits processors, stopping criteria): on an H100 sharing the card with Dia2 at 128 calls a batch of
~3 turns took 154 ms, most of it ~14 such steps, and its many small kernels slowed every Dia2 step beside them
(docs/PERFORMANCE.md, issue 16, run F). Here one step is one graph replay: the token and its position go in,
the next token comes out. The state is owned here and static:

* self-attention K/V of every decoder layer, ``[rows, heads, max_target_positions, head_dim]``, written at the
  step's position; a step attends to positions up to its own (the mask is built inside the graph);
* the encoder output's cross-attention K/V, projected once per batch, before the first step;
* each row's done flag (after its end token a row is fed padding, as generate does) and the decoded tokens.

Buffers are sized for ``max_batch`` rows; a batch of B rows runs the graph of the smallest bucket (1, 2, 4,
...) that holds it, on the first rows of the same buffers (one batch decodes at a time: the ASR has one
thread).

What generate does that this must equal (tests/sipbridge/test_asr_greedy.py checks tokens against it): the
prompt transformers builds for this model (start of transcript, language and task where multilingual, no
timestamps), fed one token at a time here; the generation config's `suppress_tokens` at every step and its
`begin_suppress_tokens` at the first decoded one; argmax; rows that said the end token padded with it; at most
``max_new_tokens``. Anything else in a generation config (sampling, beams, timestamps, no-speech detection) is
not done here: :func:`unsupported` names it and the caller keeps generate.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["GreedyWhisper", "unsupported"]

log = logging.getLogger(__name__)

_CHECK_EVERY = 4  # steps between looks at the done flags (each look waits for the GPU)


def unsupported(generation_config: Any) -> str | None:
    """Why this decoder cannot stand in for generate with this generation config, or None."""
    checks = {
        "num_beams": lambda v: v not in (None, 1),
        "do_sample": bool,
        "return_timestamps": bool,
        "no_speech_threshold": lambda v: v is not None,
        "repetition_penalty": lambda v: v not in (None, 1.0),
        "no_repeat_ngram_size": lambda v: v not in (None, 0),
        "temperature": lambda v: isinstance(v, (list, tuple)),
    }
    for key, bad in checks.items():
        if bad(getattr(generation_config, key, None)):
            return f"generation_config.{key} = {getattr(generation_config, key)!r}"
    return None


def buckets(max_batch: int) -> list[int]:
    """Batch sizes that get a graph: powers of two below max_batch, and max_batch itself."""
    sizes, b = [], 1
    while b < max_batch:
        sizes.append(b)
        b *= 2
    return [*sizes, max_batch]


@dataclass
class _State:
    """Every tensor a step reads or writes, at fixed addresses (what a graph replays on)."""

    token: torch.Tensor  # [R] the token fed this step
    pos: torch.Tensor  # [1] its position
    done: torch.Tensor  # [R] bool: said the end token already
    out: torch.Tensor  # [R, T] the token chosen at each position (decoded ones from prompt - 1 on)
    keys: list[torch.Tensor]  # per layer [R, H, T, Dh]
    values: list[torch.Tensor]
    cross_keys: list[torch.Tensor]  # per layer [R, H, frames, Dh]
    cross_values: list[torch.Tensor]

    def rows(self, n: int) -> _State:
        """The first n rows: a bucket's view of the same storage."""
        return _State(
            self.token[:n], self.pos, self.done[:n], self.out[:n],
            [k[:n] for k in self.keys], [v[:n] for v in self.values],
            [k[:n] for k in self.cross_keys], [v[:n] for v in self.cross_values],
        )  # fmt: skip


class GreedyWhisper:
    """Greedy decoding of one transformers Whisper model (its modules and weights used as they are)."""

    def __init__(
        self,
        model: Any,
        *,
        prompt: list[int],
        max_batch: int,
        graphs: bool,
    ) -> None:
        gen, cfg = model.generation_config, model.config
        self.model, self.decoder = model, model.model.decoder
        self.prompt = list(prompt)
        self.eos, self.pad = int(gen.eos_token_id), int(gen.pad_token_id)
        self.heads = int(cfg.decoder_attention_heads)
        self.head_dim = int(cfg.d_model) // self.heads
        self.max_steps = int(cfg.max_target_positions)
        weight = self.decoder.embed_tokens.weight
        self.device, self.dtype = weight.device, weight.dtype
        vocab = int(weight.shape[0])
        self.suppress = _mask(getattr(gen, "suppress_tokens", None), vocab, self.device)
        self.begin_suppress = _mask(getattr(gen, "begin_suppress_tokens", None), vocab, self.device)
        self.sizes = buckets(max_batch)
        self.state = self._allocate(max_batch, int(cfg.max_source_positions))
        self._graphs: dict[int, torch.cuda.CUDAGraph] = {}
        if graphs and self.device.type == "cuda":
            try:
                self._capture_all()
            except RuntimeError:  # a driver or capture limit: the same steps run eagerly, slower
                log.exception("asr decoder: CUDA graph capture failed; decoding eagerly")
                self._graphs.clear()

    # ------------------------------------------------------------------------------------------ state

    def _allocate(self, rows: int, frames: int) -> _State:
        def zeros(*shape: int, dtype: torch.dtype | None = None) -> torch.Tensor:
            # zeros, not empty: masked positions still enter the attention's sum (times 0), and 0 x NaN is NaN
            return torch.zeros(*shape, device=self.device, dtype=dtype or self.dtype)

        layers = len(self.decoder.layers)
        kv = (rows, self.heads, self.max_steps, self.head_dim)
        cross = (rows, self.heads, frames, self.head_dim)
        return _State(
            token=zeros(rows, dtype=torch.long), pos=zeros(1, dtype=torch.long),
            done=zeros(rows, dtype=torch.bool), out=zeros(rows, self.max_steps, dtype=torch.long),
            keys=[zeros(*kv) for _ in range(layers)], values=[zeros(*kv) for _ in range(layers)],
            cross_keys=[zeros(*cross) for _ in range(layers)],
            cross_values=[zeros(*cross) for _ in range(layers)],
        )  # fmt: skip

    def bucket(self, rows: int) -> int:
        return next(size for size in self.sizes if size >= rows)

    # ------------------------------------------------------------------------------------------- step

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        """[R, frames, D] → [R, H, frames, Dh]."""
        return x.view(x.shape[0], -1, self.heads, self.head_dim).transpose(1, 2)

    def _step(self, s: _State) -> None:
        """One decoding step of every row of ``s``: feed ``s.token`` at ``s.pos``, choose the next token."""
        rows = s.token.shape[0]
        dec = self.decoder
        x = dec.embed_tokens(s.token) * dec.embed_scale + dec.embed_positions.weight.index_select(0, s.pos)
        seen = (torch.arange(self.max_steps, device=self.device) <= s.pos).view(1, 1, 1, -1)
        for i, layer in enumerate(dec.layers):
            att = layer.self_attn
            h = layer.self_attn_layer_norm(x)
            q = (att.q_proj(h) * att.scaling).view(rows, self.heads, 1, self.head_dim)
            s.keys[i].index_copy_(2, s.pos, att.k_proj(h).view(rows, self.heads, 1, self.head_dim))
            s.values[i].index_copy_(2, s.pos, att.v_proj(h).view(rows, self.heads, 1, self.head_dim))
            o = F.scaled_dot_product_attention(q, s.keys[i], s.values[i], attn_mask=seen, scale=1.0)
            x = x + att.out_proj(o.reshape(rows, -1))
            cross = layer.encoder_attn
            h = layer.encoder_attn_layer_norm(x)
            q = (cross.q_proj(h) * cross.scaling).view(rows, self.heads, 1, self.head_dim)
            o = F.scaled_dot_product_attention(q, s.cross_keys[i], s.cross_values[i], scale=1.0)
            x = x + cross.out_proj(o.reshape(rows, -1))
            h = layer.final_layer_norm(x)
            x = x + layer.fc2(layer.activation_fn(layer.fc1(h)))
        logits = self.model.proj_out(dec.layer_norm(x)).float()
        first = s.pos == len(self.prompt) - 1  # the step that chooses the first decoded token
        banned = self.suppress | (self.begin_suppress & first)
        chosen = logits.masked_fill(banned, float("-inf")).argmax(-1)
        chosen = torch.where(s.done, torch.full_like(chosen, self.pad), chosen)
        s.done.logical_or_(chosen.eq(self.eos) & (s.pos >= len(self.prompt) - 1))
        s.out.index_copy_(1, s.pos, chosen.view(-1, 1))

    # ------------------------------------------------------------------------------------------ graphs

    def _capture_all(self) -> None:
        """One graph per bucket, captured at load (each after two eager warm-up steps, as capture needs)."""
        pool = torch.cuda.graph_pool_handle()
        side = torch.cuda.Stream(device=self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.inference_mode(), torch.cuda.stream(side):
            for size in self.sizes:
                view = self.state.rows(size)
                self.state.pos.zero_()
                for _ in range(2):
                    self._step(view)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool, stream=side):
                    self._step(view)
                self._graphs[size] = graph
        torch.cuda.current_stream(self.device).wait_stream(side)
        log.info("asr decoder: %d graphs captured (batches %s)", len(self._graphs), self.sizes)

    def _run_step(self, size: int, view: _State) -> None:
        graph = self._graphs.get(size)
        if graph is not None:
            graph.replay()
        else:
            self._step(view)

    # ------------------------------------------------------------------------------------------ decode

    def _load_cross(self, encoded: torch.Tensor, view: _State) -> None:
        """The encoder output's K/V for every layer's cross-attention, into the batch's rows."""
        n = encoded.shape[0]
        for i, layer in enumerate(self.decoder.layers):
            cross = layer.encoder_attn
            view.cross_keys[i][:n].copy_(self._split(cross.k_proj(encoded)))
            view.cross_values[i][:n].copy_(self._split(cross.v_proj(encoded)))

    def decode(self, encoded: torch.Tensor, max_new_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Greedy tokens for each row of the encoder output ``[B, frames, D]``, as generate returns them after
        the prompt (rows that ended padded with the end token), and what the decoder was fed at its last step
        (the prompt and every decoded token but the last: the alignment forward's input). Decoding stops at
        the step where every row has ended, at ``max_new_tokens``, or where the model's positions end (as
        generate's own clamp: prompt + decoded <= max_target_positions)."""
        rows = encoded.shape[0]
        size = self.bucket(rows)
        view = self.state.rows(size)
        prompt = len(self.prompt)
        steps = min(max_new_tokens, self.max_steps - prompt)
        with torch.inference_mode():
            self._load_cross(encoded, view)
            view.done.zero_()
            for position in range(prompt - 1 + steps):
                view.pos.fill_(position)
                if position < prompt:
                    view.token.fill_(self.prompt[position])
                else:
                    view.token.copy_(view.out[:, position - 1])
                self._run_step(size, view)
                decoded = position - prompt + 2
                if decoded > 0 and decoded % _CHECK_EVERY == 0 and bool(view.done[:rows].all()):
                    break
            out = view.out[:rows, prompt - 1 : position + 1].clone()
        steps = _steps_run(out, self.eos)
        head = torch.tensor(self.prompt, device=self.device).expand(rows, prompt)
        fed = torch.cat([head, out[:, : steps - 1]], dim=1)
        # generate drops the end token that closed its last row (its returned width is the longest row's
        # text); while some row is still going the width is every step run
        return out[:, : steps - 1 if _all_ended(out, self.eos) else steps], fed


def _all_ended(out: torch.Tensor, eos: int) -> bool:
    return bool(out.eq(eos).any(dim=1).all())


def _steps_run(out: torch.Tensor, eos: int) -> int:
    """The steps generate would have run: up to the one where the last row said the end token (rows pad
    with it afterwards), or all of them if some row never did."""
    if not _all_ended(out, eos):
        return int(out.shape[1])
    return int(out.eq(eos).float().argmax(dim=1).max()) + 1


def _mask(ids: list[int] | None, vocab: int, device: torch.device) -> torch.Tensor:
    mask = torch.zeros(vocab, dtype=torch.bool, device=device)
    if ids:
        mask[torch.tensor(list(ids), dtype=torch.long)] = True
    return mask
