"""sipbridge/metrics.py: the Prometheus text exposition, byte for byte (the format scrapers parse)."""

from __future__ import annotations

import pytest

from sipbridge.metrics import Counter, Histogram, Metrics

GOLDEN = """\
# HELP sipbridge_calls_started_total Calls answered or placed and connected.
# TYPE sipbridge_calls_started_total counter
sipbridge_calls_started_total{direction="inbound"} 2
sipbridge_calls_started_total{direction="outbound"} 1
# HELP sipbridge_calls_ended_total Calls that ended, by direction and recorded outcome.
# TYPE sipbridge_calls_ended_total counter
sipbridge_calls_ended_total{direction="inbound",outcome="completed"} 1
# HELP sipbridge_calls_rejected_total INVITEs refused before a call existed, by SIP status.
# TYPE sipbridge_calls_rejected_total counter
# HELP sipbridge_caller_turns_total Caller turns transcribed, by whether the early transcription was used.
# TYPE sipbridge_caller_turns_total counter
# HELP sipbridge_barge_ins_total Bot speech cut by the caller.
# TYPE sipbridge_barge_ins_total counter
sipbridge_barge_ins_total 0
# HELP sipbridge_reply_latency_seconds End of a caller turn (detected) to the reply's first audio sent.
# TYPE sipbridge_reply_latency_seconds histogram
sipbridge_reply_latency_seconds_bucket{le="0.05"} 0
sipbridge_reply_latency_seconds_bucket{le="0.1"} 0
sipbridge_reply_latency_seconds_bucket{le="0.15"} 1
sipbridge_reply_latency_seconds_bucket{le="0.2"} 2
sipbridge_reply_latency_seconds_bucket{le="0.3"} 2
sipbridge_reply_latency_seconds_bucket{le="0.5"} 2
sipbridge_reply_latency_seconds_bucket{le="0.75"} 2
sipbridge_reply_latency_seconds_bucket{le="1"} 2
sipbridge_reply_latency_seconds_bucket{le="1.5"} 2
sipbridge_reply_latency_seconds_bucket{le="2"} 2
sipbridge_reply_latency_seconds_bucket{le="3"} 2
sipbridge_reply_latency_seconds_bucket{le="5"} 2
sipbridge_reply_latency_seconds_bucket{le="+Inf"} 3
sipbridge_reply_latency_seconds_sum 6.325
sipbridge_reply_latency_seconds_count 3
"""


def test_exposition_text_is_exact() -> None:
    m = Metrics()
    m.calls_started.inc(direction="inbound")
    m.calls_started.inc(direction="outbound")
    m.calls_started.inc(direction="inbound")
    m.calls_ended.inc(direction="inbound", outcome="completed")
    for seconds in (0.125, 0.2, 6.0):  # 0.2 is on a bound: `le` includes it
        m.reply_latency.observe(seconds)
    text = m.render()
    assert text.startswith(GOLDEN), text
    # The remaining families are present and empty; the text ends with a newline.
    assert "sipbridge_asr_wait_seconds_count 0\n" in text and text.endswith("\n")


def test_label_values_are_escaped_and_gauges_read_when_rendered() -> None:
    m = Metrics()
    m.calls_rejected.inc(code='4"03\\\n')
    state = {"n": 1}
    m.gauge("sipbridge_calls_active", "Calls in progress.", lambda: state["n"])
    state["n"] = 3
    text = m.render()
    assert 'sipbridge_calls_rejected_total{code="4\\"03\\\\\\n"} 1\n' in text
    assert text.endswith("# TYPE sipbridge_calls_active gauge\nsipbridge_calls_active 3\n")


def test_misuse_is_refused() -> None:
    c = Counter("x_total", "x", ("a",))
    with pytest.raises(ValueError, match="labels"):
        c.inc(b="1")
    with pytest.raises(ValueError, match="only goes up"):
        c.inc(-1, a="1")
    with pytest.raises(ValueError, match="increasing"):
        Histogram("h", "h", (1.0, 0.5))
