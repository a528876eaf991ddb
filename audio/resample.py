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
from typing import Any

import numpy as np
import numpy.typing as npt
import soxr

__all__ = ["FirResampler", "LatencyStats", "StreamResampler", "make_resampler", "measure_latency"]

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


def _checked_chunk(chunk: npt.ArrayLike, dtype: np.dtype[Any]) -> npt.NDArray[np.generic]:
    x = np.asarray(chunk)
    if x.dtype != dtype:
        # Refuse rather than convert: int16 and float32 differ in scale, a silent cast would be wrong.
        raise TypeError(f"resampler expects {dtype} chunks, got {x.dtype}")
    if x.ndim != 1:
        raise ValueError(f"resampler expects mono 1-D chunks, got shape {x.shape}")
    return x


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
        x = _checked_chunk(chunk, self.dtype)
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


@functools.lru_cache(maxsize=32)
def _fir_design(
    in_rate: int, out_rate: int, transition_hz: float, stopband_db: float
) -> tuple[int, int, int, int, int, npt.NDArray[np.float64]]:
    """The polyphase filter of a rate pair: (up, down, delay in output samples, delay in upsampled samples,
    taps per phase, phases). Cached: the design runs at `in_rate * up` (3.5 MHz for 22.05 -> 8 kHz, ~30k
    taps) and took ~35 ms, which every new stream (a call's reply, an HTTP request) paid on the event loop.
    The phases are shared between streams, so they are read-only."""
    from scipy.signal import firwin, kaiser_beta  # filter design only; the stream itself is numpy

    g = int(np.gcd(in_rate, out_rate))
    up, down = out_rate // g, in_rate // g
    fs_up = in_rate * up
    nyquist = min(in_rate, out_rate) / 2.0
    # Kaiser's estimate of the length for this attenuation and transition width (in upsampled samples).
    width = 2.0 * np.pi * transition_hz / fs_up
    estimate = int(np.ceil((stopband_db - 7.95) / (2.285 * width))) + 1
    # Group delay (n_taps - 1) / 2 must be a whole number of *output* samples for exact time alignment.
    delay_out = int(np.ceil((estimate - 1) / (2 * down)))
    delay_up = delay_out * down
    n_taps = 2 * delay_up + 1
    window = ("kaiser", kaiser_beta(stopband_db))
    taps = firwin(n_taps, nyquist - transition_hz / 2.0, window=window, fs=fs_up)
    taps *= up  # zero-stuffing by `up` divides the passband gain by `up`
    taps_per_phase = -(-n_taps // up)
    padded = np.zeros(taps_per_phase * up)
    padded[:n_taps] = taps
    # phase p uses taps p, p + up, p + 2 up, ...; reversed so a window of input (oldest first) dots it.
    phases = np.ascontiguousarray(padded.reshape(taps_per_phase, up).T[:, ::-1])
    phases.flags.writeable = False
    return up, down, delay_out, delay_up, taps_per_phase, phases


@functools.lru_cache(maxsize=32)
def _fir_blocks(
    in_rate: int, out_rate: int, transition_hz: float, stopband_db: float
) -> tuple[int, int, int, npt.NDArray[np.float64]]:
    """The FIR as a block matrix: (outputs per block, input advance per block, inputs a block reads, matrix).

    Phases repeat every `up` outputs while the input advances `down`, so a block of `up * r` outputs is one
    fixed (outputs x span) matrix applied to a window that slides by `down * r`. Long chunks then cost one
    BLAS product instead of a gathered (outputs x taps) copy: one thread's CPU per second of audio went from
    4.9 to 0.4 ms for 1 s chunks at 22.05 kHz (espeak) and 1.7 to 1.1 ms for Dia2's 80 ms chunks at 24 kHz,
    a cost the supervisor's event loop pays for every call (docs/PERFORMANCE.md, issue 16)."""
    up, down, _, delay_up, taps, phases = _fir_design(in_rate, out_rate, transition_hz, stopband_db)
    r = -(-64 // up)  # at least 64 outputs per block: fewer, larger rows for BLAS
    size, advance = up * r, down * r
    n = np.arange(size) * down + delay_up
    base, phase = n // up - n[0] // up, n % up
    span = int(base[-1]) + taps
    matrix = np.zeros((size, span))
    for j in range(size):
        matrix[j, base[j] : base[j] + taps] = phases[phase[j]]
    matrix.flags.writeable = False
    return size, advance, span, matrix


class FirResampler:
    """Low-latency streaming resampler for rational ratios: a polyphase linear-phase FIR.

    Same interface and the same time alignment as :class:`StreamResampler` (an impulse at input sample ``n``
    peaks at output ``n * out_rate / in_rate``; ``flush`` returns the tail), but every output sample leaves
    as soon as the input it depends on has arrived: no block buffering. For telephony the lag is the filter's
    group delay, ~4.5 ms for 24 kHz -> 8 kHz, against soxr's 74 ms worst case, which matters in a reply
    path budgeted at ~150 ms from text to first audio.

    The filter is a Kaiser-window low-pass at the lower of the two Nyquist rates with ``transition_hz`` of
    roll-off ending there and ``stopband_db`` of rejection (80 dB: aliases of out-of-band energy land below
    the G.711 noise floor). Output equals feeding the whole signal at once up to float rounding.
    """

    def __init__(
        self,
        in_rate: int,
        out_rate: int,
        *,
        dtype: str = "float32",
        transition_hz: float = 550.0,
        stopband_db: float = 80.0,
    ) -> None:
        if in_rate <= 0 or out_rate <= 0:
            raise ValueError(f"sample rates must be positive, got {in_rate} -> {out_rate}")
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {_DTYPES}, got {dtype!r}")
        self.in_rate, self.out_rate, self.dtype = in_rate, out_rate, np.dtype(dtype)
        design = _fir_design(in_rate, out_rate, transition_hz, stopband_db)
        self._up, self._down, self._delay_out, self._delay_up, self._taps_per_phase, self._phases = design
        self._block = _fir_blocks(in_rate, out_rate, transition_hz, stopband_db)
        self.reset()

    @property
    def latency_samples(self) -> int:
        """Worst lag of an output sample behind the input that completes it, in output samples."""
        return self._delay_out + -(-self._up // self._down)

    @property
    def latency(self) -> LatencyStats:
        lag = self.latency_samples
        first_input = (self._delay_up // self._up) + 1
        return LatencyStats(worst=lag, mean=float(self._delay_up / self._down), first_output=first_input)

    def reset(self) -> None:
        """Drop all buffered input and filter state (e.g. on barge-in)."""
        # History starts as zeros before sample 0, exactly as a one-shot convolution sees it.
        self._buf = np.zeros(self._taps_per_phase - 1, dtype=np.float64)
        self._buf_start = -(self._taps_per_phase - 1)  # absolute input index of _buf[0]
        self._received = 0
        self._next_out = 0

    def _emit(self, last_out: int) -> npt.NDArray[np.float64]:
        """Compute outputs _next_out .. last_out (inclusive) from the buffered input."""
        if last_out < self._next_out:
            return np.zeros(0)
        first, end = self._next_out, last_out + 1
        size = self._block[0]
        aligned, stop = -(-first // size) * size, end // size * size
        if aligned < stop:  # whole blocks in the middle: one matrix product; the ragged ends one by one
            parts = [self._gathered(first, aligned), self._blocks(aligned, stop), self._gathered(stop, end)]
            out = np.concatenate(parts)
        else:
            out = self._gathered(first, end)
        self._next_out = end
        # Keep only the input the next output still needs.
        keep_from = (self._next_out * self._down + self._delay_up) // self._up - (self._taps_per_phase - 1)
        drop = keep_from - self._buf_start
        if drop > 0:
            self._buf = self._buf[drop:]
            self._buf_start = keep_from
        return out

    def _gathered(self, first: int, end: int) -> npt.NDArray[np.float64]:
        """Outputs first .. end-1, each its own window dotted with its phase (any alignment)."""
        if end <= first:
            return np.zeros(0)
        k = np.arange(first, end)
        n = k * self._down + self._delay_up
        base, phase = n // self._up, n % self._up
        windows = np.lib.stride_tricks.sliding_window_view(self._buf, self._taps_per_phase)
        rows = windows[base - (self._taps_per_phase - 1) - self._buf_start]
        return np.einsum("kt,kt->k", rows, self._phases[phase])

    def _blocks(self, first: int, end: int) -> npt.NDArray[np.float64]:
        """Outputs first .. end-1 (both multiples of the block size) as one product with the block matrix:
        block b reads `span` inputs from b * advance on, so the windows are a strided view of the buffer."""
        size, advance, span, matrix = self._block
        base = (
            first // size
        ) * advance + self._delay_up // self._up  # the block's first output's newest input
        start = base - (self._taps_per_phase - 1) - self._buf_start
        count = (end - first) // size
        view = np.lib.stride_tricks.sliding_window_view(
            self._buf[start : start + (count - 1) * advance + span], span
        )
        return (view[::advance] @ matrix.T).reshape(-1)

    def _ready_until(self, available: int) -> int:
        """Last output index whose newest input sample index is < available."""
        # need (k * down + delay_up) // up <= available - 1
        return ((available - 1) * self._up + self._up - 1 - self._delay_up) // self._down

    def _to_output(self, y: npt.NDArray[np.float64]) -> npt.NDArray[np.generic]:
        if self.dtype == np.int16:
            return np.clip(np.rint(y), -32768, 32767).astype(np.int16)
        return y.astype(np.float32)

    def process(self, chunk: npt.ArrayLike) -> npt.NDArray[np.generic]:
        x = _checked_chunk(chunk, self.dtype)
        self._buf = np.concatenate([self._buf, x.astype(np.float64)])
        self._received += len(x)
        return self._to_output(self._emit(self._ready_until(self._received)))

    def flush(self) -> npt.NDArray[np.generic]:
        """Return the rest of the stream (as if it were followed by silence) and start a fresh stream."""
        total_out = -(-self._received * self._up // self._down)
        last = total_out - 1
        need = (last * self._down + self._delay_up) // self._up + 1  # inputs needed, zeros after the end
        if need > self._received:
            self._buf = np.concatenate([self._buf, np.zeros(need - self._received)])
        out = self._to_output(self._emit(last))
        self.reset()
        return out


def make_resampler(
    in_rate: int, out_rate: int, *, dtype: str = "float32", low_latency: bool = True
) -> FirResampler | StreamResampler:
    """The call path's resampler: the FIR (milliseconds of lag) unless ``low_latency`` is off (soxr HQ)."""
    if low_latency:
        return FirResampler(in_rate, out_rate, dtype=dtype)
    return StreamResampler(in_rate, out_rate, dtype=dtype)
