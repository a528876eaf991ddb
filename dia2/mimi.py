"""Mimi audio codec (kyutai/mimi) for Dia2: waveform <-> codebook tokens.

A thin layer over transformers' ``MimiModel`` that fixes the tensor conventions the Dia2 runtime uses:
1-D float32 waveforms at 24 kHz and ``[num_codebooks, frames]`` int64 codes. Decoding is one-shot (the
whole token sequence at once), exactly as the upstream runtime does, including the clamp of the output to
[-1, 1]. A streaming decoder (conv state + transformer KV carried across frames) is a separate piece that
can be built beside this class from :attr:`MimiCodec.model`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import torch
from transformers import MimiModel

from dia2.hub import resolve_model_dir

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_MIMI_REF", "MIMI_FILES", "MimiCodec"]

DEFAULT_MIMI_REF = "kyutai/mimi"
# Only the transformers weights are needed; the repo may carry other files (docs, other formats).
MIMI_FILES = ["config.json", "model*.safetensors*"]


class MimiCodec:
    """Encode 24 kHz mono audio to Mimi codes and decode codes back to audio.

    Attributes:
        model: the underlying transformers ``MimiModel`` (eval mode).
        sample_rate: audio sample rate in Hz (24000 for kyutai/mimi).
        frame_size: samples per code frame (1920).
        frame_rate: code frames per second (12.5).
        num_codebooks: codebooks produced by :meth:`encode` (K).
        max_codebooks: quantizers the checkpoint has (32 for kyutai/mimi).
        codebook_size: codes per codebook (2048); valid codes are ``0 .. codebook_size - 1``.
        device, dtype: where the model runs and its parameter dtype.
    """

    def __init__(self, model: MimiModel, *, num_codebooks: int | None = None) -> None:
        config = model.config
        self.model = model.eval()
        param = next(model.parameters())
        self.device: torch.device = param.device
        self.dtype: torch.dtype = param.dtype
        self.sample_rate: int = int(config.sampling_rate)
        self.frame_size: int = int(config.frame_size)
        self.frame_rate: float = float(config.frame_rate)
        self.max_codebooks: int = int(config.num_quantizers)
        self.codebook_size: int = int(config.codebook_size)
        k = self.max_codebooks if num_codebooks is None else int(num_codebooks)
        if not 1 <= k <= self.max_codebooks:
            raise ValueError(
                f"num_codebooks={num_codebooks} is out of range: this Mimi checkpoint has "
                f"{self.max_codebooks} quantizers."
            )
        self.num_codebooks: int = k

    @classmethod
    def load(
        cls,
        ref: str | os.PathLike[str] = DEFAULT_MIMI_REF,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        num_codebooks: int | None = None,
        *,
        revision: str | None = None,
    ) -> MimiCodec:
        """Load a transformers ``MimiModel`` from a local folder or a Hugging Face repo id.

        ``ref`` goes through :func:`dia2.hub.resolve_model_dir` (cache, offline mode, clear errors).
        ``num_codebooks`` defaults to all quantizers of the checkpoint; Dia2 needs ``channels - 2``.
        """
        folder = resolve_model_dir(ref, revision=revision, allow_patterns=MIMI_FILES)
        logger.info("Loading Mimi codec from %s (%s, %s)", folder, device, dtype)
        model = MimiModel.from_pretrained(str(folder), dtype=dtype)
        # nn.Module.to moves in place; transformers wraps .to in a decorator mypy mis-types.
        model.to(torch.device(device))  # type: ignore[arg-type]
        return cls(model, num_codebooks=num_codebooks)

    def frames_for(self, num_samples: int) -> int:
        """Code frames :meth:`encode` returns for ``num_samples`` samples (a partial frame counts)."""
        return -(-int(num_samples) // self.frame_size)

    @torch.no_grad()
    def encode(self, wav: torch.Tensor) -> torch.Tensor:
        """Encode a mono waveform ``[samples]`` (float, 24 kHz, nominally in [-1, 1]).

        Returns int64 codes ``[num_codebooks, ceil(samples / frame_size)]`` on :attr:`device`. The
        waveform must already be at :attr:`sample_rate`: resampling is the caller's job (the upstream
        runtime resamples when it reads a file).
        """
        if wav.dim() != 1:
            raise ValueError(f"encode expects a 1-D mono waveform [samples], got shape {tuple(wav.shape)}")
        if wav.is_complex() or not wav.is_floating_point():
            raise TypeError(f"encode expects a float waveform, got {wav.dtype} (int16 PCM: divide by 32768)")
        if wav.numel() == 0:
            return torch.zeros(self.num_codebooks, 0, dtype=torch.long, device=self.device)
        x = wav.to(device=self.device, dtype=self.dtype).reshape(1, 1, -1)
        codes = self.model.encode(x, num_quantizers=self.num_codebooks).audio_codes
        # MimiModel returns [batch, K, frames]; the batch is 1 here.
        return codes[0].to(torch.long)

    @torch.no_grad()
    def encode_many(self, wavs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Codes of several waveforms in one batched run: caller turns that end together cost one encoder
        pass, not one each. Each row is zero-padded to whole frames (a partial last frame is completed
        with silence) and then to the longest row; Mimi's encoder is causal, so a row's frames never see
        the rows' padding after them, and a row's codes do not depend on what it is batched with.

        Unlike :meth:`encode`, whose convolutions pad a partial last frame with zero *latents*, the last
        partial frame here hears zero *audio*: a turn's codes are the same alone or in any batch, and
        equal :meth:`encode`'s for audio of whole frames.
        """
        if any(w.dim() != 1 or not w.is_floating_point() or w.is_complex() for w in wavs):
            raise ValueError("encode_many expects 1-D float mono waveforms")
        frames = [self.frames_for(int(w.numel())) for w in wavs]
        if max(frames, default=0) == 0:
            return [torch.zeros(self.num_codebooks, 0, dtype=torch.long, device=self.device) for _ in wavs]
        x = torch.zeros(len(wavs), 1, max(frames) * self.frame_size, device=self.device, dtype=self.dtype)
        for i, w in enumerate(wavs):
            x[i, 0, : w.numel()] = w.to(device=self.device, dtype=self.dtype)
        codes = self.model.encode(x, num_quantizers=self.num_codebooks).audio_codes.to(torch.long)
        return [codes[i, :, :n] for i, n in enumerate(frames)]

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Decode codes ``[K, frames]`` to a float32 waveform ``[frames * frame_size]``, clamped to [-1, 1].

        K may be smaller than the checkpoint's quantizer count (coarser audio). Every code must lie in
        ``0 .. codebook_size - 1``: Dia2's BOS/PAD ids (2048/2049) and its -2 "ungenerated" marker must be
        removed before decoding, otherwise Mimi would index out of its codebooks.
        """
        if codes.dim() != 2:
            raise ValueError(f"decode expects codes [num_codebooks, frames], got shape {tuple(codes.shape)}")
        k, frames = codes.shape
        if not 1 <= k <= self.max_codebooks:
            raise ValueError(f"decode got {k} codebooks; this Mimi checkpoint has {self.max_codebooks}")
        if frames == 0:
            return torch.zeros(0, dtype=torch.float32, device=self.device)
        codes = codes.to(device=self.device, dtype=torch.long)
        lo, hi = int(codes.min()), int(codes.max())
        if lo < 0 or hi >= self.codebook_size:
            raise ValueError(
                f"decode got codes outside 0..{self.codebook_size - 1} (min {lo}, max {hi}); "
                "strip BOS/PAD/ungenerated frames before decoding"
            )
        audio = self.model.decode(codes.unsqueeze(0)).audio_values
        # [batch, channels, samples] -> [samples]; upstream clamps the same way before writing PCM.
        return audio[0, 0].clamp(-1.0, 1.0).to(torch.float32)
