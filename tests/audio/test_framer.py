"""Framer: arbitrary chunks in, exact frames out, padded flush."""

from __future__ import annotations

import numpy as np
import pytest

from audio.framer import Framer


@pytest.mark.parametrize("dtype", [np.int16, np.float32])
def test_random_chunks_give_exact_frames_in_order(dtype: type) -> None:
    rng = np.random.default_rng(3)
    total = 8000 * 3 + 77  # 3 s and a partial frame
    x = (np.arange(total) % 30000).astype(dtype)  # distinct values so order errors show
    f = Framer(8000, 20, dtype)
    frames = []
    pos = 0
    while pos < total:
        n = int(rng.choice([1, 2, 159, 160, 161, 319, 320, 321, 1000]))
        frames += f.push(x[pos : pos + n])
        pos += n
    assert all(fr.shape == (160,) and fr.dtype == dtype for fr in frames)
    assert len(frames) == total // 160
    np.testing.assert_array_equal(np.concatenate(frames), x[: len(frames) * 160])
    assert f.pending == total % 160
    tail = f.flush()
    assert tail.padded == 160 - total % 160 and tail.frame is not None
    np.testing.assert_array_equal(tail.frame[: total % 160], x[len(frames) * 160 :])
    assert not tail.frame[total % 160 :].any()  # padded with silence
    assert f.pending == 0 and f.flush().frame is None and f.flush().padded == 0


def test_frames_are_independent_copies() -> None:
    f = Framer(16000, 20)
    chunk = np.ones(700, dtype=np.int16)
    out = f.push(chunk)
    chunk[:] = 5
    out += f.push(np.full(300, 2, dtype=np.int16))
    assert [len(o) for o in out] == [320, 320, 320]
    assert out[0].tolist() == [1] * 320  # not a view of the caller's (since modified) array
    assert out[2].tolist() == [1] * 60 + [2] * 260


def test_ptime_and_rate_and_reset() -> None:
    f = Framer(24000, 30, np.float32)
    assert f.frame_samples == 720
    assert f.push(np.zeros(700, np.float32)) == []
    f.reset()
    assert f.pending == 0 and f.flush().frame is None


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="whole number"):
        Framer(11025, 20)  # 220.5 samples
    f = Framer(8000)
    with pytest.raises(TypeError, match="int16"):
        f.push(np.zeros(10, dtype=np.float32))
