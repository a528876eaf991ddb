"""Echo canceller bench: how much of the bot's own echo each canceller removes, how fast a caller talking over
that echo still shows up to the onset detector, and what it costs per call.

The line is simulated as tests/sipbridge/echo_peer.py plays it: the bot's espeak-ng reply goes out µ-law,
comes back `--echo-db` down and `--delay` frames late (µ-law again), and from `--caller-at` seconds on the
caller's own words are mixed in. Every 20 ms the canceller gets the frame the bot sent and the caller's
frame, as the worker's media thread feeds it (sipbridge/media/inbound.py).

Per canceller and echo delay the JSON has: ERLE (echo return loss enhancement: echo power in / residual out,
over the echo-only part once converged, i.e. after the first second), loud residual frames (frames the onset
detector would call sound while only echo comes back: each is a potential false barge-in), the caller's onset
lag (first loud frame after the caller's first loud sample, ms; the line without canceller reads the same
time), the caller's level kept (dB, over their first 500 ms), and CPU µs per 20 ms frame.

    .venv/bin/python bench/echo_canceller.py --out echo_canceller.json [--aec webrtc livekit]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from audio import g711
from audio.echo import EchoCanceller, _Paired, make_echo_canceller
from audio.testsignals import espeak, speech_extent

RATE, FRAME = 8000, 160
BOT = (
    "Alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa "
    "quebec romeo sierra tango uniform victor whiskey yankee."
)
CALLER = "Sorry, I need to stop you there."
LOUD = 184.0  # the onset detector's -45 dBFS (sipbridge/media/inbound.py OnsetDetector.min_rms)


class LiveKitEchoCanceller(_Paired):
    """The same AEC3 through livekit.rtc (not a dependency: `pip install livekit` to compare)."""

    def __init__(self, sample_rate: int) -> None:
        super().__init__()
        from livekit.rtc import AudioFrame, AudioProcessingModule

        self._frame = AudioFrame
        self._rate = sample_rate
        self._apm = AudioProcessingModule(echo_cancellation=True)
        self._apm.set_stream_delay_ms(0)  # AEC3 estimates the line's delay itself

    def near(self, pcm: bytes) -> bytes:
        x = np.frombuffer(pcm, np.int16)
        far = self._take_far(len(x))
        ten_ms, out = self._rate // 100, bytearray()
        for i in range(0, len(x), ten_ms):
            ref = self._frame(far[i : i + ten_ms].tobytes(), self._rate, 1, ten_ms)
            self._apm.process_reverse_stream(ref)
            mic = self._frame(x[i : i + ten_ms].tobytes(), self._rate, 1, ten_ms)
            self._apm.process_stream(mic)
            out += bytes(mic.data.cast("B"))
        return bytes(out)


def _canceller(kind: str) -> EchoCanceller | None:
    return LiveKitEchoCanceller(RATE) if kind == "livekit" else make_echo_canceller(kind, RATE)


def _speech(text: str, gain: float) -> npt.NDArray[np.float64]:
    x = espeak(text, RATE)
    a, b = speech_extent(x)
    return x[a:b].astype(np.float64) * gain * 32767


def _rms(x: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
    return np.sqrt((x.reshape(-1, FRAME).astype(np.float64) ** 2).mean(axis=1))


def line(bot: npt.NDArray[np.float64], caller: npt.NDArray[np.float64], echo_db: float, delay: int, at: int):
    """(sent frames, heard frames, echo-only heard frames, caller-only frames) as int16, frame-aligned."""
    n = len(bot) // FRAME * FRAME
    sent = g711.ulaw_decode(g711.ulaw_encode(np.clip(bot[:n], -32768, 32767).astype(np.int16)))
    echo = np.concatenate([np.zeros(delay * FRAME), sent[: n - delay * FRAME].astype(np.float64)])
    echo *= 10 ** (echo_db / 20)
    talk = np.zeros(n)
    talk[at * FRAME : at * FRAME + len(caller)] = caller[: n - at * FRAME]
    heard = g711.ulaw_decode(g711.ulaw_encode(np.clip(echo + talk, -32768, 32767).astype(np.int16)))
    return np.clip(bot[:n], -32768, 32767).astype(np.int16), heard, echo, talk


def run(kind: str, echo_db: float, delay: int, at_s: float, bot, caller) -> dict[str, Any]:
    at = int(at_s * 1000 / 20)
    sent, heard, echo, talk = line(bot, caller, echo_db, delay, at)
    aec = _canceller(kind)
    out = np.zeros_like(heard)
    t0 = time.perf_counter()
    for i in range(0, len(heard), FRAME):
        if aec is None:
            out[i : i + FRAME] = heard[i : i + FRAME]
            continue
        aec.far(sent[i : i + FRAME].tobytes())
        out[i : i + FRAME] = np.frombuffer(aec.near(heard[i : i + FRAME].tobytes()), np.int16)
    cpu_us = (time.perf_counter() - t0) / (len(heard) // FRAME) * 1e6
    out_rms, echo_rms, talk_rms = _rms(out), _rms(echo), _rms(talk)
    echo_only = (talk_rms == 0) & (echo_rms > 30)
    echo_only[:50] = False  # converging: the first second
    erle = 10 * np.log10((echo_rms[echo_only] ** 2).sum() / max(1e-9, (out_rms[echo_only] ** 2).sum()))
    onset = int(np.flatnonzero(talk_rms > LOUD)[0])
    lag = np.flatnonzero(out_rms[onset:] > LOUD)
    first = slice(onset, onset + 25)
    kept = 10 * np.log10((out_rms[first] ** 2).sum() / (talk_rms[first] ** 2).sum())
    return {
        "aec": kind,
        "echo_db": echo_db,
        "delay_ms": delay * 20,
        "erle_db": round(float(erle), 1),
        "loud_echo_frames": int((out_rms[:at] > LOUD).sum()),
        "loud_echo_frames_after_1s": int((out_rms[50:at] > LOUD).sum()),
        "caller_onset_lag_ms": int(lag[0]) * 20 if len(lag) else None,
        "caller_kept_db": round(float(kept), 1),
        "cpu_us_per_frame": round(cpu_us, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--aec", nargs="+", default=["none", "webrtc"])
    ap.add_argument("--echo-db", type=float, nargs="+", default=[-10.0, -20.0])
    ap.add_argument("--delay", type=int, nargs="+", default=[1, 5, 10], help="echo delays, 20 ms frames")
    ap.add_argument("--caller-at", type=float, default=3.0, help="the caller starts talking (s)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    bot, caller = _speech(BOT, 0.7), _speech(CALLER, 0.7)
    rows = [
        run(kind, db, d, args.caller_at, bot, caller)
        for kind in args.aec
        for db in args.echo_db
        for d in args.delay
    ]
    for r in rows:
        print(json.dumps(r))
    result = {"host": platform.node(), "python": platform.python_version(), "rows": rows}
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
