"""Re-chunk a stream of arbitrary-size sample chunks into exact fixed-duration frames (20 ms by default).

RTP wants one ptime's worth of samples per packet, and the VAD wants whole frames, but resamplers and TTS
engines hand out chunks of any size. The framer copies into one preallocated frame buffer, so a frame costs
one small copy and no list of pending pieces grows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["Flushed", "Framer"]


@dataclass(frozen=True)
class Flushed:
    """What :meth:`Framer.flush` returns: the last frame (or None if nothing was pending) and how many
    silence samples were appended to complete it."""

    frame: npt.NDArray[np.generic] | None
    padded: int


class Framer:
    """Arbitrary 1-D chunks in, frames of exactly ``sample_rate * ptime_ms / 1000`` samples out.

    Works with int16 or float32 (fixed at construction; chunks of another dtype are refused rather than
    silently rescaled). Every returned frame is a fresh array the caller may keep.
    """

    def __init__(self, sample_rate: int = 8000, ptime_ms: int = 20, dtype: npt.DTypeLike = np.int16) -> None:
        if sample_rate <= 0 or ptime_ms <= 0:
            raise ValueError(f"sample_rate and ptime_ms must be positive, got {sample_rate}, {ptime_ms}")
        if (sample_rate * ptime_ms) % 1000:
            raise ValueError(f"{ptime_ms} ms at {sample_rate} Hz is not a whole number of samples")
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.dtype(np.int16), np.dtype(np.float32)):
            raise ValueError(f"dtype must be int16 or float32, got {self.dtype}")
        self.sample_rate = sample_rate
        self.ptime_ms = ptime_ms
        self.frame_samples = sample_rate * ptime_ms // 1000
        self._buf = np.zeros(self.frame_samples, dtype=self.dtype)
        self._fill = 0  # samples of the current partial frame held in _buf

    @property
    def pending(self) -> int:
        """Samples held back, waiting for a frame to fill (always < frame_samples)."""
        return self._fill

    def push(self, chunk: npt.ArrayLike) -> list[npt.NDArray[np.generic]]:
        """Add samples; return every frame completed by them (possibly none)."""
        x = np.asarray(chunk)
        if x.dtype != self.dtype:
            raise TypeError(f"framer expects {self.dtype} chunks, got {x.dtype}")
        if x.ndim != 1:
            raise ValueError(f"framer expects mono 1-D chunks, got shape {x.shape}")
        frames: list[npt.NDArray[np.generic]] = []
        n = self.frame_samples
        pos = 0
        if self._fill:
            take = min(n - self._fill, len(x))
            self._buf[self._fill : self._fill + take] = x[:take]
            self._fill += take
            pos = take
            if self._fill < n:
                return frames
            frames.append(self._buf.copy())
            self._fill = 0
        # Whole frames straight from the chunk: one copy each, no trip through the buffer.
        whole = (len(x) - pos) // n
        for i in range(whole):
            frames.append(x[pos + i * n : pos + (i + 1) * n].copy())
        pos += whole * n
        rest = len(x) - pos
        if rest:
            self._buf[:rest] = x[pos:]
            self._fill = rest
        return frames

    def flush(self) -> Flushed:
        """End of stream: pad the partial frame with silence (zeros) and return it."""
        if not self._fill:
            return Flushed(frame=None, padded=0)
        padded = self.frame_samples - self._fill
        frame = self._buf.copy()
        frame[self._fill :] = 0
        self._fill = 0
        return Flushed(frame=frame, padded=padded)

    def reset(self) -> None:
        """Drop the partial frame."""
        self._fill = 0
