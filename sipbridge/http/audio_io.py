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

import importlib.util
import io
import struct
import wave
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt
import soundfile as sf
import soxr

from audio import g711
from audio.framer import Framer
from audio.resample import FirResampler, StreamResampler, make_resampler
from sipbridge.http.errors import ApiError

OutputFormat = Literal["wav", "pcm16", "ulaw"]
Codec = Literal["pcm", "ulaw", "alaw", "mp3", "f32"]  # every codec FormatEncoder writes
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


class AudioRejected(ApiError):
    """An upload that cannot be used; `status` is the HTTP code to answer with. An `ApiError`, so the
    routes answer it as any other."""


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


@dataclass(frozen=True)
class AudioFormat:
    codec: Codec
    rate: int
    kbps: int = 0  # mp3 only
    wav: bool = False  # pcm with a streaming WAV header in front

    @property
    def media_type(self) -> str:
        if self.wav:
            return "audio/wav"
        return {
            "pcm": f"audio/L16; rate={self.rate}; channels=1",
            "ulaw": "audio/basic",
            "alaw": f"audio/PCMA; rate={self.rate}",
            "mp3": "audio/mpeg",
            "f32": f"audio/x-f32le; rate={self.rate}",
        }[self.codec]

    def seconds(self, nbytes: int) -> float:
        """How much audio `nbytes` of this format's body hold (MP3: at its constant bit rate)."""
        if self.codec == "mp3":
            return nbytes * 8 / (self.kbps * 1000) if self.kbps else 0.0
        width = {"pcm": 2, "f32": 4}.get(self.codec, 1)  # G.711: a byte a sample
        return nbytes / width / self.rate


def wav_stream_header(rate: int) -> bytes:
    """A 16-bit mono WAV header whose sizes say "unknown" (0xFFFFFFFF), for a body of unknown length: what
    streaming TTS servers send and what soundfile, ffmpeg and browsers play."""
    unknown = 0xFFFFFFFF
    return (
        b"RIFF" + struct.pack("<I", unknown) + b"WAVE"
        + b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
        + b"data" + struct.pack("<I", unknown)
    )  # fmt: skip


def _fir_cheap(in_rate: int, out_rate: int) -> bool:
    """The call path's FIR up to 24 kHz (telephony and the engines' own rates: ~1 ms per 80 ms chunk, ~5 ms
    of lag); soxr above, where the FIR's long upsampling banks cost 3-13 ms per chunk on a small CPU (and
    seconds to design at 48 kHz) and soxr's ~20 ms of extra lag does not matter for playback formats."""
    return out_rate <= 24000


class _Mp3:
    """lameenc, imported only when an MP3 format is asked for (a wheel of its own, ~200 kB)."""

    def __init__(self, rate: int, kbps: int) -> None:
        import lameenc

        self._enc = lameenc.Encoder()
        self._enc.set_bit_rate(kbps)
        self._enc.set_in_sample_rate(rate)
        self._enc.set_channels(1)
        self._enc.set_quality(7)  # fastest encoder setting: latency over the last bit of quality

    def push(self, pcm16: npt.NDArray[np.int16]) -> bytes:
        return bytes(self._enc.encode(pcm16.astype("<i2").tobytes()))

    def flush(self) -> bytes:
        return bytes(self._enc.flush())


class FormatEncoder:
    """Engine chunks (float32 at the engine's rate) in, the format's bytes out: 20 ms frames (the last one
    completed with silence) for PCM/G.711/float32, whatever the encoder has ready for MP3.

    Duck-types `audio_io.OutputEncoder` (`push`, `flush`, `rate`, `samples`) so `ConversationService.generate`
    drives it."""

    def __init__(self, engine_rate: int, fmt: AudioFormat) -> None:
        self.format = fmt
        self.rate = fmt.rate
        self._resampler: FirResampler | StreamResampler | None = (
            None
            if engine_rate == fmt.rate
            else make_resampler(
                engine_rate, fmt.rate, dtype="float32", low_latency=_fir_cheap(engine_rate, fmt.rate)
            )
        )
        self._float = fmt.codec == "f32"
        self._framer = Framer(fmt.rate, FRAME_MS, dtype=np.float32 if self._float else np.int16)
        self._mp3 = _Mp3(fmt.rate, fmt.kbps) if fmt.codec == "mp3" else None
        self.samples = 0

    def _encode(self, frames: list[npt.NDArray[Any]]) -> list[bytes]:
        self.samples += sum(len(f) for f in frames)
        codec = self.format.codec
        if codec == "f32":
            return [f.astype("<f4").tobytes() for f in frames]
        if codec == "ulaw":
            return [g711.ulaw_encode(f) for f in frames]
        if codec == "alaw":
            return [g711.alaw_encode(f) for f in frames]
        if self._mp3 is not None:
            out = b"".join(self._mp3.push(f) for f in frames)
            return [out] if out else []
        return [f.astype("<i2").tobytes() for f in frames]

    def _samples(self, x: npt.NDArray[np.float32]) -> npt.NDArray[Any]:
        if self._float:
            return np.clip(x, -1.0, 1.0).astype(np.float32)
        return np.clip(np.rint(x * 32768.0), -32768, 32767).astype(np.int16)

    def push(self, chunk: npt.NDArray[np.float32]) -> list[bytes]:
        x = (
            chunk
            if self._resampler is None
            else self._resampler.process(chunk.astype(np.float32, copy=False))
        )
        return self._encode(self._framer.push(self._samples(np.asarray(x, dtype=np.float32))))

    def flush(self) -> list[bytes]:
        out: list[bytes] = []
        if self._resampler is not None:
            out += self._encode(
                self._framer.push(self._samples(np.asarray(self._resampler.flush(), np.float32)))
            )
        last = self._framer.flush().frame
        if last is not None:
            out += self._encode([last])
        if self._mp3 is not None:
            tail = self._mp3.flush()
            if tail:
                out.append(tail)
        return out


class OutputEncoder(FormatEncoder):
    """The conversation API's formats (`wav`/`pcm16` = 16-bit 24 kHz, `ulaw` = G.711 8 kHz) on the one
    encoder the compatible surfaces use too."""

    def __init__(self, engine_rate: int, fmt: str) -> None:
        if fmt not in OUTPUT_FORMATS:
            raise ValueError(f"format must be one of {OUTPUT_FORMATS}, got {fmt!r}")
        codec: Codec = "ulaw" if fmt == "ulaw" else "pcm"
        super().__init__(engine_rate, AudioFormat(codec, ULAW_RATE if fmt == "ulaw" else PCM_RATE))
        self.name = fmt


def wav_bytes(pcm16: bytes, rate: int) -> bytes:
    """A 16-bit mono WAV file around raw little-endian PCM."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm16)
    return buf.getvalue()


def can_stretch() -> bool:
    """Whether the optional time-stretch library is installed (`sipbridge[timestretch]`: pedalboard is
    GPL-3.0, so it is an extra a deployment chooses, never pulled in by the Apache-2.0 package itself)."""
    return importlib.util.find_spec("pedalboard") is not None


class StretchedEncoder:
    """A `FormatEncoder` whose audio is played `speed` times faster, pitch kept (OpenAI's `speed`).

    Rubber Band (through pedalboard, offline mode) stretches the whole reply once it is complete: its
    offline mode studies the whole signal and sounds best on speech, and no well-kept Python binding offers
    its real-time mode. So `push` and `flush` only gather the engine's audio (they give no bytes) and
    `finish` stretches and encodes it: ~10 ms of CPU per second of audio, so the caller runs it on a worker
    thread (compat.Generation), never on the event loop the phone calls share. Duck-types `FormatEncoder`
    (`push`, `flush`, `rate`, `samples`)."""

    def __init__(self, inner: FormatEncoder, engine_rate: int, speed: float) -> None:
        self.inner, self.engine_rate, self.speed = inner, engine_rate, speed
        self.format = inner.format
        self.rate = inner.rate
        self.samples = 0  # of the output, once stretched
        self._chunks: list[npt.NDArray[np.float32]] = []

    def push(self, chunk: npt.NDArray[np.float32]) -> list[bytes]:
        self._chunks.append(np.array(chunk, dtype=np.float32))  # a copy: the engine may reuse its buffer
        return []

    def flush(self) -> list[bytes]:
        return []  # everything comes from `finish`

    def finish(self) -> list[bytes]:
        """The whole reply stretched and encoded (blocking: run it on a worker thread)."""
        from pedalboard import time_stretch  # Rubber Band, statically linked in the wheel

        out: list[bytes] = []
        if self._chunks:
            audio = np.concatenate(self._chunks)
            self._chunks = []
            stretched = time_stretch(audio[None, :], float(self.engine_rate), self.speed)[0]
            out = self.inner.push(np.ascontiguousarray(stretched, dtype=np.float32))
        out += self.inner.flush()
        self.samples = self.inner.samples
        return out
