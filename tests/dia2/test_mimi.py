"""dia2.mimi.MimiCodec against the upstream reference fixture (tiny random Mimi checkpoint).

The fixture folder comes from DIA2_FIXTURE_DIR (default: tests/fixtures/dia2-tiny). Its reference.npz holds
upstream's Mimi codes of the two prefix WAVs and the waveforms upstream decoded from each case's tokens.
"""

from __future__ import annotations

import os
import wave
from pathlib import Path

import numpy as np
import pytest
import torch

from dia2.mimi import MimiCodec

# This VM has 2 shared vCPUs; 2 intra-op threads make torch 10-30x slower here.
torch.set_num_threads(1)

DEFAULT_FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "dia2-tiny"
CASES = ["greedy", "prefix", "cfg", "capped"]


def fixture_dir() -> Path:
    return Path(os.environ.get("DIA2_FIXTURE_DIR") or DEFAULT_FIXTURE)


@pytest.fixture(scope="module")
def fixture() -> Path:
    folder = fixture_dir()
    if not (folder / "reference.npz").is_file():
        pytest.fail(f"Dia2 fixture not found at {folder} (set DIA2_FIXTURE_DIR to a fixture folder)")
    return folder


@pytest.fixture(scope="module")
def reference(fixture: Path) -> dict[str, np.ndarray]:
    with np.load(fixture / "reference.npz") as npz:
        return {name: npz[name] for name in npz.files}


@pytest.fixture(scope="module")
def codec(fixture: Path) -> MimiCodec:
    # Load through the string path, i.e. through dia2.hub like a repo id would be.
    return MimiCodec.load(str(fixture / "mimi"))


def read_wav_as_upstream(path: Path) -> np.ndarray:
    """16-bit mono WAV -> float32 in [-1, 1) as int16 / 32768 (what upstream's loader yields at 24 kHz)."""
    with wave.open(str(path), "rb") as w:
        assert w.getnchannels() == 1 and w.getsampwidth() == 2
        assert w.getframerate() == 24000, "fixture prefixes are 24 kHz; no resampling is involved"
        raw = w.readframes(w.getnframes())
    return np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0


def test_attributes(codec: MimiCodec) -> None:
    assert codec.sample_rate == 24000
    assert codec.frame_size == 1920
    assert codec.frame_rate == 12.5
    assert codec.num_codebooks == 32 == codec.max_codebooks
    assert codec.codebook_size == 2048
    assert codec.device == torch.device("cpu")
    assert codec.dtype == torch.float32
    assert codec.frames_for(48000) == 25 and codec.frames_for(1921) == 2 and codec.frames_for(0) == 0


@pytest.mark.parametrize("speaker", ["s1", "s2"])
def test_encode_prefix_matches_upstream(
    fixture: Path, reference: dict[str, np.ndarray], codec: MimiCodec, speaker: str
) -> None:
    pcm = read_wav_as_upstream(fixture / f"prefix_{speaker}.wav")
    np.testing.assert_array_equal(pcm, reference[f"prefix_{speaker}_pcm"])

    codes = codec.encode(torch.from_numpy(pcm))
    expected = reference[f"prefix_{speaker}_codes"]
    assert codes.dtype == torch.long
    assert tuple(codes.shape) == expected.shape == (32, codec.frames_for(pcm.size))
    np.testing.assert_array_equal(codes.numpy(), expected)


@pytest.mark.parametrize("case", CASES)
def test_decode_matches_upstream(reference: dict[str, np.ndarray], codec: MimiCodec, case: str) -> None:
    tokens = torch.from_numpy(reference[f"{case}_audio_tokens"])
    expected = reference[f"{case}_waveform"]
    audio = codec.decode(tokens)
    assert audio.dtype == torch.float32
    assert audio.shape == (tokens.shape[1] * codec.frame_size,) == expected.shape
    assert float(audio.abs().max()) <= 1.0
    scale = float(np.abs(expected).max())
    err = float(np.abs(audio.numpy() - expected).max())
    assert err <= 1e-5 * scale, f"{case}: max |diff| {err:.3g} > 1e-5 * {scale:.3g}"


def test_fewer_codebooks_are_a_prefix_of_the_full_codes(
    reference: dict[str, np.ndarray], fixture: Path
) -> None:
    """Residual VQ: the first K codebooks do not depend on how many follow."""
    codec8 = MimiCodec.load(fixture / "mimi", num_codebooks=8)
    assert codec8.num_codebooks == 8
    codes = codec8.encode(torch.from_numpy(reference["prefix_s2_pcm"]))
    np.testing.assert_array_equal(codes.numpy(), reference["prefix_s2_codes"][:8])
    audio = codec8.decode(codes)
    assert audio.shape == (codes.shape[1] * 1920,)


def test_decode_rejects_special_ids(reference: dict[str, np.ndarray], codec: MimiCodec) -> None:
    tokens = torch.from_numpy(reference["capped_audio_tokens"]).clone()
    tokens[3, 2] = 2049  # Dia2 audio PAD
    with pytest.raises(ValueError, match=r"outside 0\.\.2047"):
        codec.decode(tokens)
    tokens[3, 2] = -2  # Dia2 "ungenerated" marker
    with pytest.raises(ValueError, match=r"outside 0\.\.2047"):
        codec.decode(tokens)


def test_empty_and_bad_shapes(codec: MimiCodec) -> None:
    assert tuple(codec.encode(torch.zeros(0)).shape) == (32, 0)
    assert tuple(codec.decode(torch.zeros(32, 0, dtype=torch.long)).shape) == (0,)
    with pytest.raises(ValueError, match="1-D"):
        codec.encode(torch.zeros(1, 1920))
    with pytest.raises(TypeError, match="float"):
        codec.encode(torch.zeros(1920, dtype=torch.int16))
    with pytest.raises(ValueError, match="codebooks"):
        codec.decode(torch.zeros(33, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="out of range"):
        MimiCodec(codec.model, num_codebooks=33)
