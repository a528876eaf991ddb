"""WAV read/write and its error messages."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from audio.wav import AudioFormatError, read_wav, write_wav


def test_int16_round_trip_is_exact(tmp_path: Path) -> None:
    x = np.array([0, 1, -1, 32767, -32768, 1234], dtype=np.int16)
    p = tmp_path / "a.wav"
    write_wav(p, x, 8000)
    y, rate = read_wav(p)
    assert rate == 8000 and y.dtype == np.float32
    np.testing.assert_array_equal((y * 32768).astype(np.int16), x)
    assert sf.info(str(p)).subtype == "PCM_16"


def test_float_is_clipped_not_wrapped_and_float_subtype_kept(tmp_path: Path) -> None:
    p = tmp_path / "f.wav"
    write_wav(p, np.array([0.5, 1.7, -3.0], dtype=np.float32), 24000)
    y, _ = read_wav(p)
    np.testing.assert_allclose(y, [0.5, 32767 / 32768, -1.0], atol=1 / 32768)
    q = tmp_path / "g.wav"
    write_wav(q, np.array([0.123456], dtype=np.float64), 16000, subtype="FLOAT")
    assert sf.info(str(q)).subtype == "FLOAT"
    assert read_wav(q)[0][0] == pytest.approx(0.123456, abs=1e-7)


def test_stereo_any_rate_becomes_mono(tmp_path: Path) -> None:
    p = tmp_path / "s.wav"
    stereo = np.stack([np.full(100, 0.5), np.full(100, -0.25)], axis=1).astype(np.float32)
    sf.write(str(p), stereo, 44100, subtype="FLOAT")
    y, rate = read_wav(p)
    assert rate == 44100 and y.shape == (100,)
    np.testing.assert_allclose(y, 0.125)


def test_ulaw_wav_is_read(tmp_path: Path) -> None:
    p = tmp_path / "u.wav"
    sf.write(str(p), np.zeros(160, dtype=np.int16), 8000, subtype="ULAW")
    y, rate = read_wav(p)
    assert rate == 8000 and len(y) == 160 and not y.any()


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.wav"):
        read_wav(tmp_path / "nope.wav")


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"", "not a readable audio file"),
        (b"hello, this is not audio at all" * 10, "not a readable audio file"),
        (b"RIFF\x24\x00\x00\x00WAVEfmt ", "not a readable audio file"),  # header cut short
    ],
)
def test_corrupt_files_name_the_file(tmp_path: Path, content: bytes, why: str) -> None:
    p = tmp_path / "bad.wav"
    p.write_bytes(content)
    with pytest.raises(AudioFormatError, match=rf"bad\.wav: {why}"):
        read_wav(p)


def test_other_container_is_unsupported(tmp_path: Path) -> None:
    p = tmp_path / "voice.flac"
    sf.write(str(p), np.zeros(100, dtype=np.int16), 16000, format="FLAC")
    with pytest.raises(AudioFormatError, match=r"voice\.flac: is a FLAC file .*expected a WAV"):
        read_wav(p)


def test_empty_wav_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "empty.wav"
    sf.write(str(p), np.zeros(0, dtype=np.int16), 8000)
    with pytest.raises(AudioFormatError, match=r"empty\.wav: WAV file has no audio frames"):
        read_wav(p)


def test_write_refuses_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="int16 or float"):
        write_wav(tmp_path / "x.wav", np.zeros(4, dtype=np.int32), 8000)
    with pytest.raises(ValueError, match="subtype"):
        write_wav(tmp_path / "x.wav", np.zeros(4, dtype=np.int16), 8000, subtype="MP3")
    with pytest.raises(ValueError, match="shape"):
        write_wav(tmp_path / "x.wav", np.zeros((2, 2, 2), dtype=np.int16), 8000)
