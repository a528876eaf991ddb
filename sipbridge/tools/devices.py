"""Microphone and speaker for `sipbridge call --interactive` (sounddevice: PortAudio).

The pjsua2 wheel has no sound-device backend, so the call runs on PJSIP's null device as always and this
module bridges a PortAudio stream to it: the microphone fills a small buffer that the call's media clock
pops a frame from every 20 ms (`MicBuffer`, a FrameSource), and the other side's frames go to the speaker.
Both run at the device's own rate, converted to and from the call's rate with soxr streams.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any

import numpy as np
import soxr

_MAX_BUFFER_S = 0.2  # a microphone ahead of the call clock by more than this drops its oldest audio


class DeviceError(Exception):
    """No usable microphone or speaker (or no PortAudio)."""


class MicBuffer:
    """Microphone audio at the call's rate, popped one frame per media tick (silence while it is short)."""

    def __init__(self, frame_bytes: int, rate: int) -> None:
        self.frame_bytes = frame_bytes
        self.silence = bytes(frame_bytes)
        self._buf = bytearray()
        self._max = int(_MAX_BUFFER_S * rate) * 2
        self._lock = threading.Lock()

    def push(self, pcm: bytes) -> None:
        with self._lock:
            self._buf += pcm
            if len(self._buf) > self._max:
                del self._buf[: len(self._buf) - self._max]

    def pop(self) -> bytes:
        with self._lock:
            if len(self._buf) < self.frame_bytes:
                return self.silence
            frame = bytes(self._buf[: self.frame_bytes])
            del self._buf[: self.frame_bytes]
            return frame


class SoundCard:
    """One duplex PortAudio stream on the default devices."""

    def __init__(self, clock_rate: int) -> None:
        try:
            import sounddevice as sd
        except (ImportError, OSError) as exc:  # OSError: the module is there, libportaudio2 is not
            raise DeviceError(
                f"--interactive needs sounddevice and PortAudio ({exc}): "
                "pip install 'sipbridge[interactive]' and apt-get install libportaudio2"
            ) from exc
        self._sd = sd
        try:
            mic = sd.query_devices(kind="input")
            speaker = sd.query_devices(kind="output")
        except sd.PortAudioError:
            count = len(sd.query_devices())
            raise DeviceError(
                f"no microphone or speaker here (PortAudio sees {count} audio device(s)): --interactive "
                "needs both; on a server use --say TEXT or --wav FILE instead"
            ) from None
        self.clock_rate = clock_rate
        self.rate = int(mic["default_samplerate"])
        self.mic = MicBuffer(clock_rate * 20 // 1000 * 2, clock_rate)
        self._to_call = soxr.ResampleStream(self.rate, clock_rate, 1, dtype="float32")
        self._to_speaker = soxr.ResampleStream(clock_rate, self.rate, 1, dtype="float32")
        self._speaker: deque[float] = deque(maxlen=int(self.rate * _MAX_BUFFER_S * 5))
        self._lock = threading.Lock()
        self.names = (str(mic["name"]), str(speaker["name"]))
        self._stream: Any = None

    def start(self) -> None:
        try:
            self._stream = self._sd.Stream(
                samplerate=self.rate,
                blocksize=self.rate // 50,
                channels=1,
                dtype="float32",
                callback=self._callback,
            )
            self._stream.start()
        except self._sd.PortAudioError as exc:
            raise DeviceError(f"cannot open the audio devices {self.names}: {exc}") from None

    def play(self, pcm: bytes) -> None:
        """The other side's frame (call rate, int16) to the speaker."""
        x = np.frombuffer(pcm, np.int16).astype(np.float32) / 32768.0
        y = self._to_speaker.resample_chunk(x)
        with self._lock:
            self._speaker.extend(y.tolist())

    def _callback(self, indata: Any, outdata: Any, frames: int, _time: Any, _status: Any) -> None:
        # PortAudio's thread: convert and move samples, nothing else.
        x = self._to_call.resample_chunk(np.ascontiguousarray(indata[:, 0]))
        self.mic.push((np.clip(x, -1.0, 32767 / 32768) * 32768).astype(np.int16).tobytes())
        with self._lock:
            n = min(frames, len(self._speaker))
            out = [self._speaker.popleft() for _ in range(n)]
        outdata[:, 0] = 0.0
        outdata[:n, 0] = out

    def close(self) -> None:
        if self._stream is not None:
            self._stream.stop()
            self._stream.close()
            self._stream = None
