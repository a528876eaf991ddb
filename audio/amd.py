"""Answering-machine detection (AMD): is the callee who picked up a person or a voicemail greeting?

Streaming, like Asterisk's ``AMD()`` application, on the callee's 20 ms int16 frames from the moment of
answer. A person says something short ("Hello?", "HR, this is Dana") and then waits for us; a machine plays a
long greeting and then a beep. So the rules, checked after every frame, are (first match wins):

* **beep**: a steady tone (``audio.beep``) → machine. Only machines beep.
* **phrase**: the words of the greeting so far (ASR, handed over with
  :meth:`AnsweringMachineDetector.add_transcript`) contain a voicemail phrase ("leave a message", "after the
  tone", ...) → machine.
* **initial silence**: nothing said for ``initial_silence_ms`` → ``initial_silence_decision`` (Asterisk says
  machine: some machines wait before the greeting; a person who picked up and said nothing is rarer).
* **long greeting**: ``greeting_ms`` of speech in the greeting → machine.
* **long word**: one unbroken speech run of ``maximum_word_length_ms`` → machine.
* **max words**: ``maximum_number_of_words`` words → machine. A word is a speech run of at least
  ``min_word_length_ms`` ended by ``between_words_silence_ms`` of silence; with the Silero VAD a "word" is
  really a phrase, since Silero bridges the short gaps between words.
* **after-greeting silence**: speech, then ``after_greeting_silence_ms`` of silence → human (they said
  hello and are waiting for us to talk); with ``short_greeting_ms`` set, ``after_short_greeting_silence_ms``
  of silence already after a greeting of at most that much speech. With ``asr`` on, this decision is
  *held* until a transcript covering the whole greeting has arrived (then the phrase rule has had its
  chance: a short "Leave me a message." is a machine), for at most ``asr_wait_ms`` and never past
  ``total_analysis_ms``; without the words in time it is made on timing alone, and its reason says so.
* **too long**: ``total_analysis_ms`` without any of the above → not_sure.

**Provisional "human"** (``provisional_silence_ms``, not a verdict): a person's "Hello?" is over long before
the after-greeting-silence rule may say so, and a shorter silence rule would take greetings that pause
between sentences for people. So, after ``provisional_silence_ms`` of silence following speech, the detector
*proposes* a person (:class:`Provisional` ``start``: the caller may start talking) while the rules above go
on deciding unchanged; the first voiced frame after it *withdraws* it (``withdraw``: stop talking at once;
a machine does not record before its beep, a person who was not done is talking). A final machine verdict
ends a standing start as well (``Decision.provisional_since_ms``). Machine recall is that of the rules:
the proposals never change a verdict. :attr:`AnsweringMachineDetector.provisional_change` is the proposal
made or withdrawn on the last frame.

Words arrive late (an ASR round trip after the audio) and out of band, so the detector never waits for
them itself: whoever feeds the frames also hands over each transcript (``add_transcript(text, audio_ms)``: the
words of the stream's first ``audio_ms``) and the rules look at it on the next frame.

Speech/silence comes from the project VAD (``audio.vad``: Silero by default, robust to line noise; or
webrtc) or from frame energy (mean |sample| above ``silence_threshold``, as Asterisk does; cheapest, but line
noise reads as speech). Time is counted in frames, so the detector never looks at a wall clock.

After a machine decision, :meth:`AnsweringMachineDetector.wait_for_beep` gives a :class:`BeepWaiter` that says
when to start the voicemail message: right after the beep ends, or, when no beep comes, once the greeting has
been followed by ``no_beep_timeout_ms`` of silence (or ``max_beep_wait_ms`` has passed in any case).

docs/DIALER.md ("AMD") has the measured accuracy and why the defaults are what they are.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

from audio.beep import Beep, BeepDetector, BeepSettings
from audio.vad.backends import FrameClassifier, make_classifier

__all__ = [
    "DEFAULT_MACHINE_PHRASES",
    "AmdSettings",
    "AnsweringMachineDetector",
    "BeepWaiter",
    "Decision",
    "DecisionKind",
    "GreetingFeed",
    "MessageCue",
    "Provisional",
]

log = logging.getLogger(__name__)

VadKind = Literal["silero", "webrtc", "energy"]
DecisionKind = Literal["human", "machine", "not_sure"]

# Phrases that (nearly) only voicemail greetings say. "you've reached" is left out on purpose: people who
# answer a business line say it too ("You've reached payroll, this is Dana").
DEFAULT_MACHINE_PHRASES: tuple[str, ...] = (
    "leave a message",
    "leave your message",
    "leave me a message",
    "leave a brief message",
    "after the tone",
    "after the beep",
    "at the tone",
    "not available",
    "unavailable",
    "can't take your call",
    "cannot take your call",
    "can't come to the phone",
    "unable to take your call",
    "voicemail",
    "voice mail",
    "mailbox",
    "record your message",
    "away from my desk",
)

_VADS = ("silero", "webrtc", "energy")
_HYSTERESIS = 0.15  # Silero: speech starts at threshold, continues above threshold - 0.15 (as audio.vad)


@dataclass(frozen=True)
class AmdSettings:
    """Asterisk ``amd.conf`` names where there is one (initial_silence = initial_silence, greeting = greeting,
    after_greeting_silence = after_greeting_silence, total_analysis_time = total_analysis_ms, ...)."""

    initial_silence_ms: int = 2500
    greeting_ms: int = 2500
    after_greeting_silence_ms: int = 800
    # A short answer ("Hello?", "Yes?") may be taken for a person after a shorter silence: at most
    # short_greeting_ms of speech, then after_short_greeting_silence_ms of silence. None (default): every
    # greeting waits after_greeting_silence_ms. Off by default: on greetings recorded with natural pauses
    # between sentences it costs machines (docs/DIALER.md, "Time to verdict").
    short_greeting_ms: int | None = None
    after_short_greeting_silence_ms: int = 600
    # Propose "human" (Provisional) after this much silence following speech, withdrawn by the next voiced
    # frame; the verdict rules are not changed by it. None (the detector's default): no proposals.
    provisional_silence_ms: int | None = None
    total_analysis_ms: int = 5000
    min_word_length_ms: int = 100
    between_words_silence_ms: int = 50
    maximum_number_of_words: int = 4
    maximum_word_length_ms: int = 5000
    initial_silence_decision: DecisionKind = "machine"
    vad: VadKind = "silero"
    vad_threshold: float = 0.5  # silero speech probability
    vad_aggressiveness: int = 2  # webrtc 0..3
    silence_threshold: int = 256  # energy: mean |int16 sample| at or below this is silence (Asterisk's)
    beep_detection: bool = True
    beep: BeepSettings = field(default_factory=BeepSettings)
    machine_phrases: tuple[str, ...] = DEFAULT_MACHINE_PHRASES
    # Words from ASR (the phrase rule and the hold of the after-greeting-silence decision). The detector only
    # reads transcripts; asr_chunk_ms tells whoever runs the ASR how much audio to collect between two.
    asr: bool = False
    asr_chunk_ms: int = 500
    asr_wait_ms: int = 1000
    # Voicemail delivery (BeepWaiter): silence after the greeting with no beep before we speak anyway, and
    # the longest we wait for a beep at all.
    no_beep_timeout_ms: int = 2000
    max_beep_wait_ms: int = 20000

    def __post_init__(self) -> None:
        positive = (
            "initial_silence_ms",
            "greeting_ms",
            "after_greeting_silence_ms",
            "total_analysis_ms",
            "min_word_length_ms",
            "between_words_silence_ms",
            "maximum_number_of_words",
            "maximum_word_length_ms",
            "after_short_greeting_silence_ms",
            "asr_chunk_ms",
            "asr_wait_ms",
            "no_beep_timeout_ms",
            "max_beep_wait_ms",
        )
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"amd.{name} must be a positive integer, got {value!r}")
        if self.initial_silence_decision not in ("human", "machine", "not_sure"):
            raise ValueError(
                "amd.initial_silence_decision must be 'human', 'machine' or 'not_sure', "
                f"got {self.initial_silence_decision!r}"
            )
        if self.vad not in _VADS:
            raise ValueError(f"amd.vad must be one of {', '.join(_VADS)}, got {self.vad!r}")
        if not 0.0 < self.vad_threshold < 1.0:
            raise ValueError(f"amd.vad_threshold must be in (0, 1), got {self.vad_threshold}")
        if not 0 <= self.vad_aggressiveness <= 3:
            raise ValueError(f"amd.vad_aggressiveness must be 0..3, got {self.vad_aggressiveness}")
        if not 0 <= self.silence_threshold <= 32767:
            raise ValueError(f"amd.silence_threshold must be 0..32767, got {self.silence_threshold}")
        if self.maximum_word_length_ms < self.min_word_length_ms:
            raise ValueError("amd.maximum_word_length_ms must be at least amd.min_word_length_ms")
        for name in ("initial_silence_ms", "greeting_ms"):
            if getattr(self, name) > self.total_analysis_ms:
                raise ValueError(
                    f"amd.{name} ({getattr(self, name)}) is longer than amd.total_analysis_ms "
                    f"({self.total_analysis_ms}): that rule could never fire"
                )
        if self.short_greeting_ms is not None:
            if isinstance(self.short_greeting_ms, bool) or not isinstance(self.short_greeting_ms, int):
                raise ValueError(
                    f"amd.short_greeting_ms must be an integer or null, got {self.short_greeting_ms!r}"
                )
            if not 0 < self.short_greeting_ms < self.greeting_ms:
                raise ValueError(
                    f"amd.short_greeting_ms ({self.short_greeting_ms}) must be positive and below "
                    f"amd.greeting_ms ({self.greeting_ms})"
                )
        if self.short_greeting_ms is not None and (
            self.after_short_greeting_silence_ms > self.after_greeting_silence_ms
        ):
            raise ValueError(
                f"amd.after_short_greeting_silence_ms ({self.after_short_greeting_silence_ms}) is longer "
                f"than amd.after_greeting_silence_ms ({self.after_greeting_silence_ms})"
            )
        self._check_provisional()
        if any(not phrase.strip() for phrase in self.machine_phrases):
            raise ValueError("amd.machine_phrases holds an empty phrase")

    def _check_provisional(self) -> None:
        value = self.provisional_silence_ms
        if value is None:
            return
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"amd.provisional_silence_ms must be a positive integer or null, got {value!r}")
        rule = min(
            self.after_greeting_silence_ms,
            self.after_short_greeting_silence_ms if self.short_greeting_ms is not None else 10**9,
        )
        if value >= rule:
            raise ValueError(
                f"amd.provisional_silence_ms ({value}) must be shorter than the silence that decides human "
                f"({rule} ms): a proposal after the verdict means nothing"
            )


@dataclass(frozen=True)
class Provisional:
    """A proposal, not a verdict: ``start`` (the callee's words look over: the caller may start speaking)
    or ``withdraw`` (the callee spoke again: stop at once, the verdict is still open)."""

    action: Literal["start", "withdraw"]
    at_ms: int  # ms of audio analysed when it was made
    reason: str


@dataclass(frozen=True)
class Decision:
    kind: DecisionKind
    reasons: list[str]  # the deciding rule first, then context
    decided_at_ms: int  # ms of audio analysed when the decision was made
    initial_silence_ms: int = 0  # silence before the first word
    speech_ms: int = 0  # speech heard in total
    words: int = 0
    beep: Beep | None = None
    transcript: str | None = None  # the latest words from ASR, if any
    transcript_ms: int = 0  # how much of the stream (ms from the start) those words cover
    held_ms: int = 0  # how long a human decision waited for the words (asr on)
    trailing_silence_ms: int = 0  # silence since the last speech when decided (where a verdict's time goes)
    # A provisional start standing when decided (its at_ms): a human verdict confirms it (the caller is
    # already talking), a machine verdict ends it. None: none stood.
    provisional_since_ms: int | None = None


@dataclass(frozen=True)
class MessageCue:
    """When to start playing the voicemail message (ms from the start of the stream)."""

    at_ms: int
    reason: Literal["beep", "greeting_end", "timeout"]
    beep: Beep | None = None


def _normalise(text: str) -> str:
    text = text.lower().replace("’", "'")
    return " ".join(re.sub(r"[^a-z0-9' ]+", " ", text).split())


class _FrameAnalysis:
    """Per-frame speech/silence and beep events, shared by the detector and the beep waiter."""

    def __init__(self, settings: AmdSettings, sample_rate: int, frame_ms: int) -> None:
        self.settings = settings
        self.sample_rate = sample_rate
        self.frame_ms = frame_ms
        self.frame_samples = sample_rate * frame_ms // 1000
        self.classifier: FrameClassifier | None = None
        if settings.vad != "energy":
            self.classifier = make_classifier(
                settings.vad, sample_rate, aggressiveness=settings.vad_aggressiveness
            )
        self.beeps = BeepDetector(sample_rate, frame_ms, settings.beep) if settings.beep_detection else None
        self.voiced = False
        self.frames = 0

    @property
    def now_ms(self) -> int:
        return self.frames * self.frame_ms

    def step(self, frame: npt.NDArray[np.int16]) -> Beep | None:
        if frame.shape != (self.frame_samples,) or frame.dtype != np.int16:
            raise ValueError(
                f"expected {self.frame_samples} int16 samples ({self.frame_ms} ms at {self.sample_rate} Hz), "
                f"got {frame.dtype} {frame.shape}"
            )
        self.frames += 1
        if self.classifier is None:
            self.voiced = float(np.mean(np.abs(frame.astype(np.int32)))) > self.settings.silence_threshold
        else:
            p = self.classifier.speech_prob(frame)
            threshold = self.settings.vad_threshold
            self.voiced = p >= (max(0.01, threshold - _HYSTERESIS) if self.voiced else threshold)
        return self.beeps.process(frame) if self.beeps is not None else None


class AnsweringMachineDetector:
    """One per answered call. Feed the callee's frames to :meth:`process` until it returns a Decision; with
    ``settings.asr``, also hand it each transcript of the greeting (:meth:`add_transcript`)."""

    def __init__(
        self, settings: AmdSettings | None = None, sample_rate: int = 8000, frame_ms: int = 20
    ) -> None:
        self.settings = settings or AmdSettings()
        self._audio = _FrameAnalysis(self.settings, sample_rate, frame_ms)
        self._phrases = tuple(_normalise(p) for p in self.settings.machine_phrases)
        self._frame_ms = frame_ms
        self.decision: Decision | None = None
        # Asterisk's counters, all in ms.
        self._silence = 0
        self._consecutive_voice = 0
        self._voice = 0
        self._words = 0
        self._in_word = False
        self._in_initial_silence = True
        self._in_greeting = False
        self._initial_silence = 0
        self._beep: Beep | None = None
        # Words (settings.asr): the latest transcript, the stream ms it covers and when it arrived.
        self._transcript: str | None = None
        self._transcript_ms = 0
        self._transcript_at_ms = 0
        self._unread_transcript = False
        self._voiced_until_ms = 0  # end of the greeting's last word so far
        self._hold_since: int | None = None  # when the after-greeting-silence rule first held for words
        # Provisional proposals (settings.provisional_silence_ms): the standing start, the silence run since
        # the last voiced frame (any voiced frame, not only a counted word, withdraws), and every proposal.
        self.provisional_change: Provisional | None = None  # made or withdrawn on the last frame
        self.provisionals: list[Provisional] = []
        self._provisional: Provisional | None = None
        self._quiet = 0

    @property
    def now_ms(self) -> int:
        return self._audio.now_ms

    @property
    def heard_speech(self) -> bool:
        return self._voice > 0

    def add_transcript(self, text: str, audio_ms: int) -> None:
        """The words ASR heard in the stream's first ``audio_ms`` ms; read by the rules on the next frame.

        Each transcript replaces the last (ASR is run on the whole greeting so far, so a word cut at a chunk
        boundary is heard whole the next time); one covering less audio than the current one is stale."""
        if audio_ms < self._transcript_ms:
            return
        self._transcript, self._transcript_ms = text, audio_ms
        self._transcript_at_ms = self.now_ms
        self._unread_transcript = True

    def process(self, frame: npt.NDArray[np.int16]) -> Decision | None:
        """Analyse one frame; returns the decision once, on the frame that makes it, else None. Frames fed
        after the decision still advance the VAD and beep detector (for :meth:`wait_for_beep`)."""
        beep = self._audio.step(frame)
        if beep is not None:
            self._beep = beep
        self.provisional_change = None
        if self.decision is not None:
            return None
        decision = self._rules(beep)
        if decision is not None:
            self.decision = decision
            log.info(
                "AMD %s after %d ms: %s", decision.kind, decision.decided_at_ms, "; ".join(decision.reasons)
            )
        else:
            self._propose()
        return decision

    def _propose(self) -> None:
        """Provisional "human": proposed after provisional_silence_ms of silence following the greeting's
        speech, withdrawn by the next voiced frame (the fastest sign the callee was not done)."""
        wait = self.settings.provisional_silence_ms
        if wait is None:
            return
        now = self.now_ms
        if self._audio.voiced:
            self._quiet = 0
            if self._provisional is not None:
                since = now - self._provisional.at_ms
                self._proposal("withdraw", f"speech again {since} ms after the provisional start")
            return
        self._quiet += self._frame_ms
        if self._provisional is None and self._in_greeting and self._quiet >= wait:
            self._proposal("start", f"{self._quiet} ms of silence after {self._voice} ms of speech")

    def _proposal(self, action: Literal["start", "withdraw"], reason: str) -> None:
        change = Provisional(action, self.now_ms, reason)
        self._provisional = change if action == "start" else None
        self.provisional_change = change
        self.provisionals.append(change)
        log.info("AMD provisional %s after %d ms: %s", action, change.at_ms, reason)

    def finish(self) -> Decision:
        """The stream ended (hang-up, or the caller stops analysing): the decision made, or not_sure."""
        if self.decision is None:
            self.decision = self._decide(
                "not_sure", f"audio ended after {self.now_ms} ms before any rule decided"
            )
        return self.decision

    def wait_for_beep(self) -> BeepWaiter:
        """Continue on this stream, waiting for the moment to leave a message; feed the waiter from now on."""
        return BeepWaiter(self._audio, self._beep, heard_speech=self._voice > 0)

    # ------------------------------------------------------------------------------------------ rules

    def _decide(self, kind: DecisionKind, reason: str, held_ms: int = 0) -> Decision:
        context = [
            f"initial silence {self._initial_silence if not self._in_initial_silence else self._silence} ms",
            f"speech {self._voice} ms in {self._words} word(s)",
        ]
        if self.settings.asr:
            context.append(
                "no words from ASR yet"
                if self._transcript is None
                else f"words {self._transcript!r} of the first {self._transcript_ms} ms"
                f" (arrived at {self._transcript_at_ms} ms)"
            )
        return Decision(
            kind=kind,
            reasons=[reason, *context],
            decided_at_ms=self.now_ms,
            initial_silence_ms=self._initial_silence if not self._in_initial_silence else self._silence,
            speech_ms=self._voice,
            words=self._words,
            beep=self._beep,
            transcript=self._transcript,
            transcript_ms=self._transcript_ms,
            held_ms=held_ms,
            trailing_silence_ms=0 if self._audio.voiced else self._silence,
            provisional_since_ms=None if self._provisional is None else self._provisional.at_ms,
        )

    def _rules(self, beep: Beep | None) -> Decision | None:
        s = self.settings
        ms = self._frame_ms
        if beep is not None:
            return self._decide("machine", f"beep at {beep.start_ms} ms ({beep.freq_hz:.0f} Hz)")
        phrase = self._machine_phrase()
        if phrase is not None:
            return self._decide("machine", f"voicemail phrase {phrase!r} in greeting")

        if not self._audio.voiced:
            self._silence += ms
            if self._in_word and self._silence >= s.between_words_silence_ms:
                self._in_word = False
                self._consecutive_voice = 0
            if self._in_initial_silence and self._silence >= s.initial_silence_ms:
                return self._decide(
                    s.initial_silence_decision,
                    f"initial silence {self._silence} ms >= {s.initial_silence_ms}",
                )
            wait_ms = self._after_greeting_wait_ms()
            if self._in_greeting and self._silence >= wait_ms:
                human = self._human_after_greeting(
                    f"short greeting ({self._voice} ms) then {self._silence} ms silence >= {wait_ms}"
                )
                if human is not None:
                    return human
        else:
            self._consecutive_voice += ms
            self._voice += ms
            if self._consecutive_voice >= s.min_word_length_ms:
                if not self._in_word:
                    self._in_word = True
                    self._words += 1
                    if self._words >= s.maximum_number_of_words:
                        return self._decide("machine", f"{self._words} words >= maximum_number_of_words")
                if self._in_initial_silence:
                    self._initial_silence = self._silence
                    self._in_initial_silence = False
                self._in_greeting = True
                self._silence = 0
                self._voiced_until_ms = self.now_ms  # the words must cover the greeting up to here
                self._hold_since = None  # more greeting: a later silence waits for its own words
            if self._consecutive_voice >= s.maximum_word_length_ms:
                return self._decide(
                    "machine", f"one word of {self._consecutive_voice} ms >= {s.maximum_word_length_ms}"
                )
            if self._in_greeting and self._voice >= s.greeting_ms:
                return self._decide(
                    "machine", f"long greeting: {self._voice} ms of speech >= {s.greeting_ms}"
                )

        if self.now_ms >= s.total_analysis_ms:
            return self._decide("not_sure", f"no rule decided within total_analysis_ms {s.total_analysis_ms}")
        return None

    def _after_greeting_wait_ms(self) -> int:
        """The silence that ends the greeting as a person's: shorter after a short answer, if configured."""
        s = self.settings
        if s.short_greeting_ms is not None and self._voice <= s.short_greeting_ms:
            return s.after_short_greeting_silence_ms
        return s.after_greeting_silence_ms

    def _human_after_greeting(self, reason: str) -> Decision | None:
        """Speech then silence says person, but a short voicemail greeting says the same: with words on, hold
        until the words of the whole greeting are in (the phrase rule then decides machine first)."""
        s = self.settings
        if not s.asr:
            return self._decide("human", reason)
        if self._hold_since is None:
            self._hold_since = self.now_ms
        held = self.now_ms - self._hold_since
        if self._transcript is not None and self._transcript_ms >= self._voiced_until_ms:
            return self._decide("human", f"{reason}; no voicemail phrase in its words", held)
        if held >= s.asr_wait_ms:
            why = f"no words of the whole greeting within asr_wait_ms {s.asr_wait_ms}"
            return self._decide("human", f"{reason}; {why}: timing alone", held)
        if self.now_ms >= s.total_analysis_ms:
            why = f"total_analysis_ms {s.total_analysis_ms} reached before the words of the whole greeting"
            return self._decide("human", f"{reason}; {why}: timing alone", held)
        return None  # hold: the words are on their way

    def _machine_phrase(self) -> str | None:
        if not self._unread_transcript or not self._transcript:
            return None
        self._unread_transcript = False
        said = f" {_normalise(self._transcript)} "
        for phrase in self._phrases:
            if f" {phrase} " in said:
                return phrase
        return None


class BeepWaiter:
    """After a machine decision: tells when to start the message. Made by ``wait_for_beep``."""

    def __init__(self, audio: _FrameAnalysis, beep: Beep | None, heard_speech: bool) -> None:
        self._audio = audio
        self.settings = audio.settings
        self._started_ms = audio.now_ms
        self._silence = 0
        self._heard_speech = heard_speech
        self.cue: MessageCue | None = None
        # The beep that made the decision may already have ended (frames fed to the detector after its
        # decision): then the message can go now, unless another tone is sounding at this moment.
        detector = audio.beeps
        self._pending_now: Beep | None = None
        if beep is not None and detector is not None and detector.beeps and not detector.in_tone:
            self._pending_now = detector.beeps[-1]

    def process(self, frame: npt.NDArray[np.int16] | None = None) -> MessageCue | None:
        """Feed the next frame (``None`` only to ask about a beep that has already ended). Returns the cue
        once; after that, None."""
        if self.cue is not None:
            return None
        if self._pending_now is not None:
            return self._cue(self._audio.now_ms, "beep", self._pending_now)
        if frame is None:
            return None
        beep = self._audio.step(frame)
        if beep is not None and beep.end_ms is not None:
            return self._cue(beep.end_ms, "beep", beep)
        s = self.settings
        tone = self._audio.beeps is not None and self._audio.beeps.in_tone
        if self._audio.voiced or tone:
            self._heard_speech = self._heard_speech or self._audio.voiced
            self._silence = 0
        else:
            self._silence += self._audio.frame_ms
            if self._silence >= s.no_beep_timeout_ms:
                return self._cue(self._audio.now_ms, "greeting_end", None)
        if self._audio.now_ms - self._started_ms >= s.max_beep_wait_ms:
            return self._cue(self._audio.now_ms, "timeout", None)
        return None

    def _cue(
        self, at_ms: int, reason: Literal["beep", "greeting_end", "timeout"], beep: Beep | None
    ) -> MessageCue:
        self.cue = MessageCue(at_ms=at_ms, reason=reason, beep=beep)
        log.info("voicemail message cue at %d ms (%s)", at_ms, reason)
        return self.cue


@dataclass
class GreetingFeed:
    """The callee's audio under AMD, cut into chunks for the supervisor's ASR (the SIP worker's media thread;
    here rather than in the worker so that bench/amd_accuracy.py --asr replays the same chunking).

    Nothing is sent before the detector has heard speech (ASR on silence costs a transcription and may
    invent words); the first chunk then carries everything from the answer on, so the ASR always has the
    greeting from its start."""

    rate: int
    chunk_bytes: int
    pending: bytearray = field(default_factory=bytearray)
    sent_bytes: int = 0

    def add(self, frame: npt.NDArray[np.int16], heard_speech: bool) -> tuple[int, bytes] | None:
        """Returns (start ms, pcm) when a chunk is due."""
        self.pending += frame.tobytes()
        if not heard_speech or len(self.pending) < self.chunk_bytes:
            return None
        start_ms = self.sent_bytes // 2 * 1000 // self.rate
        chunk = bytes(self.pending)
        self.sent_bytes += len(chunk)
        self.pending.clear()
        return start_ms, chunk
