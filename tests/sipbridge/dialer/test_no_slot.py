"""An INVITE that the worker's PJSUA refuses locally (PJ_ETOOMANY: its 4 call slots are all held) is not a try
of the contact and not `failed`: the contact goes back to the queue and is called once a slot is free.

The slots are held for real, the way the supervisor cannot see: four INVITEs without SDP reach the worker
directly and are never ACKed. PJSUA answers each (its offer in the 200) and keeps the call until the
worker's ACK watchdog (8 s) ends it, but media never starts, so no CallStarted tells the supervisor, which
counts the worker free and sends it the campaign's Dial. Synchronisation is on log lines and the store.
"""

from __future__ import annotations

import re
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from ..rawsip import Dialog, RawSip, status
from .callees import Callee, answer_scenario
from .test_live import attempts, dial, write_campaign, write_config

# The campaign's clock starts this long before its window opens: the slots are filled first (the supervisor
# is up ~2 s after its start), and the window opens while the watchdog still holds them (8 s after the fill).
LEAD_S = 8.0


def test_an_invite_with_no_free_pjsua_slot_is_placed_again_without_using_a_try(tmp_path: Path) -> None:
    callee = Callee.start(answer_scenario(None, ring_ms=200, talk_ms=2000), tmp_path / "callee", calls=1)
    number = "+12015550900"
    contacts = [{"number": number, "name": "c", "port": str(callee.sip_port)}]
    campaign = write_campaign(
        tmp_path,
        contacts,
        limits={"concurrency": 1, "calls_per_second": 5, "ring_timeout_s": 5},
        amd={"enabled": False},
        voicemail={"action": "hangup"},
    )
    config = write_config(tmp_path, max_calls=4, front={"mode": "off"})
    window_open = datetime(2026, 1, 7, 14, 0, tzinfo=UTC)  # 09:00 New York, a Wednesday
    t0 = time.monotonic()
    raw = None
    try:
        proc = dial(tmp_path, campaign, config, window_open - timedelta(seconds=LEAD_S))
        port = int(proc.wait_for(r"sip listening on \S+ port\(s\) (\d+) \(1 worker", 90).group(1))
        raw = RawSip(port)
        for _ in range(4):  # no SDP, never ACKed: a PJSUA slot each until the ACK watchdog
            dialog = Dialog(uuid.uuid4().hex, uuid.uuid4().hex[:8])
            raw.send(raw.request("INVITE", dialog))
            assert status(raw.final()) == 200
        filled_s = time.monotonic() - t0
        assert filled_s < LEAD_S - 1, f"slots filled {filled_s:.1f} s in: too close to the window's opening"
        rc = proc.finish(timeout=120)
        log = "\n".join(proc.seen)
        assert rc == 0, log
    finally:
        if raw is not None:
            raw.close()
        callee.stop()

    assert re.search(r"INVITE to \S+ failed: .*PJ_ETOOMANY", log), log
    rows = attempts(tmp_path)
    *refused, placed = rows
    assert refused and all((r["outcome"], r["event"]) == ("cancelled", "no_slot") for r in refused), log
    assert (placed["outcome"], placed["state"], placed["sip_code"]) == ("answered-human", "final", 200), log
    assert placed["attempt"] == len(rows)  # numbered as made ...
    # ... but only the one that left counts as a try: for the retry policy, and for the daily cap.
    assert sum(r["event"] not in ("paused", "no_slot") for r in rows) == 1
    assert "not counted" in log and "failed" not in {r["outcome"] for r in rows}
