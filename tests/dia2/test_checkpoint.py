"""Strict checkpoint loading: exact names and shapes, straight to the target dtype."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from dia2.checkpoint import Dia2CheckpointError, load_model, locate_checkpoint


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as handle:
        return {name: handle.get_tensor(name) for name in handle.keys()}


def _modified_checkpoint(fixture_dir: Path, tmp_path: Path, tensors: dict[str, torch.Tensor]) -> Path:
    folder = tmp_path / "ckpt"
    folder.mkdir()
    shutil.copy(fixture_dir / "config.json", folder / "config.json")
    save_file(tensors, str(folder / "model.safetensors"))
    return folder


def test_loads_fixture_in_float32(fixture_dir: Path) -> None:
    model = load_model(fixture_dir / "config.json", fixture_dir / "model.safetensors")
    stored = _tensors(fixture_dir / "model.safetensors")
    params = model.state_dict()
    assert set(params) == set(stored)
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in params.values())
    name = "depformer.layers.1.self_attention.in_proj.8.weight"
    torch.testing.assert_close(params[name], stored[name].float(), rtol=0, atol=0)
    # Rotary tables are rebuilt after materialising from the meta device.
    assert torch.isfinite(model.transformer.rope_cos).all()
    assert model.transformer.rope_cos[0].eq(1).all()


def test_loads_bfloat16(fixture_dir: Path) -> None:
    model = load_model(fixture_dir / "config.json", fixture_dir / "model.safetensors", dtype="bfloat16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    stored = _tensors(fixture_dir / "model.safetensors")
    # The fixture stores bfloat16, so this load is exact.
    torch.testing.assert_close(
        model.transformer.cb0_head.weight, stored["transformer.cb0_head.weight"], rtol=0, atol=0
    )


def test_rejects_renamed_tensor(fixture_dir: Path, tmp_path: Path) -> None:
    tensors = _tensors(fixture_dir / "model.safetensors")
    tensors["transformer.layers.0.attn.query.weight"] = tensors.pop("transformer.layers.0.attn.q_proj.weight")
    folder = _modified_checkpoint(fixture_dir, tmp_path, tensors)
    with pytest.raises(Dia2CheckpointError) as info:
        load_model(folder / "config.json", folder / "model.safetensors")
    message = str(info.value)
    assert "missing tensor(s): transformer.layers.0.attn.q_proj.weight" in message
    assert "unexpected tensor(s): transformer.layers.0.attn.query.weight" in message


def test_rejects_missing_tensor(fixture_dir: Path, tmp_path: Path) -> None:
    tensors = _tensors(fixture_dir / "model.safetensors")
    del tensors["depformer.logits.30.weight"]
    folder = _modified_checkpoint(fixture_dir, tmp_path, tensors)
    with pytest.raises(Dia2CheckpointError, match=r"1 missing tensor\(s\): depformer\.logits\.30\.weight"):
        load_model(folder / "config.json", folder / "model.safetensors")


def test_rejects_reshaped_tensor(fixture_dir: Path, tmp_path: Path) -> None:
    tensors = _tensors(fixture_dir / "model.safetensors")
    tensors["transformer.action_head.weight"] = torch.zeros(3, 16, dtype=torch.bfloat16)
    folder = _modified_checkpoint(fixture_dir, tmp_path, tensors)
    with pytest.raises(Dia2CheckpointError) as info:
        load_model(folder / "config.json", folder / "model.safetensors")
    assert "transformer.action_head.weight (file [3, 16], model [2, 16])" in str(info.value)


def test_lists_every_problem_at_once(fixture_dir: Path, tmp_path: Path) -> None:
    tensors = _tensors(fixture_dir / "model.safetensors")
    del tensors["transformer.norm.weight"]
    tensors["extra.weight"] = torch.zeros(1)
    tensors["depformer.norm.weight"] = torch.zeros(17)
    folder = _modified_checkpoint(fixture_dir, tmp_path, tensors)
    with pytest.raises(Dia2CheckpointError) as info:
        load_model(folder / "config.json", folder / "model.safetensors")
    message = str(info.value)
    for name in ("transformer.norm.weight", "extra.weight", "depformer.norm.weight"):
        assert name in message


def test_locate_local_checkpoint(fixture_dir: Path, tmp_path: Path) -> None:
    files = locate_checkpoint(fixture_dir)
    assert files.config_path == fixture_dir / "config.json"
    assert files.weights_path == fixture_dir / "model.safetensors"
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(Dia2CheckpointError, match=r"model\.safetensors"):
        locate_checkpoint(tmp_path)


def test_unknown_repo_offline_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dia2.hub import Dia2AssetError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(Dia2AssetError, match="offline"):
        locate_checkpoint("nari-labs/Dia2-does-not-exist")
