"""Command line: ``python -m dia2 generate --model PATH_OR_REPO --text "[S1] ..." --out out.wav``."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .prefix import PrefixPlan
    from .runtime import Dia2

__all__ = ["main"]

logger = logging.getLogger("dia2")


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dia2", description="Dia2 text-to-speech runtime")
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="speak a script into a WAV file")
    gen.add_argument("--model", required=True, help="checkpoint folder or Hugging Face repo id")
    gen.add_argument("--revision", default=None, help="repo revision (branch, tag or commit)")
    text = gen.add_mutually_exclusive_group(required=True)
    text.add_argument("--text", help='script, e.g. "[S1] Hello there. [S2] Hi!"')
    text.add_argument("--text-file", type=Path, help="read the script from a file ('-' for stdin)")
    gen.add_argument("--out", required=True, type=Path, help="output WAV (24 kHz, 16-bit mono)")
    gen.add_argument("--mimi", default=None, help="Mimi codec folder or repo id (default: from the config)")
    gen.add_argument("--tokenizer", default=None, help="tokenizer folder or repo id (default: checkpoint)")
    gen.add_argument("--prefix-s1", type=Path, help="speaker-1 prefix WAV")
    gen.add_argument("--prefix-s1-words", type=Path, help='speaker-1 words JSON: [{"text","start","end"}]')
    gen.add_argument("--prefix-s2", type=Path, help="speaker-2 prefix WAV (needs --prefix-s1)")
    gen.add_argument("--prefix-s2-words", type=Path, help="speaker-2 words JSON")
    gen.add_argument("--include-prefix", action="store_true", help="keep the prefix audio in the output")
    gen.add_argument("--cfg-scale", type=float, default=2.0, help="CFG scale; 1.0 disables (default 2.0)")
    gen.add_argument("--temperature", type=float, default=0.8, help="sampling temperature (default 0.8)")
    gen.add_argument("--top-k", type=int, default=50, help="top-k for sampling (default 50)")
    gen.add_argument("--seed", type=int, default=None, help="seed of the sampling generator")
    gen.add_argument("--greedy", action="store_true", help="argmax everywhere (temperature 0)")
    gen.add_argument("--max-steps", type=int, default=None, help="generation step cap (default: config)")
    gen.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default cpu)")
    gen.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    gen.add_argument("--dump-tokens", type=Path, help="also write the token grids to this .npz")
    gen.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def _prefix_args(args: argparse.Namespace, runtime: Dia2) -> PrefixPlan | None:
    from .prefix import PrefixSpeaker, load_prefix_audio, load_words_json

    if args.prefix_s1 is None:
        if args.prefix_s2 is not None:
            raise SystemExit("--prefix-s2 needs --prefix-s1")
        return None
    speakers = []
    for wav, words in ((args.prefix_s1, args.prefix_s1_words), (args.prefix_s2, args.prefix_s2_words)):
        if wav is None:
            continue
        if words is None:
            raise SystemExit(f"{wav}: give its word timings with --prefix-s1-words / --prefix-s2-words")
        audio = load_prefix_audio(wav, runtime.mimi.sample_rate)
        speakers.append(PrefixSpeaker(audio, load_words_json(words)))
    return runtime.prefix_plan(speakers[0], speakers[1] if len(speakers) > 1 else None)


def _generate(args: argparse.Namespace) -> int:
    import numpy as np

    from .generate import GenerationOptions
    from .runtime import Dia2
    from .sampling import SamplingParams
    from .wavfile import write_wav

    if args.text is not None:
        script = args.text
    elif str(args.text_file) == "-":
        script = sys.stdin.read()
    else:
        script = args.text_file.read_text(encoding="utf-8")

    started = time.perf_counter()
    runtime = Dia2.from_pretrained(
        args.model,
        device=args.device,
        dtype=args.dtype,
        mimi=args.mimi,
        tokenizer=args.tokenizer,
        revision=args.revision,
    )
    logger.info("loaded %s in %.2fs", args.model, time.perf_counter() - started)
    prefix = _prefix_args(args, runtime)
    sampling = SamplingParams(0.0 if args.greedy else args.temperature, args.top_k)
    options = GenerationOptions(
        text=sampling,
        audio=sampling,
        cfg_scale=args.cfg_scale,
        max_steps=args.max_steps,
        seed=args.seed,
        include_prefix_audio=args.include_prefix,
    )
    started = time.perf_counter()
    result = runtime.generate(script, prefix=prefix, options=options)
    elapsed = time.perf_counter() - started
    write_wav(args.out, result.waveform, result.sample_rate)
    seconds = result.waveform.shape[-1] / result.sample_rate
    logger.info("generated %.2fs of audio in %.2fs", seconds, elapsed)
    if args.dump_tokens is not None:
        d = result.details
        args.dump_tokens.parent.mkdir(parents=True, exist_ok=True)
        np.savez(
            args.dump_tokens,
            audio_tokens=result.audio_tokens.cpu().numpy(),
            audio_delayed=d.audio_delayed.cpu().numpy(),
            audio_aligned_uncropped=d.audio_aligned_uncropped.cpu().numpy(),
            start_step=d.start_step,
            crop_frames=d.crop_frames,
        )
    # Final CLI output: where the audio went.
    print(f"{args.out} ({seconds:.2f}s, {result.audio_tokens.shape[-1]} frames)")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.command != "generate":
        return 2
    from .checkpoint import Dia2CheckpointError
    from .config import Dia2ConfigError
    from .hub import Dia2AssetError
    from .tokenizer import Dia2TokenizerError

    try:
        return _generate(args)
    except (Dia2AssetError, Dia2CheckpointError, Dia2ConfigError, Dia2TokenizerError) as exc:
        # Expected user-facing failures: one clear line, no traceback.
        logger.error("%s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
