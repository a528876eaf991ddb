"""Shared espeak-ng speech for the audio tests (made once per session, ~0.1 s)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from audio.testsignals import espeak

SENTENCE_1 = "Hello, I would like to book a table for two people tomorrow evening."
SENTENCE_2 = "Yes, that is correct. Thank you very much."


@pytest.fixture(scope="session")
def sentences_16k() -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    return espeak(SENTENCE_1, 16000, voice="en-us", speed=150), espeak(
        SENTENCE_2, 16000, voice="en-gb", speed=170
    )
