"""Tiny random Dia2 checkpoints in the upstream on-disk format, for demos and tests.

``write_tiny_checkpoint(out_dir)`` writes a folder laid out like the published ``nari-labs/Dia2-2B`` repo
plus a Mimi codec, all small enough to run on a laptop CPU in well under a second per frame:

* ``config.json``: upstream's schema (``data`` / ``model`` / ``runtime`` / ``assets``).
* ``model.safetensors``: float32 tensors named exactly like upstream's ``Dia2Model.state_dict()``; names and
  shapes are derived from the config by :func:`expected_tensor_shapes` (independently of our model code, so
  a loader test against this file is a real check).
* Tokenizer files of a byte-level BPE trained with ``tokenizers`` (GPT-2 layout, special tokens at ids 0..7,
  added tokens ``[S1]``, ``[S2]``, ``(laughs)``).
* ``mimi/``: a random transformers ``MimiModel`` with ``channels - 2`` quantizers of 2048 codes.

Output is a pure function of (variant, seed) for a given torch/transformers/tokenizers install: every random
number comes from a generator seeded here, so two runs give byte-identical files.

Command line: ``python -m dia2.tiny OUT_DIR [--seed N] [--variant default|minimal]``.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from .presets import TOKEN_LAYOUT

logger = logging.getLogger(__name__)

__all__ = [
    "SPECIAL_TOKENS",
    "VARIANTS",
    "expected_tensor_shapes",
    "main",
    "tiny_config",
    "write_tiny_checkpoint",
]

# Ids 0..7 are reserved specials, as in the published tokenizer: the runtime uses 1 (BOS), 2 (new word),
# 3 (pad) and 7 (unconditional "zero" text) by id, so they must exist and never be produced by BPE.
SPECIAL_TOKENS = ["<|endoftext|>"] + [f"<|reserved_{i}|>" for i in range(1, 8)]
ADDED_TOKENS = ["[S1]", "[S2]", "(laughs)"]

# Text the tiny BPE is trained on: phone-call phrases, so common words become single tokens.
_TOKENIZER_CORPUS = [
    "Hello, this is a verification call. Yes, speaking.",
    "Thanks for taking my call. Sure, go ahead.",
    "Good morning, this is Anna from the clinic. How can I help you today?",
    "I would like to book an appointment for next Tuesday afternoon, please.",
    "Could you repeat that? The line is a little noisy on my side.",
    "Of course. Your reference number is four, two, seven, nine.",
    "Thank you for calling. Is there anything else I can help you with?",
    "No, that is all. Have a nice day! Goodbye.",
    "Please hold the line while I check the schedule for you.",
    "We have an opening on Thursday at ten in the morning. Does that work?",
    "That works for me. Should I bring anything with me?",
    "Just your card and a photo identification. See you then.",
]

_BASE_DATA: dict[str, Any] = {**TOKEN_LAYOUT, "tokenizer_path": None}

# The random Mimi codec's sizes, the same in every variant (only its quantizer count follows `channels`).
_TINY_MIMI: dict[str, int] = {
    "hidden_size": 16,
    "num_filters": 4,
    "codebook_dim": 8,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "head_dim": 8,
    "intermediate_size": 32,
}

# Per variant: the config minus the text vocabulary size (set from the trained tokenizer) and the BPE
# vocabulary target. "default" mirrors the reference fixture (production token layout with 32 codebooks,
# low-rank text table, depformer text embedding, 9 weight groups). "minimal" is the smallest layout
# upstream runs: 4 codebooks, production-style embeddings (no low-rank table, no depformer text embedding).
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {
        "bpe_vocab_size": 441,
        "mimi": _TINY_MIMI,
        "config": {
            "data": {"channels": 34, "delay_pattern": [16] + [18] * 31},
            "model": {
                "decoder": {
                    "n_layer": 2,
                    "n_embd": 16,
                    "n_hidden": 32,
                    "gqa_query_heads": 4,
                    "kv_heads": 2,
                    "gqa_head_dim": 8,
                    "low_rank_dim": 12,
                },
                "depformer": {
                    "n_layer": 2,
                    "n_embd": 16,
                    "n_hidden": 32,
                    "gqa_query_heads": 2,
                    "kv_heads": 2,
                    "gqa_head_dim": 8,
                    "apply_rope": True,
                    "text_embedding": True,
                    "mlp_activations": ["silu", "linear"],
                },
                "linear": {"mlp_activations": ["silu", "linear"]},
                "dropout": 0.0,
                "rope_min_timescale": 1,
                "rope_max_timescale": 10000,
                "normalization_layer_epsilon": 1e-5,
            },
            "runtime": {"weights_schedule": list(range(8)) + [8] * 23, "max_context_steps": 160},
        },
    },
    "minimal": {
        "bpe_vocab_size": 300,
        "mimi": _TINY_MIMI,
        "config": {
            "data": {"channels": 6, "delay_pattern": [2, 3, 3, 3]},
            "model": {
                "decoder": {
                    "n_layer": 1,
                    "n_embd": 32,
                    "n_hidden": 64,
                    "gqa_query_heads": 4,
                    "kv_heads": 2,
                    "gqa_head_dim": 8,
                },
                "depformer": {
                    "n_layer": 1,
                    "n_embd": 16,
                    "n_hidden": 32,
                    "gqa_query_heads": 2,
                    "kv_heads": 2,
                    "gqa_head_dim": 8,
                    "apply_rope": True,
                    "text_embedding": False,
                },
                "rope_min_timescale": 1,
                "rope_max_timescale": 10000,
                "normalization_layer_epsilon": 1e-6,
            },
            "runtime": {"weights_schedule": [0, 1, 1], "max_context_steps": 60},
        },
    },
}


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def tiny_config(variant: str = "default", *, text_vocab_size: int) -> dict[str, Any]:
    """The upstream-format config dict of a variant, for a tokenizer whose ids are < text_vocab_size."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown tiny variant {variant!r}; choose one of {sorted(VARIANTS)}")
    spec = copy.deepcopy(VARIANTS[variant]["config"])
    data = {"channels": spec["data"]["channels"], "text_vocab_size": text_vocab_size}
    data.update(_BASE_DATA)
    data["delay_pattern"] = spec["data"]["delay_pattern"]
    # Key order follows upstream's file so a diff against a real config reads naturally.
    ordered = {
        k: data[k]
        for k in (
            "channels",
            "text_vocab_size",
            "audio_vocab_size",
            "action_vocab_size",
            "text_pad_token_id",
            "text_new_word_token_id",
            "text_zero_token_id",
            "audio_pad_token_id",
            "audio_bos_token_id",
            "action_pad_token_id",
            "action_new_word_token_id",
            "delay_pattern",
            "first_word_min_start",
            "max_pad",
            "second_stream_ahead",
            "tokenizer_path",
        )
    }
    # The codec sits in mimi/ next to the weights; like the fixture, assets.mimi keeps the production id
    # so the file is what a real config looks like (the runtime prefers a bundled mimi/ folder).
    return {
        "data": ordered,
        "model": spec["model"],
        "runtime": spec["runtime"],
        "assets": {"tokenizer": None, "mimi": "kyutai/mimi"},
    }


def expected_tensor_shapes(config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Upstream ``Dia2Model.state_dict()`` names and shapes for an upstream-format config dict.

    Linear weights are ``[out_features, in_features]``. Derived from upstream's module tree (transformer =
    main decoder, depformer = per-codebook stages), with upstream's config defaults for absent keys.
    """
    data, model, runtime = config["data"], config["model"], config.get("runtime", {})
    dec, dep = model["decoder"], model["depformer"]
    channels = int(data["channels"])
    n_audio = channels - 2
    n_stages = max(n_audio - 1, 0)
    text_vocab, audio_vocab = int(data["text_vocab_size"]), int(data["audio_vocab_size"])
    schedule = runtime.get("weights_schedule")
    if schedule is None:
        schedule = list(range(n_stages))
    groups = sorted(set(schedule))

    shapes: dict[str, tuple[int, ...]] = {}
    d = int(dec["n_embd"])
    low_rank = dec.get("low_rank_dim")
    base = int(low_rank) if low_rank is not None else d
    shapes["transformer.text_embed.embedding.weight"] = (text_vocab, base)
    shapes["transformer.text_embed.main_proj.weight"] = (d, base)
    shapes["transformer.text_embed.second_proj.weight"] = (d, base)
    for k in range(n_audio):
        shapes[f"transformer.audio_embeds.{k}.weight"] = (audio_vocab, d)
    q_dim = int(dec["gqa_query_heads"]) * int(dec["gqa_head_dim"])
    kv_dim = int(dec["kv_heads"]) * int(dec["gqa_head_dim"])
    for i in range(int(dec["n_layer"])):
        p = f"transformer.layers.{i}."
        shapes[p + "pre_norm.weight"] = (d,)
        shapes[p + "post_norm.weight"] = (d,)
        shapes[p + "attn.q_proj.weight"] = (q_dim, d)
        shapes[p + "attn.k_proj.weight"] = (kv_dim, d)
        shapes[p + "attn.v_proj.weight"] = (kv_dim, d)
        shapes[p + "attn.o_proj.weight"] = (d, q_dim)
        shapes[p + "attn.q_norm.weight"] = (int(dec["gqa_head_dim"]),)
        shapes[p + "attn.k_norm.weight"] = (int(dec["gqa_head_dim"]),)
        # Gated MLP: one fused input projection holding [gate; up].
        shapes[p + "mlp.wi.weight"] = (2 * int(dec["n_hidden"]), d)
        shapes[p + "mlp.wo.weight"] = (d, int(dec["n_hidden"]))
    shapes["transformer.norm.weight"] = (d,)
    shapes["transformer.action_head.weight"] = (int(data["action_vocab_size"]), d)
    shapes["transformer.cb0_head.weight"] = (audio_vocab, d)

    e = int(dep["n_embd"])
    for s in range(n_stages):
        shapes[f"depformer.audio_embeds.{s}.weight"] = (audio_vocab, e)
    if dep.get("text_embedding", True):
        # The depformer's text table is full width: upstream passes no low_rank_dim to it.
        shapes["depformer.text_embed.embedding.weight"] = (text_vocab, e)
        shapes["depformer.text_embed.main_proj.weight"] = (e, e)
        shapes["depformer.text_embed.second_proj.weight"] = (e, e)
    for g in groups:
        shapes[f"depformer.depformer_in.{g}.weight"] = (e, d)
    dep_q = int(dep["gqa_query_heads"]) * int(dep["gqa_head_dim"])
    for i in range(int(dep["n_layer"])):
        p = f"depformer.layers.{i}."
        shapes[p + "pre_norm.weight"] = (e,)
        shapes[p + "post_norm.weight"] = (e,)
        for g in groups:
            # Fused [q; k; v] projection, every one with the query head count.
            shapes[p + f"self_attention.in_proj.{g}.weight"] = (3 * dep_q, e)
            shapes[p + f"self_attention.out_proj.{g}.weight"] = (e, dep_q)
        shapes[p + "self_attention.q_norm.weight"] = (int(dep["gqa_head_dim"]),)
        shapes[p + "self_attention.k_norm.weight"] = (int(dep["gqa_head_dim"]),)
        shapes[p + "mlp.wi.weight"] = (2 * int(dep["n_hidden"]), e)
        shapes[p + "mlp.wo.weight"] = (e, int(dep["n_hidden"]))
    shapes["depformer.norm.weight"] = (e,)
    for s in range(n_stages):
        shapes[f"depformer.logits.{s}.weight"] = (audio_vocab, e)
    return shapes


def _random_tensor(name: str, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """Values with sane scales so a tiny model's activations and logits stay O(1)."""
    if name.endswith("norm.weight"):
        # RMSNorm gains near 1 (not exactly 1, so a loader that ignores them is caught).
        return 1.0 + 0.1 * torch.randn(shape, generator=gen)
    if name.endswith("text_embed.embedding.weight") or ".audio_embeds." in name:
        return torch.randn(shape, generator=gen)
    # Linear [out, in]: std 1/sqrt(fan_in) keeps outputs at the input's scale.
    return torch.randn(shape, generator=gen) / math.sqrt(shape[-1])


def _write_weights(path: Path, config: dict[str, Any], seed: int) -> int:
    gen = torch.Generator().manual_seed(seed)
    tensors = {
        name: _random_tensor(name, shape, gen).to(torch.float32).contiguous()
        for name, shape in expected_tensor_shapes(config).items()
    }
    # No __metadata__ block: the published checkpoint has none.
    save_file(tensors, str(path))
    return sum(t.numel() for t in tensors.values())


def _train_tokenizer(vocab_size: int) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_TOKENIZER_CORPUS, trainer=trainer)
    tok.add_tokens(ADDED_TOKENS)
    return tok


def _write_tokenizer(out_dir: Path, vocab_size: int) -> dict[str, int]:
    """Write the six GPT-2-layout tokenizer files; returns {added token: id} plus the size."""
    tok = _train_tokenizer(vocab_size)
    tok.save(str(out_dir / "tokenizer.json"))
    tok.model.save(str(out_dir))  # vocab.json + merges.txt (base vocabulary incl. specials)

    added = {t: tok.token_to_id(t) for t in ADDED_TOKENS}
    _write_json(out_dir / "added_tokens.json", added)
    eot = SPECIAL_TOKENS[0]
    _write_json(out_dir / "special_tokens_map.json", {"bos_token": eot, "eos_token": eot, "unk_token": eot})

    def entry(content: str, special: bool) -> dict[str, Any]:
        return {
            "content": content,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": special,
        }

    decoder = {str(i): entry(t, True) for i, t in enumerate(SPECIAL_TOKENS)}
    decoder.update({str(i): entry(t, False) for t, i in added.items()})
    _write_json(
        out_dir / "tokenizer_config.json",
        {
            "add_bos_token": False,
            "add_prefix_space": False,
            "added_tokens_decoder": decoder,
            "bos_token": eot,
            "clean_up_tokenization_spaces": False,
            "eos_token": eot,
            "errors": "replace",
            "model_max_length": 1000000,
            "tokenizer_class": "GPT2Tokenizer",
            "unk_token": eot,
        },
    )
    return {**added, "__size__": tok.get_vocab_size(with_added_tokens=True)}


def _write_mimi(out_dir: Path, num_quantizers: int, sizes: dict[str, Any], seed: int) -> None:
    from transformers import MimiConfig, MimiModel

    config = MimiConfig(
        sampling_rate=24000,
        upsampling_ratios=[8, 6, 5, 4],
        codebook_size=2048,
        num_quantizers=num_quantizers,
        num_semantic_quantizers=1,
        vector_quantization_hidden_dimension=sizes["codebook_dim"],
        upsample_groups=sizes["hidden_size"],
        num_key_value_heads=sizes["num_attention_heads"],
        use_cache=False,
        **sizes,
    )
    # transformers initialises from the global RNG: seed it, but leave the caller's RNG state untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MimiModel(config).eval()
    # transformers starts every codebook at zero (all codes identical); random centroids make encode and
    # decode exercise real codebook lookups.
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, buf in sorted(model.named_buffers()):
            if name.endswith("codebook.embed_sum"):
                buf.copy_(torch.randn(buf.shape, generator=gen))
            elif name.endswith("codebook.cluster_usage"):
                buf.copy_(0.5 + torch.rand(buf.shape, generator=gen))
    model.save_pretrained(str(out_dir / "mimi"))


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_tiny_checkpoint(
    out_dir: str | os.PathLike[str], *, seed: int = 0, variant: str = "default"
) -> Path:
    """Write a tiny random Dia2 checkpoint (config, weights, tokenizer, mimi/) into ``out_dir``.

    The folder is created if needed; files of an earlier run are overwritten. Returns the folder.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown tiny variant {variant!r}; choose one of {sorted(VARIANTS)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    spec = VARIANTS[variant]

    tok_info = _write_tokenizer(out, spec["bpe_vocab_size"])
    # Upstream's table is padded to a multiple of 64 rows (49,280 for the 2B tokenizer).
    text_vocab = _round_up(tok_info["__size__"], 64)
    config = tiny_config(variant, text_vocab_size=text_vocab)
    _write_json(out / "config.json", config)
    params = _write_weights(out / "model.safetensors", config, seed)
    _write_mimi(out, config["data"]["channels"] - 2, spec["mimi"], seed)
    logger.info(
        "Wrote tiny Dia2 checkpoint %s (variant %s, seed %d): %d parameters, text vocab %d, [S1]=%d [S2]=%d",
        out,
        variant,
        seed,
        params,
        text_vocab,
        tok_info["[S1]"],
        tok_info["[S2]"],
    )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dia2.tiny",
        description="Write a tiny random Dia2 checkpoint in the upstream on-disk format.",
    )
    parser.add_argument("out_dir", type=Path, help="folder to write (created if missing)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--variant",
        choices=sorted(VARIANTS),
        default="default",
        help="model size/layout (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(1)  # tiny tensors: extra threads only add overhead
    write_tiny_checkpoint(args.out_dir, seed=args.seed, variant=args.variant)
    return 0


if __name__ == "__main__":
    sys.exit(main())
