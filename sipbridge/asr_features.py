"""Whisper's log-mel features for a batch of turns, computed where the model runs.

transformers' feature extractor pads every clip to 30 s in numpy, runs the STFT on the device it is given,
then brings the features back to the host as numpy, and the batch goes to the device again: on an H100 that
round trip was 13 ms of a 4-row batch and 63 ms of a 16-row one (`bench/asr_batch.py --phases`, run 1 of
2026-12-06). Here only each clip's own samples cross to the device, into a zeroed [rows, 30 s] tensor, and
the same math as transformers' torch path runs there: Hann-window STFT, power, the extractor's mel filters,
log10 floored at 1e-10 and at (the batch's max - 8), then (x + 4) / 4. Equal to the extractor's output
within float rounding (tests/sipbridge/test_asr_batch.py).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import torch

__all__ = ["LogMel"]


class LogMel:
    """The feature extractor's settings and filters, kept on the device once."""

    def __init__(self, extractor: Any, device: str) -> None:
        self.n_fft, self.hop = int(extractor.n_fft), int(extractor.hop_length)
        self.samples = int(extractor.n_samples)  # 30 s: what the encoder's positions cover
        self.device = torch.device(device)
        self.window = torch.hann_window(self.n_fft, device=self.device)
        self.filters = torch.from_numpy(np.asarray(extractor.mel_filters, dtype=np.float32)).to(self.device)

    def __call__(self, clips: list[npt.NDArray[np.float32]]) -> tuple[torch.Tensor, list[int]]:
        """[rows, mels, frames] float32 features of the clips (cut at 30 s, zero-padded to it), and each
        row's real frames (those its samples reach: the extractor's attention mask)."""
        waves = torch.zeros(len(clips), self.samples, device=self.device)
        real = []
        for row, clip in enumerate(clips):
            n = min(len(clip), self.samples)
            waves[row, :n].copy_(torch.from_numpy(np.ascontiguousarray(clip[:n], dtype=np.float32)))
            real.append(-(-n // self.hop))  # ceil: a frame whose window starts inside the clip
        stft = torch.stft(waves, self.n_fft, self.hop, window=self.window, return_complex=True)
        power = (stft[..., :-1].abs() ** 2).contiguous()
        log_spec = torch.clamp(self.filters.T @ power, min=1e-10).log10()
        floor = log_spec.amax(dim=(1, 2), keepdim=True) - 8.0
        return (torch.maximum(log_spec, floor) + 4.0) / 4.0, real
