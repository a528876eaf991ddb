"""Parse a Dia2 ``config.json`` (upstream layout: ``data`` / ``model`` / ``runtime`` / ``assets``).

Defaults follow the upstream loader so that a config accepted there is accepted here with the
same meaning. On top of that we check the rules under which upstream's runtime would crash later
with an unhelpful ``IndexError`` or reshape error, and raise :class:`Dia2ConfigError` naming the key.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "AssetsConfig",
    "DataConfig",
    "DecoderConfig",
    "DepformerConfig",
    "Dia2Config",
    "Dia2ConfigError",
    "ModelConfig",
    "RuntimeConfig",
    "config_from_dict",
    "load_config",
]

_DEFAULT_ACTIVATIONS: tuple[str, str] = ("silu", "linear")
_KNOWN_ACTIVATIONS = frozenset({"silu", "swish", "swiglu", "gelu", "geglu", "relu", "linear"})


class Dia2ConfigError(ValueError):
    """A config.json is missing a key or holds values the runtime cannot run."""


@dataclass(frozen=True)
class DataConfig:
    channels: int
    text_vocab_size: int
    audio_vocab_size: int
    action_vocab_size: int
    text_pad_token_id: int
    text_new_word_token_id: int
    text_zero_token_id: int
    audio_pad_token_id: int
    audio_bos_token_id: int
    action_pad_token_id: int
    action_new_word_token_id: int
    delay_pattern: tuple[int, ...]
    # Read for completeness; the upstream runtime ignores both (see docs/DIA2.md).
    first_word_min_start: int
    max_pad: int
    second_stream_ahead: int
    tokenizer_path: str | None = None

    @property
    def num_codebooks(self) -> int:
        return self.channels - 2

    @property
    def max_delay(self) -> int:
        return max(self.delay_pattern) if self.delay_pattern else 0


@dataclass(frozen=True)
class DecoderConfig:
    n_layer: int
    n_embd: int
    n_hidden: int
    gqa_query_heads: int
    kv_heads: int
    gqa_head_dim: int
    low_rank_dim: int | None = None


@dataclass(frozen=True)
class DepformerConfig:
    n_layer: int
    n_embd: int
    n_hidden: int
    gqa_query_heads: int
    kv_heads: int
    gqa_head_dim: int
    apply_rope: bool = True
    text_embedding: bool = True
    mlp_activations: tuple[str, str] = _DEFAULT_ACTIVATIONS


@dataclass(frozen=True)
class ModelConfig:
    decoder: DecoderConfig
    depformer: DepformerConfig
    mlp_activations: tuple[str, str]
    dropout: float
    rope_min_timescale: float
    rope_max_timescale: float
    normalization_layer_epsilon: float


@dataclass(frozen=True)
class RuntimeConfig:
    weights_schedule: tuple[int, ...]
    max_context_steps: int

    @property
    def weight_groups(self) -> tuple[int, ...]:
        """Depformer weight groups present in the checkpoint (upstream keys them ``str(g)``)."""
        return tuple(sorted(set(self.weights_schedule)))


@dataclass(frozen=True)
class AssetsConfig:
    tokenizer: str | None = None
    mimi: str | None = None


@dataclass(frozen=True)
class Dia2Config:
    data: DataConfig
    model: ModelConfig
    runtime: RuntimeConfig
    assets: AssetsConfig

    @property
    def depth(self) -> int:
        """Number of sequential depformer stages per frame (codebooks 1..K-1)."""
        return self.data.channels - 3


def _block(raw: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    if key not in raw:
        raise Dia2ConfigError(f"config is missing required key '{where}{key}'")
    value = raw[key]
    if not isinstance(value, Mapping):
        raise Dia2ConfigError(f"config key '{where}{key}' must be an object, got {type(value).__name__}")
    return value


def _int(raw: Mapping[str, Any], key: str, where: str, default: int | None = None) -> int:
    if key not in raw or raw[key] is None:
        if default is None:
            raise Dia2ConfigError(f"config is missing required key '{where}{key}'")
        return default
    value = raw[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise Dia2ConfigError(f"config key '{where}{key}' must be an integer, got {value!r}")
    return value


def _positive(value: int, name: str) -> int:
    if value <= 0:
        raise Dia2ConfigError(f"config key '{name}' must be positive, got {value}")
    return value


def _activations(raw: Mapping[str, Any], name: str) -> tuple[str, str]:
    value = raw.get("mlp_activations")
    if value is None:
        return _DEFAULT_ACTIVATIONS
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise Dia2ConfigError(f"config key '{name}' must list exactly two activations, got {value!r}")
    names = tuple(str(v).lower() for v in value)
    for act in names:
        if act not in _KNOWN_ACTIVATIONS:
            raise Dia2ConfigError(f"config key '{name}' has unsupported activation {act!r}")
    return names[0], names[1]


def _int_list(value: Any, name: str) -> tuple[int, ...]:
    if not isinstance(value, list | tuple) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        raise Dia2ConfigError(f"config key '{name}' must be a list of integers, got {value!r}")
    return tuple(value)


def _parse_data(raw: Mapping[str, Any]) -> DataConfig:
    w = "data."
    channels = _int(raw, "channels", w)
    if channels < 3:
        raise Dia2ConfigError(
            f"config key 'data.channels' must be at least 3 (2 text + codebooks), got {channels}"
        )
    audio_vocab = _positive(_int(raw, "audio_vocab_size", w), "data.audio_vocab_size")
    delay_pattern = _int_list(raw.get("delay_pattern", []), "data.delay_pattern")
    # Upstream indexes one embedding per codebook with the delay pattern: any other length crashes there.
    if len(delay_pattern) != channels - 2:
        raise Dia2ConfigError(
            f"config key 'data.delay_pattern' has {len(delay_pattern)} entries; it must have "
            f"data.channels - 2 = {channels - 2} (one per audio codebook)"
        )
    if any(d < 0 for d in delay_pattern):
        raise Dia2ConfigError("config key 'data.delay_pattern' must not contain negative delays")
    tokenizer_path = raw.get("tokenizer_path")
    return DataConfig(
        channels=channels,
        text_vocab_size=_positive(_int(raw, "text_vocab_size", w), "data.text_vocab_size"),
        audio_vocab_size=audio_vocab,
        action_vocab_size=_positive(_int(raw, "action_vocab_size", w), "data.action_vocab_size"),
        text_pad_token_id=_int(raw, "text_pad_token_id", w),
        text_new_word_token_id=_int(raw, "text_new_word_token_id", w),
        text_zero_token_id=_int(raw, "text_zero_token_id", w, default=7),
        audio_pad_token_id=_int(raw, "audio_pad_token_id", w, default=audio_vocab - 1),
        audio_bos_token_id=_int(raw, "audio_bos_token_id", w, default=audio_vocab - 2),
        action_pad_token_id=_int(raw, "action_pad_token_id", w),
        action_new_word_token_id=_int(raw, "action_new_word_token_id", w),
        delay_pattern=delay_pattern,
        first_word_min_start=_int(raw, "first_word_min_start", w, default=0),
        max_pad=_int(raw, "max_pad", w, default=0),
        second_stream_ahead=_int(raw, "second_stream_ahead", w, default=0),
        tokenizer_path=str(tokenizer_path) if tokenizer_path else None,
    )


def _parse_stack_sizes(raw: Mapping[str, Any], where: str) -> dict[str, int]:
    sizes = {
        key: _positive(_int(raw, key, where), where + key)
        for key in ("n_layer", "n_embd", "n_hidden", "gqa_query_heads", "kv_heads", "gqa_head_dim")
    }
    if sizes["gqa_head_dim"] % 2:
        raise Dia2ConfigError(f"config key '{where}gqa_head_dim' must be even for rotary embeddings")
    if sizes["gqa_query_heads"] % sizes["kv_heads"]:
        raise Dia2ConfigError(
            f"config key '{where}gqa_query_heads' ({sizes['gqa_query_heads']}) must be a multiple of "
            f"'{where}kv_heads' ({sizes['kv_heads']})"
        )
    return sizes


def _parse_model(raw: Mapping[str, Any]) -> ModelConfig:
    dec_raw = _block(raw, "decoder", "model.")
    dep_raw = _block(raw, "depformer", "model.")
    dec_sizes = _parse_stack_sizes(dec_raw, "model.decoder.")
    low_rank = dec_raw.get("low_rank_dim")
    if low_rank is not None:
        low_rank = _positive(_int(dec_raw, "low_rank_dim", "model.decoder."), "model.decoder.low_rank_dim")
    decoder = DecoderConfig(**dec_sizes, low_rank_dim=low_rank)
    dep_sizes = _parse_stack_sizes(dep_raw, "model.depformer.")
    # The depformer's fused in_proj emits query-head-many k/v heads; upstream allocates its cache with
    # kv_heads, so any other value fails with a reshape error mid-generation.
    if dep_sizes["kv_heads"] != dep_sizes["gqa_query_heads"]:
        raise Dia2ConfigError(
            f"config key 'model.depformer.kv_heads' ({dep_sizes['kv_heads']}) must equal "
            f"'model.depformer.gqa_query_heads' ({dep_sizes['gqa_query_heads']})"
        )
    depformer = DepformerConfig(
        **dep_sizes,
        apply_rope=bool(dep_raw.get("apply_rope", True)),
        text_embedding=bool(dep_raw.get("text_embedding", True)),
        mlp_activations=_activations(dep_raw, "model.depformer.mlp_activations"),
    )
    linear = raw.get("linear") or {}
    eps = raw.get("normalization_layer_epsilon", 1e-5)
    if not isinstance(eps, int | float) or eps <= 0:
        raise Dia2ConfigError(f"config key 'model.normalization_layer_epsilon' must be positive, got {eps!r}")
    return ModelConfig(
        decoder=decoder,
        depformer=depformer,
        mlp_activations=_activations(linear, "model.linear.mlp_activations"),
        dropout=float(raw.get("dropout", 0.0)),
        rope_min_timescale=float(raw.get("rope_min_timescale", 1)),
        rope_max_timescale=float(raw.get("rope_max_timescale", 10000)),
        normalization_layer_epsilon=float(eps),
    )


def _parse_runtime(raw: Mapping[str, Any], data: DataConfig) -> RuntimeConfig:
    depth = data.channels - 3
    schedule_raw = raw.get("weights_schedule")
    schedule = (
        tuple(range(depth)) if schedule_raw is None else _int_list(schedule_raw, "runtime.weights_schedule")
    )
    # Stage s reads weights_schedule[s] for s < depth; a shorter list is an IndexError upstream.
    if len(schedule) < depth:
        raise Dia2ConfigError(
            f"config key 'runtime.weights_schedule' has {len(schedule)} entries; it needs at least "
            f"data.channels - 3 = {depth} (one per depformer stage)"
        )
    if any(g < 0 for g in schedule):
        raise Dia2ConfigError("config key 'runtime.weights_schedule' must not contain negative groups")
    max_ctx = _positive(_int(raw, "max_context_steps", "runtime.", default=1500), "runtime.max_context_steps")
    return RuntimeConfig(weights_schedule=schedule, max_context_steps=max_ctx)


def config_from_dict(raw: Mapping[str, Any]) -> Dia2Config:
    """Build a validated :class:`Dia2Config` from the parsed JSON object."""
    if not isinstance(raw, Mapping):
        raise Dia2ConfigError("config must be a JSON object")
    data = _parse_data(_block(raw, "data", ""))
    model = _parse_model(_block(raw, "model", ""))
    runtime = _parse_runtime(_block(raw, "runtime", ""), data)
    assets_raw = raw.get("assets") or {}
    assets = AssetsConfig(
        tokenizer=assets_raw.get("tokenizer") or data.tokenizer_path,
        mimi=assets_raw.get("mimi"),
    )
    return Dia2Config(data=data, model=model, runtime=runtime, assets=assets)


def load_config(path: str | os.PathLike[str]) -> Dia2Config:
    """Read and validate ``config.json``; errors name the file and the offending key."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise Dia2ConfigError(f"config file not found: {path}") from exc
    except json.JSONDecodeError as exc:
        raise Dia2ConfigError(f"config file {path} is not valid JSON: {exc}") from exc
    try:
        return config_from_dict(raw)
    except Dia2ConfigError as exc:
        raise Dia2ConfigError(f"{path}: {exc}") from exc
