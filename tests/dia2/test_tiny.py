"""dia2.tiny: tiny random checkpoints in the upstream on-disk format."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from dia2.mimi import MimiCodec
from dia2.tiny import SPECIAL_TOKENS, expected_tensor_shapes, tiny_config, write_tiny_checkpoint

# This VM has 2 shared vCPUs; 2 intra-op threads make torch 10-30x slower here.
torch.set_num_threads(1)

REPO_ROOT = Path(__file__).resolve().parents[2]
FIXTURE = Path(os.environ.get("DIA2_FIXTURE_DIR") or REPO_ROOT / "tests" / "fixtures" / "dia2-tiny")
FILES = [
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "special_tokens_map.json",
    "tokenizer_config.json",
    "mimi/config.json",
    "mimi/model.safetensors",
]


@pytest.fixture(scope="module")
def default_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny_default"), seed=0)


@pytest.fixture(scope="module")
def minimal_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny_minimal"), seed=5, variant="minimal")


def read_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    with safe_open(str(path), "pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}


def n_params(shapes: dict[str, tuple[int, ...]]) -> int:
    return sum(int(np.prod(s)) for s in shapes.values())


# Written out by hand from upstream's module tree for the minimal config (channels 6 = 4 codebooks,
# 3 depformer stages, weight groups {0, 1}, 1 layer each, no low-rank table, no depformer text embedding).
MINIMAL_EXPECTED = {
    "transformer.text_embed.embedding.weight": (320, 32),
    "transformer.text_embed.main_proj.weight": (32, 32),
    "transformer.text_embed.second_proj.weight": (32, 32),
    **{f"transformer.audio_embeds.{k}.weight": (2050, 32) for k in range(4)},
    "transformer.layers.0.pre_norm.weight": (32,),
    "transformer.layers.0.post_norm.weight": (32,),
    "transformer.layers.0.attn.q_proj.weight": (32, 32),
    "transformer.layers.0.attn.k_proj.weight": (16, 32),
    "transformer.layers.0.attn.v_proj.weight": (16, 32),
    "transformer.layers.0.attn.o_proj.weight": (32, 32),
    "transformer.layers.0.attn.q_norm.weight": (8,),
    "transformer.layers.0.attn.k_norm.weight": (8,),
    "transformer.layers.0.mlp.wi.weight": (128, 32),
    "transformer.layers.0.mlp.wo.weight": (32, 64),
    "transformer.norm.weight": (32,),
    "transformer.action_head.weight": (2, 32),
    "transformer.cb0_head.weight": (2050, 32),
    **{f"depformer.audio_embeds.{s}.weight": (2050, 16) for s in range(3)},
    "depformer.depformer_in.0.weight": (16, 32),
    "depformer.depformer_in.1.weight": (16, 32),
    "depformer.layers.0.pre_norm.weight": (16,),
    "depformer.layers.0.post_norm.weight": (16,),
    "depformer.layers.0.self_attention.in_proj.0.weight": (48, 16),
    "depformer.layers.0.self_attention.in_proj.1.weight": (48, 16),
    "depformer.layers.0.self_attention.out_proj.0.weight": (16, 16),
    "depformer.layers.0.self_attention.out_proj.1.weight": (16, 16),
    "depformer.layers.0.self_attention.q_norm.weight": (8,),
    "depformer.layers.0.self_attention.k_norm.weight": (8,),
    "depformer.layers.0.mlp.wi.weight": (64, 16),
    "depformer.layers.0.mlp.wo.weight": (16, 32),
    "depformer.norm.weight": (16,),
    **{f"depformer.logits.{s}.weight": (2050, 16) for s in range(3)},
}


def test_presets_have_the_published_shapes() -> None:
    """dia2.presets (used by bench/dia2_speed.py) gives the tensor count and parameter total of Dia2-2B and
    Dia2-1B, which pin the published file sizes to the byte."""
    from dia2.presets import preset_config, preset_dict

    two_b = expected_tensor_shapes(preset_dict("2b"))
    assert len(two_b) == 450
    assert n_params(two_b) == 1_919_556_608
    assert two_b["depformer.layers.3.self_attention.in_proj.4.weight"] == (3072, 1024)
    assert "depformer.text_embed.embedding.weight" not in two_b
    one_b = expected_tensor_shapes(preset_dict("1b"))
    assert len(one_b) == 440
    assert n_params(one_b) == 1_076_244_736
    assert preset_config("2b").depth == 31


def test_minimal_checkpoint_tensors(minimal_ckpt: Path) -> None:
    shapes = read_shapes(minimal_ckpt / "model.safetensors")
    assert shapes == MINIMAL_EXPECTED
    with safe_open(str(minimal_ckpt / "model.safetensors"), "pt") as f:
        assert f.metadata() is None  # like the published file: no __metadata__ block
        for name in f.keys():
            t = f.get_tensor(name)
            assert t.dtype == torch.float32, name
            assert torch.isfinite(t).all(), name
            if name.endswith("norm.weight"):
                assert (t - 1).abs().max() < 0.6 and not torch.equal(t, torch.ones_like(t)), name


def test_default_checkpoint_tensors(default_ckpt: Path) -> None:
    shapes = read_shapes(default_ckpt / "model.safetensors")
    config = json.loads((default_ckpt / "config.json").read_text())
    assert shapes == expected_tensor_shapes(config)
    # Same layout as the upstream reference fixture: 181 tensors, 3,159,648 parameters.
    assert len(shapes) == 181
    assert n_params(shapes) == 3_159_648
    assert shapes["transformer.text_embed.embedding.weight"] == (448, 12)  # low_rank_dim 12
    assert shapes["depformer.text_embed.embedding.weight"] == (448, 16)
    assert {k for k in shapes if k.startswith("depformer.depformer_in.")} == {
        f"depformer.depformer_in.{g}.weight" for g in range(9)
    }


def test_default_checkpoint_matches_reference_fixture_layout(default_ckpt: Path) -> None:
    if not (FIXTURE / "model.safetensors").is_file():
        pytest.skip(f"reference fixture not present at {FIXTURE}")
    assert read_shapes(default_ckpt / "model.safetensors") == read_shapes(FIXTURE / "model.safetensors")
    assert json.loads((default_ckpt / "config.json").read_text()) == json.loads(
        (FIXTURE / "config.json").read_text()
    )


@pytest.mark.parametrize("variant", ["default", "minimal"])
def test_config_round_trips_and_is_valid(variant: str, default_ckpt: Path, minimal_ckpt: Path) -> None:
    ckpt = default_ckpt if variant == "default" else minimal_ckpt
    text = (ckpt / "config.json").read_text()
    config = json.loads(text)
    assert set(config) == {"data", "model", "runtime", "assets"}
    assert config == tiny_config(variant, text_vocab_size=config["data"]["text_vocab_size"])
    assert json.dumps(config, indent=2) + "\n" == text

    data, model, runtime = config["data"], config["model"], config["runtime"]
    # The validity rules upstream's runtime depends on (brief §8.1).
    assert len(data["delay_pattern"]) == data["channels"] - 2
    assert len(runtime["weights_schedule"]) >= data["channels"] - 3
    assert model["depformer"]["kv_heads"] == model["depformer"]["gqa_query_heads"]
    assert data["audio_vocab_size"] == 2050
    assert (data["audio_bos_token_id"], data["audio_pad_token_id"]) == (2048, 2049)
    assert data["text_vocab_size"] % 64 == 0


@pytest.mark.parametrize("variant", ["default", "minimal"])
def test_tokenizer(variant: str, default_ckpt: Path, minimal_ckpt: Path) -> None:
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    ckpt = default_ckpt if variant == "default" else minimal_ckpt
    added = json.loads((ckpt / "added_tokens.json").read_text())
    assert set(added) == {"[S1]", "[S2]", "(laughs)"}
    text_vocab = json.loads((ckpt / "config.json").read_text())["data"]["text_vocab_size"]

    # Upstream loads the slow GPT-2 tokenizer; the fast one must agree.
    for use_fast in (False, True):
        tok = AutoTokenizer.from_pretrained(str(ckpt), use_fast=use_fast)
        ids = tok.encode("[S1] hello")
        assert ids[0] == added["[S1]"], (use_fast, ids)
        assert len(ids) > 1 and all(i < text_vocab for i in ids)
        assert tok.encode("[S2] (laughs)")[::2] == [added["[S2]"], added["(laughs)"]]
        assert tok.bos_token_id == 0
        assert tok.convert_ids_to_tokens(list(range(8))) == SPECIAL_TOKENS
        assert len(tok) <= text_vocab

    raw = Tokenizer.from_file(str(ckpt / "tokenizer.json"))
    assert raw.encode("[S1] hello").ids == AutoTokenizer.from_pretrained(str(ckpt)).encode("[S1] hello")
    assert raw.token_to_id("<|reserved_7|>") == 7


def test_mimi_round_trip(default_ckpt: Path, minimal_ckpt: Path) -> None:
    for ckpt in (default_ckpt, minimal_ckpt):
        channels = json.loads((ckpt / "config.json").read_text())["data"]["channels"]
        codec = MimiCodec.load(ckpt / "mimi")
        assert codec.num_codebooks == codec.max_codebooks == channels - 2
        assert (codec.sample_rate, codec.frame_size, codec.codebook_size) == (24000, 1920, 2048)

        t = torch.arange(24000, dtype=torch.float32) / 24000
        wav = 0.5 * torch.sin(2 * torch.pi * 220 * t) * torch.sin(2 * torch.pi * 3 * t)
        codes = codec.encode(wav)
        assert tuple(codes.shape) == (channels - 2, 13)
        assert codes.dtype == torch.long and int(codes.min()) >= 0 and int(codes.max()) < 2048
        # Random centroids: a varying signal must not map every frame to one code.
        assert len(torch.unique(codes)) > channels - 2
        audio = codec.decode(codes)
        assert audio.dtype == torch.float32 and audio.shape == (13 * 1920,)
        assert torch.isfinite(audio).all() and float(audio.abs().max()) <= 1.0


def test_same_seed_is_byte_identical_across_processes(minimal_ckpt: Path, tmp_path: Path) -> None:
    """The CLI in a fresh interpreter (fresh hash seed) reproduces the in-process files byte for byte."""
    out = tmp_path / "again"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "random"}
    subprocess.run(
        [sys.executable, "-m", "dia2.tiny", str(out), "--seed", "5", "--variant", "minimal"],
        check=True,
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        timeout=300,
    )
    for rel in FILES:
        assert (out / rel).read_bytes() == (minimal_ckpt / rel).read_bytes(), rel


def test_seed_changes_weights(minimal_ckpt: Path, tmp_path: Path) -> None:
    other = write_tiny_checkpoint(tmp_path / "seed6", seed=6, variant="minimal")
    assert (other / "model.safetensors").read_bytes() != (minimal_ckpt / "model.safetensors").read_bytes()
    assert (other / "mimi" / "model.safetensors").read_bytes() != (
        minimal_ckpt / "mimi" / "model.safetensors"
    ).read_bytes()
    # The tokenizer does not depend on the seed.
    assert (other / "tokenizer.json").read_bytes() == (minimal_ckpt / "tokenizer.json").read_bytes()


def test_unknown_variant(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown tiny variant"):
        write_tiny_checkpoint(tmp_path, variant="huge")


def test_speed_bench_runs_on_the_tiny_fixture(tmp_path: Path) -> None:
    """bench/dia2_speed.py's CPU smoke mode (docs/PERFORMANCE.md) keeps working: every section writes its
    numbers, and the reply-wait breakdown is there. Structure only; speed is the bench's job on a GPU."""
    out = tmp_path / "tiny.json"
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [
            sys.executable,
            str(root / "bench" / "dia2_speed.py"),
            "--tiny",
            "--calls",
            "1,2",
            "--out",
            str(out),
        ],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["one_call_cfg_on"]["frames_per_s_per_call"] > 0
    assert len(result["ttfa_warm_context"]["ttfa_ms"]) == result["ttfa_warm_context"]["turns"]
    for row in result["concurrency"]:
        assert row["ttfa_samples"] >= 1 and row["slowest_replies"][0]["lane_steps"] >= 0
