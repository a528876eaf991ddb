"""dia2/encode_graphs.py: caller turns' Mimi encodes from CUDA graphs per (turns, frames) bucket give the
codes ``MimiCodec.encode_many`` gives. On the CPU: the fact the graphs rest on (a turn zero-padded to its
bucket keeps its codes: Mimi's encoder is causal), the bucket choice and the eager fallback; on a card: the
replays."""

from __future__ import annotations

import pytest
import torch

from dia2.encode_graphs import MAX_TURN_FRAMES, EncodeGraphs
from dia2.mimi import MimiCodec

from .test_mimi import fixture_dir

torch.set_num_threads(1)


def _turns(codec: MimiCodec, seconds: list[float], seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    rate = int(codec.sample_rate)
    return [torch.randn(int(rate * s), generator=gen) * 0.1 for s in seconds]


@pytest.fixture(scope="module")
def codec() -> MimiCodec:
    return MimiCodec.load(str(fixture_dir() / "mimi"))


def test_a_turn_padded_to_its_bucket_keeps_its_codes(codec: MimiCodec) -> None:
    """What a bucket's graph encodes: the turn, then silence up to the bucket's frames; its own frames'
    codes are those of the turn alone (a part frame included), so padding never changes what Dia2 hears."""
    graphs = EncodeGraphs(codec, row_buckets=(1, 2), frame_buckets=(16, 32))
    for turn in _turns(codec, [0.5, 1.07]):
        alone = codec.encode_many([turn])[0]
        bucket = graphs.bucket(1, alone.shape[1])
        assert bucket is not None
        padded = torch.zeros(bucket.frames * codec.frame_size)
        padded[: turn.numel()] = turn
        assert torch.equal(codec.encode_many([padded])[0][:, : alone.shape[1]], alone)


def test_buckets_hold_the_batch_with_the_least_padding(codec: MimiCodec) -> None:
    graphs = EncodeGraphs(codec)
    pick = graphs.bucket
    assert all(r * f <= MAX_TURN_FRAMES for r, f in graphs.buckets)
    assert (pick(1, 10).rows, pick(1, 10).frames) == (1, 16)  # type: ignore[union-attr]
    assert (pick(3, 17).rows, pick(3, 17).frames) == (4, 32)  # type: ignore[union-attr]
    assert (pick(2, 200).rows, pick(2, 200).frames) == (2, 256)  # type: ignore[union-attr]
    assert pick(4, 200) is None and pick(5, 1) is None and pick(1, 257) is None  # eager for these


def test_without_a_captured_graph_it_encodes_as_encode_many(codec: MimiCodec) -> None:
    graphs = EncodeGraphs(codec, row_buckets=(1, 2), frame_buckets=(16,))
    turns = _turns(codec, [0.4, 0.9], seed=1)
    got = graphs.encode_many(turns)
    want = codec.encode_many(turns)
    assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_replays_equal_encode_many() -> None:
    """Every bucket captures; batches of one, of three turns of different lengths (a 4-turn bucket, its
    spare row holding an earlier batch's audio) and one past every bucket (eager) equal encode_many."""
    codec = MimiCodec.load(str(fixture_dir() / "mimi"), device="cuda")
    graphs = EncodeGraphs(codec, row_buckets=(1, 4), frame_buckets=(16, 32))
    graphs.capture()
    assert graphs.errors == [] and all(b.graph is not None for b in graphs.buckets.values())
    for seconds in ([0.3], [2.5, 0.7, 1.3, 2.0], [1.1, 0.2, 2.4], [3.0] * 5):
        turns = _turns(codec, seconds, seed=len(seconds))
        got = graphs.encode_many(turns)
        want = codec.encode_many([t.cuda() for t in turns])
        assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True)), seconds
