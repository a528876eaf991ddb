"""Run every case of a Dia2 reference fixture on a device/dtype and report agreement with upstream, as JSON.

    python bench/dia2_gpu_parity.py                                  # CUDA float32 + bfloat16 (CPU if no GPU)
    python bench/dia2_gpu_parity.py --device cpu --dtype float32 --fixture tests/fixtures/dia2-tiny

float32 should reproduce upstream's tokens exactly (the fixture's logit margins are ≥ 5e-5, far above float32
rounding). bfloat16 stores and computes in bf16, so greedy decisions may flip where margins are small: the
report gives the token agreement and the first divergent step instead of hiding it. Needs only torch, numpy,
transformers, safetensors, tokenizers and huggingface_hub (the GPU image), with the repository on sys.path.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dia2.reference import GENERATION_CASES, ReferenceFixture, step_token_agreement

DEFAULT_FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "dia2-tiny"


def run(reference: ReferenceFixture, device: str, dtype: str) -> dict[str, object]:
    if device.startswith("cuda"):
        # Exact float32 parity needs true float32 matmuls, not TF32.
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    started = time.perf_counter()
    runtime = reference.load_runtime(device, dtype)
    load_s = time.perf_counter() - started
    cases: dict[str, object] = {}
    for name in GENERATION_CASES:
        t0 = time.perf_counter()
        result = reference.run_cases(runtime, (name,))[name]
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - t0
        report = step_token_agreement(result, reference.arrays[f"{name}_step_tokens"])
        expected_audio = reference.arrays[f"{name}_audio_tokens"]
        ours_audio = result.audio_tokens.cpu().numpy()
        report["audio_tokens_exact"] = bool(
            ours_audio.shape == expected_audio.shape and np.array_equal(ours_audio, expected_audio)
        )
        wave_ref = reference.arrays[f"{name}_waveform"]
        wave = result.waveform.float().cpu().numpy()
        if wave.shape == wave_ref.shape:
            report["waveform_max_rel_error"] = float(np.abs(wave - wave_ref).max() / np.abs(wave_ref).max())
        report["seconds"] = round(elapsed, 3)
        cases[name] = report
    return {"device": device, "dtype": dtype, "load_seconds": round(load_s, 3), "cases": cases}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fixture", type=Path, default=DEFAULT_FIXTURE)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", action="append", choices=["float32", "bfloat16"])
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.device == "cpu":
        torch.set_num_threads(1)  # 2-vCPU dev machines get far slower with 2 threads
    reference = ReferenceFixture.load(args.fixture)
    report = {
        "torch": torch.__version__,
        "card": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "runs": [run(reference, args.device, dtype) for dtype in (args.dtype or ["float32", "bfloat16"])],
    }
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
