"""Voice activity detection: frame classifiers (webrtc, Silero) and the turn segmenter built on them."""

from audio.vad.backends import (
    FrameClassifier,
    GatedSilero,
    SileroVad,
    WebRtcVad,
    make_classifier,
    silero_model_path,
)
from audio.vad.segmenter import (
    SegmenterState,
    SpeechPaused,
    SpeechStart,
    TurnEnd,
    TurnSegmenter,
    TurnTooShort,
    VadEvent,
    VadSettings,
    make_segmenter,
)

__all__ = [
    "FrameClassifier",
    "GatedSilero",
    "SegmenterState",
    "SileroVad",
    "SpeechPaused",
    "SpeechStart",
    "TurnEnd",
    "TurnSegmenter",
    "TurnTooShort",
    "VadEvent",
    "VadSettings",
    "WebRtcVad",
    "make_classifier",
    "make_segmenter",
    "silero_model_path",
]
