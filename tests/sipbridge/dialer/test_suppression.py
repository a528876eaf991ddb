"""The do-not-call list and the per-number daily cap: checked in the claim's transaction, fed by the CLI, CSV
import and HTTP (a real `sipbridge run`), and honoured by a live `sipbridge dial` (the number is never
INVITEd)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
import yaml

from sipbridge.cli import main
from sipbridge.dialer.contacts import Contact
from sipbridge.dialer.outcomes import Outcome
from sipbridge.dialer.state import CampaignState, Claim
from sipbridge.dialer.suppression import Block, DncList, local_day_start, next_local_day
from sipbridge.store import Store

from ..bridge import Bridge
from .callees import Callee, answer_scenario, greeting_audio, opt_out_audio
from .test_live import WEDNESDAY_10_NY, attempts, db, dial, write_campaign, write_config

NY = "America/New_York"
NOW = WEDNESDAY_10_NY.timestamp()


def _campaign(store: Store, name: str, numbers: list[str]) -> CampaignState:
    state = CampaignState(store, name)
    contacts = [Contact(row=i + 2, number=n, timezone=NY) for i, n in enumerate(numbers)]
    state.import_campaign(f"{name}.yaml", contacts, [], now=NOW)
    return state


def _attempt(state: CampaignState, number: str, now: float, cap: int | None = None) -> Claim | Block | None:
    [contact] = [c for c in state.due(now, 100) if c.number == number]
    result = state.claim(contact, now, cap=cap, capped_until=next_local_day(now, NY).timestamp())
    if isinstance(result, Claim):
        state.finish_attempt(result.attempt_id, contact.id, outcome="busy", final=False, next_at=now, now=now)
    return result


def test_a_suppressed_number_is_not_claimed_and_ends_suppressed(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite3")
    state = _campaign(store, "c1", ["+12015550100", "+12015550101"])
    assert DncList(store).add("+12015550101", "asked on 2026-01-02", "cli", now=NOW)
    assert not DncList(store).add("+12015550101", "again", "http", now=NOW)  # the first entry is kept
    first, second = state.due(NOW, 10)
    block = state.claim(second, NOW)
    assert isinstance(block, Block) and block.outcome is Outcome.SUPPRESSED
    assert "do-not-call" in block.reason and "asked on 2026-01-02" in block.reason
    assert isinstance(state.claim(first, NOW), Claim)
    rows = {c.number: c for c in state.contacts()}
    assert (rows["+12015550101"].state, rows["+12015550101"].outcome) == ("final", "suppressed")
    assert rows["+12015550101"].attempts == 0 and len(state.attempts()) == 1  # never an attempt row
    assert state.contact_outcomes() == {"suppressed": 1}


def test_the_daily_cap_counts_every_campaign_and_resets_at_local_midnight(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite3")
    number = "+12015550100"
    a = _campaign(store, "a", [number])
    b = _campaign(store, "b", [number, "+12015550199"])
    assert isinstance(_attempt(a, number, NOW, cap=2), Claim)
    assert isinstance(_attempt(a, number, NOW + 60, cap=2), Claim)
    block = _attempt(b, number, NOW + 120, cap=2)  # another campaign, same number, same local day
    assert isinstance(block, Block) and block.outcome is Outcome.CAPPED
    assert "2 attempt(s) to this number today" in block.reason
    [capped, _] = b.contacts()
    assert (capped.state, capped.outcome, capped.attempts) == ("retry", "capped", 0)
    assert capped.next_at == next_local_day(NOW, NY).timestamp()  # (the runner: the window's next opening)
    assert isinstance(_attempt(b, "+12015550199", NOW + 120, cap=2), Claim)  # other numbers go on
    assert isinstance(_attempt(a, number, NOW + 180, cap=None), Claim)  # no cap configured
    # 23:59 New York is the same day; 00:00 the next one.
    midnight = next_local_day(NOW, NY).timestamp()
    assert local_day_start(midnight - 1, NY) == local_day_start(NOW, NY)
    assert isinstance(_attempt(b, number, midnight, cap=2), Claim)


def test_the_check_is_inside_the_claim_transaction(tmp_path: Path) -> None:
    """Two processes (two connections) on one database: a number added by one between the other's `due` and
    its `claim` is still caught, because the claim reads the list under the write lock."""
    a = _campaign(Store(tmp_path / "db.sqlite3"), "a", ["+12015550100"])
    other = DncList(Store(tmp_path / "db.sqlite3"))
    [contact] = a.due(NOW, 10)
    other.add("+12015550100", "", "http", now=NOW)
    assert isinstance(a.claim(contact, NOW), Block)
    assert a.attempts() == []


def test_dnc_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dbf = str(tmp_path / "db.sqlite3")
    assert main(["dnc", "add", "+1 (201) 555-0100", "--reason", "asked", "--db", dbf]) == 0
    assert "+12015550100: added" in capsys.readouterr().out
    assert main(["dnc", "add", "2015550101", "--region", "US", "--db", dbf]) == 0
    assert main(["dnc", "add", "555-0100", "--db", dbf]) == 1
    assert "not a dialable number" in capsys.readouterr().err
    csv = tmp_path / "dnc.csv"
    csv.write_text("name,number,reason\nA,+12015550102,legal\nB,not a number,x\n\nC,+12015550100,dup\n")
    assert main(["dnc", "import", str(csv), "--db", dbf]) == 1  # a row was refused; the others are in
    out = capsys.readouterr()
    assert "1 number(s) added, 1 already on the list, 1 row(s) refused" in out.out
    assert "line 3: 'not a number'" in out.err
    assert main(["dnc", "list", "--format", "json", "--db", dbf]) == 0
    listed = {e["number"]: e for e in json.loads(capsys.readouterr().out)}
    assert set(listed) == {"+12015550100", "+12015550101", "+12015550102"}
    assert (listed["+12015550100"]["reason"], listed["+12015550102"]["source"]) == ("asked", "import")
    assert main(["dnc", "remove", "+12015550100", "--db", dbf]) == 0
    assert main(["dnc", "remove", "+12015550100", "--db", dbf]) == 1
    assert main(["dnc", "list", "--db", str(tmp_path / "none.sqlite3")]) == 1  # never creates a database
    assert not (tmp_path / "none.sqlite3").exists()


def test_dnc_over_http_needs_the_token(tmp_path: Path) -> None:
    token = "dnc-token-1"
    bridge = Bridge.start(tmp_path, {"http": {"bearer_token": token}})
    auth = {"Authorization": f"Bearer {token}"}
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{bridge.http_port}", timeout=30) as c:
            body = {"number": "+12015550100", "reason": "asked by email"}
            assert c.post("/dnc", json=body).status_code == 401
            assert c.post("/dnc", json=body, headers={"Authorization": "Bearer nope"}).status_code == 401
            assert c.get("/dnc").status_code == 401
            assert c.delete("/dnc/+12015550100").status_code == 401
            made = c.post("/dnc", json=body, headers=auth)
            assert made.status_code == 201 and made.json()["source"] == "http", made.text
            assert c.post("/dnc", json=body, headers=auth).status_code == 200  # already on it
            national = c.post("/dnc", json={"number": "(201) 555-0101", "region": "US"}, headers=auth)
            assert national.json()["number"] == "+12015550101"
            bad = c.post("/dnc", json={"number": "call me"}, headers=auth)
            assert bad.status_code == 422 and "not a dialable number" in bad.json()["detail"]
            assert c.get("/dnc", headers=auth).json()["count"] == 2
            assert c.get("/dnc/%2B12015550100", headers=auth).json()["reason"] == "asked by email"
            assert c.delete("/dnc/%2B12015550100", headers=auth).json()["removed"] is True
            assert c.delete("/dnc", params={"number": "+12015550101"}, headers=auth).status_code == 200
            assert c.delete("/dnc/%2B12015550101", headers=auth).status_code == 404
            # Caller-ID health, read from the database at each scrape (last dialer.caller_id_window_h).
            _history(Store(tmp_path / "db.sqlite3"), time.time() - 3600)
            metrics = c.get("/metrics").text.splitlines()
            assert 'sipbridge_caller_id_answer_rate{caller_id="+14155550100"} 0.75' in metrics
            assert 'sipbridge_caller_id_attempts{caller_id="+14155550100"} 4.0' in metrics
            assert any(
                line.startswith('sipbridge_caller_id_short_call_rate{caller_id="+14155550100"} 0.333')
                for line in metrics
            )
    finally:
        assert bridge.stop() == 0


def test_dial_never_calls_a_suppressed_number(tmp_path: Path) -> None:
    """Live: of two contacts on one SIPp callee, the one on the list gets no INVITE and ends `suppressed`;
    the other is called as usual."""
    hello = greeting_audio(tmp_path, "Hello?")
    callee = Callee.start(answer_scenario(hello, talk_ms=3000), tmp_path / "callee", calls=1, trace_msg=True)
    contacts = [
        {"number": "+12015550400", "name": "listed", "port": str(callee.sip_port)},
        {"number": "+12015550401", "name": "callable", "port": str(callee.sip_port)},
    ]
    campaign = write_campaign(tmp_path, contacts, limits={"concurrency": 2, "calls_per_second": 5})
    config = write_config(tmp_path, max_calls=4)
    assert main(["dnc", "add", "+12015550400", "-c", str(config)]) == 0
    try:
        proc = dial(tmp_path, campaign, config, WEDNESDAY_10_NY)
        rc = proc.finish(timeout=120)
        log = "\n".join(proc.seen)
        assert rc == 0, log
        assert callee.proc.wait(timeout=30) == 0, callee.errors()
    finally:
        callee.stop()
    invites = [line for line in callee.messages().splitlines() if line.startswith("INVITE sip:")]
    assert len(invites) == 1 and "12015550401@" in invites[0], invites
    assert [r["number"] for r in attempts(tmp_path)] == ["+12015550401"]
    with db(tmp_path) as conn:
        row = conn.execute("SELECT state, outcome FROM contacts WHERE number = '+12015550400'").fetchone()
    assert tuple(row) == ("final", "suppressed")
    assert "+12015550400 not dialed: suppressed: on the do-not-call list" in log


def test_a_callee_who_says_stop_calling_is_confirmed_hung_up_on_and_never_called_again(
    tmp_path: Path,
) -> None:
    """Live: the callee answers, then says "Stop calling me. Remove me from your list." over the disclosure
    (which plays whole). The bot says the confirmation, hangs up (SIPp's scenario waits for our BYE), the
    number is on the do-not-call list with the call's id, the attempt is `opted-out`; a second campaign with
    that number does not dial it."""
    callee = Callee.start(
        answer_scenario(opt_out_audio(tmp_path)), tmp_path / "callee", calls=1, trace_msg=True
    )
    number = "+12015550500"
    contacts = [{"number": number, "name": "Dana", "port": str(callee.sip_port), "subject_name": "Dana W"}]
    campaign = write_campaign(tmp_path, contacts, limits={"concurrency": 1, "calls_per_second": 5})
    config = write_config(tmp_path, max_calls=4)
    recorded = yaml.safe_load(config.read_text())
    recorded["storage"]["record_calls"] = True  # the disclosure's offset is checked in the recording
    config.write_text(yaml.safe_dump(recorded))
    try:
        proc = dial(tmp_path, campaign, config, WEDNESDAY_10_NY)
        rc = proc.finish(timeout=120)
        log = "\n".join(proc.seen)
        assert rc == 0, log
        assert callee.proc.wait(timeout=30) == 0, callee.errors()  # it got our BYE
    finally:
        callee.stop()
    [row] = attempts(tmp_path)
    assert (row["outcome"], row["state"], row["amd"]) == ("opted-out", "final", "human"), log
    with db(tmp_path) as conn:
        listed = conn.execute("SELECT * FROM dnc WHERE number = ?", (number,)).fetchone()
        events = [
            r["kind"]
            for r in conn.execute("SELECT kind FROM call_events WHERE call_id = ?", (row["call_id"],))
        ]
        bot = [
            r["text"]
            for r in conn.execute(
                "SELECT text FROM turns WHERE call_id = ? AND who = 'bot' ORDER BY idx", (row["call_id"],)
            )
        ]
        agent_outcome = conn.execute(
            "SELECT agent_outcome FROM calls WHERE id = ?", (row["call_id"],)
        ).fetchone()[0]
    assert listed is not None and (listed["source"], listed["call_id"]) == ("opt-out", row["call_id"])
    assert "stop calling" in listed["reason"] or "remove me from your list" in listed["reason"]
    assert "opt_out" in events and agent_outcome == "opted_out"
    assert bot[-1] == "Understood. We will not call this number again. Goodbye.", bot
    check_disclosure(tmp_path, row["call_id"])
    assert "BYE sip:" in callee.messages() or "BYE" in callee.messages()

    # A second campaign (another name, same database) with the number: not dialed.
    second = write_campaign(
        tmp_path, contacts, name="follow-up", limits={"concurrency": 1, "calls_per_second": 5}
    )
    proc = dial(tmp_path, second, config, WEDNESDAY_10_NY)
    rc = proc.finish(timeout=120)
    log = "\n".join(proc.seen)
    assert rc == 0, log
    assert f"{number} not dialed: suppressed" in log
    with db(tmp_path) as conn:
        c = conn.execute(
            "SELECT state, outcome, attempts FROM contacts WHERE campaign = 'follow-up'"
        ).fetchone()
    assert tuple(c) == ("final", "suppressed", 0)
    assert len(attempts(tmp_path)) == 1


DISCLOSURE = "You are speaking with an automated assistant, and this call is recorded."


def check_disclosure(work: Path, call_id: str) -> None:
    """The disclosure was the bot's first utterance, played whole although the callee spoke over it
    (barge-in cannot cut it), and its event's offsets find it in the call's recording (bot = right)."""
    with db(work) as conn:
        turns = list(conn.execute("SELECT * FROM turns WHERE call_id = ? ORDER BY start_ms, idx", (call_id,)))
        # A provisional start that the callee's words withdrew (amd.provisional_silence_ms) leaves a cut
        # disclosure (`withdrawn`) before the one played whole; the whole one is the one checked here.
        [event] = [
            e
            for e in (
                json.loads(r["data"])
                for r in conn.execute(
                    "SELECT data FROM call_events WHERE call_id = ? AND kind = 'disclosure'", (call_id,)
                )
            )
            if not e.get("withdrawn")
        ]
        recording = conn.execute("SELECT recording_path FROM calls WHERE id = ?", (call_id,)).fetchone()[0]
    bot = [t for t in turns if t["who"] == "bot"]
    assert (bot[0]["text"], bot[0]["interrupted"]) == (DISCLOSURE, 0), [dict(t) for t in turns]
    assert (event["text"], event["whole"]) == (DISCLOSURE, True)
    assert (event["start_ms"], event["end_ms"]) == (bot[0]["start_ms"], bot[0]["end_ms"])
    caller = [t for t in turns if t["who"] == "caller"]
    overlap = caller and caller[0]["start_ms"] < event["end_ms"] and caller[0]["end_ms"] > event["start_ms"]
    assert overlap, "the callee spoke over the disclosure"
    audio, rate = sf.read(recording, dtype="float32")
    bot_side = audio[: len(audio) // (rate // 50) * (rate // 50), 1].reshape(-1, rate // 50)  # 20 ms frames
    voiced = np.nonzero(np.sqrt(np.mean(bot_side**2, axis=1)) > 0.01)[0] * 20
    # The first sound of ours in the recording (after any withdrawn start) is the disclosure, where its
    # event says (one frame of slack).
    voiced = voiced[voiced >= event["start_ms"] - 40]
    assert abs(int(voiced[0]) - event["start_ms"]) <= 40, (voiced[:5], event)
    assert np.count_nonzero((voiced >= event["start_ms"]) & (voiced < event["end_ms"])) > 50


def _history(store: Store, now: float) -> None:
    """Caller ID A: 4 ended attempts, 3 answered (one of them 4 s long: short), a pause cancellation
    (not counted); B: 1 busy."""
    state = _campaign(store, "c1", [f"+1201555070{i}" for i in range(6)])
    plan = [
        ("+14155550100", 200, 60.0), ("+14155550100", 200, 4.0), ("+14155550100", 200, 30.0),
        ("+14155550100", 486, None), ("+14155550100", 487, None), ("+14155550199", 486, None),
    ]  # fmt: skip
    for contact, (caller_id, code, seconds) in zip(state.due(now, 10), plan, strict=True):
        claim = state.claim(contact, now, caller_id=caller_id)
        assert isinstance(claim, Claim)
        store.create_call("outbound", call_id=claim.call_id, now=now)
        if seconds is not None:
            store.mark_answered(claim.call_id, now=now + 1)
        store.end_call(claim.call_id, "x", now=now + 1 + (seconds or 0))
        outcome = "cancelled" if code == 487 else "answered-human" if code == 200 else "busy"
        state.finish_attempt(
            claim.attempt_id,
            contact.id,
            outcome=outcome,
            final=True,
            next_at=None,
            now=now + 2,
            sip_code=code,
        )


def test_caller_id_health_in_campaign_status(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = Store(tmp_path / "db.sqlite3")
    _history(store, NOW)
    assert main(["campaign", "status", "c1", "--db", str(tmp_path / "db.sqlite3")]) == 0
    report = json.loads(capsys.readouterr().out)["caller_ids"]
    assert report["+14155550100"] == {
        "attempts": 4, "answered": 3, "answer_rate": 0.75, "short_calls": 1, "short_call_rate": 0.3333,
    }  # fmt: skip
    assert report["+14155550199"]["answer_rate"] == 0.0
