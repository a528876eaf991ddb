"""16-bit / 32-bit PCM WAV in and out with the standard library only (no soundfile on GPU boxes)."""

from __future__ import annotations

import os
import wave
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["read_wav_mono", "resample_linear", "write_wav"]


def read_wav_mono(path: str | os.PathLike[str]) -> tuple[torch.Tensor, int]:
    """Samples as float32 in [-1, 1] (int16 / 32768, like upstream's reader), channels averaged."""
    with wave.open(str(path), "rb") as handle:
        width = handle.getsampwidth()
        channels = handle.getnchannels()
        rate = handle.getframerate()
        raw = handle.readframes(handle.getnframes())
    if width == 2:
        data = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
    elif width == 4:
        data = np.frombuffer(raw, dtype="<i4").astype(np.float32) / 2147483648.0
    elif width == 1:
        data = (np.frombuffer(raw, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    else:
        raise ValueError(f"{path}: unsupported WAV sample width {width} bytes")
    if channels > 1:
        data = data.reshape(-1, channels).mean(axis=1)
    return torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32)), rate


def resample_linear(audio: torch.Tensor, src_rate: int, dst_rate: int) -> torch.Tensor:
    """Linear-interpolation resampling (upstream's fallback when no better resampler is installed)."""
    if src_rate == dst_rate:
        return audio
    length = max(1, round(audio.shape[-1] * dst_rate / src_rate))
    out = F.interpolate(audio.view(1, 1, -1), size=length, mode="linear", align_corners=False)
    return out.view(-1)


def write_wav(path: str | os.PathLike[str], audio: torch.Tensor, sample_rate: int) -> Path:
    """Write mono float audio as 16-bit PCM (clipped to [-1, 1], scaled by 32767 like upstream)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pcm = (audio.detach().float().cpu().clamp(-1.0, 1.0).numpy() * 32767.0).astype("<i2")
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(sample_rate)
        handle.writeframes(pcm.tobytes())
    return path
