"""WAV file read/write with soundfile (libsndfile), with errors that name the file and the problem.

Reading accepts any sample rate, channel count and PCM/float/G.711 encoding libsndfile understands inside a
WAV (RIFF, WAVE_FORMAT_EXTENSIBLE or RF64) container and returns mono float32 in [-1, 1] plus the rate:
voice prompts and recordings are always used mono. Anything else (another container, a corrupt or empty
file, an unknown WAV codec) raises :class:`AudioFormatError`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import numpy.typing as npt
import soundfile as sf

__all__ = ["AudioFormatError", "read_wav", "write_wav"]

_WAV_CONTAINERS = {"WAV", "WAVEX", "RF64"}
# soundfile subtypes we write; PCM_16 is what telephony tools (sox, baresip aufile, SIPp) expect.
_WRITE_SUBTYPES = {"PCM_16", "FLOAT"}


class AudioFormatError(ValueError):
    """A file that is not a usable WAV: unsupported container or codec, corrupt, or empty."""


def read_wav(path: str | os.PathLike[str]) -> tuple[npt.NDArray[np.float32], int]:
    """Read a WAV file as mono float32 (channels averaged) and its sample rate.

    Raises FileNotFoundError if the file does not exist and AudioFormatError if it is not a WAV that
    libsndfile can decode.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such audio file")
    try:
        info = sf.info(str(p))
    except (sf.LibsndfileError, RuntimeError) as err:
        raise AudioFormatError(f"{p}: not a readable audio file ({_reason(err)})") from err
    if info.format not in _WAV_CONTAINERS:
        raise AudioFormatError(f"{p}: is a {info.format} file ({info.format_info}); expected a WAV file")
    if info.frames == 0:
        raise AudioFormatError(f"{p}: WAV file has no audio frames")
    try:
        data, rate = sf.read(str(p), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as err:
        raise AudioFormatError(f"{p}: corrupt WAV data ({_reason(err)})") from err
    if data.shape[0] == 0:
        raise AudioFormatError(f"{p}: WAV file has no audio frames")
    mono = data[:, 0] if data.shape[1] == 1 else data.mean(axis=1, dtype=np.float32)
    return np.ascontiguousarray(mono, dtype=np.float32), int(rate)


def write_wav(
    path: str | os.PathLike[str],
    audio: npt.ArrayLike,
    sample_rate: int,
    subtype: str = "PCM_16",
) -> None:
    """Write int16 or float audio (1-D mono, or 2-D frames x channels) as a WAV file.

    Float input is taken as [-1, 1] and clipped before 16-bit conversion, so a hot TTS sample becomes full
    scale instead of wrapping around. ``subtype`` is ``"PCM_16"`` (default) or ``"FLOAT"``.
    """
    if subtype not in _WRITE_SUBTYPES:
        raise ValueError(f"subtype must be one of {sorted(_WRITE_SUBTYPES)}, got {subtype!r}")
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    x = np.asarray(audio)
    if x.ndim not in (1, 2):
        raise ValueError(f"audio must be 1-D (mono) or 2-D (frames, channels), got shape {x.shape}")
    if x.dtype == np.int16:
        data: npt.NDArray[np.generic] = x if subtype == "PCM_16" else x.astype(np.float32) / 32768.0
    elif np.issubdtype(x.dtype, np.floating):
        data = np.clip(x, -1.0, 1.0).astype(np.float32) if subtype == "PCM_16" else x.astype(np.float32)
    else:
        raise TypeError(f"audio must be int16 or float, got dtype {x.dtype}")
    sf.write(str(path), data, sample_rate, subtype=subtype, format="WAV")


def _reason(err: Exception) -> str:
    # libsndfile messages start with "Error opening '<path>': ..."; keep only the part after the path.
    msg = str(err)
    return msg.split("': ", 1)[1] if "': " in msg else msg
