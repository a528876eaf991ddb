"""BENCHMARK ONLY: a Dia2 runtime with random weights at real shapes, for speed and capacity runs.

No Dia2-2B or Mimi weights reach the machines we benchmark on, and speed does not depend on the weights'
values: a random model at Dia2-2B's shapes in bf16 runs the same kernels, the same memory and the same step
count per frame as the published one. Its audio is noise and its words are nonsense, which is why nothing in a
deployment may load it: the supervisor only builds one through an explicit benchmark switch
(sipbridge/engine/dia2.py, `SIPBRIDGE_BENCH_RANDOM_DIA2`), and bench/dia2_speed.py uses it directly.

`shape` is a preset name (`2b`, `1b`: dia2/presets.py, with kyutai/mimi's shapes for the codec and a hashing
stand-in for the tokenizer) or a checkpoint folder whose config, tokenizer and codec are used as they are and
whose weights are ignored (the tiny fixture: a CPU proof of the same path).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import torch

from .checkpoint import parse_dtype
from .config import load_config
from .mimi import MimiCodec
from .model import Dia2Model
from .presets import PRESETS, preset_config
from .runtime import Dia2
from .tokenizer import Dia2Tokenizer

__all__ = ["HashEncoder", "random_runtime"]


class HashEncoder:
    """Stand-in tokenizer for random weights: 1-3 pieces per word, ids in the text vocabulary."""

    runtime_bos_id = 1

    def __init__(self, vocab: int) -> None:
        self.vocab = vocab

    def encode(self, text: str) -> list[int]:
        h = sum(ord(c) * 31**i for i, c in enumerate(text)) % 1_000_003
        return [16 + (h + i * 7919) % (self.vocab - 16) for i in range(1 + len(text) % 3)]

    def token_id(self, token: str) -> int | None:
        # Dia2-2B's tokenizer has [S1] / [S2] at 49152 / 49153; keep them inside this vocabulary.
        known = {"[S1]": 49152, "[S2]": 49153}
        return known[token] % self.vocab if token in known else None


def _random_model(config: Any, device: str, dtype: torch.dtype, seed: int) -> Dia2Model:
    torch.manual_seed(seed)
    with torch.device(device):
        model = Dia2Model(config).to(dtype)
    model.reset_buffers()
    return model.eval()


def random_runtime(shape: str, device: str = "cuda", dtype: str = "bfloat16", seed: int = 0) -> Dia2:
    """A `Dia2` runtime of `shape` (preset name or checkpoint folder) with weights drawn at random."""
    if shape in PRESETS:
        from transformers import MimiConfig, MimiModel

        config = preset_config(shape)
        model = _random_model(config, device, parse_dtype(dtype), seed)
        # kyutai/mimi shapes, random weights (transformers' decorated .to() is typed as taking the model)
        codec = MimiModel(MimiConfig()).to(device).eval()  # type: ignore[arg-type]
        mimi = MimiCodec(codec, num_codebooks=config.data.num_codebooks)
        tokenizer = cast(Dia2Tokenizer, HashEncoder(config.data.text_vocab_size))
        return Dia2(config, model, tokenizer, mimi)
    folder = Path(shape)
    if not (folder / "config.json").is_file():
        raise ValueError(
            f"random Dia2 shape {shape!r}: not a preset ({', '.join(PRESETS)}) nor a checkpoint folder"
        )
    config = load_config(folder / "config.json")
    model = _random_model(config, device, parse_dtype(dtype), seed)
    mimi = MimiCodec.load(
        folder / "mimi", device=device, dtype=torch.float32, num_codebooks=config.data.num_codebooks
    )
    return Dia2(config, model, Dia2Tokenizer.from_dir(folder), mimi)
