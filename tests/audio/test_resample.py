"""Streaming resampler: chunking invariance, tone fidelity, out-of-band rejection, measured latency."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import pytest

from audio.resample import FirResampler, StreamResampler, make_resampler

PAIRS = [(24000, 8000), (8000, 16000), (8000, 24000)]
Resampler = StreamResampler | FirResampler
KINDS: dict[str, Callable[..., Resampler]] = {"soxr": StreamResampler, "fir": FirResampler}
kinds = pytest.mark.parametrize("kind", list(KINDS))


def _run(r: Resampler, x: npt.NDArray[np.float32], sizes: list[int]) -> npt.NDArray[np.float32]:
    out = []
    pos = 0
    for n in sizes:
        out.append(r.process(x[pos : pos + n]))
        pos += n
    out.append(r.process(x[pos:]))
    out.append(r.flush())
    return np.concatenate(out)


def _tones(freqs: list[float], rate: int, seconds: float) -> npt.NDArray[np.float32]:
    t = np.arange(int(rate * seconds)) / rate
    return (sum(0.2 * np.sin(2 * np.pi * f * t + f / 100.0) for f in freqs)).astype(np.float32)


@kinds
@pytest.mark.parametrize(("src", "dst"), PAIRS)
def test_chunked_equals_one_shot(kind: str, src: int, dst: int) -> None:
    rng = np.random.default_rng(src + dst)
    x = (rng.standard_normal(src) * 0.2).astype(np.float32)  # 1 s of noise: every frequency at once
    whole = _run(KINDS[kind](src, dst), x, [])
    sizes = [1, 1, 7, 3, 160, 1, 333, 479, 480, 13, 1, *rng.integers(1, 900, 40).tolist()]
    chunked = _run(KINDS[kind](src, dst), x, sizes)
    assert len(chunked) == len(whole) == dst
    np.testing.assert_allclose(chunked, whole, atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    ("src", "dst", "in_band"),
    [
        (24000, 8000, [300, 1000, 2500, 3400]),
        (8000, 16000, [300, 1000, 3400]),
        (8000, 24000, [300, 1000, 3400]),
    ],
)
@kinds
def test_tone_snr_at_least_60_db(kind: str, src: int, dst: int, in_band: list[float]) -> None:
    # 24k -> 8k also gets tones above the new Nyquist (5, 7, 9 kHz): they must vanish, not alias onto
    # 3 kHz / 1 kHz, so the ideal output is the in-band tones alone.
    out_of_band = [5000, 7000, 9000] if src > dst else []
    x = _tones(in_band + out_of_band, src, 1.0)
    r = KINDS[kind](src, dst)
    y = np.concatenate([r.process(x[i : i + src // 50]) for i in range(0, len(x), src // 50)] + [r.flush()])
    ideal = _tones(in_band, dst, 1.0)
    core = slice(dst // 10, -dst // 10)  # skip the start/end transients of a signal that starts abruptly
    err = y[core] - ideal[core]
    snr = 10 * np.log10(np.sum(ideal[core] ** 2) / np.sum(err**2))
    assert snr >= 60.0, f"tone SNR {snr:.1f} dB"


@kinds
def test_out_of_band_tones_are_removed(kind: str) -> None:
    x = _tones([4500, 6000, 9000, 11000], 24000, 1.0)
    r = KINDS[kind](24000, 8000)
    y = np.concatenate([r.process(x), r.flush()])[800:-800]
    ratio_db = 20 * np.log10(np.sqrt(np.mean(y**2)) / np.sqrt(np.mean(x**2)))
    assert ratio_db < -60.0, f"out-of-band leak {ratio_db:.1f} dB"


@pytest.mark.parametrize(("src", "dst"), PAIRS)
def test_reported_latency_matches_impulse_measurement(src: int, dst: int) -> None:
    """Feed 20 ms chunks holding impulses at many phases; each impulse's delay is how much input (counted in
    output samples) had gone in when its peak came out. The worst delay must equal latency_samples to within
    one 20 ms chunk: the reported figure is measured with 1 ms steps, and with 20 ms chunks soxr can release
    a block up to one chunk later (or the impulses can miss the very worst phase)."""
    r = StreamResampler(src, dst)
    chunk = src // 50
    spacing = src // 2 + src * 37 // 1000  # 537 ms: successive impulses hit soxr's blocks at new phases
    n_imp = 16
    x = np.zeros(spacing * (n_imp + 2), dtype=np.float32)
    positions = [spacing * (k + 1) for k in range(n_imp)]
    x[positions] = 1.0
    emitted = 0
    delays = {}
    out = []
    for i in range(0, len(x), chunk):
        y = r.process(x[i : i + chunk])
        out.append(y)
        fed_out = (i + chunk) * dst / src
        for p in positions:
            q = round(p * dst / src)  # soxr is time-aligned: the peak lands exactly here
            if p not in delays and emitted <= q < emitted + len(y):
                assert int(np.argmax(y)) == q - emitted, "impulse peak is not time-aligned"
                delays[p] = fed_out - q
        emitted += len(y)
    assert len(delays) == n_imp
    worst = max(delays.values())
    assert abs(worst - r.latency_samples) <= dst // 50 + 1, (worst, r.latency)
    # Sanity: the budget-relevant figure is tens of ms, not zero and not seconds.
    assert 0.02 * dst < r.latency_samples < 0.2 * dst


@kinds
def test_int16_stream_flush_and_reset(kind: str) -> None:
    x = (_tones([1000], 24000, 0.5) * 32767).astype(np.int16)
    r = KINDS[kind](24000, 8000, dtype="int16")
    first = np.concatenate([r.process(x), r.flush()])
    assert first.dtype == np.int16 and len(first) == 4000
    # flush leaves a fresh stream: the same input gives the same output again
    second = np.concatenate([r.process(x), r.flush()])
    np.testing.assert_array_equal(first, second)
    # reset drops buffered input: nothing of the first half-chunk leaks into the next stream
    r.process(x[:1000])
    r.reset()
    third = np.concatenate([r.process(x), r.flush()])
    np.testing.assert_array_equal(first, third)


@kinds
def test_bad_input_is_refused(kind: str) -> None:
    r = KINDS[kind](8000, 16000)
    with pytest.raises(TypeError, match="float32"):
        r.process(np.zeros(10, dtype=np.int16))
    with pytest.raises(ValueError, match="mono"):
        r.process(np.zeros((10, 2), dtype=np.float32))
    with pytest.raises(ValueError):
        KINDS[kind](8000, 0)


@pytest.mark.parametrize(("src", "dst"), PAIRS)
def test_fir_latency_is_its_group_delay(src: int, dst: int) -> None:
    """Sample by sample, an impulse's (time-aligned) peak must leave no later than latency_samples after it
    went in, and the figure must be a few milliseconds: the reason this resampler exists."""
    r = FirResampler(src, dst)
    x = np.zeros(src // 5, dtype=np.float32)
    impulses = [src // 20 + 7 * k for k in range(src // 400)]  # many phases of the polyphase filter
    x[impulses] = 1.0
    emitted: list[np.ndarray] = []
    n_out = 0
    worst = 0.0
    pending = {round(p * dst / src): p for p in impulses}
    for i in range(len(x)):
        y = r.process(x[i : i + 1])
        emitted.append(y)
        n_out += len(y)
        for q in [q for q in pending if q < n_out]:
            worst = max(worst, (i + 1) * dst / src - q)
            del pending[q]
    y = np.concatenate(emitted)
    for q in {round(p * dst / src) for p in impulses}:
        assert abs(y[q]) >= np.abs(y[q - 1 : q + 2]).max() - 1e-6, "impulse peak is not time-aligned"
    assert worst <= r.latency_samples
    assert r.latency_samples / dst < 0.006  # ~4.7 ms, against soxr HQ's ~74 ms


def test_make_resampler_picks_low_latency_by_default() -> None:
    assert isinstance(make_resampler(24000, 8000), FirResampler)
    assert isinstance(make_resampler(24000, 8000, low_latency=False), StreamResampler)
