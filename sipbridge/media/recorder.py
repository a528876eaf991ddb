"""Stereo call recording (left: caller, right: bot), written as the call goes.

Both sides arrive as 20 ms frames on the worker's media thread, each in its own order; a side that is behind
is padded only when the call ends, so the two channels stay aligned frame for frame. libsndfile rewrites the
WAV header's sizes after every write (SFC_SET_UPDATE_HEADER_AUTO: two small pwrites per 20 ms), so the file
is readable at every moment, a `kill -9` included; `repair_wav_header` fixes up a file whose header was
written by something else or cut mid-update, at recovery.
"""

from __future__ import annotations

import contextlib
import logging
import struct
from pathlib import Path

import numpy as np
import soundfile as sf

log = logging.getLogger(__name__)

_FLUSH_FRAMES = 250  # 5 s of 20 ms frames
_SFC_SET_UPDATE_HEADER_AUTO = 0x1061  # libsndfile's sndfile.h


class StereoRecorder:
    def __init__(self, path: Path, sample_rate: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._file = sf.SoundFile(path, "w", samplerate=sample_rate, channels=2, subtype="PCM_16")
        sf._snd.sf_command(self._file._file, _SFC_SET_UPDATE_HEADER_AUTO, sf._ffi.NULL, 1)
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

    def abandon(self) -> None:
        """Stop recording after a write failed: close what can be closed, never raise."""
        self._left.clear()
        self._right.clear()
        with contextlib.suppress(Exception):
            self._file.close()


def repair_recordings(paths: list[str]) -> int:
    """Fix up the headers of recordings a dead process left open; missing or unreadable files are skipped
    (logged). Returns how many were changed."""
    fixed = 0
    for name in paths:
        try:
            fixed += repair_wav_header(Path(name))
        except OSError as exc:
            log.warning("recording %s left open by a dead process cannot be repaired: %s", name, exc)
    if fixed:
        log.warning("repaired the WAV header of %d recording(s) left open by a dead process", fixed)
    return fixed


def repair_wav_header(path: Path) -> bool:
    """Make a RIFF/WAVE file's sizes match what is on disk (the data chunk runs to the end of the file,
    whole sample frames only). Returns True if the header was changed. Non-WAV files are left alone."""
    with open(path, "r+b") as fh:
        head = fh.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return False
        size = fh.seek(0, 2)
        pos, block = 12, 1
        while pos + 8 <= size:
            fh.seek(pos)
            chunk, length = struct.unpack("<4sI", fh.read(8))
            if chunk == b"fmt ":
                block = max(1, struct.unpack("<H", fh.read(14)[12:14])[0])
            if chunk == b"data":
                data = (size - pos - 8) // block * block
                if length == data and struct.unpack("<I", head[4:8])[0] == size - 8:
                    return False
                fh.seek(pos + 4)
                fh.write(struct.pack("<I", data))
                fh.seek(4)
                fh.write(struct.pack("<I", size - 8))
                return True
            pos += 8 + length + (length & 1)
        return False
