"""One `sipbridge call`: dial, then run every event of the call through the dialogue, recording, transcript.

All on the caller's thread (PJSIP's registered main thread): `CallToolSession.run` polls the softphone every
10 ms and handles what it returns; the only other threads are PJSIP's media clock (inside the softphone),
the ASR thread (`Ears`) and, with --interactive, PortAudio's.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from audio.vad import make_segmenter
from sipbridge.config import Config
from sipbridge.media.playback import PlaybackQueue
from sipbridge.media.recorder import StereoRecorder
from sipbridge.tools import call as cli
from sipbridge.tools import dialogue as d
from sipbridge.tools import softphone as sp
from sipbridge.tools import transcript as tr
from sipbridge.tools.devices import DeviceError, SoundCard
from sipbridge.tools.voice import Ears, LineError, say_line, wav_line

_ASR_WAIT_S = 10.0  # at the end, how long a turn still being recognised may hold the exit
_HANGUP_WAIT_S = 5.0  # BYE/CANCEL retransmissions run ~32 s; a silent peer gets this long


@dataclass
class Prepared:
    """Everything checked before dialling: a bad argument fails here, with nothing sent."""

    target: tr.Target
    bind: str
    config: Config
    lines: list[d.Line] | None  # None: interactive
    record: Path | None
    args: argparse.Namespace
    auth: tuple[str, str, str] | None = None  # user, password, domain
    json: Path | None = None  # --json: the call as data, written at the end


def prepare(args: argparse.Namespace, config: Config, raw_lines: list[tuple[str, str]]) -> Prepared:
    try:
        target = tr.parse_target(args.uri or cli.default_uri(config))
    except tr.TargetError as exc:
        raise cli.UsageError(str(exc)) from None
    try:
        bind = args.bind or sp.local_address_for(target.host, target.port)
    except OSError as exc:  # unresolvable host, no route
        raise cli.UsageError(f"cannot reach {target.host}: {exc}") from None
    rate = config.media.clock_rate
    espeak_cfg = config.engine.espeak
    lines: list[d.Line] | None = None
    if not args.interactive:
        try:
            lines = [
                say_line(value, rate, espeak_cfg.voice, espeak_cfg.words_per_minute)
                if kind == "say"
                else wav_line(value, rate)
                for kind, value in raw_lines
            ]
        except LineError as exc:
            raise cli.UsageError(str(exc)) from None
    auth = None
    if args.auth:
        password = os.environ.get(cli.PASSWORD_ENV)
        if not password:
            raise cli.UsageError(f"--auth {args.auth}: set the password in ${cli.PASSWORD_ENV}")
        auth = (args.auth, password, target.host)
    json_path = cli.record_path(args.json, "--json")
    return Prepared(target, bind, config, lines, cli.record_path(args.record), args, auth, json_path)


@dataclass
class CallToolSession:
    prepared: Prepared
    write: Callable[[str], None]
    stop_reason: str | None = None  # set by a signal handler: hang up at the next loop turn
    our_hangup: str | None = None  # why we ended the call ("done": every line said); None: they did
    hangup_at: float | None = None
    answered_at: float | None = None
    answered_after_s: float | None = None
    codec: str | None = None
    responded: bool = False
    turns: list[tr.TurnEntry] = field(default_factory=list)  # for --json

    def stop(self, reason: str) -> None:
        self.stop_reason = reason

    def run(self) -> cli.CallToolExit:
        p = self.prepared
        rate = p.config.media.clock_rate
        self.phone = sp.Softphone(
            p.bind, tuple(p.config.sip.codecs), rate, transport=p.target.transport, auth=p.auth
        )
        self.ears = Ears(
            p.config.asr.model_copy(update={"backend": "none"}) if p.args.no_asr else p.config.asr
        )
        self.transcript = tr.Transcript(self.write)
        self.card: SoundCard | None = None
        self.recorder: StereoRecorder | None = None
        try:
            return self._run(rate)
        except DeviceError as exc:
            return cli.CallToolExit(cli.EXIT_FAILURE, f"sipbridge call: {exc}")
        except sp.SoftphoneError as exc:
            return cli.CallToolExit(cli.EXIT_FAILURE, f"sipbridge call: {exc}")
        finally:
            self.phone.close()
            if self.card is not None:
                self.card.close()
            if self.recorder is not None:
                self.recorder.close()
            self.ears.close()

    def _run(self, rate: int) -> cli.CallToolExit:
        p = self.prepared
        frame_bytes = rate * 20 // 1000 * 2
        source: sp.FrameSource
        if p.lines is None:
            self.card = SoundCard(rate)
            source = self.card.mic
            self.write(f"audio: microphone {self.card.names[0]!r}, speaker {self.card.names[1]!r}")
        else:
            self.playback = PlaybackQueue(frame_bytes)
            source = self.playback
        vad = cli.vad_settings(p.config, p.args.end_silence_ms)
        self.dialogue = d.Dialogue(
            p.lines,
            make_segmenter(vad, rate),
            int(p.args.reply_timeout * 1000),
            you_vad=make_segmenter(vad, rate) if p.lines is None else None,
        )
        self.phone.start()
        if p.record is not None:
            try:
                self.recorder = StereoRecorder(p.record, rate)
            except (OSError, RuntimeError) as exc:
                return cli.CallToolExit(cli.EXIT_USAGE, f"sipbridge call: --record {p.record}: {exc}")
        self.write(f"calling {p.target.uri} from {p.bind}:{self.phone.local_port}")
        if self.card is not None:
            self.card.start()
        self.phone.dial(p.target.uri, source)
        return self._loop(frame_bytes)

    # ------------------------------------------------------------------------------------- the loop

    def _loop(self, frame_bytes: int) -> cli.CallToolExit:
        started = time.monotonic()
        silence = np.zeros(frame_bytes // 2, np.int16)
        ended: sp.Ended | None = None
        while ended is None:
            for event in self.phone.poll(10):
                if isinstance(event, sp.Received):
                    self._received(event.pcm, silence)
                elif isinstance(event, sp.Sent):
                    self._sent(event.pcm)
                elif isinstance(event, sp.Responded):
                    self._responded(event)
                elif isinstance(event, sp.Answered):
                    self.answered_at = time.monotonic()
                    self.answered_after_s, self.codec = self.answered_at - started, event.codec
                    self.write(f"answered after {self.answered_after_s:.2f} s ({event.codec})")
                elif isinstance(event, sp.Ended):
                    ended = event
            if ended is None:
                self._played()
                self._watch(started)
                ended = self._hangup_unanswered()
            self.transcript.flush()
        for de in self.dialogue.hung_up():
            self._dialogue_event(de)
        self.transcript.drain(_ASR_WAIT_S)
        outcome = self._outcome(ended, time.monotonic() - started)
        if self.prepared.json is not None:
            self._write_json(self.prepared.json, outcome)
        return outcome

    def _write_json(self, path: Path, outcome: cli.CallToolExit) -> None:
        data = tr.report(
            self.prepared.target.uri,
            self.answered_after_s,
            self.codec,
            self.turns,
            self.dialogue.state.gaps_ms,
            outcome.code,
            outcome.message,
        )
        try:
            path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        except OSError as exc:
            self.write(f"cannot write --json {path}: {exc.strerror or exc}")

    def _received(self, pcm: bytes, silence: np.ndarray) -> None:
        frame = np.frombuffer(pcm, np.int16) if pcm else silence
        if len(frame) != len(silence):  # a short frame from PJSIP would break the 20 ms clock: pad it
            frame = np.resize(frame, len(silence)) if len(frame) else silence
        if self.recorder is not None:
            self.recorder.bot(frame.tobytes())
        if self.card is not None:
            self.card.play(frame.tobytes())
        for event in self.dialogue.bot_frame(frame):
            self._dialogue_event(event)

    def _sent(self, pcm: bytes) -> None:
        if self.recorder is not None:
            self.recorder.caller(pcm)
        if self.dialogue.you_vad is not None:
            for event in self.dialogue.you_frame(np.frombuffer(pcm, np.int16)):
                self._dialogue_event(event)

    def _responded(self, event: sp.Responded) -> None:
        if not self.responded or event.code in (180, 183):
            self.write(f"{event.code} {event.reason}".strip())
        self.responded = True

    def _played(self) -> None:
        if self.prepared.lines is None:
            return
        for done in self.playback.take_finished():
            # Tick n sent the frame for [(n-1)*20, n*20) ms of our side's clock (see PlaybackQueue.pop).
            for event in self.dialogue.played(
                done.utterance, (done.start_tick - 1) * 20, (done.end_tick - 1) * 20
            ):
                self._dialogue_event(event)

    def _watch(self, started: float) -> None:
        """Our timeouts and Ctrl-C: hang up (CANCEL or BYE); the Ended event then ends the loop."""
        args = self.prepared.args
        waited = time.monotonic() - started
        reason = self.stop_reason
        if self.answered_at is None:
            if not self.responded and waited > args.connect_timeout:
                reason = reason or "no-response"
            elif waited > args.ring_timeout:
                reason = reason or "ring-timeout"
        elif time.monotonic() - self.answered_at > args.max_duration:
            reason = reason or f"max duration {args.max_duration:.0f} s"
        if reason is not None:
            self._hang_up(reason)

    def _hang_up(self, reason: str) -> None:
        if self.our_hangup is None:
            self.our_hangup = reason
            self.hangup_at = time.monotonic()
            self.phone.hangup()

    def _hangup_unanswered(self) -> sp.Ended | None:
        """A peer that never answers our BYE or CANCEL must not keep us here: give it a few seconds."""
        if self.hangup_at is None or time.monotonic() - self.hangup_at < _HANGUP_WAIT_S:
            return None
        return sp.Ended(0, "no reply to our hang-up", self.phone.answered)

    # --------------------------------------------------------------------------------- dialogue events

    def _dialogue_event(self, event: d.Event) -> None:
        if isinstance(event, d.Speak):
            self._speak(event)
        elif isinstance(event, d.BotStarted):
            if event.over_you:
                self.transcript.add(f"bot {tr.seconds(event.at_ms)}: starts talking while you talk")
            elif event.gap_ms is not None:
                self.transcript.add(tr.gap(event.gap_ms))
        elif isinstance(event, d.BotSaid | d.YouSaid):
            who = "bot" if isinstance(event, d.BotSaid) else "you"
            heard = self.ears.hear(event.pcm, self.prepared.config.media.clock_rate)
            self.turns.append(tr.TurnEntry(who, event.start_ms, event.end_ms, heard))
            self.transcript.add(
                tr.mapped(heard, functools.partial(tr.said, who, event.start_ms, event.end_ms))
            )
        elif isinstance(event, d.BotSilent):
            self.transcript.add(f"bot silent for {tr.seconds(event.waited_ms)}: going on")
        elif isinstance(event, d.DialogueDone):
            self._hang_up("done")

    def _speak(self, event: d.Speak) -> None:
        line = event.line
        self.playback.push(event.index, False, line.pcm.tobytes())
        self.playback.end(event.index)
        start = event.at_ms
        end = start + len(line.pcm) * 1000 // self.prepared.config.media.clock_rate
        if line.words is not None:
            self.turns.append(tr.TurnEntry("you", start, end, line.words))
            self.transcript.add(tr.said("you", start, end, line.words))
            return
        label = line.label

        def with_label(words: str) -> str:
            if not words.strip():
                return f"you {tr.seconds(start)}: ({label})"
            return f"{tr.said('you', start, end, words)} ({label})"

        heard = self.ears.hear(line.pcm, self.prepared.config.media.clock_rate)
        self.turns.append(tr.TurnEntry("you", start, end, heard, label))
        self.transcript.add(tr.mapped(heard, with_label))

    # ------------------------------------------------------------------------------------- outcome

    def _outcome(self, ended: sp.Ended, seconds: float) -> cli.CallToolExit:
        p = self.prepared
        if not ended.answered:
            self._drop_recording()
            return self._unanswered(ended)
        if self.recorder is not None:
            self.write(f"recorded: {p.record} (stereo: you left, other side right)")
        gaps = cli.gap_summary(self.dialogue.state.gaps_ms)
        if gaps:
            self.write(gaps)
        how = {None: "the other side hung up", "done": "we hung up"}.get(
            self.our_hangup, f"we hung up: {self.our_hangup}"
        )
        summary = f"call ended after {seconds:.2f} s ({how})"
        if not self.dialogue.bot_spoke:
            return cli.CallToolExit(cli.EXIT_SILENT, f"{summary}; the other side never spoke")
        return cli.CallToolExit(cli.EXIT_OK, summary)

    def _unanswered(self, ended: sp.Ended) -> cli.CallToolExit:
        p = self.prepared
        where = f"{p.target.host}:{p.target.port}"
        if self.our_hangup == "no-response":
            return cli.CallToolExit(
                cli.EXIT_NO_ANSWER,
                f"no answer: no SIP response from {where} ({p.target.transport}) in "
                f"{p.args.connect_timeout:g} s; is a SIP server listening there?"
                + ("" if p.args.uri else " (start the bot with `sipbridge run`)"),
            )
        if self.our_hangup == "ring-timeout":
            return cli.CallToolExit(cli.EXIT_NO_ANSWER, f"no answer: rang for {p.args.ring_timeout:g} s")
        if self.our_hangup is not None:
            return cli.CallToolExit(cli.EXIT_NO_ANSWER, f"no answer: {self.our_hangup} before the answer")
        if not (self.responded or ended.received):  # PJSIP's verdict: refused, timed out, unresolvable
            return cli.CallToolExit(
                cli.EXIT_NO_ANSWER,
                f"no answer: no SIP response from {where} ({p.target.transport}): "
                f"{ended.code} {ended.reason}",
            )
        if ended.code in cli.NO_ANSWER_CODES or ended.code < 300:
            return cli.CallToolExit(cli.EXIT_NO_ANSWER, f"no answer: {ended.code} {ended.reason}")
        return cli.CallToolExit(cli.EXIT_REJECTED, f"rejected: {ended.code} {ended.reason} from {where}")

    def _drop_recording(self) -> None:
        """Nothing was said: no empty WAV left behind."""
        if self.recorder is None or self.prepared.record is None:
            return
        self.recorder.close()
        self.recorder = None
        with contextlib.suppress(OSError):
            self.prepared.record.unlink()
