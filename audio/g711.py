"""ITU-T G.711 µ-law (PCMU) and A-law (PCMA), vectorised with numpy lookup tables.

The encoders are bit-exact with CPython's ``audioop.lin2ulaw`` / ``audioop.lin2alaw`` (the Sun reference
code) over all 65,536 int16 inputs, and the decoders with ``audioop.ulaw2lin`` / ``audioop.alaw2lin`` over
all 256 codes. ``audioop`` is removed in Python 3.13, so nothing here imports it: the tables are built once at
import time from the G.711 segment formulas below (a few ms) and encoding is a single table lookup.

Encoding works on 16-bit linear PCM. µ-law quantises the top 14 bits (``x >> 2``), A-law the top 13 bits
(``x >> 3``), as G.711 specifies.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = [
    "ALAW_SILENCE",
    "ULAW_SILENCE",
    "alaw_decode",
    "alaw_encode",
    "decode",
    "encode",
    "silence",
    "ulaw_decode",
    "ulaw_encode",
]

# The code a digital-zero sample encodes to: 20 ms of PCMU silence is b"\xff" * 160, of PCMA b"\xd5" * 160.
ULAW_SILENCE = 0xFF
ALAW_SILENCE = 0xD5

_ULAW_BIAS = 0x84  # 132: µ-law adds it before finding the segment so every segment is a power-of-two span
_ULAW_CLIP = 8159  # largest 14-bit magnitude µ-law can represent (8159 + 33 = 8192 = 2 ** 13)
# Upper bounds of the 8 segments (inclusive), on the biased 14-bit magnitude (µ-law) and the 13-bit
# magnitude (A-law). ``searchsorted(..., side="left")`` returns the first segment whose bound is >= the
# value, exactly the reference code's linear ``search``; 8 means "beyond the last segment" (the max code).
_ULAW_SEG_END = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF], dtype=np.int32)
_ALAW_SEG_END = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF], dtype=np.int32)


def _ulaw_encode_formula(x: npt.NDArray[np.int32]) -> npt.NDArray[np.uint8]:
    """µ-law code of each int16 value (held in int32), as the Sun/audioop encoder computes it."""
    v = x >> 2  # 14-bit value; arithmetic shift floors negatives, as the C code does
    negative = v < 0
    mask = np.where(negative, 0x7F, 0xFF)  # codes are stored inverted; the sign bit is 0 for negatives
    # audioop negates the floored value (so -4 and 4 share a magnitude); ITU's G.191 STL uses the one's
    # complement instead, which differs on some negative inputs. We follow audioop (see docs/AUDIO.md).
    magnitude = np.minimum(np.where(negative, -v, v), _ULAW_CLIP) + (_ULAW_BIAS >> 2)
    seg = np.searchsorted(_ULAW_SEG_END, magnitude, side="left").astype(np.int32)
    code = np.where(seg >= 8, 0x7F, (seg << 4) | ((magnitude >> (np.minimum(seg, 7) + 1)) & 0x0F))
    return ((code ^ mask) & 0xFF).astype(np.uint8)


def _ulaw_decode_formula(code: npt.NDArray[np.int32]) -> npt.NDArray[np.int16]:
    u = ~code & 0xFF
    t = (((u & 0x0F) << 3) + _ULAW_BIAS) << ((u & 0x70) >> 4)
    return np.where(u & 0x80, _ULAW_BIAS - t, t - _ULAW_BIAS).astype(np.int16)


def _alaw_encode_formula(x: npt.NDArray[np.int32]) -> npt.NDArray[np.uint8]:
    """A-law code of each int16 value (held in int32), as the Sun/audioop encoder computes it."""
    v = x >> 3  # 13-bit value
    negative = v < 0
    mask = np.where(negative, 0x55, 0xD5)  # even-bit inversion; sign bit set for non-negative values
    magnitude = np.where(negative, -v - 1, v)  # one's complement for negatives, as G.711 A-law specifies
    seg = np.searchsorted(_ALAW_SEG_END, magnitude, side="left").astype(np.int32)
    # Segments 0 and 1 share the same step size (the "linear" part of A-law), hence the shift of 1 for both.
    shift = np.where(seg < 2, 1, np.minimum(seg, 7))
    code = np.where(seg >= 8, 0x7F, (seg << 4) | ((magnitude >> shift) & 0x0F))
    return ((code ^ mask) & 0xFF).astype(np.uint8)


def _alaw_decode_formula(code: npt.NDArray[np.int32]) -> npt.NDArray[np.int16]:
    a = code ^ 0x55
    seg = (a & 0x70) >> 4
    t = ((a & 0x0F) << 4) + np.where(seg == 0, 8, 0x108)
    t = t << np.maximum(seg - 1, 0)
    return np.where(a & 0x80, t, -t).astype(np.int16)


_ALL_INT16 = np.arange(-32768, 32768, dtype=np.int32)
_ALL_CODES = np.arange(256, dtype=np.int32)
# Index the encode tables with ``pcm + 32768``. Read-only so no caller can corrupt them.
_ULAW_ENC = _ulaw_encode_formula(_ALL_INT16)
_ALAW_ENC = _alaw_encode_formula(_ALL_INT16)
_ULAW_DEC = _ulaw_decode_formula(_ALL_CODES)
_ALAW_DEC = _alaw_decode_formula(_ALL_CODES)
for _table in (_ULAW_ENC, _ALAW_ENC, _ULAW_DEC, _ALAW_DEC):
    _table.flags.writeable = False


def _as_int16(pcm: npt.ArrayLike | bytes) -> npt.NDArray[np.int16]:
    if isinstance(pcm, bytes | bytearray | memoryview):
        return np.frombuffer(pcm, dtype="<i2")
    arr = np.asarray(pcm)
    if arr.dtype != np.int16:
        raise TypeError(f"G.711 encodes int16 PCM, got dtype {arr.dtype}")
    return arr


def _as_codes(data: npt.ArrayLike | bytes) -> npt.NDArray[np.uint8]:
    if isinstance(data, bytes | bytearray | memoryview):
        return np.frombuffer(data, dtype=np.uint8)
    arr = np.asarray(data)
    if arr.dtype != np.uint8:
        raise TypeError(f"G.711 decodes uint8 codes, got dtype {arr.dtype}")
    return arr


def ulaw_encode(pcm: npt.ArrayLike | bytes) -> bytes:
    """int16 samples (array, or little-endian s16 bytes) -> µ-law payload bytes."""
    x = _as_int16(pcm)
    return _ULAW_ENC[x.astype(np.int32) + 32768].tobytes()


def alaw_encode(pcm: npt.ArrayLike | bytes) -> bytes:
    """int16 samples (array, or little-endian s16 bytes) -> A-law payload bytes."""
    x = _as_int16(pcm)
    return _ALAW_ENC[x.astype(np.int32) + 32768].tobytes()


def ulaw_decode(data: npt.ArrayLike | bytes) -> npt.NDArray[np.int16]:
    """µ-law payload (bytes or uint8 array) -> int16 samples."""
    return _ULAW_DEC[_as_codes(data)]


def alaw_decode(data: npt.ArrayLike | bytes) -> npt.NDArray[np.int16]:
    """A-law payload (bytes or uint8 array) -> int16 samples."""
    return _ALAW_DEC[_as_codes(data)]


# SDP encoding names (RFC 3551) -> codec functions, so call code can stay table-driven.
_ENCODERS = {"PCMU": ulaw_encode, "PCMA": alaw_encode}
_DECODERS = {"PCMU": ulaw_decode, "PCMA": alaw_decode}
_SILENCE = {"PCMU": ULAW_SILENCE, "PCMA": ALAW_SILENCE}


def _codec_key(codec: str) -> str:
    key = codec.upper()
    if key not in _ENCODERS:
        raise ValueError(f"unknown G.711 codec {codec!r}; expected 'PCMU' or 'PCMA'")
    return key


def encode(codec: str, pcm: npt.ArrayLike | bytes) -> bytes:
    """Encode int16 PCM with the codec named as in SDP: ``"PCMU"`` (µ-law) or ``"PCMA"`` (A-law)."""
    return _ENCODERS[_codec_key(codec)](pcm)


def decode(codec: str, data: npt.ArrayLike | bytes) -> npt.NDArray[np.int16]:
    """Decode a ``"PCMU"`` or ``"PCMA"`` payload to int16 PCM."""
    return _DECODERS[_codec_key(codec)](data)


def silence(codec: str, samples: int) -> bytes:
    """Payload of ``samples`` digital-silence samples (what encoding zeros gives)."""
    return bytes([_SILENCE[_codec_key(codec)]]) * samples
