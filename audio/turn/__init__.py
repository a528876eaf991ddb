"""End of turn: has the caller finished speaking? (Smart Turn v3.2 on our own Whisper features.)"""

from audio.turn.features import fit_window, log_mel
from audio.turn.smart_turn import SmartTurn, smart_turn_model_path

__all__ = ["SmartTurn", "fit_window", "log_mel", "smart_turn_model_path"]
