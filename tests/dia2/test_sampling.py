"""Guidance filter and samplers."""

from __future__ import annotations

import torch

from dia2.sampling import SamplingParams, cfg_filter, mask_audio_specials, sample


def test_cfg_filter_keeps_guided_top_k_and_returns_conditional_scores() -> None:
    cond = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0])
    uncond = torch.tensor([9.0, 0.0, 3.0, 0.0, 0.0])
    # guided = uncond + 2 * (cond - uncond) = [1, 8, 3, 4, 2]; top-2 ids are 1 and 3.
    out = cfg_filter(torch.stack([cond, uncond]), scale=2.0, filter_k=2)
    assert out.shape == (1, 5)
    assert torch.isinf(out[0, [0, 2, 4]]).all()
    assert out[0, 1] == 4.0 and out[0, 3] == 2.0  # conditional values, not guided ones
    # Greedy then picks the best *conditional* id among the candidates (1), not the guided best.
    assert sample(out, SamplingParams(0.0, 1), None).item() == 1


def test_cfg_filter_never_changes_a_two_way_decision() -> None:
    logits = torch.tensor([[0.2, 0.1], [-5.0, 7.0]])
    out = cfg_filter(logits, scale=6.0, filter_k=50)
    torch.testing.assert_close(out, logits[:1])


def test_cfg_filter_exact_matches_default_on_cpu() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 2050, generator=gen)
    torch.testing.assert_close(
        cfg_filter(logits, 2.0, 50), cfg_filter(logits, 2.0, 50, exact_topk=True), rtol=0, atol=0
    )
    assert torch.isfinite(cfg_filter(logits, 2.0, 50)).sum() == 50


def test_mask_audio_specials() -> None:
    logits = torch.zeros(1, 2050)
    logits[0, 2048] = logits[0, 2049] = 100.0
    masked = mask_audio_specials(logits, 2049, 2048)
    assert masked.argmax().item() < 2048
    assert logits[0, 2049] == 100.0  # input untouched


def test_greedy_is_argmax() -> None:
    logits = torch.tensor([[0.1, 3.0, -1.0], [2.0, 0.0, 1.0]])
    assert sample(logits, SamplingParams(0.0, 50), None).tolist() == [1, 0]


def test_seeded_sampling_is_reproducible_and_respects_top_k() -> None:
    logits = torch.randn(1, 100, generator=torch.Generator().manual_seed(1))
    params = SamplingParams(1.0, 5)
    top5 = set(logits[0].topk(5).indices.tolist())
    draws_a = [
        sample(logits, params, g).item() for g in [torch.Generator().manual_seed(7)] for _ in range(50)
    ]
    gen = torch.Generator().manual_seed(7)
    draws_b = [sample(logits, params, gen).item() for _ in range(50)]
    assert draws_a == draws_b
    assert set(draws_a) <= top5
    assert len(set(draws_a)) > 1


def test_top_k_one_equals_greedy() -> None:
    logits = torch.randn(4, 2048, generator=torch.Generator().manual_seed(3))
    gen = torch.Generator().manual_seed(0)
    torch.testing.assert_close(sample(logits, SamplingParams(0.7, 1), gen), logits.argmax(-1))
