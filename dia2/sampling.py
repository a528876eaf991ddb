"""Token choice: classifier-free guidance as a candidate filter, then greedy or top-k sampling.

Upstream's guidance does not sample from the guided distribution. It ranks ids by
``lerp(uncond, cond, scale)``, keeps the best ``filter_k`` (50) of them and then draws from the
*conditional* logits restricted to those ids. For the 2-way action head both ids always survive,
so guidance never changes word timing, only audio codes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["SamplingParams", "cfg_filter", "mask_audio_specials", "sample"]


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
