"""Teacher-forced parity: our decoder and depformer against upstream's logits on a fixed token grid."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dia2.runtime import Dia2

from .parity import assert_close_rel


@pytest.fixture(scope="module")
def teacher_forced(runtime: Dia2, ref_arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    model = runtime.model
    tokens = torch.from_numpy(ref_arrays["tf_tokens"])
    positions = torch.from_numpy(ref_arrays["tf_positions"])
    steps, branches, _ = tokens.shape
    cache = model.allocate_decoder_cache(branches, steps)
    out: dict[str, list[np.ndarray]] = {"embed": [], "hidden": [], "action": [], "cb0": []}
    with torch.inference_mode():
        for t in range(steps):
            pos = positions[t].expand(branches)
            out["embed"].append(model.transformer.embed(tokens[t]).numpy())
            res = model.transformer(tokens[t], pos, torch.full((branches,), t), cache)
            out["hidden"].append(res.hidden.numpy())
            out["action"].append(res.action_logits.numpy())
            out["cb0"].append(res.cb0_logits.numpy())
        hidden = np.stack(out["hidden"])
        dep_cache = model.allocate_depformer_cache(branches)
        dep = []
        for k, step in enumerate(ref_arrays["tf_dep_steps"]):
            h = torch.from_numpy(hidden[step])
            main = torch.from_numpy(ref_arrays["tf_dep_main_text"][k])
            second = torch.from_numpy(ref_arrays["tf_dep_second_text"][k])
            stages = []
            for s in range(model.depformer.depth):
                prev = torch.from_numpy(ref_arrays["tf_dep_prev_audio"][k, :, s])
                stages.append(model.depformer(s, prev, h, dep_cache, main, second).numpy())
            dep.append(np.stack(stages, axis=1))
    result = {name: np.stack(v) for name, v in out.items()}
    result["dep"] = np.stack(dep)
    return result


def test_embedding(teacher_forced: dict[str, np.ndarray], ref_arrays: dict[str, np.ndarray]) -> None:
    assert_close_rel(teacher_forced["embed"], ref_arrays["tf_embed"], "tf_embed")


def test_hidden(teacher_forced: dict[str, np.ndarray], ref_arrays: dict[str, np.ndarray]) -> None:
    assert_close_rel(teacher_forced["hidden"], ref_arrays["tf_hidden"], "tf_hidden")


def test_action_logits(teacher_forced: dict[str, np.ndarray], ref_arrays: dict[str, np.ndarray]) -> None:
    assert_close_rel(teacher_forced["action"], ref_arrays["tf_action_logits"], "tf_action_logits")


def test_cb0_logits(teacher_forced: dict[str, np.ndarray], ref_arrays: dict[str, np.ndarray]) -> None:
    assert_close_rel(teacher_forced["cb0"], ref_arrays["tf_cb0_logits"], "tf_cb0_logits")


def test_depformer_logits(teacher_forced: dict[str, np.ndarray], ref_arrays: dict[str, np.ndarray]) -> None:
    assert_close_rel(teacher_forced["dep"], ref_arrays["tf_dep_logits"], "tf_dep_logits")


def test_depformer_cache_needs_no_reset(runtime: Dia2, ref_arrays: dict[str, np.ndarray]) -> None:
    """Running the same frame twice on one depformer cache gives identical logits (stale slots are
    masked), which is why the loop never clears it."""
    model = runtime.model
    hidden = torch.from_numpy(ref_arrays["tf_hidden"][0])
    main = torch.from_numpy(ref_arrays["tf_dep_main_text"][0])
    second = torch.from_numpy(ref_arrays["tf_dep_second_text"][0])
    cache = model.allocate_depformer_cache(2)
    runs = []
    with torch.inference_mode():
        for fill in (0.0, 123.0):
            cache.keys.fill_(fill)
            cache.values.fill_(fill)
            prev = torch.from_numpy(ref_arrays["tf_dep_prev_audio"][0, :, 0])
            runs.append(model.depformer(0, prev, hidden, cache, main, second))
    torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=0)
