"""Smart Turn v3.2: "has the caller finished their turn?" from the sound of the turn's last 8 s.

The model (BSD-2, by Daily) is an ONNX file shipped inside the ``pipecat-ai`` wheel. pipecat's runtime needs
loguru, numba, openai and a soxr pin older than ours, so we install the wheel without its dependencies
(deploy/setup.sh) and only *locate* the file: ``find_spec`` of a top-level package does not import it.
Features are our own (:mod:`audio.turn.features`).

Cost: ~50 ms of one CPU thread per decision on the development VM under load (the encoder always sees 8 s).
One ONNX session is shared by every call (``run`` is thread-safe; the model keeps no state between runs).
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from pathlib import Path

import numpy as np
import numpy.typing as npt
import soxr

from audio.turn.features import RATE, fit_window, log_mel

__all__ = ["SmartTurn", "smart_turn_model_path"]

log = logging.getLogger(__name__)

_MODEL = "audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx"  # inside the pipecat package


def smart_turn_model_path() -> Path:
    """Path of ``smart-turn-v3.2-cpu.onnx`` inside the installed pipecat-ai wheel (not imported)."""
    spec = importlib.util.find_spec("pipecat")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "the end-of-turn model needs the pipecat-ai wheel: pip install --no-deps 'pipecat-ai==1.14.0'"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / _MODEL
    if not path.is_file():
        raise RuntimeError(
            f"pipecat-ai is installed but {path} is missing (Smart Turn v3.2 needs pipecat-ai 1.14)"
        )
    return path


@functools.lru_cache(maxsize=1)
def _session() -> object:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1  # many calls decide at once; each decision gets one thread
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    path = smart_turn_model_path()
    log.info("loading Smart Turn v3.2 from %s", path)
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


class SmartTurn:
    """Probability that a turn is complete, from its audio (int16 or float) at 8 or 16 kHz."""

    def __init__(self) -> None:
        self._session = _session()

    def features(self, pcm: npt.NDArray[np.generic], rate: int) -> npt.NDArray[np.float32]:
        """(1, 80, 800) model input for the turn's audio."""
        audio = pcm.astype(np.float32) / 32768.0 if pcm.dtype == np.int16 else pcm.astype(np.float32)
        if rate != RATE:
            audio = soxr.resample(audio, rate, RATE, quality="HQ").astype(np.float32)
        return log_mel(fit_window(audio))[np.newaxis]

    def complete_prob(self, pcm: npt.NDArray[np.generic], rate: int) -> float:
        """P(the speaker has finished), 0..1. The model's output is already a sigmoid."""
        if len(pcm) == 0:
            return 0.0
        (out,) = self._session.run(None, {"input_features": self.features(pcm, rate)})  # type: ignore[attr-defined]
        return float(np.asarray(out).reshape(-1)[0])
