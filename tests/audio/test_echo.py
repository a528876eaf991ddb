"""audio/echo.py: WebRTC AEC3 on an 8 kHz line fed frame by frame as the worker's media thread feeds it, and
the echo-free check that steps it aside. The line is the echo peer's: the bot's speech back µ-law, -10 dB,
100 ms late; the caller's own words mixed in later."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from audio import g711
from audio.echo import make_echo_canceller
from audio.testsignals import espeak, speech_extent

FRAME = 160
LOUD = 184.0  # the onset detector's -45 dBFS


@pytest.fixture(scope="module")
def bot() -> npt.NDArray[np.int16]:
    x = espeak("Alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima.", 8000)
    a, b = speech_extent(x)
    pcm = (x[a:b] * 0.7 * 32767).astype(np.int16)
    return pcm[: len(pcm) // FRAME * FRAME]


def _heard(
    sent: npt.NDArray[np.int16], echo_db: float, talk: npt.NDArray[np.float64]
) -> npt.NDArray[np.int16]:
    echo = np.concatenate([np.zeros(5 * FRAME), sent[: -5 * FRAME].astype(np.float64)]) * 10 ** (echo_db / 20)
    return g711.ulaw_decode(g711.ulaw_encode(np.clip(echo + talk, -32768, 32767).astype(np.int16)))


def _run(sent: npt.NDArray[np.int16], heard: npt.NDArray[np.int16]):
    aec = make_echo_canceller("webrtc", 8000)
    assert aec is not None
    out = []
    for i in range(0, len(heard), FRAME):
        aec.far(sent[i : i + FRAME].tobytes())
        out.append(np.frombuffer(aec.near(heard[i : i + FRAME].tobytes()), np.int16))
    return aec, np.sqrt((np.stack(out).astype(np.float64) ** 2).mean(axis=1))


def test_the_echo_is_cancelled_and_the_caller_over_it_kept(bot: npt.NDArray[np.int16]) -> None:
    talk = np.zeros(len(bot))
    at = len(bot) // 2 // FRAME * FRAME
    words = bot[: len(bot) - at][::-1].astype(np.float64)  # "speech" unlike the bot's, at the bot's level
    talk[at:] = words
    heard = _heard(bot, -10.0, talk)
    aec, out = _run(bot, heard)
    raw = np.sqrt((heard.reshape(-1, FRAME).astype(np.float64) ** 2).mean(axis=1))
    echo_only = slice(0, at // FRAME)
    assert (raw[echo_only] > LOUD).sum() > 40  # without the canceller the echo is sound to the VAD
    assert (out[echo_only] > LOUD).sum() == 0, np.flatnonzero(out[echo_only] > LOUD)
    assert not aec.presence.echo_free  # type: ignore[attr-defined]
    # Double talk: AEC3's suppressor holds back some of the caller's frames while the echo is loud (~76 %
    # of their loud frames stay loud here); the caller is heard, not muted.
    caller = out[at // FRAME :]
    said = np.sqrt((words.reshape(-1, FRAME) ** 2).mean(axis=1)) > LOUD
    assert (caller > LOUD).sum() >= 0.6 * said.sum(), ((caller > LOUD).sum(), said.sum())
    first = int(np.flatnonzero(said)[0])
    assert (caller[first : first + 5] > LOUD).any()  # their onset is seen within 100 ms


def test_a_caller_talking_over_our_first_words_is_heard_whole(bot: npt.NDArray[np.int16]) -> None:
    """An answering machine's greeting over our opening sentence, from its first frames: AEC3 has not learnt
    the line yet and held such a caller ~10 dB down, cut to pieces (the flow test's voicemail went unheard).
    A heard frame louder than half of what we sent cannot be our echo: it goes through as it came."""
    talk = np.zeros(len(bot))
    words = bot[::-1][: len(bot) - 2 * FRAME].astype(np.float64)
    talk[2 * FRAME :] = words
    heard = _heard(bot, -90.0, talk)
    _, out = _run(bot, heard)
    raw = np.sqrt((heard.reshape(-1, FRAME).astype(np.float64) ** 2).mean(axis=1))
    said = raw > LOUD
    assert (out[said] > LOUD).mean() >= 0.95, (out[said] > LOUD).mean()
    kept_db = 20 * np.log10(out[said].sum() / raw[said].sum())
    assert kept_db > -1.0, kept_db


def test_an_echo_free_line_is_passed_through(bot: npt.NDArray[np.int16]) -> None:
    sent = np.concatenate([bot, bot])
    heard = _heard(sent, -90.0, np.zeros(len(sent)))
    aec, _ = _run(sent, heard)
    assert aec.presence.echo_free  # type: ignore[attr-defined]
    x = np.full(FRAME, 3000, np.int16).tobytes()
    aec.far(np.zeros(FRAME, np.int16).tobytes())
    assert aec.near(x) == x  # stepped aside: AEC3 no longer touches the caller's audio


def test_unknown_canceller_is_a_clear_error() -> None:
    assert make_echo_canceller("none", 8000) is None
    with pytest.raises(ValueError, match="unknown echo canceller 'speex'"):
        make_echo_canceller("speex", 8000)
