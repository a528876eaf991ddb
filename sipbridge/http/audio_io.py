"""Audio in and out of the conversation API: uploads decoded to mono float32, replies encoded per format.

Uploads may be WAV (any PCM/float/G.711 codec libsndfile reads), FLAC or OGG (Vorbis/Opus), any rate, mono or
stereo (channels are averaged). What cannot be used is refused with the reason: a container or codec we do not
take is 415 Unsupported Media Type, a file we recognise but cannot use (corrupt, empty) is 422.

Replies leave in one of three formats: `wav` and `pcm16` (16-bit little-endian, 24 kHz mono; `wav` adds the
header) or `ulaw` (G.711 µ-law, 8 kHz, the PCMU payload a SIP stack sends as is). Streams are cut into 20 ms
frames (480 samples of pcm16, 160 bytes of µ-law) so a client can put each one into an RTP packet; the last
frame is completed with silence. The engine's own rate (24 kHz for Dia2, 22.05 kHz for espeak) is converted
with the call path's low-latency FIR resampler, so streaming adds ~5 ms, not soxr's ~70 ms.
"""

from __future__ import annotations

import io
import wave
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
import numpy.typing as npt
import soundfile as sf
import soxr

from audio import g711
from audio.framer import Framer
from audio.resample import FirResampler, StreamResampler, make_resampler

OutputFormat = Literal["wav", "pcm16", "ulaw"]
OUTPUT_FORMATS: tuple[str, ...] = ("wav", "pcm16", "ulaw")
STREAM_FORMATS: tuple[str, ...] = ("pcm16", "ulaw")
PCM_RATE = 24000  # wav / pcm16 output and the rate uploads are converted to for the engine
ULAW_RATE = 8000
FRAME_MS = 20

MEDIA_TYPES: dict[str, str] = {
    "wav": "audio/wav",
    "pcm16": f"audio/L16; rate={PCM_RATE}; channels=1",
    "ulaw": f"audio/basic; rate={ULAW_RATE}",  # audio/basic is 8 kHz mono µ-law by definition
}

_CONTAINERS = {"WAV": "WAV", "WAVEX": "WAV", "RF64": "WAV", "FLAC": "FLAC", "OGG": "OGG"}


class AudioRejected(Exception):
    """An upload that cannot be used; `status` is the HTTP code to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class DecodedAudio:
    pcm: npt.NDArray[np.float32]  # mono, [-1, 1], at `rate`
    rate: int
    container: str  # WAV, FLAC or OGG
    channels: int

    @property
    def seconds(self) -> float:
        return len(self.pcm) / self.rate

    def at(self, rate: int) -> npt.NDArray[np.float32]:
        """The audio at `rate` (one-shot soxr HQ: an upload is whole, latency does not matter)."""
        if rate == self.rate:
            return self.pcm
        return np.asarray(soxr.resample(self.pcm, self.rate, rate, quality="HQ"), dtype=np.float32)

    def int16(self) -> npt.NDArray[np.int16]:
        return np.clip(np.rint(self.pcm * 32768.0), -32768, 32767).astype(np.int16)


def _reason(err: Exception) -> str:
    msg = str(err)
    return msg.split("': ", 1)[1] if "': " in msg else msg


def decode_upload(data: bytes, *, name: str, max_seconds: float) -> DecodedAudio:
    """Decode an uploaded file; AudioRejected (415/413/422) says what is wrong with it."""
    if not data:
        raise AudioRejected(422, f"{name}: the file is empty")
    try:
        info = sf.info(io.BytesIO(data))
    except (sf.LibsndfileError, RuntimeError, TypeError) as err:
        raise AudioRejected(
            415, f"{name}: not a readable audio file ({_reason(err)}); send WAV, FLAC or OGG"
        ) from err
    container = _CONTAINERS.get(info.format)
    if container is None:
        raise AudioRejected(
            415, f"{name}: {info.format} files ({info.format_info}) are not supported; send WAV, FLAC or OGG"
        )
    if info.frames <= 0 or info.samplerate <= 0:
        raise AudioRejected(422, f"{name}: the {container} file has no audio frames")
    seconds = info.frames / info.samplerate
    if seconds > max_seconds:
        raise AudioRejected(
            413, f"{name}: {seconds:.1f} s of audio is over the limit of {max_seconds:g} s (http.limits)"
        )
    try:
        samples, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as err:
        raise AudioRejected(422, f"{name}: corrupt {container} data ({_reason(err)})") from err
    if samples.shape[0] == 0:
        raise AudioRejected(422, f"{name}: the {container} file has no audio frames")
    mono = samples[:, 0] if samples.shape[1] == 1 else samples.mean(axis=1, dtype=np.float32)
    if not np.all(np.isfinite(mono)):
        raise AudioRejected(422, f"{name}: the {container} file holds NaN or infinite samples")
    return DecodedAudio(np.ascontiguousarray(mono, dtype=np.float32), int(rate), container, info.channels)


class ChunkEncoder(Protocol):
    """What `ConversationService.generate` needs of an encoder (OutputEncoder, compat's FormatEncoder)."""

    rate: int
    samples: int

    def push(self, chunk: npt.NDArray[np.float32]) -> list[bytes]: ...

    def flush(self) -> list[bytes]: ...


class OutputEncoder:
    """Engine chunks (float32 at the engine's rate) in, 20 ms frames of the output format out (bytes)."""

    def __init__(self, engine_rate: int, fmt: str) -> None:
        if fmt not in OUTPUT_FORMATS:
            raise ValueError(f"format must be one of {OUTPUT_FORMATS}, got {fmt!r}")
        self.format = fmt
        self.rate = ULAW_RATE if fmt == "ulaw" else PCM_RATE
        self._resampler: FirResampler | StreamResampler | None = (
            None if engine_rate == self.rate else make_resampler(engine_rate, self.rate, dtype="float32")
        )
        self._framer = Framer(self.rate, FRAME_MS, dtype=np.int16)
        self.samples = 0  # output samples emitted, padding included

    @property
    def frame_bytes(self) -> int:
        return self._framer.frame_samples * (1 if self.format == "ulaw" else 2)

    def _encode(self, frames: list[npt.NDArray[np.generic]]) -> list[bytes]:
        self.samples += sum(len(f) for f in frames)
        if self.format == "ulaw":
            return [g711.ulaw_encode(f) for f in frames]
        return [f.astype("<i2").tobytes() for f in frames]

    @staticmethod
    def _int16(x: npt.NDArray[np.float32]) -> npt.NDArray[np.int16]:
        return np.clip(np.rint(x * 32768.0), -32768, 32767).astype(np.int16)

    def push(self, chunk: npt.NDArray[np.float32]) -> list[bytes]:
        x = (
            chunk
            if self._resampler is None
            else self._resampler.process(chunk.astype(np.float32, copy=False))
        )
        return self._encode(self._framer.push(self._int16(np.asarray(x, dtype=np.float32))))

    def flush(self) -> list[bytes]:
        """The resampler's tail and the last frame, completed with silence."""
        out: list[bytes] = []
        if self._resampler is not None:
            tail = np.asarray(self._resampler.flush(), dtype=np.float32)
            out += self._encode(self._framer.push(self._int16(tail)))
        last = self._framer.flush().frame
        if last is not None:
            out += self._encode([last])
        return out


def wav_bytes(pcm16: bytes, rate: int) -> bytes:
    """A 16-bit mono WAV file around raw little-endian PCM."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm16)
    return buf.getvalue()
