"""Two `sipbridge dial` processes (two hosts, in effect) run one campaign on one PostgreSQL store: they share
the work and never call a contact twice. Real INVITEs to a SIPp callee; synchronisation on log lines and exit.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import yaml
from psycopg.rows import dict_row

from .callees import Callee, error_scenario
from .test_live import dial, write_campaign, write_config


def _open_attempts(url: str) -> set[int]:
    with psycopg.connect(url) as db:
        return {r[0] for r in db.execute("SELECT id FROM attempts WHERE ended_at IS NULL")}


def _attempts(url: str, ids: set[int]) -> list[dict[str, object]]:
    with psycopg.connect(url, row_factory=dict_row) as db:
        return db.execute("SELECT * FROM attempts WHERE id = ANY(%s)", (list(ids),)).fetchall()


def test_two_dialers_on_one_postgres_campaign_never_call_a_contact_twice(tmp_path: Path, pg_url: str) -> None:
    # Each call rings 8 s and then is busy: long enough that the second host starts while the first one's
    # calls are up (the case where a starting host must not take live attempts for crashed ones).
    busy = Callee.start(error_scenario(486, "Busy Here", ring_ms=8000), tmp_path / "busy", trace_msg=True)
    n = 16
    contacts = [
        {"number": f"+1201555{2000 + i:04d}", "name": f"c{i}", "port": str(busy.sip_port)} for i in range(n)
    ]
    campaign = write_campaign(
        tmp_path,
        contacts,
        limits={"concurrency": 4, "calls_per_second": 6, "ring_timeout_s": 15},
        amd={"enabled": False},
        voicemail={"action": "hangup"},
    )
    hosts = []
    for name in ("a", "b"):
        work = tmp_path / name
        work.mkdir()
        config = write_config(work, max_calls=4)
        cfg = yaml.safe_load(config.read_text())
        cfg["storage"]["url"] = pg_url
        config.write_text(yaml.safe_dump(cfg))
        hosts.append((work, config))
    # Wednesday 09:00 New York: inside the calling window.
    start = datetime(2026, 1, 7, 14, 0, tzinfo=UTC)
    t0 = time.monotonic()
    try:
        first = dial(hosts[0][0], campaign, hosts[0][1], start)
        first.wait_for(r"attempt 1 of \S+ .* on worker", 120)
        ringing = _open_attempts(pg_url)
        second = dial(hosts[1][0], campaign, hosts[1][1], start + timedelta(seconds=time.monotonic() - t0))
        second.wait_for(r"campaign verify-test resumed", 120)
        # Host B's start left host A's ringing calls alone (it recovers only attempts of dead processes) ...
        seen = _attempts(pg_url, ringing)
        assert not [a for a in seen if a["outcome"] == "cancelled"], seen
        # ... and they were still up then, so the case was really tested.
        assert [a for a in seen if a["ended_at"] is None], "host B started too late to test recovery"
        logs = []
        for proc in (first, second):
            assert proc.finish(timeout=240) == 0, "\n".join(proc.seen)
            logs.append("\n".join(proc.seen))
    finally:
        busy.stop()

    with psycopg.connect(pg_url, row_factory=dict_row) as db:
        rows = db.execute(
            "SELECT a.*, c.number, c.state FROM attempts a JOIN contacts c ON c.id = a.contact_id"
        ).fetchall()
    numbers = [r["number"] for r in rows]
    # Every contact once, as its first attempt, closed as busy (none cancelled by the other host's start);
    # and the callee saw exactly those INVITEs.
    assert sorted(numbers) == sorted(c["number"] for c in contacts), logs
    assert {r["attempt"] for r in rows} == {1} and {r["outcome"] for r in rows} == {"busy"}, logs
    assert {r["state"] for r in rows} == {"retry"}
    invites = re.findall(r"^INVITE sip:(1201555\d{4})@", busy.messages(), re.MULTILINE)  # user part: no +
    assert sorted(f"+{n}" for n in invites) == sorted(numbers)
    # Both hosts placed calls (the work was shared, not left to one of them).
    assert len({r["owner"] for r in rows}) == 2, logs
