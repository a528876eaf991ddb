"""sipbridge/metrics.py: the Prometheus text exposition, byte for byte (the format scrapers parse).

The golden text is prometheus-client's rendering (issue 18 replaced our own writer): metric names, HELP
texts, label sets and bucket bounds are as before; values are written as floats (`2.0`), a histogram's
`_count` comes before its `_sum`, and no `_created` series are exported.
"""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from sipbridge.metrics import TURN_STAGES, Histogram, Metrics

GOLDEN = """\
# HELP sipbridge_calls_started_total Calls answered or placed and connected.
# TYPE sipbridge_calls_started_total counter
sipbridge_calls_started_total{direction="inbound"} 2.0
sipbridge_calls_started_total{direction="outbound"} 1.0
# HELP sipbridge_calls_ended_total Calls that ended, by direction and recorded outcome.
# TYPE sipbridge_calls_ended_total counter
sipbridge_calls_ended_total{direction="inbound",outcome="completed"} 1.0
# HELP sipbridge_calls_rejected_total INVITEs refused before a call existed, by SIP status.
# TYPE sipbridge_calls_rejected_total counter
# HELP sipbridge_caller_turns_total Caller turns transcribed, by whether the early transcription was used.
# TYPE sipbridge_caller_turns_total counter
# HELP sipbridge_speculative_replies_total Replies made at a pause before the turn ended \
(turn.speculative_reply): used or discarded.
# TYPE sipbridge_speculative_replies_total counter
# HELP sipbridge_barge_ins_total Bot speech cut by the caller.
# TYPE sipbridge_barge_ins_total counter
sipbridge_barge_ins_total 0.0
# HELP sipbridge_reply_latency_seconds End of a caller turn (detected) to the reply's first audio sent.
# TYPE sipbridge_reply_latency_seconds histogram
sipbridge_reply_latency_seconds_bucket{le="0.05"} 0.0
sipbridge_reply_latency_seconds_bucket{le="0.1"} 0.0
sipbridge_reply_latency_seconds_bucket{le="0.15"} 1.0
sipbridge_reply_latency_seconds_bucket{le="0.2"} 2.0
sipbridge_reply_latency_seconds_bucket{le="0.3"} 2.0
sipbridge_reply_latency_seconds_bucket{le="0.5"} 2.0
sipbridge_reply_latency_seconds_bucket{le="0.75"} 2.0
sipbridge_reply_latency_seconds_bucket{le="1.0"} 2.0
sipbridge_reply_latency_seconds_bucket{le="1.5"} 2.0
sipbridge_reply_latency_seconds_bucket{le="2.0"} 2.0
sipbridge_reply_latency_seconds_bucket{le="3.0"} 2.0
sipbridge_reply_latency_seconds_bucket{le="5.0"} 2.0
sipbridge_reply_latency_seconds_bucket{le="+Inf"} 3.0
sipbridge_reply_latency_seconds_count 3.0
sipbridge_reply_latency_seconds_sum 6.325
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
    assert "sipbridge_asr_wait_seconds_count 0.0\n" in text and text.endswith("\n")
    assert "_created" not in text


def test_label_values_are_escaped_and_gauges_read_when_rendered() -> None:
    m = Metrics()
    m.calls_rejected.inc(code='4"03\\\n')
    state = {"n": 1}
    m.gauge("sipbridge_calls_active", "Calls in progress.", lambda: state["n"])
    state["n"] = 3
    text = m.render()
    assert 'sipbridge_calls_rejected_total{code="4\\"03\\\\\\n"} 1.0\n' in text
    assert text.endswith("# TYPE sipbridge_calls_active gauge\nsipbridge_calls_active 3.0\n")


def test_misuse_is_refused() -> None:
    c = Metrics().calls_rejected
    with pytest.raises(ValueError, match="sipbridge_calls_rejected_total: labels"):
        c.inc(b="1")
    with pytest.raises(ValueError, match="only goes up"):
        c.inc(-1, code="1")
    with pytest.raises(ValueError, match="increasing"):
        Histogram(CollectorRegistry(), "h", "h", (1.0, 0.5))


def test_two_supervisors_metrics_do_not_share_a_registry() -> None:
    a, b = Metrics(), Metrics()
    a.barge_ins.inc()
    assert "sipbridge_barge_ins_total 1.0\n" in a.render()
    assert "sipbridge_barge_ins_total 0.0\n" in b.render()


def test_turn_stages_and_rtp_quality_are_exported() -> None:
    m = Metrics()
    for stage in TURN_STAGES:
        m.turn_stage.observe(0.02, stage=stage)
    m.rtp_loss.observe(0.01)
    m.rtp_jitter.observe(0.004)
    m.rtp_late.inc(3)
    text = m.render()
    for stage in ("asr", "agent", "engine", "playout"):
        assert f'sipbridge_turn_stage_seconds_bucket{{le="0.025",stage="{stage}"}} 1.0\n' in text
    assert 'sipbridge_rtp_loss_ratio_bucket{le="0.01"} 1.0\n' in text
    assert 'sipbridge_rtp_loss_ratio_bucket{le="0.005"} 0.0\n' in text
    assert 'sipbridge_rtp_jitter_seconds_bucket{le="0.005"} 1.0\n' in text
    assert "sipbridge_rtp_late_packets_total 3.0\n" in text
