"""Config parsing: the fixture's values, upstream defaults, and the validity rules as named errors."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from dia2.config import Dia2ConfigError, config_from_dict, load_config


@pytest.fixture()
def raw_config(fixture_dir: Path) -> dict[str, Any]:
    return json.loads((fixture_dir / "config.json").read_text())


def test_fixture_config_parses(fixture_dir: Path) -> None:
    cfg = load_config(fixture_dir / "config.json")
    assert cfg.data.channels == 34
    assert cfg.data.num_codebooks == 32
    assert cfg.depth == 31
    assert cfg.data.max_delay == 18
    assert cfg.model.decoder.low_rank_dim == 12
    assert cfg.model.depformer.text_embedding is True
    assert cfg.runtime.weight_groups == tuple(range(9))
    assert cfg.runtime.max_context_steps == 160
    assert cfg.assets.mimi == "kyutai/mimi"


def test_defaults_follow_upstream(raw_config: dict[str, Any]) -> None:
    raw = copy.deepcopy(raw_config)
    for key in ("text_zero_token_id", "audio_pad_token_id", "audio_bos_token_id"):
        del raw["data"][key]
    del raw["runtime"]["weights_schedule"]
    del raw["runtime"]["max_context_steps"]
    del raw["model"]["normalization_layer_epsilon"]
    raw["model"]["depformer"].pop("text_embedding")
    cfg = config_from_dict(raw)
    assert cfg.data.text_zero_token_id == 7
    assert cfg.data.audio_pad_token_id == 2049
    assert cfg.data.audio_bos_token_id == 2048
    assert cfg.runtime.weights_schedule == tuple(range(31))
    assert cfg.runtime.max_context_steps == 1500
    assert cfg.model.normalization_layer_epsilon == 1e-5
    assert cfg.model.depformer.text_embedding is True


def _expect_error(raw: dict[str, Any], key: str) -> None:
    with pytest.raises(Dia2ConfigError) as info:
        config_from_dict(raw)
    assert key in str(info.value), str(info.value)


def test_delay_pattern_must_match_codebooks(raw_config: dict[str, Any]) -> None:
    raw = copy.deepcopy(raw_config)
    raw["data"]["delay_pattern"] = raw["data"]["delay_pattern"][:-1]
    _expect_error(raw, "data.delay_pattern")
    raw["data"]["delay_pattern"] = [*raw_config["data"]["delay_pattern"], 18]
    _expect_error(raw, "data.delay_pattern")


def test_weights_schedule_must_cover_every_stage(raw_config: dict[str, Any]) -> None:
    raw = copy.deepcopy(raw_config)
    raw["runtime"]["weights_schedule"] = raw["runtime"]["weights_schedule"][:30]
    _expect_error(raw, "runtime.weights_schedule")
    # Longer than needed is accepted (upstream only reads the first channels - 3 entries).
    raw["runtime"]["weights_schedule"] = [*raw_config["runtime"]["weights_schedule"], 8]
    assert len(config_from_dict(raw).runtime.weights_schedule) == 32


def test_depformer_kv_heads_must_equal_query_heads(raw_config: dict[str, Any]) -> None:
    raw = copy.deepcopy(raw_config)
    raw["model"]["depformer"]["kv_heads"] = 1
    _expect_error(raw, "model.depformer.kv_heads")


@pytest.mark.parametrize(
    ("path", "key"),
    [
        (("data", "channels"), "data.channels"),
        (("data", "text_vocab_size"), "data.text_vocab_size"),
        (("model", "decoder", "n_layer"), "model.decoder.n_layer"),
        (("model", "depformer", "gqa_head_dim"), "model.depformer.gqa_head_dim"),
        (("model", "decoder"), "model.decoder"),
        (("runtime",), "runtime"),
        (("data",), "data"),
    ],
)
def test_missing_required_key(raw_config: dict[str, Any], path: tuple[str, ...], key: str) -> None:
    raw = copy.deepcopy(raw_config)
    node = raw
    for part in path[:-1]:
        node = node[part]
    del node[path[-1]]
    _expect_error(raw, key)


def test_wrong_type_is_named(raw_config: dict[str, Any]) -> None:
    raw = copy.deepcopy(raw_config)
    raw["model"]["decoder"]["n_embd"] = "16"
    _expect_error(raw, "model.decoder.n_embd")


def test_load_config_names_the_file(tmp_path: Path, raw_config: dict[str, Any]) -> None:
    raw = copy.deepcopy(raw_config)
    del raw["runtime"]
    path = tmp_path / "config.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(Dia2ConfigError, match=r"config\.json.*runtime"):
        load_config(path)
    with pytest.raises(Dia2ConfigError, match="not found"):
        load_config(tmp_path / "absent.json")
