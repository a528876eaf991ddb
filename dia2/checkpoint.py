"""Find and load a Dia2 checkpoint (``config.json`` + ``model.safetensors``) strictly.

Upstream copies whatever names happen to match and silently keeps random values for the rest; we
refuse a checkpoint unless its tensor names and shapes are exactly the model's, and we list every
problem at once. Weights are read one tensor at a time from the safetensors file straight into the
already-allocated parameters on the target device/dtype, so peak host memory is one tensor, not a
second copy of the model.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from .config import Dia2Config, load_config
from .model import Dia2Model

__all__ = [
    "CheckpointFiles",
    "Dia2CheckpointError",
    "check_tensor_names",
    "load_model",
    "locate_checkpoint",
    "parse_dtype",
]

logger = logging.getLogger(__name__)

MANIFEST_NAME = "dia2_assets.json"
# Files a Dia2 repo carries besides the weights; fetched together so the tokenizer is local too.
_REPO_PATTERNS = ["config.json", "*.safetensors", "*.json", "*.txt"]
_MAX_LISTED = 20


class Dia2CheckpointError(ValueError):
    """The weights file does not match the model the config describes."""


@dataclass(frozen=True)
class CheckpointFiles:
    root: Path
    config_path: Path
    weights_path: Path
    tokenizer_ref: str | None  # from the optional manifest; None → the checkpoint folder itself
    mimi_ref: str | None


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        if dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(f"unsupported dtype {dtype}; use float32 or bfloat16")
        return dtype
    table = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
    }
    if dtype not in table:
        raise ValueError(f"unsupported dtype {dtype!r}; use 'float32' or 'bfloat16'")
    return table[dtype]


def locate_checkpoint(ref: str | os.PathLike[str], *, revision: str | None = None) -> CheckpointFiles:
    """Resolve a local folder or a Hugging Face repo id to the checkpoint's files.

    An optional ``dia2_assets.json`` manifest (upstream's convention) may rename the config and
    weights files and name the tokenizer / Mimi references.
    """
    from .hub import resolve_model_dir  # lazy: keeps `import dia2.checkpoint` free of hub state

    root = resolve_model_dir(
        ref, revision=revision, allow_patterns=None if Path(ref).is_dir() else _REPO_PATTERNS
    )
    manifest: dict[str, str] = {}
    manifest_path = root / MANIFEST_NAME
    if manifest_path.is_file():
        try:
            loaded = json.loads(manifest_path.read_text(encoding="utf-8"))
            manifest = loaded if isinstance(loaded, dict) else {}
        except json.JSONDecodeError:
            # Upstream treats an unreadable manifest as absent; so do we, but say so.
            logger.warning("ignoring unreadable %s", manifest_path)
    config_path = root / manifest.get("config", "config.json")
    weights_path = root / manifest.get("weights", "model.safetensors")
    for path in (config_path, weights_path):
        if not path.is_file():
            raise Dia2CheckpointError(f"checkpoint {ref!s} has no {path.name} (looked in {root})")
    return CheckpointFiles(
        root=root,
        config_path=config_path,
        weights_path=weights_path,
        tokenizer_ref=manifest.get("tokenizer"),
        mimi_ref=manifest.get("mimi"),
    )


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:_MAX_LISTED])
    return shown + (f" … and {len(names) - _MAX_LISTED} more" if len(names) > _MAX_LISTED else "")


def check_tensor_names(
    expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]], source: str
) -> None:
    """Raise :class:`Dia2CheckpointError` listing every missing, unexpected and reshaped tensor."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    reshaped = sorted(
        f"{name} (file {list(found[name])}, model {list(expected[name])})"
        for name in set(expected) & set(found)
        if tuple(found[name]) != tuple(expected[name])
    )
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing tensor(s): {_listing(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensor(s): {_listing(unexpected)}")
    if reshaped:
        problems.append(f"{len(reshaped)} tensor(s) with the wrong shape: {_listing(reshaped)}")
    if problems:
        raise Dia2CheckpointError(
            f"{source} does not match the model described by its config: " + "; ".join(problems)
        )


def load_model(
    config: Dia2Config | str | os.PathLike[str],
    weights_path: str | os.PathLike[str],
    *,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = "float32",
    rope_length: int | None = None,
) -> Dia2Model:
    """Build :class:`Dia2Model` for ``config`` and fill it from ``weights_path`` (strict).

    The model is created on the ``meta`` device (no memory), checked against the file's header,
    materialised empty on ``device`` in ``dtype``, then filled tensor by tensor.
    """
    if not isinstance(config, Dia2Config):
        config = load_config(config)
    device = torch.device(device)
    target_dtype = parse_dtype(dtype)
    weights_path = Path(weights_path)
    if not weights_path.is_file():
        raise Dia2CheckpointError(f"weights file not found: {weights_path}")

    with torch.device("meta"):
        model = Dia2Model(config, rope_length=rope_length)
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}

    # safetensors can place tensors on CUDA directly; for CPU targets read on CPU.
    read_device = f"cuda:{device.index or 0}" if device.type == "cuda" else "cpu"
    with safe_open(str(weights_path), framework="pt", device=read_device) as handle:
        found = {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}
        check_tensor_names(expected, found, str(weights_path))
        model = model.to(dtype=target_dtype).to_empty(device=device)
        params = model.state_dict()
        with torch.no_grad():
            for name in expected:
                # One tensor at a time: the cast happens on that tensor only.
                params[name].copy_(handle.get_tensor(name).to(dtype=target_dtype))
    model.reset_buffers()
    model.eval()
    model.requires_grad_(False)
    logger.info(
        "loaded %d tensors (%d parameters) from %s to %s/%s",
        len(expected),
        sum(p.numel() for p in model.parameters()),
        weights_path,
        device,
        target_dtype,
    )
    return model
