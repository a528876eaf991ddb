"""Frame-level voice activity classifiers: webrtcvad (GMM, ~2 µs a frame) and Silero (ONNX, ~0.1 ms a window).

Each backend takes 20 ms int16 frames at the call rate (8 or 16 kHz) and returns a speech probability for
the frame. webrtcvad answers yes/no (1.0/0.0). Silero scores fixed windows (256 samples at 8 kHz, 512 at
16 kHz = 32 ms), so it buffers frames and each frame reports the score of the newest complete window.

Silero runs on onnxruntime with the ``silero_vad.onnx`` shipped in the ``silero-vad`` wheel. The
``silero_vad`` Python package imports torch, so we only *locate* its data folder (``find_spec`` does not
import a top-level package) and never import it.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt

__all__ = [
    "FrameClassifier",
    "GatedSilero",
    "SileroVad",
    "WebRtcVad",
    "make_classifier",
    "silero_model_path",
]

log = logging.getLogger(__name__)

SUPPORTED_RATES = (8000, 16000)
# (onset, offset) decision lag in ms per rate, the mean boundary bias measured by bench/vad_quality.py with
# no correction (docs/AUDIO.md). Silero needs ~1-2 windows of speech before its probability rises and its
# recurrent state keeps it high for ~2 windows after speech ends.
_SILERO_LAG_MS = {16000: (40, 80), 8000: (60, 100)}
_WEBRTC_LAG_MS = {16000: (0, 80), 8000: (0, 40)}


class FrameClassifier(Protocol):
    """Scores one frame of int16 PCM at ``sample_rate``; keeps its own per-stream state."""

    sample_rate: int
    # How late the classifier's decisions are relative to the audio, in ms (measured by
    # bench/vad_quality.py on espeak-ng speech); the segmenter moves turn boundaries back by these.
    onset_lag_ms: int
    offset_lag_ms: int

    def speech_prob(self, frame: npt.NDArray[np.int16]) -> float: ...

    def reset(self) -> None: ...


def _check_rate(sample_rate: int) -> None:
    if sample_rate not in SUPPORTED_RATES:
        raise ValueError(f"VAD supports {SUPPORTED_RATES} Hz, got {sample_rate}")


class WebRtcVad:
    """webrtcvad-wheels; frames of 10, 20 or 30 ms. Cheap, but it also fires on loud noise."""

    def __init__(self, sample_rate: int, aggressiveness: int = 2) -> None:
        import webrtcvad  # local import: the C extension is only loaded when this backend is chosen

        _check_rate(sample_rate)
        if not 0 <= aggressiveness <= 3:
            raise ValueError(f"webrtc aggressiveness must be 0..3, got {aggressiveness}")
        self.sample_rate = sample_rate
        self.aggressiveness = aggressiveness
        self.onset_lag_ms, self.offset_lag_ms = _WEBRTC_LAG_MS[sample_rate]
        self._vad = webrtcvad.Vad(aggressiveness)

    def speech_prob(self, frame: npt.NDArray[np.int16]) -> float:
        return 1.0 if self._vad.is_speech(frame.tobytes(), self.sample_rate) else 0.0

    def reset(self) -> None:
        # webrtcvad adapts its noise model over time; a new instance forgets it.
        import webrtcvad

        self._vad = webrtcvad.Vad(self.aggressiveness)


def silero_model_path() -> Path:
    """Path of ``silero_vad.onnx`` inside the installed silero-vad wheel (without importing the package)."""
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the silero-vad package is not installed; `pip install silero-vad`")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "silero_vad.onnx"
    if not path.is_file():
        raise RuntimeError(f"silero-vad is installed but {path} is missing")
    return path


@functools.lru_cache(maxsize=1)
def _silero_session() -> object:
    """One shared ONNX session for every call: ``run`` is thread-safe and the recurrent state lives in the
    caller's :class:`SileroState`, so calls never share state. One thread each: many calls run at once."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    path = silero_model_path()
    log.info("loading Silero VAD from %s", path)
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


@dataclass
class SileroState:
    """Per-stream Silero state: the model's recurrent state, the last samples of the previous window (the
    model expects them prepended), frame samples not yet scored, and the newest window's probability."""

    rnn: npt.NDArray[np.float32]
    context: npt.NDArray[np.float32]
    pending: npt.NDArray[np.float32]
    prob: float = 0.0
    windows: int = field(default=0)


class SileroVad:
    """Silero VAD v5/v6 on onnxruntime + numpy.

    Windows: 512 samples + 64 context samples at 16 kHz, 256 + 32 at 8 kHz (32 ms either way).
    """

    def __init__(self, sample_rate: int) -> None:
        _check_rate(sample_rate)
        self.sample_rate = sample_rate
        self.onset_lag_ms, self.offset_lag_ms = _SILERO_LAG_MS[sample_rate]
        self.window = 512 if sample_rate == 16000 else 256
        self.context_size = 64 if sample_rate == 16000 else 32
        self._session = _silero_session()
        self._sr = np.array(sample_rate, dtype=np.int64)
        self.state = self._fresh_state()

    def _fresh_state(self) -> SileroState:
        return SileroState(
            rnn=np.zeros((2, 1, 128), dtype=np.float32),
            context=np.zeros(self.context_size, dtype=np.float32),
            pending=np.zeros(0, dtype=np.float32),
        )

    def reset(self) -> None:
        self.state = self._fresh_state()

    def score_window(self, window: npt.NDArray[np.float32]) -> float:
        """Run the model on one float32 window (exactly ``self.window`` samples) and advance the state."""
        st = self.state
        x = np.concatenate((st.context, window))[np.newaxis, :]
        out, rnn = self._session.run(  # type: ignore[attr-defined]
            None, {"input": x, "state": st.rnn, "sr": self._sr}
        )
        st.rnn = rnn
        st.context = window[-self.context_size :].copy()
        st.prob = float(out[0, 0])
        st.windows += 1
        return st.prob

    def speech_prob(self, frame: npt.NDArray[np.int16]) -> float:
        st = self.state
        samples = frame.astype(np.float32) * (1.0 / 32768.0)
        buf = np.concatenate((st.pending, samples)) if len(st.pending) else samples
        while len(buf) >= self.window:
            self.score_window(buf[: self.window])
            buf = buf[self.window :]
        st.pending = buf
        return st.prob


class GatedSilero:
    """Silero, run only around sound: above -50 dBFS, or what webrtcvad (lenient mode 0) calls speech.

    Silero costs ~100 µs a 32 ms window, on every window of every call, although a phone caller is quiet
    most of the time (listening to the bot). Here a frame below the energy floor that webrtcvad rejects
    (~3 µs for both), outside a hold of ``hold_frames`` after the last sound and while Silero's own
    probability is near zero, scores 0.0 without running the model. When the gate opens, the
    ``warm_frames`` frames before it are fed to Silero first, so its recurrent state has heard the lead-in
    as it would have running all along, and its onset lag (what the segmenter corrects for) stays
    Silero's. Decisions inside speech are Silero's alone: the gate only decides when Silero may sleep,
    never that something is speech.
    """

    def __init__(self, sample_rate: int, *, hold_frames: int = 25, warm_frames: int = 5) -> None:
        import webrtcvad

        self.silero = SileroVad(sample_rate)
        self.sample_rate = sample_rate
        self.onset_lag_ms, self.offset_lag_ms = self.silero.onset_lag_ms, self.silero.offset_lag_ms
        self.hold_frames = hold_frames
        self._gate = webrtcvad.Vad(0)
        self._recent: deque[npt.NDArray[np.int16]] = deque(maxlen=warm_frames)
        self._hold = 0
        self.frames_scored = 0  # frames Silero ran on (the rest cost only the gate)

    def speech_prob(self, frame: npt.NDArray[np.int16]) -> float:
        if self._sounding(frame):
            if self._hold == 0 and self.silero.state.prob < _AWAKE_PROB:
                self._wake()
            self._hold = self.hold_frames
        elif self._hold > 0:
            self._hold -= 1
        elif self.silero.state.prob < _AWAKE_PROB:
            self._recent.append(frame)
            return 0.0
        self.frames_scored += 1
        return self.silero.speech_prob(frame)

    def _sounding(self, frame: npt.NDArray[np.int16]) -> bool:
        """Sound Silero must hear: above the energy floor (quiet talkers webrtcvad's mode 0 is late on), or
        what webrtcvad calls speech below it."""
        x = frame.astype(np.float32)
        if float(np.dot(x, x)) > _GATE_RMS * _GATE_RMS * len(x):
            return True
        return bool(self._gate.is_speech(frame.tobytes(), self.sample_rate))

    def _wake(self) -> None:
        """Feed the frames heard while asleep (the lead-in of the sound that opened the gate)."""
        self.silero.state.pending = np.zeros(0, dtype=np.float32)
        for earlier in self._recent:
            self.silero.speech_prob(earlier)
        self._recent.clear()

    def reset(self) -> None:
        self.silero.reset()
        self._recent.clear()
        self._hold = 0


_GATE_RMS = 100.0  # -50 dBFS on the int16 scale: above it Silero always runs (a quiet line is ~-60)
_AWAKE_PROB = 0.05  # Silero keeps running while its probability is above this (a turn may be ending)


def make_classifier(
    backend: str, sample_rate: int, *, aggressiveness: int = 2, gate: bool = False
) -> FrameClassifier:
    """Build the named frame classifier (``"silero"`` or ``"webrtc"``) for one stream; ``gate`` runs Silero
    only around what webrtcvad calls speech (:class:`GatedSilero`)."""
    if backend == "silero":
        return GatedSilero(sample_rate) if gate else SileroVad(sample_rate)
    if backend == "webrtc":
        return WebRtcVad(sample_rate, aggressiveness)
    raise ValueError(f"unknown VAD backend {backend!r}; expected 'silero' or 'webrtc'")
