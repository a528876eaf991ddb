"""`sipbridge dial` under SIGTERM (issue 18): the dialer claims no new contact, the answered call talks on to
its own end, then the process exits 0. Real SIPp callees, synchronised on log lines and process exits."""

from __future__ import annotations

import signal
from pathlib import Path

import yaml

from .callees import Callee, answer_scenario, human_audio
from .test_live import WEDNESDAY_10_NY, attempts, db, dial, write_campaign, write_config


def test_sigterm_stops_claiming_and_lets_the_answered_call_finish(tmp_path: Path) -> None:
    talking = Callee.start(
        answer_scenario(human_audio(tmp_path), talk_ms=9000), tmp_path / "talking", calls=1
    )
    waiting = Callee.start(answer_scenario(None, talk_ms=1000), tmp_path / "waiting", calls=1)
    contacts = [
        {"number": f"+1201555020{i}", "name": who, "port": str(c.sip_port), "subject_name": "Dana Whitfield"}
        for i, (who, c) in enumerate((("talking", talking), ("waiting", waiting)))
    ]
    # One call at a time: the second contact is due the moment the first call ends, unless the drain holds.
    campaign = write_campaign(
        tmp_path, contacts, limits={"concurrency": 1, "calls_per_second": 5, "ring_timeout_s": 5}
    )
    config = write_config(tmp_path)
    cfg = yaml.safe_load(config.read_text())
    cfg["shutdown"] = {"drain_timeout_s": 60}
    config.write_text(yaml.safe_dump(cfg))
    try:
        proc = dial(tmp_path, campaign, config, WEDNESDAY_10_NY)
        proc.wait_for(r"call \S+ media up", 90)
        proc.proc.send_signal(signal.SIGTERM)
        proc.wait_for(r"draining \(SIGTERM\)", 30)
        rc = proc.finish(timeout=90)
        log = "\n".join(proc.seen)
        assert rc == 0, log
        assert talking.proc.wait(timeout=30) == 0, talking.errors()  # it sent its own BYE after talking
        assert "stopping: drained: no call left" in log
    finally:
        talking.stop()
        waiting.stop()

    (attempt,) = attempts(tmp_path)  # the waiting contact was never claimed
    assert attempt["number"] == "+12015550200" and attempt["outcome"] == "answered-human", dict(attempt)
    with db(tmp_path) as conn:
        (pending,) = conn.execute("SELECT state, attempts FROM contacts WHERE number = '+12015550201'")
    assert tuple(pending) == ("pending", 0)
