"""dia2.mimi_stream.StreamingMimiDecoder against transformers' one-shot ``MimiModel.decode``.

Models: tiny random ``MimiModel``s (recipes §8 shape, with 32 quantizers; sliding windows short enough
that 40+ frames wrap the rolling KV cache) and the Dia2 fixture's tiny ``mimi/`` checkpoint. Equality is
measured as max |streamed - one-shot| / max |one-shot| and must stay under 1e-4.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch
from transformers import MimiConfig, MimiModel

from dia2.mimi_stream import MimiStreamState, StreamingMimiDecoder

# This VM has 2 shared vCPUs; 2 intra-op threads make torch 10-30x slower here.
torch.set_num_threads(1)

TOL = 1e-4  # relative to the one-shot output's max magnitude
FRAME = 1920
N_FRAMES = 44
# Uneven multi-frame chunks (sum N_FRAMES), so chunk boundaries fall at many different stream offsets.
GROUPS = [1, 3, 2, 7, 1, 5, 4, 1, 9, 2, 6, 3]
FIXTURE_CANDIDATES = [
    Path(os.environ["DIA2_FIXTURE_DIR"]) / "mimi" if os.environ.get("DIA2_FIXTURE_DIR") else None,
    Path(__file__).resolve().parents[1] / "fixtures" / "dia2-tiny" / "mimi",
    Path("/work/shared/fixtures/dia2-tiny/mimi"),
]


def _decoder_transformer(model: MimiModel) -> torch.nn.Module:
    """The decoder's transformer in either transformers layout: nested under ``model.decoder`` (5.2x)
    or on the model itself (5.17, the GPU image), as ``dia2.mimi_stream`` accepts both."""
    nested = getattr(model.decoder, "decoder_transformer", None)
    return nested if nested is not None else model.decoder_transformer


def tiny_random_mimi(seed: int = 0, **overrides: object) -> MimiModel:
    """Tiny random Mimi whose every part visibly shapes the output.

    transformers initialises codebooks to zeros (every code decodes to silence) and layer scales to 0.01
    (the transformer barely matters), which would let a broken codebook or transformer path pass; both are
    randomised, and attention is sharpened so a wrong cache window changes the audio well above TOL.
    """
    kwargs: dict[str, object] = dict(
        hidden_size=64,
        num_filters=8,
        codebook_size=64,
        codebook_dim=32,
        num_quantizers=32,
        vector_quantization_hidden_dimension=32,
        upsample_groups=64,
        num_hidden_layers=2,
        intermediate_size=128,
        num_attention_heads=4,
        num_key_value_heads=4,
        use_cache=True,
    )
    kwargs.update(overrides)
    torch.manual_seed(seed)
    model = MimiModel(MimiConfig(**kwargs)).eval()
    with torch.no_grad():
        for module in model.modules():
            if hasattr(module, "embed_sum"):
                module.embed_sum.normal_()
                module._embed = None
            if type(module).__name__ == "MimiLayerScale":
                module.scale.uniform_(0.5, 1.0)
        for layer in _decoder_transformer(model).layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.weight.mul_(4.0)
    return model


def fixture_mimi_dir() -> Path | None:
    for folder in FIXTURE_CANDIDATES:
        if folder is not None and (folder / "config.json").is_file():
            return folder
    return None


@pytest.fixture(scope="module")
def models() -> dict[str, MimiModel]:
    found = {
        # window 250 > 2 * N_FRAMES steps: cache never wraps
        "tiny": tiny_random_mimi(),
        # window 10 steps = 5 frames: the rolling cache wraps many times
        "tiny_window10": tiny_random_mimi(sliding_window=10),
        # replicate padding: the stream start must copy each conv's first input sample
        "tiny_replicate": tiny_random_mimi(seed=1, pad_mode="replicate", sliding_window=7),
    }
    folder = fixture_mimi_dir()
    if folder is not None:
        found["fixture"] = MimiModel.from_pretrained(str(folder)).eval()
    return found


def random_codes(model: MimiModel, batch: int, k: int, frames: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.config.codebook_size, (batch, k, frames), generator=gen)


def one_shot(model: MimiModel, codes: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.decode(codes).audio_values[:, 0]


def stream(dec: StreamingMimiDecoder, codes: torch.Tensor, groups: list[int] | None = None) -> torch.Tensor:
    sizes = groups if groups is not None else [1] * codes.shape[-1]
    assert sum(sizes) == codes.shape[-1]
    out, start = [], 0
    for n in sizes:
        chunk = dec.decode_frame(codes[..., start : start + n])
        assert chunk.shape == (codes.shape[0], n * FRAME)
        out.append(chunk)
        start += n
    return torch.cat(out, dim=-1)


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    assert got.shape == ref.shape
    return float((got.float() - ref.float()).abs().max() / ref.float().abs().max())


@pytest.mark.parametrize("name", ["tiny", "tiny_window10", "tiny_replicate", "fixture"])
@pytest.mark.parametrize("k", [4, 32])
def test_streamed_equals_one_shot(models: dict[str, MimiModel], name: str, k: int) -> None:
    if name not in models:
        pytest.skip("Dia2 fixture mimi/ checkpoint not found")
    model = models[name]
    codes = random_codes(model, 2, k, N_FRAMES, seed=k)
    ref = one_shot(model, codes)
    assert ref.shape == (2, N_FRAMES * FRAME)
    assert float(ref.abs().max()) > 1e-3  # not silence: the comparison means something

    dec = StreamingMimiDecoder(model, batch_size=2)
    per_frame = stream(dec, codes)
    err_frames = rel_err(per_frame, ref)
    assert err_frames < TOL, f"{name} K={k}: frame-by-frame rel err {err_frames:.2e}"

    dec.reset()
    grouped = stream(dec, codes, GROUPS)
    err_groups = rel_err(grouped, ref)
    assert err_groups < TOL, f"{name} K={k}: grouped rel err {err_groups:.2e}"


def test_tolerance_detects_missing_state(models: dict[str, MimiModel]) -> None:
    """The 1e-4 bound is far below what dropping conv state or misplacing the KV window costs."""
    model = models["tiny_window10"]
    codes = random_codes(model, 1, 32, 24, seed=5)
    ref = one_shot(model, codes)
    # transformers' per-frame decode: KV cache carried, conv state not.
    naive = torch.cat([one_shot(model, codes[..., i : i + 1]) for i in range(codes.shape[-1])], dim=-1)
    assert rel_err(naive, ref) > 100 * TOL

    tconf = _decoder_transformer(model).config
    try:
        tconf.sliding_window = 11  # off by one step
        off_by_one = one_shot(model, codes)
    finally:
        tconf.sliding_window = 10
    assert rel_err(off_by_one, ref) > 5 * TOL


@pytest.mark.parametrize("name", ["tiny_window10", "tiny_replicate"])
def test_batch_row_reset_matches_fresh_stream(models: dict[str, MimiModel], name: str) -> None:
    model = models[name]
    k, before, after = 8, 20, 24
    codes = random_codes(model, 3, k, before + after, seed=11)
    dec = StreamingMimiDecoder(model, batch_size=3)

    first = stream(dec, codes[..., :before])
    dec.reset(torch.tensor([False, True, False]))
    assert dec.state.offset.tolist() == [2 * before, 0, 2 * before]
    second = stream(dec, codes[..., before:], [5, 1, 1, 10, 7])
    full = torch.cat([first, second], dim=-1)

    ref_all = one_shot(model, codes)
    for row in (0, 2):  # untouched rows continue their streams
        assert rel_err(full[row : row + 1], ref_all[row : row + 1]) < TOL
    assert rel_err(first[1:2], ref_all[1:2, : before * FRAME]) < TOL
    # the reset row equals a fresh decode of its codes from the reset point on
    ref_row1 = one_shot(model, codes[1:2, :, before:])
    assert rel_err(second[1:2], ref_row1) < TOL
    # and is not just the continuation of its old stream (reset really cleared state)
    assert rel_err(second[1:2], ref_all[1:2, before * FRAME :]) > 10 * TOL


def test_multi_frame_call_shape_and_state_layout(models: dict[str, MimiModel]) -> None:
    model = models["tiny"]
    dec = StreamingMimiDecoder(model, batch_size=2)
    state = dec.state
    assert isinstance(state, MimiStreamState)
    shapes_before = [t.shape for t in state.tensors()]
    pointers = [t.data_ptr() for t in state.tensors()]
    out = dec.decode_frame(random_codes(model, 2, 4, 3, seed=3))
    assert out.shape == (2, 3 * FRAME)
    # static, in place: same tensors (CUDA-graph friendly), same shapes
    assert [t.shape for t in dec.state.tensors()] == shapes_before
    assert [t.data_ptr() for t in dec.state.tensors()] == pointers
    assert dec.state.keys[0].shape == (2, 4, model.config.sliding_window, model.config.head_dim)
    assert dec.state.offset.tolist() == [6, 6]


def test_bad_inputs_raise(models: dict[str, MimiModel]) -> None:
    model = models["tiny"]
    dec = StreamingMimiDecoder(model, batch_size=2)
    with pytest.raises(ValueError):
        dec.decode_frame(random_codes(model, 3, 4, 1, seed=0))
    with pytest.raises(ValueError):
        dec.reset([True, False, True])
    with pytest.raises(ValueError):
        StreamingMimiDecoder(tiny_random_mimi(pad_mode="reflect"))


def test_bfloat16_smoke(models: dict[str, MimiModel]) -> None:
    model = models.get("fixture", models["tiny"])
    codes = random_codes(model, 2, 32, 8, seed=7)
    ref = one_shot(model, codes)
    model_bf16 = copy.deepcopy(model).to(torch.bfloat16)  # the copy's stale fp32 codebook cache is refreshed
    dec = StreamingMimiDecoder(model_bf16, batch_size=2)
    assert dec.state.conv_history[0].dtype == torch.bfloat16
    out = stream(dec, codes, [1, 2, 1, 4])
    assert out.dtype == torch.bfloat16
    assert bool(torch.isfinite(out).all())
    # bf16 rounding through ~20 layers: loose, but catches a wrong path (that would be O(1))
    assert rel_err(out, ref) < 0.1
