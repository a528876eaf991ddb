"""Reference fixtures: upstream outputs on a tiny checkpoint, and how to re-run their cases.

A fixture folder (see tests/fixtures/dia2-tiny/README.md) holds a checkpoint, `inputs.json` (scripts,
sampling settings, prefix audio and word timings per case) and upstream's outputs (`reference.npz`,
`reference.json`). The parity tests and `bench/dia2_gpu_parity.py` both run the cases through here, so
a CPU test run and a GPU run execute exactly the same calls.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .generate import GenerationOptions
from .prefix import PrefixPlan, PrefixSpeaker, PrefixWord, load_prefix_audio
from .runtime import Dia2, GenerationResult
from .sampling import SamplingParams

__all__ = ["GENERATION_CASES", "ReferenceFixture", "step_token_agreement"]

GENERATION_CASES = ("greedy", "prefix", "cfg", "capped")


@dataclass
class ReferenceFixture:
    folder: Path
    inputs: dict[str, Any]
    reference: dict[str, Any]
    arrays: dict[str, np.ndarray]

    @classmethod
    def load(cls, folder: str | Path) -> ReferenceFixture:
        folder = Path(folder)
        if not (folder / "reference.npz").is_file():
            raise FileNotFoundError(f"no Dia2 reference fixture in {folder} (reference.npz missing)")
        with np.load(folder / "reference.npz") as npz:
            arrays = {name: npz[name] for name in npz.files}
        return cls(
            folder=folder,
            inputs=json.loads((folder / "inputs.json").read_text(encoding="utf-8")),
            reference=json.loads((folder / "reference.json").read_text(encoding="utf-8")),
            arrays=arrays,
        )

    def load_runtime(self, device: str | torch.device = "cpu", dtype: str = "float32") -> Dia2:
        # The fixture's config names kyutai/mimi like a production config; its stand-in codec is mimi/.
        return Dia2.from_pretrained(
            self.folder, device=device, dtype=dtype, mimi=self.folder / self.inputs["mimi"]["path"]
        )

    def prefix_speakers(self) -> list[PrefixSpeaker]:
        speakers = []
        for key in ("speaker_1", "speaker_2"):
            spec = self.inputs["prefix"].get(key)
            if spec is None:
                continue
            audio = load_prefix_audio(self.folder / spec["wav"], 24000)
            speakers.append(PrefixSpeaker(audio, tuple(PrefixWord(**w) for w in spec["words"])))
        return speakers

    def prefix_plan(self, runtime: Dia2) -> PrefixPlan:
        speakers = self.prefix_speakers()
        return runtime.prefix_plan(speakers[0], speakers[1] if len(speakers) > 1 else None)

    def options(self, case: str) -> GenerationOptions:
        spec = self.inputs["cases"][case]
        gen = spec["generation_config"]
        return GenerationOptions(
            text=SamplingParams(gen["text"]["temperature"], gen["text"]["top_k"]),
            audio=SamplingParams(gen["audio"]["temperature"], gen["audio"]["top_k"]),
            cfg_scale=gen["cfg_scale"],
            cfg_filter_k=gen["cfg_filter_k"],
            initial_padding=gen["initial_padding"],
            max_steps=spec["max_context_steps"],
            include_prefix_audio=bool(gen["prefix"] and gen["prefix"]["include_audio"]),
        )

    def run_cases(
        self, runtime: Dia2, cases: tuple[str, ...] = GENERATION_CASES, plan: PrefixPlan | None = None
    ) -> dict[str, GenerationResult]:
        """Every generation case, traced, exactly as upstream ran it."""
        results = {}
        for name in cases:
            spec = self.inputs["cases"][name]
            prefix = None
            if spec["generation_config"]["prefix"]:
                plan = plan if plan is not None else self.prefix_plan(runtime)
                prefix = plan
            results[name] = runtime.generate(
                spec["script"], prefix=prefix, options=self.options(name), trace=True
            )
        return results


def step_token_agreement(result: GenerationResult, expected: np.ndarray) -> dict[str, Any]:
    """How far a run's decoder inputs agree with the reference (`*_step_tokens`, [S, 2, C])."""
    trace = result.trace
    assert trace is not None, "run with trace=True"
    ours = np.stack([t.cpu().numpy() for t in trace.step_tokens])
    n = min(len(ours), len(expected))
    same = ours[:n] == expected[:n]
    diverged = np.flatnonzero(~same.all(axis=(1, 2)))
    return {
        "steps": len(ours),
        "reference_steps": len(expected),
        "token_agreement": float(same.mean()) if n else 0.0,
        "first_divergent_step": int(diverged[0]) if diverged.size else None,
        "exact": bool(len(ours) == len(expected) and same.all()),
    }
