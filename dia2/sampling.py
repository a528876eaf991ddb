"""Token choice: classifier-free guidance as a candidate filter, then greedy or top-k sampling.

Upstream's guidance does not sample from the guided distribution. It ranks ids by
``lerp(uncond, cond, scale)``, keeps the best ``filter_k`` (50) of them and then draws from the
*conditional* logits restricted to those ids. For the 2-way action head both ids always survive,
so guidance never changes word timing, only audio codes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = [
    "RowSampling",
    "SamplingParams",
    "cfg_filter",
    "cfg_filter_rows",
    "mask_audio_specials",
    "mask_audio_specials_rows",
    "sample",
    "sample_rows",
]


@dataclass(frozen=True)
class SamplingParams:
    """``temperature <= 0`` means greedy (argmax); ``top_k <= 0`` means no top-k cut."""

    temperature: float = 0.8
    top_k: int = 50

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


def cfg_filter(
    logits: torch.Tensor, scale: float, filter_k: int, *, exact_topk: bool = False
) -> torch.Tensor:
    """``logits [2, V]`` (row 0 conditional, row 1 unconditional) → ``[1, V]`` conditional logits
    with everything outside the guided top-``filter_k`` set to -inf.

    The threshold is the last value of ``torch.topk(..., sorted=False)``, as upstream computes it.
    On CPU that is the k-th largest value; CUDA's unsorted top-k may return another member of the
    top-k last, which keeps fewer candidates. ``exact_topk=True`` (off by default, a deliberate
    deviation) always uses the k-th largest value.
    """
    cond = logits[0:1].float()
    guided = torch.lerp(logits[1:2].float(), cond, scale)
    if filter_k <= 0 or guided.shape[-1] == 0:
        return cond
    k = min(filter_k, guided.shape[-1])
    top = torch.topk(guided, k=k, dim=-1, sorted=exact_topk).values
    threshold = top[..., -1:]
    return torch.where(guided >= threshold, cond, torch.full_like(cond, float("-inf")))


def mask_audio_specials(logits: torch.Tensor, audio_pad: int, audio_bos: int) -> torch.Tensor:
    """Make BOS/PAD unpickable for codebook 0 (the finite minimum, as upstream uses)."""
    masked = logits.clone()
    vocab = masked.shape[-1]
    for idx in (audio_pad, audio_bos):
        if 0 <= idx < vocab:
            masked[..., idx] = torch.finfo(masked.dtype).min
    return masked


def sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> torch.Tensor:
    """Pick one id per row of ``logits [R, V]`` → ``[R]`` (long).

    Sampling mirrors upstream's order of operations (softmax at temperature, NaN→0, renormalise,
    top-k on probabilities, renormalise, multinomial) but draws from an explicit generator so that a
    seed reproduces a run; upstream uses the global RNG, so sampled runs cannot match it draw for
    draw, only greedy runs can.
    """
    logits = logits.float()
    if params.greedy:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits / max(params.temperature, 1e-6), dim=-1)
    probs = torch.nan_to_num(probs, nan=0.0, posinf=0.0, neginf=0.0).clamp_min(0.0)
    total = probs.sum(dim=-1, keepdim=True)
    probs = probs / total.clamp_min(1e-12)
    # A row with no mass at all falls back to id 0, like upstream.
    fallback = torch.zeros_like(probs)
    fallback[..., 0] = 1.0
    probs = torch.where(total <= 0, fallback, probs)
    if 0 < params.top_k < probs.shape[-1]:
        top_p, top_i = torch.topk(probs, params.top_k, dim=-1)
        top_p = top_p / top_p.sum(dim=-1, keepdim=True).clamp_min(1e-12)
        draw = torch.multinomial(top_p, 1, generator=generator)
        return top_i.gather(-1, draw).squeeze(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@dataclass
class RowSampling:
    """Per-call sampling parameters as device tensors ``[N]``, so one captured graph serves calls with
    different settings. ``temperature <= 0`` is greedy; ``top_k <= 0`` (or above ``max_top_k``) keeps the
    engine's ``max_top_k`` best ids; ``cfg_scale == 1`` turns the guidance filter off for that call."""

    temperature: torch.Tensor  # [N] float32
    top_k: torch.Tensor  # [N] long

    @classmethod
    def allocate(cls, n: int, device: torch.device) -> RowSampling:
        return cls(torch.zeros(n, device=device), torch.ones(n, dtype=torch.long, device=device))

    def set_row(self, row: int, params: SamplingParams) -> None:
        self.temperature[row] = float(params.temperature)
        self.top_k[row] = int(params.top_k)

    def rows(self, n: int) -> RowSampling:
        return RowSampling(self.temperature[:n], self.top_k[:n])


def cfg_filter_rows(logits: torch.Tensor, scale: torch.Tensor, filter_k: int) -> torch.Tensor:
    """Batched :func:`cfg_filter`: ``logits [N, 2, V]`` (per call: conditional, unconditional) and
    ``scale [N]`` → ``[N, V]``. The threshold is the k-th largest guided value (:func:`cfg_filter` with
    ``exact_topk=True``): the engine's paths (this, ``fused.choose_token`` and the Triton kernel) keep
    exactly the best ``filter_k`` on every device, where upstream's rule depends on CUDA's unsorted top-k
    order. Calls whose scale is 1 get their conditional logits unfiltered, as the one-call loop does."""
    cond = logits[:, 0].float()
    if logits.shape[1] < 2 or filter_k <= 0:
        return cond
    guided = torch.lerp(logits[:, 1].float(), cond, scale.view(-1, 1).float())
    k = min(filter_k, guided.shape[-1])
    threshold = torch.topk(guided, k=k, dim=-1, sorted=True).values[..., -1:]
    filtered = torch.where(guided >= threshold, cond, torch.full_like(cond, float("-inf")))
    return torch.where((scale != 1.0).view(-1, 1), filtered, cond)


def sample_rows(
    logits: torch.Tensor, params: RowSampling, max_top_k: int, generator: torch.Generator | None
) -> torch.Tensor:
    """One id per row of ``logits [N, V]`` with per-row temperature / top-k, entirely on the device.

    The draw is exponential-race (``argmax(p / E)``, ``E ~ Exp(1)`` per id), which picks id i with
    probability p_i like ``torch.multinomial`` but needs no host sync and is CUDA-graph capturable. Greedy
    rows take the argmax of the logits, exactly as :func:`sample` does.
    """
    noise = torch.empty_like(logits, dtype=torch.float32).exponential_(generator=generator)
    return race_rows(logits, params.temperature, params.top_k, max_top_k, noise)


def race_rows(
    logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, max_top_k: int, noise: torch.Tensor
) -> torch.Tensor:
    """:func:`sample_rows` with the Exp(1) draw ``noise [N, V]`` given (one value per id).

    The candidates are the ids whose probability is at least the row's top_k-th largest (``top_k`` <= 0
    or above ``max_top_k`` → ``max_top_k``); a tie at that boundary keeps every tied id. The rule is
    stated on values, not on a sort order, so ``dia2/kernels.py`` implements it exactly without a sort."""
    logits = logits.float()
    greedy = logits.argmax(dim=-1)
    probs = torch.softmax(logits / temperature.clamp_min(1e-6).view(-1, 1), dim=-1)
    probs = torch.nan_to_num(probs, nan=0.0, posinf=0.0, neginf=0.0)
    k = min(max_top_k, probs.shape[-1])
    best = torch.topk(probs, k, dim=-1).values
    limit = torch.where((top_k <= 0) | (top_k > k), k, top_k).view(-1, 1)
    threshold = best.gather(-1, limit - 1)
    kept = torch.where(probs >= threshold, probs, torch.zeros_like(probs))
    sampled = (kept / noise[:, : probs.shape[-1]]).argmax(dim=-1)
    return torch.where(temperature <= 0, greedy, sampled)


def mask_audio_specials_rows(logits: torch.Tensor, audio_pad: int, audio_bos: int) -> torch.Tensor:
    """In-graph twin of :func:`mask_audio_specials` (no Python-side index checks on device data)."""
    vocab = logits.shape[-1]
    ids = torch.arange(vocab, device=logits.device)
    special = (ids == audio_pad) | (ids == audio_bos)
    return torch.where(special, torch.finfo(logits.dtype).min, logits)
