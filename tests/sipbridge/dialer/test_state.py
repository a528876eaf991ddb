"""Campaign state in SQLite without calls: claiming, recording, recovery of open attempts, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sipbridge.cli import main
from sipbridge.dialer.contacts import Contact
from sipbridge.dialer.state import CampaignState
from sipbridge.store import Store


def _state(tmp_path: Path) -> CampaignState:
    state = CampaignState(Store(tmp_path / "db.sqlite3"), "c1")
    contacts = [Contact(row=i + 2, number=f"+1201555010{i}", timezone="America/New_York") for i in range(3)]
    added, resumed = state.import_campaign("c1.yaml", contacts, [], now=100.0)
    assert (added, resumed) == (3, False)
    return state


def test_claim_is_exclusive_and_resume_keeps_state(tmp_path: Path) -> None:
    state = _state(tmp_path)
    due = state.due(100.0, limit=10)
    assert [c.number for c in due] == ["+12015550100", "+12015550101", "+12015550102"]
    claim = state.claim(due[0], 100.0)
    assert claim is not None and claim.attempt == 1
    assert state.claim(due[0], 100.0) is None  # the same snapshot cannot be claimed twice
    assert [c.number for c in state.due(100.0, 10)] == ["+12015550101", "+12015550102"]
    state.finish_attempt(claim.attempt_id, due[0].id, outcome="busy", final=False, next_at=700.0, now=101.0)
    assert state.counts() == {"pending": 2, "retry": 1}
    assert state.next_due_at() == 0.0
    # Importing the same contacts again (a restart) adds nothing and keeps their state.
    again = state.import_campaign("c1.yaml", [], [], now=102.0)
    assert again == (0, True) and state.counts() == {"pending": 2, "retry": 1}


def test_open_attempts_are_found_after_a_crash(tmp_path: Path) -> None:
    state = _state(tmp_path)
    contact = state.due(100.0, 1)[0]
    claim = state.claim(contact, 100.0)
    assert claim is not None
    # A new process (the old one was killed) sees the attempt without an end.
    reopened = CampaignState(Store(tmp_path / "db.sqlite3"), "c1")
    [(row, attempt_id, call_id)] = reopened.open_attempts()
    assert (row.number, row.state, row.attempts) == (contact.number, "dialing", 1)
    assert (attempt_id, call_id) == (claim.attempt_id, claim.call_id)


def test_an_attempt_cancelled_by_a_pause_is_kept_but_not_counted(tmp_path: Path) -> None:
    state = _state(tmp_path)
    contact = state.due(100.0, 1)[0]
    claim = state.claim(contact, 100.0)
    assert claim is not None
    state.release(
        claim.attempt_id,
        contact.id,
        next_at=contact.next_at,
        now=105.0,
        ringing_ms=40,
        detail={"reason": "p"},
    )
    [row] = [c for c in state.contacts() if c.id == contact.id]
    assert (row.state, row.outcome, row.attempts, row.next_at) == ("pending", "cancelled", 1, 0.0)
    assert state.counted_attempts(contact.id, row.attempts) == 0  # the retry policy sees no try yet
    [attempt] = state.attempts()
    assert (attempt["outcome"], attempt["event"], attempt["ringing_ms"]) == ("cancelled", "paused", 40)
    assert attempt["ended_at"] == 105.0
    # Back in its place in line; the next attempt is numbered 2 (attempt rows stay unique) but counts as
    # the first.
    assert state.due(105.0, 3)[0].id == contact.id
    again = state.claim(state.due(105.0, 1)[0], 106.0)
    assert again is not None and again.contact.id == contact.id and again.attempt == 2
    assert state.counted_attempts(contact.id, again.attempt) == 1


def test_campaign_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = _state(tmp_path)
    claim = state.claim(state.due(100.0, 1)[0], 100.0)
    assert claim is not None
    done = {"outcome": "answered-human", "final": True, "next_at": None, "sip_code": 200, "amd": "human"}
    state.finish_attempt(claim.attempt_id, claim.contact.id, now=130.0, **done)  # type: ignore[arg-type]
    db = str(tmp_path / "db.sqlite3")
    assert main(["campaign", "pause", "c1", "--db", db]) == 0
    assert state.status() == "paused"
    assert main(["campaign", "resume", "c1", "--db", db]) == 0
    assert state.status() == "running"
    capsys.readouterr()
    assert main(["campaign", "status", "c1", "--db", db]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["contacts"] == {"final": 1, "pending": 2} and report["attempts"] == {"answered-human": 1}
    assert main(["campaign", "export", "c1", "--db", db, "--format", "json"]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert row["outcome"] == "answered-human" and row["sip_code"] == 200 and row["number"] == "+12015550100"
    assert main(["campaign", "status", "nope", "--db", db]) == 1
