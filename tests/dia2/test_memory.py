"""The engine's memory accounting (dia2/memory.py): shapes alone give what a live engine allocates, and the
full-size figures of docs/DIA2.md ("GPU memory at 256 calls")."""

from __future__ import annotations

from dataclasses import replace

import pytest

from dia2.call_state import EngineOptions
from dia2.engine import BatchEngine
from dia2.memory import GIB, activation_estimate, engine_memory, engine_tensor_bytes, mimi_footprint
from dia2.presets import preset_config
from dia2.runtime import Dia2


@pytest.mark.parametrize("paged", [False, True])
def test_accounting_equals_the_engine_tensors(runtime: Dia2, paged: bool) -> None:
    opts = EngineOptions(capacity=3, paged_kv=paged, kv_block_size=8, kv_pool_steps=50, lane_capacity=2)
    engine = BatchEngine(runtime.model, runtime.ids, runtime.tokenizer, runtime.mimi, opts)
    measured = engine_tensor_bytes(engine)
    footprint = mimi_footprint(runtime.mimi.model, engine.mimi_rows.master)
    predicted = engine_memory(runtime.model.config, opts, dtype_bytes=4, mimi=footprint, kernels=False)
    assert predicted == measured
    assert (measured["lane_kv"] > measured["decoder_kv"] / 10) != paged  # the dense lane gathers whole rows


def test_full_size_breakdown_at_256_calls() -> None:
    """Dia2-2B, bf16, CFG: the dense cache is 82.0 GiB at 256 calls (the H200 run measured 89.2 GiB peak);
    a paged pool averaging 750 steps (60 s) per call brings the whole engine under 60 GiB."""
    config = preset_config("2b")
    dense = engine_memory(config, EngineOptions(capacity=256))
    assert dense["decoder_kv"] == 256 * 2 * 1500 * (2 * 28 * 8 * 128 * 2)  # calls x CFG rows x steps x K/V
    assert 3.5 * GIB < dense["weights"] < 3.7 * GIB
    assert 88 * GIB < dense["total"] < 92 * GIB
    opts = EngineOptions(capacity=256, paged_kv=True, kv_pool_steps=750)
    paged = engine_memory(config, opts)
    transient = sum(activation_estimate(config, opts).values())
    assert paged["lane_kv"] < dense["lane_kv"] / 100
    assert paged["total"] + transient < 60 * GIB
    # The step's attention reads the pool in place on the GPU: no full-batch gather unless turned off.
    assert activation_estimate(config, opts)["paged_gather"] == 0
    gather = activation_estimate(config, replace(opts, paged_attention_kernel=False))["paged_gather"]
    assert gather == 2 * 512 * 8 * 1500 * 128 * 2  # K and V of one layer, every row, the full context
    assert engine_memory(config, EngineOptions(capacity=384))["decoder_kv"] > 120 * GIB
