"""The generation loop: one decoder step + 31 depformer stages per frame, text via the state machine.

Plain functions over explicit state (gpt-fast style). Two batch rows always run: row 0 is the
conditional branch, row 1 the unconditional one (text replaced by zero/pad), used only when
``cfg_scale != 1``; both rows share the audio history. Upstream behaviours we match by default are
listed in docs/DIA2.md; each is pinned by the fixture's parity tests.

Audio layout: the *delayed* buffer ``audio[k, c]`` holds aligned frame ``c - delay[k]`` of codebook k.
Step t feeds column t (BOS while ``t < delay[k]``) and writes the chosen codes into column t + 1.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .frame import depformer_codes
from .model import DecoderCache, DepformerCache, Dia2Model
from .prefix import PrefixPlan
from .sampling import SamplingParams, cfg_filter, mask_audio_specials, sample
from .state_machine import Entry, MachineState, StateMachine, TokenIds

__all__ = [
    "GenerationOptions",
    "GenerationOutput",
    "GenerationTrace",
    "delay_frames",
    "run_generation",
    "undelay_frames",
]

logger = logging.getLogger(__name__)

BRANCHES = 2  # conditional + unconditional


@dataclass(frozen=True)
class GenerationOptions:
    text: SamplingParams = field(default_factory=lambda: SamplingParams(0.6, 50))
    audio: SamplingParams = field(default_factory=lambda: SamplingParams(0.8, 50))
    cfg_scale: float = 2.0
    cfg_filter_k: int = 50
    # Frames of forced padding before the first word (upstream GenerationConfig.initial_padding).
    initial_padding: int = 2
    # Upstream hard-codes 6 here and ignores the config's data.max_pad (8).
    max_padding: int = 6
    # Loop bound in generation steps; None → config.runtime.max_context_steps (upstream).
    max_steps: int | None = None
    seed: int | None = None
    include_prefix_audio: bool = False
    # Deliberate deviations, all off by default (see docs/DIA2.md):
    cfg_exact_topk: bool = False  # use the true k-th guided value as CFG threshold on every device
    prefix_consistent_positions: bool = False  # after warm-up, keep rotary position == cache slot


@dataclass
class GenerationTrace:
    """What went into and out of every decoder call and state-machine call (for parity tests)."""

    step_tokens: list[torch.Tensor] = field(default_factory=list)  # [B, C] each
    positions: list[int] = field(default_factory=list)
    cache_index: list[int] = field(default_factory=list)
    is_warmup: list[bool] = field(default_factory=list)
    action_logits: list[torch.Tensor] = field(default_factory=list)  # [B, A] each
    # step, token_in, forced, main_out, second_out, consumed_new_word
    machine: list[tuple[int, int, int, int, int, int]] = field(default_factory=list)


@dataclass
class GenerationOutput:
    audio_tokens: torch.Tensor  # [K, frames] aligned, cropped: what Mimi decodes
    audio_delayed: torch.Tensor  # [K, last_step + 2] delayed buffer, never-written cells = PAD
    audio_aligned_uncropped: torch.Tensor  # [K, n]
    start_step: int
    first_word_frame: int
    crop_frames: int
    end_step: int | None
    last_generated_step: int
    transcript: list[tuple[str, int]]  # (word, step consumed), prefix words included
    consumption_times: list[int]
    timestamps: list[tuple[str, float]]  # script words only, seconds relative to the crop
    trace: GenerationTrace | None


def delay_frames(aligned: torch.Tensor, delays: list[int], pad: int) -> torch.Tensor:
    """``[K, n]`` aligned → ``[K, n + max_delay]`` delayed, PAD where nothing is known."""
    k, n = aligned.shape
    out = aligned.new_full((k, n + max(delays, default=0)), pad)
    for i, d in enumerate(delays):
        out[i, d : d + n] = aligned[i]
    return out


def undelay_frames(delayed: torch.Tensor, delays: list[int], pad: int) -> torch.Tensor:
    """Inverse of :func:`delay_frames`: ``[K, n]`` → ``[K, max(0, n - max_delay)]``."""
    k, n = delayed.shape
    frames = max(0, n - max(delays, default=0))
    out = delayed.new_full((k, frames), pad)
    for i, d in enumerate(delays):
        out[i] = delayed[i, d : d + frames]
    return out


@dataclass
class _Loop:
    """Mutable state of one generation call."""

    model: Dia2Model
    ids: TokenIds
    delays: torch.Tensor  # [K] long
    step_tokens: torch.Tensor  # [B, C] inputs of the next decoder call
    audio: torch.Tensor  # [K, S] delayed buffer (identical for both rows, so stored once)
    cache: DecoderCache
    dep_cache: DepformerCache
    cache_len: int  # slots written so far (upstream's single cache length)
    trace: GenerationTrace | None

    def fill_audio_inputs(self, t: int) -> None:
        column = self.audio[:, t]
        bos = torch.full_like(column, self.ids.audio_bos)
        self.step_tokens[:, 2:] = torch.where(self.delays > t, bos, column).unsqueeze(0)

    def set_text(self, main: int, second: int) -> None:
        self.step_tokens[0, 0], self.step_tokens[0, 1] = main, second
        # The unconditional row never sees the script.
        self.step_tokens[1:, 0], self.step_tokens[1:, 1] = self.ids.zero, self.ids.pad

    def decoder_step(self, position: int, warmup: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        device = self.step_tokens.device
        positions = torch.full((BRANCHES,), position, dtype=torch.long, device=device)
        index = torch.full((BRANCHES,), self.cache_len, dtype=torch.long, device=device)
        out = self.model.transformer(self.step_tokens, positions, index, self.cache)
        if self.trace is not None:
            self.trace.step_tokens.append(self.step_tokens.detach().cpu().clone())
            self.trace.positions.append(position)
            self.trace.cache_index.append(self.cache_len)
            self.trace.is_warmup.append(warmup)
            self.trace.action_logits.append(out.action_logits.detach().cpu().clone())
        self.cache_len += 1
        return out.hidden, out.action_logits, out.cb0_logits

    def machine_step(
        self, machine: StateMachine, state: MachineState, t: int, token: int, forced: bool
    ) -> tuple[int, int]:
        res = machine.process(t, state, token, forced=forced)
        if self.trace is not None:
            self.trace.machine.append(
                (t, token, int(forced), res.main, res.second, int(res.consumed_new_word))
            )
        return res.main, res.second


def _choose(
    logits: torch.Tensor,
    params: SamplingParams,
    opts: GenerationOptions,
    generator: torch.Generator | None,
    audio_specials: tuple[int, int] | None = None,
) -> torch.Tensor:
    """``logits [2, V]`` → chosen id ``[1]`` (row 0's choice; the unconditional row only guides)."""
    picked = (
        cfg_filter(logits, opts.cfg_scale, opts.cfg_filter_k, exact_topk=opts.cfg_exact_topk)
        if (opts.cfg_scale != 1.0)
        else logits[0:1].float()
    )
    if audio_specials is not None:
        picked = mask_audio_specials(picked, *audio_specials)
    return sample(picked, params, generator)


def run_generation(
    model: Dia2Model,
    ids: TokenIds,
    entries: list[Entry],
    *,
    second_stream_ahead: int,
    options: GenerationOptions,
    prefix: PrefixPlan | None = None,
    trace: GenerationTrace | None = None,
    on_step: Callable[[int], None] | None = None,
    frame_rate: float = 12.5,
) -> GenerationOutput:
    """Run prefix warm-up (if any) and the generation loop; returns tokens, not audio."""
    config = model.config
    device = model.device
    delays = list(config.data.delay_pattern)
    max_delay = max(delays, default=0)
    max_steps = options.max_steps or config.runtime.max_context_steps
    if max_steps <= 0:
        raise ValueError("max_steps must be positive")

    machine = StateMachine(
        ids,
        second_stream_ahead=second_stream_ahead,
        max_padding=options.max_padding,
        initial_padding=options.initial_padding,
    )
    prefix_entries = list(prefix.entries) if prefix is not None else []
    state = machine.new_state(prefix_entries + list(entries))

    delayed_prefix = None
    if prefix is not None:
        delayed_prefix = delay_frames(prefix.aligned_tokens.to(device), delays, ids.audio_pad)
    prefix_len = 0 if delayed_prefix is None else delayed_prefix.shape[1]
    # Upstream sizes both the delayed buffer and the KV cache this way.
    total = max_steps + prefix_len + 1
    audio = torch.full((len(delays), total), ids.ungenerated, dtype=torch.long, device=device)
    if delayed_prefix is not None:
        audio[:, :prefix_len] = delayed_prefix

    step_tokens = torch.full((BRANCHES, config.data.channels), ids.pad, dtype=torch.long, device=device)
    loop = _Loop(
        model=model,
        ids=ids,
        delays=torch.tensor(delays, dtype=torch.long, device=device),
        step_tokens=step_tokens,
        audio=audio,
        cache=model.allocate_decoder_cache(BRANCHES, total),
        dep_cache=model.allocate_depformer_cache(BRANCHES),
        cache_len=0,
        trace=trace,
    )
    loop.set_text(ids.bos, ids.pad)
    generator = None
    if not (options.text.greedy and options.audio.greedy):
        generator = torch.Generator(device=device)
        if options.seed is not None:
            generator.manual_seed(options.seed)
        else:
            generator.seed()

    with torch.inference_mode():
        start = 0
        prefix_words = 0
        if prefix is not None:
            start = _warm_up(loop, machine, state, prefix)
            prefix_words = _end_prefix(state, len(prefix_entries))
        if options.prefix_consistent_positions:
            position_shift = loop.cache_len - start
        else:
            # Upstream restarts at the last warm-up position while the cache already holds it:
            # rotary positions run one behind the cache slots from here on.
            position_shift = 0
        first_word_frame, last_step = _generate_frames(
            loop, machine, state, options, generator, start, max_steps, max_delay, position_shift, on_step
        )

    if first_word_frame is None:
        first_word_frame = start
    limit = min((start + 1) if last_step < start else (last_step + 2), total)
    delayed = audio[:, :limit].clone()
    delayed[delayed == ids.ungenerated] = ids.audio_pad
    aligned = undelay_frames(delayed, delays, ids.audio_pad)
    crop = 0 if options.include_prefix_audio else max(first_word_frame, 0)
    if 0 < crop < aligned.shape[-1]:
        cropped = aligned[:, crop:]
    else:
        cropped = aligned
        if crop >= aligned.shape[-1]:
            crop = 0

    words = state.transcript
    if prefix is not None and not options.include_prefix_audio:
        # Upstream drops the prefix's words by count, not by step (the ones the warm-up consumed).
        words = words[prefix_words:]
    timestamps = [(w, (step - crop) / frame_rate) for w, step in words if step - crop >= 0]
    return GenerationOutput(
        audio_tokens=cropped,
        audio_delayed=delayed,
        audio_aligned_uncropped=aligned,
        start_step=start,
        first_word_frame=first_word_frame,
        crop_frames=crop,
        end_step=state.end_step,
        last_generated_step=last_step,
        transcript=list(state.transcript),
        consumption_times=list(state.consumption_times),
        timestamps=timestamps,
        trace=trace,
    )


def _warm_up(loop: _Loop, machine: StateMachine, state: MachineState, prefix: PrefixPlan) -> int:
    """Feed every prefix frame once with forced text; returns the step generation starts at."""
    ids = loop.ids
    forced_steps = set(prefix.new_word_steps)
    for t in range(prefix.aligned_frames):
        loop.fill_audio_inputs(t)
        loop.decoder_step(position=t, warmup=True)
        token = ids.new_word if t in forced_steps else ids.pad
        main, second = loop.machine_step(machine, state, t, token, forced=True)
        loop.set_text(main, second)
    return max(prefix.aligned_frames - 1, 0)


def _end_prefix(state: MachineState, prefix_entries: int) -> int:
    """After the warm-up: the state machine never re-enters the prefix. Prefix words the warm-up did not
    start (a forced start at or past the prefix's last frame, e.g. by speaker 1's +3 shift, or a start
    skipped while the previous word was still being spelled) are dropped, and so are the unspelled
    pieces of the last prefix word; the second stream's look-ahead is dropped when it may hold a dropped
    word (otherwise it already looks into the script, as upstream's). Upstream keeps them all, and the
    model then reads the prefix's transcript aloud at the start of its reply (a failure users of
    upstream's streaming servers reported). Returns how many prefix words were started."""
    started = len(state.transcript)
    dropped = prefix_entries - len(state.consumption_times)
    for _ in range(dropped):
        state.entries.popleft()
    state.pending_tokens.clear()
    if dropped:
        state.lookahead_tokens.clear()
    return started


def _generate_frames(
    loop: _Loop,
    machine: StateMachine,
    state: MachineState,
    opts: GenerationOptions,
    generator: torch.Generator | None,
    start: int,
    max_steps: int,
    max_delay: int,
    position_shift: int,
    on_step: Callable[[int], None] | None,
) -> tuple[int | None, int]:
    ids = loop.ids
    model = loop.model
    audio = loop.audio
    first_word_frame: int | None = None
    eos_cutoff: int | None = None
    last_step = start - 1
    specials = (ids.audio_pad, ids.audio_bos)
    for offset in range(max_steps):
        t = start + offset
        if eos_cutoff is not None and t >= eos_cutoff:
            break
        if t + 1 >= audio.shape[-1]:
            break
        loop.fill_audio_inputs(t)
        loop.step_tokens[1:, 0], loop.step_tokens[1:, 1] = ids.zero, ids.pad
        hidden, action_logits, cb0_logits = loop.decoder_step(position=t + position_shift, warmup=False)

        action = int(_choose(action_logits, opts.text, opts, generator).item())
        main, second = loop.machine_step(machine, state, t, action, forced=False)
        if first_word_frame is None and main == ids.new_word:
            # Upstream's first-word detection; with a second stream the main stream never carries
            # the new-word id, so this stays None and the crop falls back to the start step.
            first_word_frame = t - opts.initial_padding
        # Both rows get the new text here; row 1's is replaced before the next decoder call, but
        # the depformer below sees the conditional text in both rows, as upstream.
        loop.step_tokens[:, 0], loop.step_tokens[:, 1] = main, second

        token = _choose(cb0_logits, opts.audio, opts, generator, audio_specials=specials)
        audio[0, t + 1] = token[0]

        def choose(stage: int, logits: torch.Tensor, t: int = t) -> torch.Tensor:
            picked = _choose(logits[0], opts.audio, opts, generator)
            audio[stage + 1, t + 1] = picked[0]
            return picked

        depformer_codes(
            model,
            hidden,
            token,
            loop.dep_cache,
            loop.step_tokens[:, 0].clone(),
            loop.step_tokens[:, 1].clone(),
            BRANCHES,
            choose,
        )
        last_step = t
        if eos_cutoff is None and state.end_step is not None:
            # Let every codebook's delay run out and leave room for the last word's padding.
            eos_cutoff = state.end_step + max_delay + machine.max_padding
        if on_step is not None:
            on_step(t)
    return first_word_frame, last_step
