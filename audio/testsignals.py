"""Test speech with known boundaries: espeak-ng utterances placed in silence, noise, noise bursts and tones.

Used by tests/audio and bench/vad_quality.py (and usable by end-to-end call tests). espeak-ng runs as a
subprocess (``apt-get install espeak-ng``); its robotic voice is well articulated, so it tests *boundaries*,
not robustness to natural speech. Because we place every utterance ourselves, the ground-truth speech extent
is known exactly: the first and last sample of the clean utterance above ``SPEECH_THRESHOLD``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import scipy.signal
import soundfile as sf
import soxr

from audio import g711

__all__ = [
    "SPEECH_THRESHOLD",
    "Scene",
    "SceneBuilder",
    "espeak",
    "speech_extent",
    "telephone_band",
]

# |x| above this (-40 dBFS) counts as speech when trimming a clean espeak-ng utterance: espeak pads with
# digital silence, and its quietest phonemes still peak well above -40 dBFS.
SPEECH_THRESHOLD = 0.01


def espeak(text: str, sample_rate: int, voice: str = "en-us", speed: int = 150) -> npt.NDArray[np.float32]:
    """Synthesize ``text`` with espeak-ng and return it as float32 mono at ``sample_rate``."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError("espeak-ng is not installed (apt-get install -y espeak-ng)")
    fd, path = tempfile.mkstemp(suffix=".wav")
    os.close(fd)
    try:
        subprocess.run(
            [exe, "-v", voice, "-s", str(speed), "-w", path, text], check=True, capture_output=True
        )
        x, rate = sf.read(path, dtype="float32")
    finally:
        os.unlink(path)
    if x.ndim > 1:
        x = x.mean(axis=1)
    return soxr.resample(x, rate, sample_rate, quality="HQ").astype(np.float32)


def speech_extent(x: npt.NDArray[np.floating], threshold: float = SPEECH_THRESHOLD) -> tuple[int, int]:
    """Sample indices [first, last + 1) of the samples whose magnitude exceeds ``threshold``."""
    idx = np.flatnonzero(np.abs(x) > threshold)
    if len(idx) == 0:
        raise ValueError("no sample above the speech threshold")
    return int(idx[0]), int(idx[-1]) + 1


@dataclass
class Scene:
    """A test recording: float32 mono audio plus the truth, in ms from its start."""

    audio: npt.NDArray[np.float32]
    sample_rate: int
    turns: list[tuple[float, float]] = field(default_factory=list)  # speech extent of each utterance
    bursts: list[tuple[float, float]] = field(default_factory=list)  # noise bursts (must not become turns)
    tones: list[tuple[float, float, float]] = field(default_factory=list)  # (start, end, Hz) of each tone

    def int16(self) -> npt.NDArray[np.int16]:
        return (np.clip(self.audio, -1.0, 32767 / 32768) * 32768).astype(np.int16)


class SceneBuilder:
    """Append pieces in order, then :meth:`build` mixes stationary background noise under everything."""

    def __init__(self, sample_rate: int, seed: int = 0) -> None:
        self.sample_rate = sample_rate
        self._rng = np.random.default_rng(seed)
        self._pieces: list[npt.NDArray[np.float32]] = []
        self._len = 0
        self._turns: list[tuple[float, float]] = []
        self._bursts: list[tuple[float, float]] = []
        self._tones: list[tuple[float, float, float]] = []

    def _ms(self, samples: int) -> float:
        return 1000.0 * samples / self.sample_rate

    def _append(self, x: npt.NDArray[np.float32]) -> None:
        self._pieces.append(x.astype(np.float32))
        self._len += len(x)

    def silence(self, ms: float) -> SceneBuilder:
        self._append(np.zeros(round(ms * self.sample_rate / 1000), dtype=np.float32))
        return self

    def speech(self, utterance: npt.NDArray[np.float32], gain: float = 1.0) -> SceneBuilder:
        first, last = speech_extent(utterance)
        self._turns.append((self._ms(self._len + first), self._ms(self._len + last)))
        self._append(utterance * gain)
        return self

    def burst(self, ms: float, rms: float, kind: str = "white") -> SceneBuilder:
        """A loud noise burst: ``white`` or ``brown`` (rumble-like) noise, 5 ms fade in and out."""
        n = round(ms * self.sample_rate / 1000)
        x = self._rng.standard_normal(n)
        if kind == "brown":
            x = scipy.signal.lfilter([1.0], [1.0, -0.98], x)
        elif kind != "white":
            raise ValueError(f"unknown burst kind {kind!r}")
        x *= rms / np.sqrt(np.mean(x**2))
        ramp = min(n // 2, self.sample_rate // 200)
        fade = np.linspace(0.0, 1.0, ramp)
        x[:ramp] *= fade
        x[n - ramp :] *= fade[::-1]
        self._bursts.append((self._ms(self._len), self._ms(self._len + n)))
        self._append(x.astype(np.float32))
        return self

    def tone(self, freq_hz: float, ms: float, amplitude: float = 0.3) -> SceneBuilder:
        """A steady sine tone (a voicemail beep), 2 ms raised-cosine ramps so it starts without a click."""
        if not 0 < freq_hz < self.sample_rate / 2:
            raise ValueError(f"tone frequency {freq_hz} Hz is not below Nyquist ({self.sample_rate / 2} Hz)")
        n = round(ms * self.sample_rate / 1000)
        x = amplitude * np.sin(2 * np.pi * freq_hz * np.arange(n) / self.sample_rate)
        ramp = min(n // 2, self.sample_rate // 500)
        fade = 0.5 - 0.5 * np.cos(np.linspace(0.0, np.pi, ramp))
        x[:ramp] *= fade
        x[n - ramp :] *= fade[::-1]
        self._tones.append((self._ms(self._len), self._ms(self._len + n), float(freq_hz)))
        self._append(x.astype(np.float32))
        return self

    def build(self, noise_rms: float = 0.0) -> Scene:
        audio = np.concatenate(self._pieces) if self._pieces else np.zeros(0, dtype=np.float32)
        if noise_rms > 0:
            audio = audio + (self._rng.standard_normal(len(audio)) * noise_rms).astype(np.float32)
        return Scene(
            audio.astype(np.float32),
            self.sample_rate,
            list(self._turns),
            list(self._bursts),
            list(self._tones),
        )


def telephone_band(scene: Scene) -> Scene:
    """What a caller's audio looks like after the phone network: 300-3400 Hz band, 8 kHz, µ-law round trip.
    Boundaries are unchanged (the filter is zero-phase and the resampler is time-aligned)."""
    x = scene.audio
    sos = scipy.signal.butter(4, [300, 3400], btype="bandpass", fs=scene.sample_rate, output="sos")
    x = scipy.signal.sosfiltfilt(sos, x).astype(np.float32)
    if scene.sample_rate != 8000:
        x = soxr.resample(x, scene.sample_rate, 8000, quality="HQ").astype(np.float32)
    pcm = (np.clip(x, -1.0, 32767 / 32768) * 32768).astype(np.int16)
    decoded = g711.ulaw_decode(g711.ulaw_encode(pcm)).astype(np.float32) / 32768.0
    return Scene(decoded, 8000, list(scene.turns), list(scene.bursts), list(scene.tones))
