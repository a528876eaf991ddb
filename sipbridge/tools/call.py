"""`sipbridge call`: place a real SIP call from the terminal and print what both sides said, with timings.

    sipbridge call                                   # our own bot at the config's SIP address; listen only
    sipbridge call --say "Hi" --say "Yes"            # speak each line when the other side stops talking
    sipbridge call sip:bot@10.0.0.5:5060 --wav a.wav --record call.wav
    sipbridge call --interactive                     # microphone and speaker

Works with any SIP peer (our bot, a PBX, a softphone). The call loop runs on this thread: SIP events, then
every 20 ms frame of both sides through the dialogue (sipbridge/tools/dialogue.py), the recording and the
transcript; ASR runs on its own thread.
"""

from __future__ import annotations

import argparse
import dataclasses
import signal
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sipbridge.config import Config, ConfigError, load_config

# Exit codes (also in `sipbridge call --help`); 2 is the CLI's usual "bad config or usage".
EXIT_OK = 0  # answered, and the other side spoke
EXIT_FAILURE = 1  # could not start: pjsua2 missing, SIP transport, audio devices
EXIT_USAGE = 2  # bad URI, config, line or recording path
EXIT_REJECTED = 3  # a final error response (busy, declined, not found, forbidden ...)
EXIT_NO_ANSWER = 4  # nothing answered: no SIP response at all, or ringing past --ring-timeout
EXIT_SILENT = 5  # answered, but the other side never said anything

_EPILOG = """exit codes: 0 answered and the other side spoke; 1 could not start (pjsua2, SIP port,
audio devices); 2 bad usage or config; 3 rejected (4xx/5xx/6xx); 4 no answer (no SIP response,
or ringing too long); 5 answered but the other side never spoke"""

PASSWORD_ENV = "SIPBRIDGE_CALL_PASSWORD"  # not a flag: a password on the command line shows in `ps`

# A patient caller: longer than the bot's own end-of-turn silence (vad.stop_hangover_ms, 500), so a pause
# between the bot's sentences (its engine speaks them one by one) is not taken for the end of its turn.
END_SILENCE_MS = 800

NO_ANSWER_CODES = {408, 480, 487}  # timeout, temporarily unavailable, cancelled by our ring timeout


class _AddLine(argparse.Action):
    """--say and --wav share one ordered list, so they can be mixed in the order given."""

    def __call__(self, parser: Any, namespace: Any, value: Any, option: str | None = None) -> None:
        lines = list(getattr(namespace, "lines", None) or [])
        lines.append(("say" if option == "--say" else "wav", value))
        namespace.lines = lines


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "call",
        help="place a SIP call from the terminal (our bot by default) and print a live transcript",
        epilog=_EPILOG,
    )
    p.add_argument(
        "uri", nargs="?", help="whom to call (default: the config's SIP address, sip:bot@HOST:PORT)"
    )
    p.add_argument(
        "--say",
        action=_AddLine,
        metavar="TEXT",
        dest="lines",
        help="a line spoken with espeak-ng when the other side stops talking (repeatable, in order)",
    )
    p.add_argument(
        "--wav",
        action=_AddLine,
        metavar="FILE",
        dest="lines",
        help="a WAV file played as a line (repeatable; mixes with --say in order)",
    )
    p.add_argument(
        "--record", metavar="OUT.wav", help="record both sides (stereo: you left, other side right)"
    )
    p.add_argument(
        "--json", metavar="OUT.json", help="also write the call as JSON: turns, words, gaps, outcome"
    )
    p.add_argument("--interactive", action="store_true", help="talk yourself: microphone and speaker")
    p.add_argument("--config", "-c", metavar="FILE", help="config for the default URI, VAD, ASR and voice")
    p.add_argument(
        "--set",
        dest="overrides",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="override one config key (repeatable)",
    )
    p.add_argument(
        "--bind", metavar="ADDR", help="our local address (default: the one that reaches the target)"
    )
    p.add_argument(
        "--auth",
        metavar="USER",
        help=f"answer a digest challenge (PBX extension, trunk) as USER; password from ${PASSWORD_ENV}",
    )
    p.add_argument(
        "--end-silence-ms",
        type=int,
        default=END_SILENCE_MS,
        metavar="MS",
        help=f"silence that ends the other side's turn: then our next line starts ({END_SILENCE_MS})",
    )
    p.add_argument(
        "--reply-timeout",
        type=float,
        default=10.0,
        metavar="S",
        help="go on when the other side says nothing for this long (10)",
    )
    p.add_argument(
        "--connect-timeout",
        type=float,
        default=5.0,
        metavar="S",
        help="give up when no SIP response at all comes within this (5)",
    )
    p.add_argument("--ring-timeout", type=float, default=30.0, metavar="S", help="give up ringing after (30)")
    p.add_argument("--max-duration", type=float, default=300.0, metavar="S", help="hang up after (300)")
    p.add_argument("--no-asr", action="store_true", help="no speech recognition: timings only")


@dataclass
class CallToolExit:
    code: int
    message: str


def run(args: argparse.Namespace) -> int:
    """The `call` subcommand; returns the exit code."""
    lines = getattr(args, "lines", None) or []
    if args.interactive and lines:
        return _usage("--interactive talks through the microphone: leave out --say/--wav")
    try:
        config = load_config(args.config, args.overrides).config
    except ConfigError as error:
        return _usage("config invalid: " + "; ".join(str(i) for i in error.issues))
    try:
        from sipbridge.tools.session import CallToolSession, prepare
    except ImportError as exc:  # pjsua2 is an extra: sipbridge[sip]
        print(f"sipbridge call needs pjsua2 ({exc}): pip install 'sipbridge[sip]'", file=sys.stderr)
        return EXIT_FAILURE
    try:
        prepared = prepare(args, config, lines)
    except UsageError as exc:
        return _usage(str(exc))
    session = CallToolSession(prepared, write=_print)
    with _hangup_on_signals(session):
        outcome = session.run()
    stream = sys.stdout if outcome.code == EXIT_OK else sys.stderr
    print(outcome.message, file=stream, flush=True)
    return outcome.code


class UsageError(Exception):
    """Bad target, line or recording path: exit 2 before anything is dialled."""


def default_uri(config: Config) -> str:
    """The config's SIP address as a caller on this machine reaches it."""
    host = config.sip.public_address or config.sip.bind_address
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    return f"sip:bot@{host}:{config.sip.port or 5060}"


def vad_settings(config: Config, end_silence_ms: int) -> Any:
    """The config's VAD for the other side's turns, with our own end-of-turn silence and no early-ASR
    pauses (we transcribe whole turns)."""
    settings = config.vad.segmenter_settings()
    return dataclasses.replace(settings, stop_hangover_ms=end_silence_ms, pause_ms=None)


def gap_summary(gaps_ms: list[int]) -> str | None:
    if not gaps_ms:
        return None
    if len(gaps_ms) == 1:
        return f"bot gap {gaps_ms[0] / 1000:.2f} s (1 answer)"
    return (
        f"bot gaps: median {statistics.median(gaps_ms) / 1000:.2f} s, max {max(gaps_ms) / 1000:.2f} s "
        f"over {len(gaps_ms)} answers"
    )


def _print(line: str) -> None:
    print(line, flush=True)


def _usage(message: str) -> int:
    print(f"sipbridge call: {message}", file=sys.stderr)
    return EXIT_USAGE


class _hangup_on_signals:
    """Ctrl-C or SIGTERM ends the call properly (BYE, recording closed) instead of killing the process; a
    second one, while that is under way, stops at once."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.saved: dict[int, Any] = {}

    def __enter__(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.saved[sig] = signal.signal(sig, self._handle)

    def _handle(self, _signum: int, _frame: Any) -> None:
        if self.session.stop_reason is not None:
            raise KeyboardInterrupt
        self.session.stop("interrupted")

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.saved.items():
            signal.signal(sig, handler)


def record_path(text: str | None, option: str = "--record") -> Path | None:
    """An output file's path, checked before dialling: its folder must exist."""
    if text is None:
        return None
    path = Path(text)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise UsageError(f"{option} {text}: folder {parent} does not exist")
    return path
