"""Whisper-style log-mel features for the end-of-turn model, numpy only.

Smart Turn v3 is a Whisper-tiny encoder with a classification head, trained on the features of Hugging Face's
``WhisperFeatureExtractor(chunk_length=8)``: 16 kHz audio, 25 ms Hann windows every 10 ms, 80 Slaney mel
bands, log10, a dynamic range of 8 decades under the loudest bin, scaled to about [-1, 1]. The waveform is
first normalised to zero mean and unit variance. tests/audio/test_turn.py checks this against transformers.
"""

from __future__ import annotations

import functools

import numpy as np
import numpy.typing as npt

__all__ = ["N_FRAMES", "N_MELS", "RATE", "WINDOW_SAMPLES", "fit_window", "log_mel"]

RATE = 16000
N_FFT = 400  # 25 ms
HOP = 160  # 10 ms
N_MELS = 80
WINDOW_SAMPLES = 8 * RATE  # the model's 8 s input
N_FRAMES = WINDOW_SAMPLES // HOP  # 800


def _hz_to_mel(hz: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Slaney's mel scale: linear below 1 kHz, logarithmic above (librosa's htk=False)."""
    mel = 3.0 * hz / 200.0
    log_part = hz >= 1000.0
    mel[log_part] = 15.0 + np.log(hz[log_part] / 1000.0) * (27.0 / np.log(6.4))
    return mel


def _mel_to_hz(mel: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    hz = 200.0 * mel / 3.0
    log_part = mel >= 15.0
    hz[log_part] = 1000.0 * np.exp((mel[log_part] - 15.0) * (np.log(6.4) / 27.0))
    return hz


@functools.lru_cache(maxsize=1)
def mel_filters() -> npt.NDArray[np.float64]:
    """(N_MELS, N_FFT // 2 + 1) triangular filters, each normalised to unit area (Slaney norm)."""
    edges_mel = np.linspace(_hz_to_mel(np.array([0.0]))[0], _hz_to_mel(np.array([RATE / 2.0]))[0], N_MELS + 2)
    edges = _mel_to_hz(edges_mel)
    bins = np.linspace(0.0, RATE / 2.0, N_FFT // 2 + 1)
    lower = (bins[np.newaxis, :] - edges[:-2, np.newaxis]) / np.diff(edges)[:-1, np.newaxis]
    upper = (edges[2:, np.newaxis] - bins[np.newaxis, :]) / np.diff(edges)[1:, np.newaxis]
    tri = np.maximum(0.0, np.minimum(lower, upper))
    return tri * (2.0 / (edges[2:] - edges[:-2]))[:, np.newaxis]


@functools.lru_cache(maxsize=1)
def _hann() -> npt.NDArray[np.float64]:
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(N_FFT) / N_FFT)  # periodic, as torch.hann_window


def fit_window(audio: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """The last 8 s of ``audio``; shorter audio is zero-padded in *front*, so the turn's end (what the model
    judges) always sits at the window's end."""
    if len(audio) >= WINDOW_SAMPLES:
        return audio[-WINDOW_SAMPLES:]
    return np.concatenate((np.zeros(WINDOW_SAMPLES - len(audio), np.float32), audio))


def log_mel(audio: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """(80, 800) features of exactly 8 s of 16 kHz float audio (use :func:`fit_window` first)."""
    if audio.shape != (WINDOW_SAMPLES,):
        raise ValueError(f"expected {WINDOW_SAMPLES} samples (8 s at 16 kHz), got {audio.shape}")
    x = audio.astype(np.float32)
    x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
    padded = np.pad(x.astype(np.float64), N_FFT // 2, mode="reflect")  # centred frames
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP]
    power = np.abs(np.fft.rfft(frames * _hann(), axis=-1)) ** 2  # (801, 201)
    mel = np.log10(np.maximum(mel_filters() @ power.T, 1e-10))[:, :-1]  # Whisper drops the last frame
    mel = np.maximum(mel, mel.max() - 8.0)
    return ((mel + 4.0) / 4.0).astype(np.float32)
