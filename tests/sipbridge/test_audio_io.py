"""The one reply encoder (sipbridge/http/audio_io.py): the conversation API's formats and the compatible
surfaces' formats are the same code, so the same engine chunks give the same bytes on both."""

from __future__ import annotations

import numpy as np

from audio import g711
from sipbridge.http.audio_io import AudioFormat, FormatEncoder, OutputEncoder


def _chunks(rate: int) -> list[np.ndarray]:
    t = np.arange(rate) / rate
    tone = (0.4 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    return [tone[i : i + 1234] for i in range(0, len(tone), 1234)]  # ragged, like espeak's reads


def _encode(enc: FormatEncoder, chunks: list[np.ndarray]) -> list[bytes]:
    out = [f for c in chunks for f in enc.push(c)]
    return out + enc.flush()


def test_conversation_api_formats_are_the_compat_encoder_byte_for_byte() -> None:
    for engine_rate in (22050, 24000):
        chunks = _chunks(engine_rate)
        for name, fmt in (("ulaw", AudioFormat("ulaw", 8000)), ("pcm16", AudioFormat("pcm", 24000))):
            ours = _encode(OutputEncoder(engine_rate, name), chunks)
            compat = _encode(FormatEncoder(engine_rate, fmt), chunks)
            assert ours == compat, (engine_rate, name)
            size = 160 if name == "ulaw" else 960  # 20 ms frames, the last completed with silence
            assert {len(f) for f in ours} == {size}


def test_ulaw_frames_decode_back_to_the_tone() -> None:
    frames = _encode(OutputEncoder(24000, "ulaw"), _chunks(24000))
    pcm = np.concatenate([g711.ulaw_decode(f) for f in frames]).astype(np.float32) / 32768.0
    middle = pcm[800:7200]  # past the resampler's lead-in
    assert 0.35 < float(np.max(np.abs(middle))) < 0.45
