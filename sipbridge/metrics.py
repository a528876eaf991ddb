"""The supervisor's metrics, served as Prometheus text (`GET /metrics`) by prometheus-client.

Counters and histograms are updated on the supervisor's event loop where things happen (a call ends, a reply's
first audio leaves, a barge-in arrives); gauges read the state they report when scraped (active calls,
connected workers, trunk registration, ASR counters), so nothing is kept twice. One `Metrics` object per
supervisor, each with its own `CollectorRegistry`, handed to what updates it: no process-wide registry (tests
run several supervisors' worth of metrics in one process).

The thin `Counter` / `Histogram` wrappers keep one call style (`inc(**labels)`, `observe(v, **labels)`) and
refuse a wrong label set with the metric's name in the message. Times are seconds, as Prometheus names them
(`_seconds`); histogram buckets suit phone-call latencies.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import prometheus_client
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.registry import Collector

__all__ = ["CONTENT_TYPE", "TURN_STAGES", "Counter", "Histogram", "Metrics"]

# No `_created` series: a scrape shows what is counted, not when each label set first appeared.
prometheus_client.disable_created_metrics()

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4

# Reply and ASR latencies on a phone line: 50 ms ... 5 s.
LATENCY_BUCKETS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0)
# One stage of a reply: 5 ms ... 5 s (the playout stage is a few ms, ASR can take seconds).
STAGE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0)
# A call's received-RTP loss ratio and mean jitter.
LOSS_BUCKETS = (0.0, 0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
JITTER_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2)
# How late the event loop ran a timer (sipbridge/loop_lag.py): 1 ms ... 2 s; one audio frame is 20 ms.
LAG_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)

# The stages of one reply, in order (session.py measures them): caller turn end detected → its words ready →
# the agent's first text → the engine's first audio → that audio's first RTP frame out of the worker.
TURN_STAGES = ("asr", "agent", "engine", "playout")


def _check_labels(name: str, labelnames: tuple[str, ...], labels: dict[str, str]) -> None:
    if set(labels) != set(labelnames):
        raise ValueError(f"{name}: labels {sorted(labels)} != {sorted(labelnames)}")


class Counter:
    def __init__(
        self, registry: CollectorRegistry, name: str, help: str, labelnames: tuple[str, ...] = ()
    ) -> None:
        self.name = name
        self.labelnames = labelnames
        self._metric = prometheus_client.Counter(name, help, labelnames, registry=registry)

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        _check_labels(self.name, self.labelnames, labels)
        if amount < 0:
            raise ValueError(f"{self.name}: a counter only goes up")
        (self._metric.labels(**labels) if labels else self._metric).inc(amount)


class Histogram:
    def __init__(
        self,
        registry: CollectorRegistry,
        name: str,
        help: str,
        buckets: tuple[float, ...] = LATENCY_BUCKETS,
        labelnames: tuple[str, ...] = (),
    ) -> None:
        if list(buckets) != sorted(buckets):
            raise ValueError(f"{name}: buckets must be increasing")
        self.name = name
        self.labelnames = labelnames
        self._metric = prometheus_client.Histogram(name, help, labelnames, buckets=buckets, registry=registry)

    def observe(self, value: float, **labels: str) -> None:
        _check_labels(self.name, self.labelnames, labels)
        (self._metric.labels(**labels) if labels else self._metric).observe(value)


@dataclass(eq=False)  # hashable by identity: the registry keys collectors by object
class _ReadWhenScraped(Collector):
    """A value another component owns, read at each scrape. `kind` "counter" for totals kept elsewhere."""

    name: str
    help: str
    read: Callable[[], float]
    kind: str = "gauge"

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily if self.kind == "counter" else GaugeMetricFamily
        yield family(self.name, self.help, value=float(self.read()))

    def describe(self) -> Iterator[Metric]:
        return iter(())  # registering must not read the component (it may not exist yet)


@dataclass(eq=False)
class _LabelledReadWhenScraped(Collector):
    """Read when scraped: one sample per label values (e.g. per caller ID), from `read()`."""

    name: str
    help: str
    labelnames: tuple[str, ...]
    read: Callable[[], dict[tuple[str, ...], float]]

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(self.name, self.help, labels=list(self.labelnames))
        for key, value in sorted(self.read().items()):
            family.add_metric(list(key), float(value))
        yield family

    def describe(self) -> Iterator[Metric]:
        return iter(())


@dataclass
class Metrics:
    """What the supervisor counts itself. Gauges of other components' state are added with `gauge()`."""

    registry: CollectorRegistry = field(default_factory=lambda: CollectorRegistry(auto_describe=False))

    def __post_init__(self) -> None:
        r = self.registry
        self.calls_started = Counter(
            r, "sipbridge_calls_started_total", "Calls answered or placed and connected.", ("direction",)
        )
        self.calls_ended = Counter(
            r,
            "sipbridge_calls_ended_total",
            "Calls that ended, by direction and recorded outcome.",
            ("direction", "outcome"),
        )
        self.calls_rejected = Counter(
            r,
            "sipbridge_calls_rejected_total",
            "INVITEs refused before a call existed, by SIP status.",
            ("code",),
        )
        self.caller_turns = Counter(
            r,
            "sipbridge_caller_turns_total",
            "Caller turns transcribed, by whether the early transcription was used.",
            ("early_asr",),
        )
        self.speculative_replies = Counter(
            r,
            "sipbridge_speculative_replies_total",
            "Replies made at a pause before the turn ended (turn.speculative_reply): used or discarded.",
            ("result",),
        )
        self.barge_ins = Counter(r, "sipbridge_barge_ins_total", "Bot speech cut by the caller.")
        self.reply_latency = Histogram(
            r,
            "sipbridge_reply_latency_seconds",
            "End of a caller turn (detected) to the reply's first audio sent.",
        )
        self.asr_wait = Histogram(
            r,
            "sipbridge_asr_wait_seconds",
            "What a caller turn waited for its words after it ended (0 when the early run was ready).",
        )
        self.engine_first_chunk = Histogram(
            r,
            "sipbridge_engine_first_chunk_seconds",
            "From asking the engine for a reply to its first audio.",
        )
        self.dial_attempts = Counter(
            r,
            "sipbridge_dial_attempts_total",
            "Outbound attempts recorded, by campaign and outcome.",
            ("campaign", "outcome"),
        )
        self.sip_refused = Counter(
            r,
            "sipbridge_sip_requests_refused_total",
            "SIP requests a worker's guard answered statelessly (or dropped: code -1), by method and status.",
            ("method", "code"),
        )
        self.frame_errors = Counter(
            r,
            "sipbridge_worker_frame_errors_total",
            "Worker frames whose handling raised (logged; that frame dropped or that call ended).",
            ("frame",),
        )
        self.recording_failures = Counter(
            r,
            "sipbridge_recording_failures_total",
            "Calls whose recording could not be written (they went on without it).",
        )
        self.turn_stage = Histogram(
            r,
            "sipbridge_turn_stage_seconds",
            "One stage of answering a caller turn: asr (turn end detected to words ready), agent (to the "
            "agent's first text), engine (to the engine's first audio), playout (to its first RTP frame).",
            STAGE_BUCKETS,
            ("stage",),
        )
        self.rtp_loss = Histogram(
            r,
            "sipbridge_rtp_loss_ratio",
            "Per call at its end: received RTP packets lost / expected (PJSIP stream statistics).",
            LOSS_BUCKETS,
        )
        self.rtp_jitter = Histogram(
            r,
            "sipbridge_rtp_jitter_seconds",
            "Per call at its end: mean interarrival jitter of the received RTP (RFC 3550).",
            JITTER_BUCKETS,
        )
        self.rtp_late = Counter(
            r,
            "sipbridge_rtp_late_packets_total",
            "Received RTP packets that arrived too late for the jitter buffer and were discarded.",
        )
        self.loop_lag = Histogram(
            r,
            "sipbridge_event_loop_lag_seconds",
            "How late the supervisor's event loop woke a 20 ms timer (anything blocking the loop adds).",
            LAG_BUCKETS,
        )
        self.dial_skipped = Counter(
            r,
            "sipbridge_dial_skipped_total",
            "Contacts not dialed (do-not-call list: suppressed; daily cap: capped), by campaign and outcome.",
            ("campaign", "outcome"),
        )

    def gauge(self, name: str, help: str, read: Callable[[], float], kind: str = "gauge") -> None:
        self.registry.register(_ReadWhenScraped(name, help, read, kind))

    def labelled_gauge(
        self,
        name: str,
        help: str,
        labelnames: tuple[str, ...],
        read: Callable[[], dict[tuple[str, ...], float]],
    ) -> None:
        self.registry.register(_LabelledReadWhenScraped(name, help, labelnames, read))

    def render(self) -> str:
        """The exposition text (format 0.0.4), families in the order they were registered."""
        return generate_latest(self.registry).decode()
