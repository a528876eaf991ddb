"""Streaming sample-rate conversion (soxr ``ResampleStream``) that keeps its filter state across chunks.

Used for the TTS path (24 kHz engine audio -> 8 kHz call audio) and the ASR path (8 kHz call audio ->
16 kHz, or 24 kHz for a voice prompt). Feeding a signal in chunks of any size gives the same samples as
feeding it whole (soxr's output is time-aligned: an impulse at input sample ``n`` peaks at output sample
``n * out_rate / in_rate``), so chunking never adds clicks.

soxr works on large internal blocks, so output comes out in bursts and lags the input. That lag is the
latency the call path must budget for; :attr:`StreamResampler.latency_samples` reports it (measured, not
guessed) and docs/AUDIO.md lists the numbers.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import soxr

__all__ = ["LatencyStats", "StreamResampler", "measure_latency"]

log = logging.getLogger(__name__)

_DTYPES = ("float32", "int16")
_QUALITIES = ("QQ", "LQ", "MQ", "HQ", "VHQ")


@dataclass(frozen=True)
class LatencyStats:
    """How far the output lags the input, in output samples, measured on a steady stream.

    ``worst`` is the longest any input sample waits before its output sample is returned (the value to
    budget for); ``mean`` is the average backlog; ``first_output`` is how many input samples go in before
    the stream returns anything at all.
    """

    worst: int
    mean: float
    first_output: int


@functools.lru_cache(maxsize=32)
def measure_latency(in_rate: int, out_rate: int, quality: str = "HQ") -> LatencyStats:
    """Measure a fresh stream's backlog by feeding 2.5 s of silence in 1 ms chunks.

    After each chunk the backlog is (input so far, in output samples) - (output returned so far): just
    before soxr releases a block, the oldest pending sample has waited exactly that long. 1 ms steps make
    the figure accurate to 1 ms; larger call chunks can only round it up to their own size. Cached: it costs
    ~10 ms once per rate pair.
    """
    stream = soxr.ResampleStream(in_rate, out_rate, 1, dtype="float32", quality=quality)
    step = max(1, in_rate // 1000)
    zeros = np.zeros(step, dtype=np.float32)
    fed = emitted = 0
    first_output = 0
    backlogs: list[float] = []
    for _ in range(int(2.5 * in_rate / step)):
        got = len(stream.resample_chunk(zeros))
        fed += step
        if emitted == 0 and got > 0:
            first_output = fed
        emitted += got
        backlogs.append(fed * out_rate / in_rate - emitted)
    steady = np.asarray(backlogs[len(backlogs) // 5 :])  # skip start-up, which is covered by first_output
    startup_wait = first_output * out_rate / in_rate
    return LatencyStats(
        worst=int(np.ceil(max(float(steady.max()), startup_wait))),
        mean=float(steady.mean()),
        first_output=first_output,
    )


class StreamResampler:
    """One mono stream resampled from ``in_rate`` to ``out_rate``; one instance per call direction.

    ``process`` takes 1-D chunks of any length (even 1 sample) in the stream's dtype and returns whatever
    output is ready (often empty). ``flush`` returns the tail at end of stream and leaves the resampler ready
    for a new stream, as ``reset`` does without returning anything.
    """

    def __init__(self, in_rate: int, out_rate: int, *, dtype: str = "float32", quality: str = "HQ") -> None:
        if in_rate <= 0 or out_rate <= 0:
            raise ValueError(f"sample rates must be positive, got {in_rate} -> {out_rate}")
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {_DTYPES}, got {dtype!r}")
        if quality not in _QUALITIES:
            raise ValueError(f"quality must be one of {_QUALITIES}, got {quality!r}")
        self.in_rate = in_rate
        self.out_rate = out_rate
        self.dtype = np.dtype(dtype)
        self.quality = quality
        self._stream = self._new_stream()
        self._latency = measure_latency(in_rate, out_rate, quality)

    def _new_stream(self) -> soxr.ResampleStream:
        return soxr.ResampleStream(
            self.in_rate, self.out_rate, 1, dtype=self.dtype.name, quality=self.quality
        )

    @property
    def latency_samples(self) -> int:
        """Worst-case lag of the output behind the input, in output samples (see :class:`LatencyStats`)."""
        return self._latency.worst

    @property
    def latency(self) -> LatencyStats:
        return self._latency

    def process(self, chunk: npt.ArrayLike) -> npt.NDArray[np.generic]:
        x = np.asarray(chunk)
        if x.dtype != self.dtype:
            # Refuse rather than convert: int16 and float32 differ in scale, a silent cast would be wrong.
            raise TypeError(f"resampler expects {self.dtype} chunks, got {x.dtype}")
        if x.ndim != 1:
            raise ValueError(f"resampler expects mono 1-D chunks, got shape {x.shape}")
        return self._stream.resample_chunk(np.ascontiguousarray(x))

    def flush(self) -> npt.NDArray[np.generic]:
        """Return the buffered tail (end of stream) and start a fresh stream."""
        tail = self._stream.resample_chunk(np.zeros(0, dtype=self.dtype), last=True)
        self.reset()
        return tail

    def reset(self) -> None:
        """Drop all buffered input and filter state (e.g. on barge-in)."""
        # A new stream is cheaper to reason about than soxr's clear() and costs ~20 µs.
        self._stream = self._new_stream()
