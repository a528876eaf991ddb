"""The supervisor's metrics, served as Prometheus text (`GET /metrics`, exposition format 0.0.4).

Counters and histograms are updated on the supervisor's event loop where things happen (a call ends, a reply's
first audio leaves, a barge-in arrives); gauges read the state they report when scraped (active calls,
connected workers, trunk registration, ASR counters), so nothing is kept twice. One `Metrics` object per
supervisor, handed to what updates it: no process-wide registry.

Times are seconds, as Prometheus names them (`_seconds`); histogram buckets suit phone-call latencies.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

__all__ = ["Counter", "Gauge", "Histogram", "LabelledGauge", "Metrics"]

# Reply and ASR latencies on a phone line: 50 ms ... 5 s.
LATENCY_BUCKETS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: tuple[str, ...], values: tuple[str, ...]) -> str:
    if not names:
        return ""
    return "{" + ",".join(f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)) + "}"


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return str(int(value)) if float(value).is_integer() else repr(float(value))


@dataclass
class Counter:
    name: str
    help: str
    labelnames: tuple[str, ...] = ()
    values: dict[tuple[str, ...], float] = field(default_factory=dict)

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        if amount < 0:
            raise ValueError(f"{self.name}: a counter only goes up")
        if set(labels) != set(self.labelnames):
            raise ValueError(f"{self.name}: labels {sorted(labels)} != {sorted(self.labelnames)}")
        key = tuple(labels[n] for n in self.labelnames)
        self.values[key] = self.values.get(key, 0.0) + amount

    def lines(self) -> Iterator[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} counter"
        if not self.labelnames and not self.values:
            yield f"{self.name} 0"
        for key in sorted(self.values):
            yield f"{self.name}{_labels(self.labelnames, key)} {_number(self.values[key])}"


@dataclass
class Gauge:
    """Read when scraped. `kind` "counter" for totals kept elsewhere (e.g. the ASR's run count)."""

    name: str
    help: str
    read: Callable[[], float]
    kind: str = "gauge"

    def lines(self) -> Iterator[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} {self.kind}"
        yield f"{self.name} {_number(float(self.read()))}"


@dataclass
class LabelledGauge:
    """Read when scraped: one sample per label values (e.g. per caller ID), from `read()`."""

    name: str
    help: str
    labelnames: tuple[str, ...]
    read: Callable[[], dict[tuple[str, ...], float]]

    def lines(self) -> Iterator[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} gauge"
        for key, value in sorted(self.read().items()):
            yield f"{self.name}{_labels(self.labelnames, key)} {_number(float(value))}"


@dataclass
class Histogram:
    name: str
    help: str
    buckets: tuple[float, ...] = LATENCY_BUCKETS
    counts: list[int] = field(default_factory=list)  # per bucket, not cumulative; the last is +Inf
    sum: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        if list(self.buckets) != sorted(self.buckets):
            raise ValueError(f"{self.name}: buckets must be increasing")
        self.counts = [0] * (len(self.buckets) + 1)

    def observe(self, value: float) -> None:
        i = next((i for i, b in enumerate(self.buckets) if value <= b), len(self.buckets))
        self.counts[i] += 1
        self.sum += value
        self.count += 1

    def lines(self) -> Iterator[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} histogram"
        total = 0
        for bound, n in zip([*self.buckets, math.inf], self.counts, strict=True):
            total += n
            yield f'{self.name}_bucket{{le="{_number(bound)}"}} {total}'
        yield f"{self.name}_sum {_number(self.sum)}"
        yield f"{self.name}_count {self.count}"


@dataclass
class Metrics:
    """What the supervisor counts itself. Gauges of other components' state are added with `gauge()`."""

    calls_started: Counter = field(
        default_factory=lambda: Counter(
            "sipbridge_calls_started_total", "Calls answered or placed and connected.", ("direction",)
        )
    )
    calls_ended: Counter = field(
        default_factory=lambda: Counter(
            "sipbridge_calls_ended_total",
            "Calls that ended, by direction and recorded outcome.",
            ("direction", "outcome"),
        )
    )
    calls_rejected: Counter = field(
        default_factory=lambda: Counter(
            "sipbridge_calls_rejected_total",
            "INVITEs refused before a call existed, by SIP status.",
            ("code",),
        )
    )
    caller_turns: Counter = field(
        default_factory=lambda: Counter(
            "sipbridge_caller_turns_total",
            "Caller turns transcribed, by whether the early transcription was used.",
            ("early_asr",),
        )
    )
    barge_ins: Counter = field(
        default_factory=lambda: Counter("sipbridge_barge_ins_total", "Bot speech cut by the caller.")
    )
    reply_latency: Histogram = field(
        default_factory=lambda: Histogram(
            "sipbridge_reply_latency_seconds",
            "End of a caller turn (detected) to the reply's first audio sent.",
        )
    )
    asr_wait: Histogram = field(
        default_factory=lambda: Histogram(
            "sipbridge_asr_wait_seconds",
            "What a caller turn waited for its words after it ended (0 when the early run was ready).",
        )
    )
    engine_first_chunk: Histogram = field(
        default_factory=lambda: Histogram(
            "sipbridge_engine_first_chunk_seconds", "From asking the engine for a reply to its first audio."
        )
    )
    dial_attempts: Counter = field(
        default_factory=lambda: Counter(
            "sipbridge_dial_attempts_total",
            "Outbound attempts recorded, by campaign and outcome.",
            ("campaign", "outcome"),
        )
    )
    dial_skipped: Counter = field(
        default_factory=lambda: Counter(
            "sipbridge_dial_skipped_total",
            "Contacts not dialed (do-not-call list: suppressed; daily cap: capped), by campaign and outcome.",
            ("campaign", "outcome"),
        )
    )
    gauges: list[Gauge | LabelledGauge] = field(default_factory=list)

    def gauge(self, name: str, help: str, read: Callable[[], float], kind: str = "gauge") -> None:
        self.gauges.append(Gauge(name, help, read, kind))

    def render(self) -> str:
        """The exposition text, families in a fixed order."""
        families: list[Counter | Histogram | Gauge | LabelledGauge] = [
            self.calls_started,
            self.calls_ended,
            self.calls_rejected,
            self.caller_turns,
            self.barge_ins,
            self.reply_latency,
            self.asr_wait,
            self.engine_first_chunk,
            self.dial_attempts,
            self.dial_skipped,
            *self.gauges,
        ]
        return "".join(line + "\n" for family in families for line in family.lines())
