"""Per-call RTP quality and per-stage reply latency (issue 18), measured on a real SIPp call over loopback."""

from __future__ import annotations

from pathlib import Path

from sipbridge.metrics import TURN_STAGES

from .bridge import Bridge
from .peers import caller_audio, sipp_scenario


def test_rtp_quality_is_stored_with_the_call_and_reply_stages_are_exported(tmp_path: Path) -> None:
    bridge = Bridge.start(tmp_path / "bridge", {"agent": {"kind": "echo"}})
    audio = caller_audio("hello, can you hear me", lead_s=1.0, tail_s=5.0)
    ulaw = audio.write_ulaw(tmp_path / "caller.ulaw")
    bridge.sipp_call(sipp_scenario(audio=ulaw, talk_ms=10000), work=tmp_path / "sipp")

    (row,) = bridge.calls()
    # SIPp's rtp_stream plays the file once, 160 bytes (20 ms) a packet; loopback loses and delays nothing.
    sent = len(audio.ulaw()) // 160
    assert abs(row["rtp_packets"] - sent) <= 2, (row["rtp_packets"], sent)
    assert row["rtp_lost"] == 0 and row["rtp_late"] == 0, dict(row)
    assert 0 <= row["rtp_jitter_ms"] <= row["rtp_jitter_max_ms"] < 40, dict(row)

    samples = bridge.metrics()
    assert samples["sipbridge_rtp_loss_ratio_count"] == 1
    assert samples['sipbridge_rtp_loss_ratio_bucket{le="0.0"}'] == 1
    assert samples["sipbridge_rtp_jitter_seconds_count"] == 1
    # The echo agent answered the caller's turn: each stage of that reply was observed once, and the stages
    # add up to the turn-end-to-first-RTP time the call's latency event records.
    total = 0.0
    for stage in TURN_STAGES:
        assert samples[f'sipbridge_turn_stage_seconds_count{{stage="{stage}"}}'] == 1, stage
        total += samples[f'sipbridge_turn_stage_seconds_sum{{stage="{stage}"}}']
    latency = bridge.latency(row["id"])
    assert abs(total * 1000 - latency["turn_to_first_rtp_ms"]) < 1.0, (total, latency)
    assert latency["turn_to_first_rtp_ms"] >= latency["turn_to_first_audio_ms"]
    assert bridge.stop() == 0
