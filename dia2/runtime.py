"""``Dia2``: config + weights + tokenizer + Mimi in one object, and text → audio in one call."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .checkpoint import CheckpointFiles, load_model, locate_checkpoint
from .config import Dia2Config, load_config
from .generate import GenerationOptions, GenerationOutput, GenerationTrace, run_generation
from .model import Dia2Model
from .prefix import PrefixPlan, PrefixSpeaker, build_prefix_plan
from .sampling import SamplingParams
from .script import normalize_script, parse_script
from .state_machine import Entry, TokenIds
from .tokenizer import Dia2Tokenizer

if TYPE_CHECKING:
    from .mimi import MimiCodec

__all__ = ["Dia2", "GenerationResult"]

logger = logging.getLogger(__name__)

DEFAULT_MIMI = "kyutai/mimi"


@dataclass
class GenerationResult:
    audio_tokens: torch.Tensor  # [K, frames] what was decoded
    waveform: torch.Tensor  # [frames * 1920] float32 in [-1, 1]
    sample_rate: int
    timestamps: list[tuple[str, float]]
    details: GenerationOutput  # delayed buffer, steps, transcript, trace

    @property
    def trace(self) -> GenerationTrace | None:
        return self.details.trace


def token_ids_for(config: Dia2Config, tokenizer: Dia2Tokenizer) -> TokenIds:
    data = config.data
    s1, s2 = tokenizer.token_id("[S1]"), tokenizer.token_id("[S2]")
    return TokenIds(
        new_word=data.text_new_word_token_id,
        pad=data.text_pad_token_id,
        bos=tokenizer.runtime_bos_id,
        zero=data.text_zero_token_id,
        # Upstream falls back to the new-word id when a tokenizer lacks the speaker tags.
        spk1=s1 if s1 is not None else data.text_new_word_token_id,
        spk2=s2 if s2 is not None else data.text_new_word_token_id,
        audio_pad=data.audio_pad_token_id,
        audio_bos=data.audio_bos_token_id,
    )


class Dia2:
    def __init__(
        self,
        config: Dia2Config,
        model: Dia2Model,
        tokenizer: Dia2Tokenizer,
        mimi: MimiCodec,
    ) -> None:
        self.config = config
        self.model = model
        self.tokenizer = tokenizer
        self.mimi = mimi
        self.ids = token_ids_for(config, tokenizer)
        self.frame_rate = float(mimi.sample_rate) / float(mimi.frame_size)

    @classmethod
    def from_pretrained(
        cls,
        ref: str | os.PathLike[str],
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype = "float32",
        mimi: str | os.PathLike[str] | MimiCodec | None = None,
        tokenizer: str | os.PathLike[str] | Dia2Tokenizer | None = None,
        *,
        revision: str | None = None,
    ) -> Dia2:
        """Load from a checkpoint folder or a Hugging Face repo id.

        ``mimi`` defaults to the manifest's entry, then a ``mimi/`` folder inside the checkpoint, then
        the config's ``assets.mimi``, then ``kyutai/mimi``; ``tokenizer`` to the manifest / config
        reference, else the checkpoint folder itself.
        """
        from .hub import resolve_model_dir
        from .mimi import MimiCodec

        files: CheckpointFiles = locate_checkpoint(ref, revision=revision)
        config = load_config(files.config_path)
        model = load_model(config, files.weights_path, device=device, dtype=dtype)

        if not isinstance(tokenizer, Dia2Tokenizer):
            tok_ref = tokenizer or files.tokenizer_ref or config.assets.tokenizer
            if tok_ref is None:
                tok_dir = files.root
            else:
                tok_dir = resolve_model_dir(tok_ref, allow_patterns=["tokenizer.json"])
            tokenizer = Dia2Tokenizer.from_dir(tok_dir)

        if not isinstance(mimi, MimiCodec):
            # A codec shipped inside the checkpoint folder (tiny test checkpoints do this) wins over
            # the config's reference, which names the production codec.
            bundled = files.root / "mimi" if (files.root / "mimi" / "config.json").is_file() else None
            mimi_ref = mimi or files.mimi_ref or bundled or config.assets.mimi or DEFAULT_MIMI
            # Upstream always runs Mimi in float32, whatever the model's compute dtype.
            mimi = MimiCodec.load(
                mimi_ref, device=device, dtype=torch.float32, num_codebooks=config.data.num_codebooks
            )
        return cls(config, model, tokenizer, mimi)

    def script_entries(self, script: str | list[str]) -> list[Entry]:
        return parse_script(normalize_script(script), self.tokenizer, self.ids, self.frame_rate)

    def prefix_plan(self, speaker_1: PrefixSpeaker, speaker_2: PrefixSpeaker | None = None) -> PrefixPlan:
        return build_prefix_plan(
            speaker_1, speaker_2, codec=self.mimi, encoder=self.tokenizer, frame_rate=self.frame_rate
        )

    def generate(
        self,
        script: str | list[str],
        *,
        prefix: PrefixPlan | tuple[PrefixSpeaker, PrefixSpeaker | None] | None = None,
        cfg_scale: float = 2.0,
        temperature: float = 0.8,
        top_k: int = 50,
        text_temperature: float | None = None,
        text_top_k: int | None = None,
        seed: int | None = None,
        max_steps: int | None = None,
        options: GenerationOptions | None = None,
        trace: bool = False,
        on_step: Callable[[int], None] | None = None,
        decode: bool = True,
    ) -> GenerationResult:
        """Speak ``script``. ``temperature <= 0`` is greedy. ``options`` overrides every keyword
        sampling argument at once (and carries the off-by-default deviations)."""
        if options is None:
            options = GenerationOptions(
                text=SamplingParams(
                    temperature if text_temperature is None else text_temperature,
                    top_k if text_top_k is None else text_top_k,
                ),
                audio=SamplingParams(temperature, top_k),
                cfg_scale=cfg_scale,
                max_steps=max_steps,
                seed=seed,
            )
        if isinstance(prefix, tuple):
            prefix = self.prefix_plan(*prefix)
        entries = self.script_entries(script)
        out = run_generation(
            self.model,
            self.ids,
            entries,
            second_stream_ahead=self.config.data.second_stream_ahead,
            options=options,
            prefix=prefix,
            trace=GenerationTrace() if trace else None,
            on_step=on_step,
            frame_rate=self.frame_rate,
        )
        if decode and out.audio_tokens.shape[-1] > 0:
            waveform = self.mimi.decode(out.audio_tokens).float()
        else:
            waveform = torch.zeros(0)
        logger.info(
            "generated %d frames (%d steps from %d, end of script at %s)",
            out.audio_tokens.shape[-1],
            out.last_generated_step - out.start_step + 1,
            out.start_step,
            out.end_step,
        )
        return GenerationResult(
            audio_tokens=out.audio_tokens,
            waveform=waveform,
            sample_rate=int(self.mimi.sample_rate),
            timestamps=out.timestamps,
            details=out,
        )
