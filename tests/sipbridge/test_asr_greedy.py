"""sipbridge/asr_greedy.py: the batched ASR's own greedy decoder (static KV cache, CUDA graphs on a GPU) gives
the tokens transformers' `generate` gives, on a tiny RANDOM Whisper (float32 on the CPU: the same math in
another order, so the argmax over 51 864 random logits agrees). Rows that differ, rows that end
early, a batch padded into a larger graph bucket, the token cap, suppressed tokens, a multilingual prompt."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from sipbridge.asr_batch import BatchedWhisper, _StepRecorder
from sipbridge.asr_greedy import GreedyWhisper, buckets, unsupported

from .whisper_fixture import ENGLISH, EOT, SOT, TRANSCRIBE, build_tiny_whisper

torch = pytest.importorskip("torch")
STD = 0.5  # weights that make the random decoder say different things (see build_tiny_whisper)


@pytest.fixture(scope="module")
def english(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_whisper(tmp_path_factory.mktemp("whisper-en"), init_std=STD)


def _whisper(folder: Path, device: str = "cpu", **kw: object) -> BatchedWhisper:
    opts: dict[str, object] = dict(
        device=device, dtype="float32", language="en", window_ms=0, max_batch=8, max_tokens_per_second=8.0
    )
    return BatchedWhisper(str(folder), **(opts | kw))  # type: ignore[arg-type]


def _encoded(whisper: BatchedWhisper, rows: int, seed: int = 0) -> object:
    """Encoder outputs of random values: the tiny random encoder makes nearly the same output for any
    audio (its decoder then repeats one token), and this decoder's input is the encoder's output anyway."""
    from transformers.modeling_outputs import BaseModelOutput

    gen = torch.Generator().manual_seed(seed)
    frames, width = whisper._model.config.max_source_positions, whisper._model.config.d_model
    values = torch.randn(rows, frames, width, generator=gen) * 4
    return BaseModelOutput(last_hidden_state=values.to(whisper.device))


def _generate(
    whisper: BatchedWhisper, encoded: object, max_new: int, *extra: object
) -> tuple[object, object]:
    """transformers' tokens after the prompt, and what its decoder was fed at the last step."""
    steps = _StepRecorder()
    with torch.inference_mode():
        out = whisper._model.generate(
            encoder_outputs=encoded, logits_processor=[*extra, steps], max_new_tokens=max_new,
            **whisper._language(),
        )  # fmt: skip
    return out, steps.fed


def test_tokens_and_fed_steps_equal_generate_row_by_row(english: Path) -> None:
    whisper = _whisper(english)
    try:
        assert whisper._greedy is not None and whisper._greedy.prompt == [SOT, 50362]  # start, no timestamps
        encoded = _encoded(whisper, 3)
        want, want_fed = _generate(whisper, encoded, 20)
        got, fed = whisper._greedy.decode(encoded.last_hidden_state, 20)
        assert got.tolist() == want.tolist() and torch.equal(fed, want_fed)
        assert got.shape == (3, 20) and len({tuple(r) for r in got.tolist()}) == 3  # rows differ: no mix-up
    finally:
        whisper.close()


def test_suppressed_tokens_are_never_chosen_as_in_generate(english: Path) -> None:
    """Two tokens this model says are suppressed (the generation config's `suppress_tokens`): neither
    decoder says them any more, and both say the same instead."""
    whisper = _whisper(english)
    greedy = whisper._greedy
    assert greedy is not None
    try:
        encoded = _encoded(whisper, 2)
        said = greedy.decode(encoded.last_hidden_state, 12)[0][0, :2].tolist()
        whisper._model.generation_config.suppress_tokens = said
        greedy.suppress[said] = True
        want, want_fed = _generate(whisper, encoded, 12)
        got, fed = greedy.decode(encoded.last_hidden_state, 12)
        assert got.tolist() == want.tolist() and torch.equal(fed, want_fed)
        assert not np.isin(got.numpy(), said).any()
    finally:
        whisper.close()


def test_rows_that_end_early_are_padded_and_the_batch_stops_with_its_last_row(english: Path) -> None:
    """Random weights never say the end token, so the head is rigged: the end token's output row becomes a
    louder copy of a token that two rows say, so those rows end where it would have won. generate on the
    same rigged model is the reference: padding after the end, and where the batch stops (with its last row
    if every row ended, at the cap if one never did). 20 steps: the two decoders sum in another order, and
    over many more steps a near tie between two random logits may go either way (the GPU test below
    allows for that)."""
    whisper = _whisper(english)
    greedy = whisper._greedy
    assert greedy is not None
    try:
        encoded = _encoded(whisper, 8, seed=3)
        plain = greedy.decode(encoded.last_hidden_state, 20)[0].tolist()
        token, rows = _said_by_two(plain)
        head = whisper._model.proj_out.weight  # tied to the token embedding: generate sees the same change
        with torch.no_grad():
            head[EOT] = head[token] * 1.05
        both = type(encoded)(last_hidden_state=encoded.last_hidden_state[rows])
        for batch, ends_all in ((both, True), (encoded, False)):
            want, want_fed = _generate(whisper, batch, 20)
            got, fed = greedy.decode(batch.last_hidden_state, 20)
            assert got.tolist() == want.tolist() and torch.equal(fed, want_fed)
            ended = [row.index(EOT) for row in got.tolist() if EOT in row]
            assert all(set(row[row.index(EOT) :]) == {EOT} for row in got.tolist() if EOT in row)
            if ends_all:  # stopped with the last row's end token, which generate leaves out
                assert got.shape[1] < 20 and fed.shape[1] == 2 + got.shape[1] and EOT in fed[:, -1].tolist()
            else:
                assert got.shape[1] == 20 and len(ended) >= 2
    finally:
        whisper.close()


def _said_by_two(rows: list[list[int]]) -> tuple[int, list[int]]:
    """A token that two rows say, and those two rows."""
    for token in {t for row in rows for t in row}:
        holders = [i for i, row in enumerate(rows) if token in row]
        if len(holders) >= 2 and len(holders) < len(rows):
            return token, holders[:2]
    raise AssertionError("no token said by two rows: pick another seed")


def test_a_batch_in_a_larger_bucket_reads_as_each_row_alone(english: Path) -> None:
    """Three rows run the 4-row bucket after a 4-row batch left its rows behind: stale rows change nothing."""
    whisper = _whisper(english)
    greedy = whisper._greedy
    assert greedy is not None and greedy.bucket(3) == 4 and buckets(8) == [1, 2, 4, 8]
    try:
        encoded = _encoded(whisper, 4)
        greedy.decode(encoded.last_hidden_state, 12)
        three = greedy.decode(encoded.last_hidden_state[1:], 12)[0]
        alone = [greedy.decode(encoded.last_hidden_state[i : i + 1], 12)[0][0] for i in (1, 2, 3)]
        assert three.tolist() == [row.tolist() for row in alone]
    finally:
        whisper.close()


def test_the_token_cap_and_the_models_last_position_bound_a_decode(english: Path) -> None:
    whisper = _whisper(english)
    try:
        encoded = _encoded(whisper, 1)
        assert whisper._greedy.decode(encoded.last_hidden_state, 5)[0].shape == (1, 5)  # type: ignore[union-attr]
        # max_target_positions 64, prompt 2: generate clamps to 62 new tokens, and so does this decoder
        assert whisper._greedy.decode(encoded.last_hidden_state, 500)[0].shape == (1, 62)  # type: ignore[union-attr]
        want, _ = _generate(whisper, encoded, 62)
        assert want.shape == (1, 62)
    finally:
        whisper.close()


def test_a_multilingual_model_gets_its_language_and_task_in_the_prompt(tmp_path: Path) -> None:
    folder = build_tiny_whisper(tmp_path / "multi", multilingual=True, init_std=STD)
    whisper = _whisper(folder)
    try:
        assert whisper._greedy is not None and whisper._greedy.prompt == [SOT, ENGLISH, TRANSCRIBE, 50362]
        encoded = _encoded(whisper, 2)
        want, want_fed = _generate(whisper, encoded, 10)
        got, fed = whisper._greedy.decode(encoded.last_hidden_state, 10)
        assert got.tolist() == want.tolist() and torch.equal(fed, want_fed)
    finally:
        whisper.close()


def test_without_a_fixed_prompt_or_with_sampling_generate_decodes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A multilingual model with no asr.language detects each turn's language: no fixed prompt, so
    generate keeps decoding (and says why); so does a generation config this decoder does not follow."""
    folder = build_tiny_whisper(tmp_path / "multi", multilingual=True, init_std=STD)
    with caplog.at_level(logging.WARNING, logger="sipbridge.asr_batch"):
        whisper = _whisper(folder, language=None)
    try:
        assert whisper._greedy is None and "detects the language per turn" in caplog.text
        assert isinstance(whisper.run(np.zeros(16000, dtype=np.float32), True)[0], str)
    finally:
        whisper.close()
    from transformers import GenerationConfig

    assert unsupported(GenerationConfig(num_beams=4)) == "generation_config.num_beams = 4"
    assert unsupported(GenerationConfig(do_sample=True)) == "generation_config.do_sample = True"
    assert unsupported(GenerationConfig()) is None


def test_static_decoder_off_is_transformers_generate(english: Path) -> None:
    whisper = _whisper(english, static_decoder=False)
    try:
        assert whisper._greedy is None
        text, words = whisper.run(np.zeros(16000, dtype=np.float32), True)
        assert isinstance(text, str) and isinstance(words, list)
    finally:
        whisper.close()


def test_on_cuda_graph_replays_equal_eager_steps(english: Path) -> None:
    """The captured graphs decode what the same steps run eagerly decode (float32 on the card)."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    whisper = _whisper(english, device="cuda")
    greedy = whisper._greedy
    try:
        assert isinstance(greedy, GreedyWhisper) and sorted(greedy._graphs) == [1, 2, 4, 8]
        encoded = _encoded(whisper, 3)
        replayed, fed = greedy.decode(encoded.last_hidden_state, 20)
        graphs, greedy._graphs = greedy._graphs, {}
        eager, eager_fed = greedy.decode(encoded.last_hidden_state, 20)
        greedy._graphs = graphs
        assert replayed.tolist() == eager.tolist() and torch.equal(fed, eager_fed)
        want, _ = _generate(whisper, encoded, 20)
        agree = (replayed == want).float().mean().item()
        assert agree > 0.9, f"graphs vs generate agree on {agree:.0%} of tokens"
    finally:
        whisper.close()


def test_on_the_cpu_the_encoder_runs_eagerly_and_equals_the_models_own(english: Path) -> None:
    """No graphs off a GPU: sipbridge/asr_encoder.py hands the features to the model's encoder as they are."""
    whisper = _whisper(english)
    try:
        assert whisper._encoder._graphs == {} and whisper._encoder._input is None
        feats = torch.randn(3, *whisper._encoder.shape, generator=torch.Generator().manual_seed(2))
        with torch.inference_mode():
            want = whisper._model.get_encoder()(feats).last_hidden_state
        assert torch.equal(whisper._encoder(feats), want)
    finally:
        whisper.close()


def test_on_cuda_encoder_graph_replays_equal_the_eager_encoder(english: Path) -> None:
    """Each bucket's graph encodes what the eager encoder does, for a batch smaller than its bucket whose
    spare rows hold an earlier, larger batch's features (float32 on the card); turned off, no graphs."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    whisper = _whisper(english, device="cuda")
    encoder = whisper._encoder
    gen = torch.Generator().manual_seed(3)
    try:
        assert sorted(encoder._graphs) == [1, 2, 4, 8]
        for rows in (8, 3, 1, 5):
            feats = torch.randn(rows, *encoder.shape, generator=gen).to("cuda")
            with torch.inference_mode():
                want = encoder._eager(feats)
                got = encoder(feats).clone()
            assert got.shape == want.shape
            torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)  # TF32 convolutions per size
    finally:
        whisper.close()
    off = _whisper(english, device="cuda", encoder_graphs=False)
    try:
        assert off._encoder._graphs == {}
    finally:
        off.close()
