"""G.711: bit-exact against CPython's audioop (the Sun reference code) and hand-checked golden bytes."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from audio import g711

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop  # reference only (Python <= 3.12); the product never imports it

ALL_PCM = np.arange(-32768, 32768, dtype=np.int16)
ALL_CODES = bytes(range(256))


def test_ulaw_encode_matches_audioop_on_every_int16() -> None:
    assert g711.ulaw_encode(ALL_PCM) == audioop.lin2ulaw(ALL_PCM.tobytes(), 2)


def test_alaw_encode_matches_audioop_on_every_int16() -> None:
    assert g711.alaw_encode(ALL_PCM) == audioop.lin2alaw(ALL_PCM.tobytes(), 2)


def test_ulaw_decode_matches_audioop_on_every_code() -> None:
    assert g711.ulaw_decode(ALL_CODES).tobytes() == audioop.ulaw2lin(ALL_CODES, 2)


def test_alaw_decode_matches_audioop_on_every_code() -> None:
    assert g711.alaw_decode(ALL_CODES).tobytes() == audioop.alaw2lin(ALL_CODES, 2)


def test_silence_golden_bytes() -> None:
    zeros = np.zeros(160, dtype=np.int16)  # 20 ms at 8 kHz
    assert g711.ulaw_encode(zeros) == b"\xff" * 160
    assert g711.alaw_encode(zeros) == b"\xd5" * 160
    assert g711.silence("PCMU", 160) == b"\xff" * 160
    assert g711.silence("pcma", 160) == b"\xd5" * 160


# Worked by hand from the segment formulas: (pcm, µ-law code, A-law code, µ-law decoded, A-law decoded).
# 1000: µ-law 14-bit 250 + bias 33 = 283 -> segment 3, step (283 >> 4) & 15 = 1 -> 0x31, inverted 0xCE; its
# cell is 956..1019, centre 988. A-law 13-bit 125 -> segment 2, step (125 >> 2) & 15 = 15 -> 0x2F ^ 0xD5.
# -1: audioop floors before negating (-1 >> 2 = -1), so µ-law -1 lands in the first cell above zero (0x7E,
# -8), not on negative zero; A-law uses the one's complement (magnitude 0) -> 0x55, which decodes to -8.
GOLDEN = [
    (0, 0xFF, 0xD5, 0, 8),
    (-1, 0x7E, 0x55, -8, -8),
    (32767, 0x80, 0xAA, 32124, 32256),
    (-32768, 0x00, 0x2A, -32124, -32256),
    (1000, 0xCE, 0xFA, 988, 1008),
    (-1000, 0x4E, 0x7A, -988, -1008),
]


@pytest.mark.parametrize(("pcm", "ucode", "acode", "udec", "adec"), GOLDEN)
def test_golden_values(pcm: int, ucode: int, acode: int, udec: int, adec: int) -> None:
    x = np.array([pcm], dtype=np.int16)
    assert g711.ulaw_encode(x) == bytes([ucode])
    assert g711.alaw_encode(x) == bytes([acode])
    assert int(g711.ulaw_decode(bytes([ucode]))[0]) == udec
    assert int(g711.alaw_decode(bytes([acode]))[0]) == adec


def test_round_trip_is_idempotent() -> None:
    # Decoding a code and re-encoding it must give the same code (the decoder hits each cell's centre),
    # except µ-law's negative zero 0x7F, which decodes to 0 and re-encodes as positive zero 0xFF.
    codes = np.arange(256, dtype=np.uint8)
    assert g711.alaw_encode(g711.alaw_decode(codes)) == codes.tobytes()
    expected = codes.copy()
    expected[0x7F] = 0xFF
    assert g711.ulaw_encode(g711.ulaw_decode(codes)) == expected.tobytes()


def test_bytes_and_array_inputs_agree_and_codec_names_dispatch() -> None:
    pcm = np.random.default_rng(1).integers(-32768, 32768, 320, dtype=np.int16)
    assert g711.ulaw_encode(pcm.tobytes()) == g711.ulaw_encode(pcm)
    payload = g711.encode("PCMA", pcm)
    assert payload == g711.alaw_encode(pcm)
    np.testing.assert_array_equal(
        g711.decode("PCMA", payload), g711.alaw_decode(np.frombuffer(payload, np.uint8))
    )


def test_wrong_dtype_and_codec_are_refused() -> None:
    with pytest.raises(TypeError, match="int16"):
        g711.ulaw_encode(np.zeros(4, dtype=np.float32))
    with pytest.raises(TypeError, match="uint8"):
        g711.alaw_decode(np.zeros(4, dtype=np.int16))
    with pytest.raises(ValueError, match="G722"):
        g711.encode("G722", np.zeros(4, dtype=np.int16))


def test_product_does_not_import_audioop() -> None:
    import subprocess
    import sys

    code = "import sys, audio.g711; assert 'audioop' not in sys.modules, 'audioop imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
