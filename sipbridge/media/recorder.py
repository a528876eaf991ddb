"""Stereo call recording (left: caller, right: bot), written as the call goes.

Both sides arrive as 20 ms frames on the worker's media thread, each in its own order; a side that is behind
is padded only when the call ends, so the two channels stay aligned frame for frame. The WAV header is
rewritten every few seconds (`flush`), so a worker crash leaves a readable file with all but the last
seconds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

_FLUSH_FRAMES = 250  # 5 s of 20 ms frames


class StereoRecorder:
    def __init__(self, path: Path, sample_rate: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._file = sf.SoundFile(path, "w", samplerate=sample_rate, channels=2, subtype="PCM_16")
        self._left: list[bytes] = []
        self._right: list[bytes] = []
        self._since_flush = 0

    def caller(self, pcm: bytes) -> None:
        self._left.append(pcm)
        self._write_ready()

    def bot(self, pcm: bytes) -> None:
        self._right.append(pcm)
        self._write_ready()

    def _write_ready(self) -> None:
        n = min(len(self._left), len(self._right))
        if not n:
            return
        left = np.frombuffer(b"".join(self._left[:n]), dtype=np.int16)
        right = np.frombuffer(b"".join(self._right[:n]), dtype=np.int16)
        del self._left[:n], self._right[:n]
        m = min(len(left), len(right))
        self._file.write(np.stack([left[:m], right[:m]], axis=1))
        self._since_flush += n
        if self._since_flush >= _FLUSH_FRAMES:
            self._file.flush()
            self._since_flush = 0

    def close(self) -> None:
        # Pad the side that is behind with silence so nothing heard is lost.
        while len(self._left) < len(self._right):
            self._left.append(bytes(len(self._right[0])))
        while len(self._right) < len(self._left):
            self._right.append(bytes(len(self._left[0])))
        self._write_ready()
        self._file.close()
