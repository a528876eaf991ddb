"""Full-size Dia2 configs (shape-relevant keys as published), for benchmarks with random weights.

The shapes are pinned by the published file sizes (brief §1.2-1.4); ``tests/dia2/test_tiny.py`` checks
that these dicts give the published tensor count and parameter total.
"""

from __future__ import annotations

from typing import Any

from .config import Dia2Config, config_from_dict

__all__ = ["PRESETS", "TOKEN_LAYOUT", "preset_config", "preset_dict"]

# The published token layout (special ids, vocab sizes, text-stream timing), shared by both presets and
# by the tiny test checkpoints (dia2/tiny.py), so a tiny model speaks exactly the real models' protocol.
TOKEN_LAYOUT: dict[str, Any] = {
    "audio_vocab_size": 2050,
    "action_vocab_size": 2,
    "text_pad_token_id": 3,
    "text_new_word_token_id": 2,
    "text_zero_token_id": 7,
    "audio_pad_token_id": 2049,
    "audio_bos_token_id": 2048,
    "action_pad_token_id": 0,
    "action_new_word_token_id": 1,
    "first_word_min_start": 3,
    "max_pad": 8,
    "second_stream_ahead": 2,
}


def _config(n_layer: int, n_embd: int, dep_layers: int, schedule: list[int]) -> dict[str, Any]:
    return {
        "data": {
            "channels": 34,
            "text_vocab_size": 49280,
            **TOKEN_LAYOUT,
            "delay_pattern": [16] + [18] * 31,
        },
        "model": {
            "decoder": {
                "n_layer": n_layer,
                "n_embd": n_embd,
                "n_hidden": 6144,
                "gqa_query_heads": 16,
                "kv_heads": 8,
                "gqa_head_dim": 128,
            },
            "depformer": {
                "n_layer": dep_layers,
                "n_embd": 1024,
                "n_hidden": 3072,
                "gqa_query_heads": 8,
                "kv_heads": 8,
                "gqa_head_dim": 128,
                "apply_rope": True,
                "text_embedding": False,
            },
            "rope_min_timescale": 1,
            "rope_max_timescale": 10000,
            "normalization_layer_epsilon": 1e-6,
        },
        "runtime": {"weights_schedule": schedule, "max_context_steps": 1500},
    }


PRESETS: dict[str, dict[str, Any]] = {
    "2b": _config(28, 2048, 4, [0, 1, 2, 3] + [4] * 27),
    "1b": _config(30, 1024, 3, [0] * 8 + [1] * 8 + [2] * 15),
}


def preset_dict(name: str) -> dict[str, Any]:
    import copy

    return copy.deepcopy(PRESETS[name])


def preset_config(name: str) -> Dia2Config:
    return config_from_dict(preset_dict(name))
