"""Voicemail beep detection: a steady single tone (400-2000 Hz by default) lasting at least ~160 ms.

Answering machines end their greeting with a beep: one sine tone, typically 440-1400 Hz, 150-1000 ms long.
Each 20 ms frame is Hann-windowed, zero-padded and transformed; the frame is *tonal* when

* the strongest in-band peak holds most of the frame's energy (``tonality``: the energy within ±62 Hz of
  the peak over the energy of the whole frame; a pure tone gives ≈ 0.99, white noise < 0.1; a vowel
  spreads its energy over harmonics, but a robotic one can reach 0.9 in a single frame), and
* the frame is loud enough (``min_level_dbfs``), so a faint tone in near-silence is not a beep.

A beep is a run of tonal frames whose peak frequency stays within ``max_drift_hz`` of the run's first
frame, lasting at least ``min_ms`` and at most ``max_ms`` (a tone that never stops is a dial or fax tone,
not a beep). Frequencies are refined with parabolic interpolation of the log spectrum, so the reported
frequency is good to a few Hz although bins are 15.6 Hz wide.

Times are ms from the start of the stream on 20 ms frame boundaries: ``start`` is the start of the first
tonal frame (the frame in which the tone begins is tonal when what precedes it is quieter than the tone, so
the error is < 20 ms; otherwise the next frame starts it, < 40 ms), ``end`` the start of the first non-tonal
frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["Beep", "BeepDetector", "BeepSettings"]

_FFT_SIZE = 512  # 160-sample frames zero-padded: 15.6 Hz bins at 8 kHz, cheap (~10 µs)
# Energy within ±1.25 bins of the unpadded frame (±4 bins of the 512-point FFT at 8 kHz) counts as the
# peak's: that holds 99 % of a pure tone's energy under the Hann window (±2 padded bins held only 82 %, so a
# beep in line noise fell below the tonality threshold).
_PEAK_HALF_WIDTH_BINS = 1.25


@dataclass(frozen=True)
class BeepSettings:
    min_freq_hz: float = 400.0
    max_freq_hz: float = 2000.0
    min_ms: int = 160  # shortest beep (8 frames): shorter tones are too easily faked by a held vowel
    max_ms: int = 5000  # a tone longer than this is not a beep (dial tone, fax CNG held, test tone)
    # Share of the frame's energy near the peak for the frame to count as tonal. A beep gives 0.99 clean and
    # stays above 0.9 down to ~7 dB SNR; espeak-ng vowels pass 0.9 in single frames (a monotone voice), but
    # at 0.9 the longest pitch-steady run in speech was 100 ms (at 0.8: 180 ms, one false beep), well under
    # min_ms (bench/amd_accuracy.py, docs/DIALER.md).
    tonality: float = 0.9
    max_drift_hz: float = 40.0  # a beep holds its pitch; speech glides
    min_level_dbfs: float = -45.0  # frame RMS below this is never a beep

    def __post_init__(self) -> None:
        if not 0 < self.min_freq_hz < self.max_freq_hz:
            raise ValueError(
                "beep.min_freq_hz must be > 0 and below beep.max_freq_hz, "
                f"got {self.min_freq_hz}..{self.max_freq_hz}"
            )
        if self.min_ms <= 0:
            raise ValueError(f"beep.min_ms must be > 0, got {self.min_ms}")
        if self.max_ms <= self.min_ms:
            raise ValueError(f"beep.max_ms ({self.max_ms}) must be greater than beep.min_ms ({self.min_ms})")
        if not 0.0 < self.tonality < 1.0:
            raise ValueError(f"beep.tonality must be in (0, 1), got {self.tonality}")
        if self.max_drift_hz <= 0:
            raise ValueError(f"beep.max_drift_hz must be > 0, got {self.max_drift_hz}")
        if self.min_level_dbfs >= 0:
            raise ValueError(f"beep.min_level_dbfs must be < 0 dBFS, got {self.min_level_dbfs}")


@dataclass(frozen=True)
class Beep:
    start_ms: int
    freq_hz: float
    end_ms: int | None = None  # None while the tone is still going

    @property
    def duration_ms(self) -> int | None:
        return None if self.end_ms is None else self.end_ms - self.start_ms


class BeepDetector:
    """Streaming: one instance per call. :meth:`process` returns a :class:`Beep` twice at most per beep:
    once when it has lasted ``min_ms`` (``end_ms`` None) and once when it ends (``end_ms`` set)."""

    def __init__(self, sample_rate: int = 8000, frame_ms: int = 20, settings: BeepSettings | None = None):
        if sample_rate <= 0 or frame_ms <= 0:
            raise ValueError(f"sample_rate and frame_ms must be > 0, got {sample_rate}, {frame_ms}")
        self.settings = settings or BeepSettings()
        if self.settings.max_freq_hz >= sample_rate / 2:
            raise ValueError(
                f"beep.max_freq_hz {self.settings.max_freq_hz} is not below Nyquist ({sample_rate / 2} Hz)"
            )
        self.sample_rate = sample_rate
        self.frame_ms = frame_ms
        self.frame_samples = sample_rate * frame_ms // 1000
        self._fft_size = max(_FFT_SIZE, 1 << (self.frame_samples - 1).bit_length())
        self._window = np.hanning(self.frame_samples).astype(np.float64)
        self._half_width = max(1, round(_PEAK_HALF_WIDTH_BINS * self._fft_size / self.frame_samples))
        hz_per_bin = sample_rate / self._fft_size
        self._hz_per_bin = hz_per_bin
        self._lo = math.floor(self.settings.min_freq_hz / hz_per_bin)
        self._hi = math.ceil(self.settings.max_freq_hz / hz_per_bin)
        self._min_power = (10 ** (self.settings.min_level_dbfs / 20) * 32768) ** 2
        self._min_frames = math.ceil(self.settings.min_ms / frame_ms)
        self._max_frames = self.settings.max_ms // frame_ms
        self.reset()

    def reset(self) -> None:
        self._frame_index = 0
        self._run_start = -1  # frame index of the first tonal frame of the current run; -1 = no run
        self._run_freq = 0.0
        self._run_freqs: list[float] = []
        self._reported = False
        self.beeps: list[Beep] = []  # every completed beep, in order

    @property
    def now_ms(self) -> int:
        return self._frame_index * self.frame_ms

    @property
    def in_tone(self) -> bool:
        """A tonal run is going on (it may or may not become a beep)."""
        return self._run_start >= 0

    def tone_frequency(self, frame: npt.NDArray[np.int16]) -> float | None:
        """The frame's tone frequency in Hz if the frame is tonal, else None. Stateless."""
        x = frame.astype(np.float64)
        power = float(np.mean(x * x))
        if power < self._min_power:
            return None
        spectrum = np.abs(np.fft.rfft(x * self._window, self._fft_size)) ** 2
        total = float(spectrum.sum())
        if total <= 0.0:
            return None
        band = spectrum[self._lo : self._hi + 1]
        k = self._lo + int(np.argmax(band))
        near = float(spectrum[max(0, k - self._half_width) : k + self._half_width + 1].sum())
        if near / total < self.settings.tonality:
            return None
        # Parabolic interpolation on the log magnitude: sub-bin frequency of the peak.
        if 0 < k < len(spectrum) - 1:
            a, b, c = (math.log(max(spectrum[j], 1e-12)) for j in (k - 1, k, k + 1))
            denom = a - 2 * b + c
            offset = 0.5 * (a - c) / denom if denom != 0 else 0.0
        else:
            offset = 0.0
        freq = (k + offset) * self._hz_per_bin
        if not self.settings.min_freq_hz <= freq <= self.settings.max_freq_hz:
            return None
        return freq

    def process(self, frame: npt.NDArray[np.int16]) -> Beep | None:
        if frame.shape != (self.frame_samples,) or frame.dtype != np.int16:
            raise ValueError(
                f"expected {self.frame_samples} int16 samples ({self.frame_ms} ms at {self.sample_rate} Hz), "
                f"got {frame.dtype} {frame.shape}"
            )
        i = self._frame_index
        self._frame_index += 1
        freq = self.tone_frequency(frame)
        if self._run_start >= 0 and (freq is None or abs(freq - self._run_freq) > self.settings.max_drift_hz):
            ended = self._end_run(i)
            if freq is not None:  # a new tone right after another: start a new run at once
                self._start_run(i, freq)
            return ended
        if freq is None:
            return None
        if self._run_start < 0:
            self._start_run(i, freq)
        else:
            self._run_freqs.append(freq)
        # A run longer than max_ms goes on being tracked (so it is not re-reported), and _end_run drops it.
        length = i + 1 - self._run_start
        if length >= self._min_frames and not self._reported:
            self._reported = True
            return Beep(start_ms=self._run_start * self.frame_ms, freq_hz=self._mean_freq())
        return None

    def flush(self) -> Beep | None:
        """End of stream: close a beep still sounding."""
        return self._end_run(self._frame_index) if self._run_start >= 0 else None

    def _start_run(self, i: int, freq: float) -> None:
        self._run_start = i
        self._run_freq = freq
        self._run_freqs = [freq]
        self._reported = False

    def _mean_freq(self) -> float:
        return round(float(np.mean(self._run_freqs)), 1)

    def _end_run(self, i: int) -> Beep | None:
        length = i - self._run_start
        beep = None
        if self._min_frames <= length <= self._max_frames:
            beep = Beep(
                start_ms=self._run_start * self.frame_ms, freq_hz=self._mean_freq(), end_ms=i * self.frame_ms
            )
            self.beeps.append(beep)
        self._run_start = -1
        self._reported = False
        return beep
