"""One batched Dia2 frame on static device buffers: the part of a step that runs on the GPU.

A frame for ``N`` calls (``R = N * branches`` decoder rows; branch 1 is the unconditional CFG row) is
two phases, each a plain function over :class:`FrameBuffers` so that it can be captured once as a
CUDA graph and replayed, or run eagerly on the CPU (same code):

* :func:`main_phase`: audio inputs from each call's ring of recent frames, the decoder step, CFG filter
  and on-device sampling of the action and of codebook 0.
* :func:`depformer_phase`: the 31 depformer stages (sampling each codebook on device), the ring writes,
  the completed frame's codes for the Mimi decoder, and the per-call step counters.

Between the two the host reads the action (the only device→host sync of a frame), runs the text state
machine and writes the next text tokens; when the depformer does not read the frame's text (Dia2-2B:
``depformer.text_embedding = false``) the depformer phase is queued before that sync and overlaps it.

Per-call timeline (see docs/DIA2.md, "Conversation model"): ``step[n]`` is the next step t, which reads
delayed column t (codebook k = aligned frame ``t - delay[k]``, BOS before 0) and writes column t + 1.
Frames below ``known[n]`` are already known (the caller's audio, an earlier turn): the sampled code is
replaced by the known one (teacher forcing), so a reply continues the conversation instead of
re-inventing its last 1.4 s. ``ring[n, k, f % W]`` holds frame f of codebook k for the last W frames.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import Protocol

import torch

from .model import DecoderCache, DecoderStepOutput, DepformerCache, Dia2Model
from .paged_kv import PagedDecoderCache
from .sampling import RowSampling, cfg_filter_rows, mask_audio_specials_rows, sample_rows
from .state_machine import TokenIds

__all__ = [
    "RING",
    "FrameBuffers",
    "depformer_codes",
    "depformer_phase",
    "finish_phase",
    "lane_phase",
    "main_phase",
]

RING = 32  # frames kept per call on the device; must exceed the largest delay + 1

# The decoder's KV cache: dense (S slots per row) or paged (EngineOptions.paged_kv, dia2/paged_kv.py).
AnyKV = DecoderCache | PagedDecoderCache


class FusedStages(Protocol):
    """The stages a faster implementation may take over (``dia2.fused.FusedFrame``). A protocol, so this
    module never imports ``dia2.fused``: fused builds on frame's buffers, not the other way round."""

    def main(
        self, tokens: torch.Tensor, positions: torch.Tensor, cache_index: torch.Tensor, cache: AnyKV
    ) -> DecoderStepOutput: ...

    def depformer(
        self, buf: FrameBuffers, consts: FrameConstants, gen: torch.Generator | None = None
    ) -> None: ...


def depformer_codes(
    model: Dia2Model,
    hidden: torch.Tensor,
    first: torch.Tensor,
    cache: DepformerCache,
    main_text: torch.Tensor,
    second_text: torch.Tensor,
    branches: int,
    choose: Callable[[int, torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """Run the depformer's stages for ``N`` calls: ``first [N]`` is codebook 0's token, ``hidden [R, D]``.

    ``choose(stage, logits [N, branches, V])`` returns the token ``[N]`` of codebook ``stage + 1`` (it may
    sample, force a known code and record it); that token is the next stage's input in every branch.
    Shared by the one-call loop in ``generate.py`` and the batched engine. Returns the last token.
    """
    prev = first
    for stage in range(model.depformer.depth):
        logits = model.depformer(
            stage, prev.repeat_interleave(branches), hidden, cache, main_text, second_text
        )
        prev = choose(stage, logits.view(-1, branches, logits.shape[-1]))
    return prev


@dataclass
class FrameBuffers:
    """Every tensor a frame reads or writes, preallocated for ``capacity`` calls (static storage).

    :meth:`view` gives the same buffers for the first ``n`` calls (views, not copies), which is what a
    bucket's graph is captured on.
    """

    branches: int
    text_in: torch.Tensor  # [R, 2] text tokens of the next step (host writes; both branches = cond text)
    tokens: torch.Tensor  # [R, C] decoder inputs
    positions: torch.Tensor  # [R] rotary position of the next step
    cache_index: torch.Tensor  # [R] cache slot of the next step
    step: torch.Tensor  # [N] next step t
    known: torch.Tensor  # [N] frames below this are known (forced)
    active: torch.Tensor  # [N] bool: this call advances this frame
    ring: torch.Tensor  # [N, K, RING] recent aligned frames
    cfg_scale: torch.Tensor  # [N] float32
    text: RowSampling
    audio: RowSampling
    hidden: torch.Tensor  # [R, D] decoder output (phase 1 → phase 2)
    code: torch.Tensor  # [N] token of codebook 0 as fed to the depformer
    action: torch.Tensor  # [N] sampled action (0 stay, 1 new word)
    emitted: torch.Tensor  # [N, K] codes of frame t - max_delay + 1, complete after this step
    # [N] bool: this step's sampler produced a code outside 0..code_limit-1 (audio BOS/PAD, the
    # "ungenerated" marker, anything out of range) for the call. The code was replaced before it was
    # stored, so it reaches neither the decoder's embeddings nor Mimi; the engine ends that call's reply.
    bad_code: torch.Tensor
    pcm: torch.Tensor  # [N, frame_size] decoded audio of ``emitted``
    cache: AnyKV
    dep_cache: DepformerCache

    @classmethod
    def allocate(
        cls,
        model: Dia2Model,
        capacity: int,
        branches: int,
        max_steps: int,
        frame_size: int,
        *,
        spare: int = 0,
        cache: PagedDecoderCache | None = None,
    ) -> FrameBuffers:
        """``spare`` extra call entries (not in any :meth:`view`, no dense KV-cache rows) for the per-call
        and per-row state: :func:`lane_phase` points its padding entries there. ``cache``: a paged cache
        (its table covers the spare rows too, all on the trash block) instead of a dense one."""
        cfg = model.config
        dev = model.device
        cache_rows = capacity * branches
        capacity += spare
        r = capacity * branches
        k = cfg.data.num_codebooks
        return cls(
            branches=branches,
            text_in=torch.zeros(r, 2, dtype=torch.long, device=dev),
            tokens=torch.zeros(r, cfg.data.channels, dtype=torch.long, device=dev),
            positions=torch.zeros(r, dtype=torch.long, device=dev),
            cache_index=torch.zeros(r, dtype=torch.long, device=dev),
            step=torch.zeros(capacity, dtype=torch.long, device=dev),
            known=torch.zeros(capacity, dtype=torch.long, device=dev),
            active=torch.zeros(capacity, dtype=torch.bool, device=dev),
            ring=torch.zeros(capacity, k, RING, dtype=torch.long, device=dev),
            cfg_scale=torch.ones(capacity, device=dev),
            text=RowSampling.allocate(capacity, dev),
            audio=RowSampling.allocate(capacity, dev),
            hidden=torch.zeros(r, cfg.model.decoder.n_embd, dtype=model.dtype, device=dev),
            code=torch.zeros(capacity, dtype=torch.long, device=dev),
            action=torch.zeros(capacity, dtype=torch.long, device=dev),
            emitted=torch.zeros(capacity, k, dtype=torch.long, device=dev),
            bad_code=torch.zeros(capacity, dtype=torch.bool, device=dev),
            pcm=torch.zeros(capacity, frame_size, device=dev),
            cache=cache if cache is not None else model.allocate_decoder_cache(cache_rows, max_steps),
            dep_cache=model.allocate_depformer_cache(r),
        )

    def reset(self, mask: torch.Tensor) -> None:
        """Fresh per-call and per-row state for the calls where ``mask [capacity]`` is true (moshi's
        ``reset(mask)``): step, known frames, positions, cache index, ring and text back to zero, inactive,
        CFG scale 1. A closed slot then reads and writes nothing of its old call (and its stale cache index
        no longer lengthens the step's attention). The KV rows are the cache's business."""
        rows = mask.repeat_interleave(self.branches)
        for t in (self.step, self.known, self.ring, self.code, self.action, self.emitted):
            t.masked_fill_(mask.view(-1, *([1] * (t.dim() - 1))), 0)
        self.active.masked_fill_(mask, False)
        self.cfg_scale.masked_fill_(mask, 1.0)
        for t in (self.positions, self.cache_index, self.text_in):
            t.masked_fill_(rows.view(-1, *([1] * (t.dim() - 1))), 0)

    def view(self, n: int) -> FrameBuffers:
        r = n * self.branches
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "branches":
                out[f.name] = value
            elif isinstance(value, RowSampling):
                out[f.name] = value.rows(n)
            elif f.name == "cache":
                out[f.name] = value.rows(slice(0, r))
            elif isinstance(value, DepformerCache):
                out[f.name] = DepformerCache(value.keys[:, :r], value.values[:, :r])
            elif f.name in ("text_in", "tokens", "positions", "cache_index", "hidden"):
                out[f.name] = value[:r]
            else:
                out[f.name] = value[:n]
        return FrameBuffers(**out)

    @property
    def capacity(self) -> int:
        return int(self.step.shape[0])


@dataclass(frozen=True)
class FrameConstants:
    ids: TokenIds
    delays: torch.Tensor  # [K] long, on the device
    cfg_filter_k: int
    max_top_k: int

    @property
    def code_limit(self) -> int:
        """Codes a frame may hold: ``0 .. code_limit - 1`` (Mimi's codebook; Dia2's audio BOS/PAD ids
        2048/2049 sit just above it and are decoder inputs only, never codes to decode)."""
        return min(self.ids.audio_pad, self.ids.audio_bos)


def _write_code(buf: FrameBuffers, consts: FrameConstants, k: int, token: torch.Tensor) -> torch.Tensor:
    """Store codebook k's token for frame ``step + 1 - delay[k]``; returns the token the frame really
    has (the known code where that frame is known, else ``token``).

    A token outside ``0 .. code_limit - 1`` cannot come out of the samplers (codebook 0 masks BOS/PAD,
    the depformer's logits are cut at ``code_limit``), but if one ever did it would crash the Mimi
    decoder (and, for ids outside the audio vocabulary, the decoder's own embeddings) on CUDA: it is
    replaced by code 0 here and the call is flagged in ``buf.bad_code`` for the engine to end its reply."""
    invalid = (token < 0) | (token >= consts.code_limit)
    token = torch.where(invalid, torch.zeros_like(token), token)
    frame = buf.step + 1 - consts.delays[k]
    slot = frame.remainder(RING).view(-1, 1)
    row = buf.ring[:, k]
    old = row.gather(1, slot).squeeze(1)
    forced = (frame < buf.known) & (frame >= 0)
    keep = forced | (frame < 0) | ~buf.active
    buf.bad_code.logical_or_(invalid & ~keep)  # only a code that would have been kept matters
    row.scatter_(1, slot, torch.where(keep, old, token).view(-1, 1))
    return torch.where(forced, old, token)


def main_phase(
    model: Dia2Model,
    buf: FrameBuffers,
    consts: FrameConstants,
    gen: torch.Generator | None,
    fused: FusedStages | None = None,
    kv_len: int | None = None,
) -> None:
    """Decoder step for every row, then the action and codebook 0, sampled on the device.

    ``kv_len`` limits attention to the first ``kv_len`` cache slots (every row's next slot must lie
    below it): masked slots contribute nothing, so the result is the same while a step under load
    reads a fraction of the 1500-slot cache instead of all of it."""
    buf.bad_code.zero_()
    cache = buf.cache if kv_len is None else buf.cache.limit(kv_len)
    ids = consts.ids
    n, br = buf.step.shape[0], buf.branches
    frames = buf.step.view(-1, 1) - consts.delays.view(1, -1)  # [N, K]
    codes = buf.ring.gather(2, frames.remainder(RING).unsqueeze(-1)).squeeze(-1)
    audio_in = torch.where(frames < 0, torch.full_like(codes, ids.audio_bos), codes)
    buf.tokens[:, 2:] = audio_in.repeat_interleave(br, dim=0)
    buf.tokens[:, :2] = buf.text_in
    if br > 1:
        # The unconditional branch never sees the script.
        view = buf.tokens.view(n, br, -1)
        view[:, 1:, 0] = ids.zero
        view[:, 1:, 1] = ids.pad
    if fused is not None:
        out = fused.main(buf.tokens, buf.positions, buf.cache_index, cache)
    else:
        out = model.transformer(buf.tokens, buf.positions, buf.cache_index, cache)
    buf.hidden.copy_(out.hidden)
    action_logits = cfg_filter_rows(out.action_logits.view(n, br, -1), buf.cfg_scale, consts.cfg_filter_k)
    buf.action.copy_(sample_rows(action_logits, buf.text, consts.max_top_k, gen))
    cb0 = cfg_filter_rows(out.cb0_logits.view(n, br, -1), buf.cfg_scale, consts.cfg_filter_k)
    cb0 = mask_audio_specials_rows(cb0, ids.audio_pad, ids.audio_bos)
    token = sample_rows(cb0, buf.audio, consts.max_top_k, gen)
    buf.code.copy_(_write_code(buf, consts, 0, token))


def depformer_phase(
    model: Dia2Model,
    buf: FrameBuffers,
    consts: FrameConstants,
    gen: torch.Generator | None,
    fused: FusedStages | None = None,
) -> None:
    """Codebooks 1..K-1, the completed frame's codes, and the step counters of active calls.

    ``fused`` (``dia2/fused.py``) runs the same stages as one function per stage (optionally compiled);
    without it the model's modules run stage by stage."""

    def choose(stage: int, logits: torch.Tensor) -> torch.Tensor:
        picked = cfg_filter_rows(logits, buf.cfg_scale, consts.cfg_filter_k)
        return _write_code(buf, consts, stage + 1, sample_rows(picked, buf.audio, consts.max_top_k, gen))

    if fused is not None:
        fused.depformer(buf, consts, gen)
    else:
        depformer_codes(
            model,
            buf.hidden,
            buf.code,
            buf.dep_cache,
            buf.text_in[:, 0],
            buf.text_in[:, 1],
            buf.branches,
            choose,
        )
    finish_phase(buf, consts)


def finish_phase(buf: FrameBuffers, consts: FrameConstants) -> None:
    """End of a frame without the depformer: the completed frame's codes and the step counters.

    On its own this is the whole second phase of a *lead-in* step: when every codebook 1..K-1 code a
    step would write belongs to a frame that is already known (forced) or before frame 0, the 31
    depformer stages only compute values that are thrown away, so the engine skips them (see
    ``BatchEngine.step``); codebook 0 is sampled in :func:`main_phase` as usual.
    """
    # Frame t + 1 - max_delay has every codebook now (codebook k of frame f is written at f + delay[k] - 1).
    done = buf.step + 1 - consts.delays.max()
    slot = done.remainder(RING).view(-1, 1, 1).expand(-1, buf.ring.shape[1], 1)
    buf.emitted.copy_(buf.ring.gather(2, slot).squeeze(-1))
    inc = buf.active.long()
    buf.step.add_(inc)
    rows = inc.repeat_interleave(buf.branches)
    buf.positions.add_(rows)
    buf.cache_index.add_(rows)


# Per-call and per-row state a lane step reads from / writes back to the master buffers.
_LANE_CALL_FIELDS = ("step", "known", "active", "ring", "cfg_scale")  # bad_code: main_phase zeroes it
_LANE_ROW_FIELDS = ("text_in", "positions", "cache_index")


def lane_phase(
    model: Dia2Model,
    master: FrameBuffers,
    lane: FrameBuffers,
    slots: torch.Tensor,
    consts: FrameConstants,
    gen: torch.Generator | None,
    fused: FusedStages | None,
    kv_len: int,
) -> None:
    """A main-only (lead-in) step for the calls ``master[slots]`` alone, on the small ``lane`` buffers.

    Why: under load a new reply's 17 lead-in steps would otherwise each cost a full batch step; here they
    cost a main step at the lane's batch size. Each lane entry gathers its call's state (step, known
    frames, ring, positions, cache index, text, sampling) from the master buffers, runs
    :func:`main_phase` + :func:`finish_phase` (the depformer codes of a lead-in step are all discarded,
    see :func:`finish_phase`) and writes the state back, so the call ends exactly where a step in the
    batch (or alone) would have left it. The KV cache rows are gathered over the first ``kv_len`` slots
    (every lane row's next slot lies below it), and only the one slot each row wrote is scattered back.

    Padding entries carry the master's spare slot index (``master`` allocated with ``spare=1``: never
    active, position and cache index 0): they read the last real cache row and write their one K/V slot
    into its slot ``max_steps - 1``, which no step or prefill ever uses (a turn ends by step
    ``max_steps - 2``, the context policy keeps history below ``max_steps - 1``), so they disturb nothing.

    With a paged cache nothing is gathered but the rows' block tables: the lane writes its K/V straight
    into the pool, and the padding entries (spare rows, all on the trash block) write into the trash.
    """
    br = master.branches
    rows = (slots.view(-1, 1) * br + torch.arange(br, device=slots.device)).view(-1)
    for name in _LANE_CALL_FIELDS:
        getattr(lane, name).copy_(getattr(master, name).index_select(0, slots))
    for name in _LANE_ROW_FIELDS:
        getattr(lane, name).copy_(getattr(master, name).index_select(0, rows))
    for dst, src in ((lane.text, master.text), (lane.audio, master.audio)):
        dst.temperature.copy_(src.temperature.index_select(0, slots))
        dst.top_k.copy_(src.top_k.index_select(0, slots))
    if isinstance(master.cache, PagedDecoderCache):
        main_phase(model, replace(lane, cache=master.cache.rows(rows).limit(kv_len)), consts, gen, fused)
        finish_phase(lane, consts)
    else:
        _lane_dense(model, master.cache, lane, rows, consts, gen, fused, kv_len)
    for name in ("step", "ring"):
        getattr(master, name).index_copy_(0, slots, getattr(lane, name))
    for name in ("positions", "cache_index"):
        getattr(master, name).index_copy_(0, rows, getattr(lane, name))


def _lane_dense(
    model: Dia2Model,
    cache: DecoderCache,
    lane: FrameBuffers,
    rows: torch.Tensor,
    consts: FrameConstants,
    gen: torch.Generator | None,
    fused: FusedStages | None,
    kv_len: int,
) -> None:
    """The lane's main step on a dense cache: its rows' first ``kv_len`` slots gathered, the one slot
    each live row wrote scattered back."""
    br = lane.branches
    cache_rows = rows.clamp(max=cache.keys.shape[1] - 1)
    keys = cache.keys[:, :, :, :kv_len].index_select(1, cache_rows)
    values = cache.values[:, :, :, :kv_len].index_select(1, cache_rows)
    view = replace(lane, cache=DecoderCache(keys, values))
    written = lane.cache_index.clone()  # the slot each row writes this step (before the counters move)
    main_phase(model, view, consts, gen, fused)
    finish_phase(lane, consts)
    live = lane.active.repeat_interleave(br)
    target = torch.where(live, written, torch.full_like(written, cache.max_steps - 1))
    every = torch.arange(rows.shape[0], device=rows.device)
    cache.keys[:, cache_rows, :, target] = keys[:, every, :, written]
    cache.values[:, cache_rows, :, target] = values[:, every, :, written]
