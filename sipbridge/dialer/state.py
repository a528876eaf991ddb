"""Campaign state in the store (SQLite or PostgreSQL; schema version 4): campaigns, contacts, attempts.

Every change of a contact's state is one transaction, so a supervisor killed at any moment leaves each
contact in exactly one of: `pending` (never tried, or its attempt was cancelled by a pause: `release`),
`retry` (due again at `next_at`), `final`, or `dialing` with exactly one open attempt (no `ended_at`).
`recover()` closes those open attempts at the next start: the INVITE may or may not have gone out, so the
attempt counts (`cancelled`, per the retry policy) and the contact is called again in a *new* attempt — never
twice in one attempt, never skipped.

Times are epoch seconds of the dialer's clock (injectable for tests, `Clock`).
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sipbridge.dialer.contacts import Contact, RowIssue
from sipbridge.dialer.outcomes import Outcome
from sipbridge.dialer.suppression import Block, blocked, local_day_start
from sipbridge.store import Store

log = logging.getLogger(__name__)

__all__ = ["UNCOUNTED_EVENTS", "CampaignState", "Claim", "ContactRow"]

# Attempts that do not use up one of the contact's tries: cancelled by a pause while ringing, or never sent
# (the worker's PJSUA had no free call slot).
UNCOUNTED_EVENTS = ("paused", "no_slot")


@dataclass(frozen=True)
class ContactRow:
    id: int
    row: int
    number: str
    timezone: str
    name: str
    variables: dict[str, str]
    state: str
    attempts: int
    next_at: float
    outcome: str | None


@dataclass(frozen=True)
class Claim:
    """A contact claimed for one attempt: the attempt row exists before the INVITE is sent."""

    contact: ContactRow
    attempt_id: int
    attempt: int
    call_id: str


def _contact(row: Any) -> ContactRow:
    return ContactRow(
        id=row["id"],
        row=row["row"],
        number=row["number"],
        timezone=row["timezone"],
        name=row["name"],
        variables=json.loads(row["variables"]),
        state=row["state"],
        attempts=row["attempts"],
        next_at=row["next_at"],
        outcome=row["outcome"],
    )


def ts(when: datetime) -> float:
    return when.timestamp()


def utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


@dataclass
class CampaignState:
    store: Store
    name: str

    # ------------------------------------------------------------------------------ set-up

    def import_campaign(
        self, source: str, contacts: Iterable[Contact], issues: list[RowIssue], now: float
    ) -> tuple[int, bool]:
        """Create the campaign or resume it: contacts already stored (same number) keep their state, new
        rows of the CSV are added. Returns (contacts added, resumed)."""
        added = 0
        with self.store.transaction() as db:
            existing = db.execute("SELECT status FROM campaigns WHERE name = ?", (self.name,)).fetchone()
            issues_json = json.dumps([{"row": i.row, "reason": i.reason} for i in issues])
            if existing is None:
                # Another host may create it at the same moment (shared PostgreSQL store): first one wins.
                db.execute(
                    "INSERT INTO campaigns (name, source, status, row_issues, created_at, updated_at)"
                    " VALUES (?, ?, 'running', ?, ?, ?) ON CONFLICT DO NOTHING",
                    (self.name, source, issues_json, now, now),
                )
            else:
                db.execute(
                    "UPDATE campaigns SET source = ?, row_issues = ?, updated_at = ? WHERE name = ?",
                    (source, issues_json, now, self.name),
                )
            for c in contacts:
                cur = db.execute(
                    "INSERT INTO contacts (campaign, row, number, timezone, name, variables, state,"
                    " updated_at) VALUES (?, ?, ?, ?, ?, ?, 'pending', ?) ON CONFLICT DO NOTHING",
                    (self.name, c.row, c.number, c.timezone, c.name, json.dumps(c.variables), now),
                )
                added += cur.rowcount
        return added, existing is not None

    def open_attempts(self) -> list[tuple[ContactRow, int, str]]:
        """Attempts left open by a run that stopped without recording their end (crash, kill -9); those of
        runs still going (other hosts on a shared store) are theirs."""
        gone, params = self.store.orphaned("a.owner")
        rows = self.store.query(
            "SELECT c.*, a.id AS attempt_id, a.call_id AS call_id FROM attempts a"
            f" JOIN contacts c ON c.id = a.contact_id WHERE a.campaign = ? AND a.ended_at IS NULL AND {gone}",
            (self.name, *params),
        )
        return [(_contact(r), r["attempt_id"], r["call_id"]) for r in rows]

    # ------------------------------------------------------------------------------ scheduling

    def status(self) -> str | None:
        rows = self.store.query("SELECT status FROM campaigns WHERE name = ?", (self.name,))
        return rows[0]["status"] if rows else None

    def set_status(self, status: str, now: float) -> bool:
        with self.store.transaction() as db:
            cur = db.execute(
                "UPDATE campaigns SET status = ?, updated_at = ? WHERE name = ?", (status, now, self.name)
            )
            return cur.rowcount == 1

    def due(self, now: float, limit: int) -> list[ContactRow]:
        rows = self.store.query(
            "SELECT * FROM contacts WHERE campaign = ? AND state IN ('pending', 'retry') AND next_at <= ?"
            " ORDER BY next_at, id LIMIT ?",
            (self.name, now, limit),
        )
        return [_contact(r) for r in rows]

    def next_due_at(self) -> float | None:
        rows = self.store.query(
            "SELECT MIN(next_at) AS t FROM contacts WHERE campaign = ? AND state IN ('pending', 'retry')",
            (self.name,),
        )
        return rows[0]["t"] if rows and rows[0]["t"] is not None else None

    def defer(self, contact_id: int, until: float, now: float) -> None:
        """Outside the callee's calling window: not an attempt, just a later start."""
        with self.store.transaction() as db:
            db.execute(
                "UPDATE contacts SET next_at = ?, updated_at = ?"
                " WHERE id = ? AND state IN ('pending', 'retry')",
                (until, now, contact_id),
            )

    def screen(
        self, contact: ContactRow, now: float, *, cap: int | None = None, capped_until: float = 0.0
    ) -> Block | None:
        """The claim's compliance check alone (before the CPS token is spent on a number that is blocked);
        `claim` checks again in its own transaction."""
        with self.store.transaction() as db:
            return self._block(db, contact, now, cap, capped_until)

    def _block(
        self, db: Any, contact: ContactRow, now: float, cap: int | None, capped_until: float
    ) -> Block | None:
        """A Block recorded on the contact (suppressed: final; capped: retry at `capped_until`), or None."""
        block = blocked(db, contact.number, cap=cap, day_start=local_day_start(now, contact.timezone))
        if block is None:
            return None
        final = block.outcome is Outcome.SUPPRESSED
        db.execute(
            "UPDATE contacts SET state = ?, outcome = ?, next_at = ?, updated_at = ?"
            " WHERE id = ? AND state IN ('pending', 'retry') AND attempts = ?",
            (
                "final" if final else "retry",
                block.outcome.value,
                0 if final else capped_until,
                now,
                contact.id,
                contact.attempts,
            ),
        )
        return block

    def claim(
        self,
        contact: ContactRow,
        now: float,
        *,
        cap: int | None = None,
        capped_until: float = 0.0,
        caller_id: str | None = None,
    ) -> Claim | Block | None:
        """Take the contact for its next attempt, atomically: None if someone else already did, or is doing
        so now (another host holds the row: it is skipped rather than waited for).

        In the same transaction the number is checked against the do-not-call list and the daily cap
        (`cap` attempts since the callee's local midnight, all campaigns): a blocked contact gets its
        outcome (suppressed or capped) and no attempt is made."""
        call_id = uuid.uuid4().hex
        with self.store.transaction() as db:
            # Hold the row first (another host holding it: skip it rather than wait), so the checks below
            # and the claim see one state of it.
            held = db.execute(
                "SELECT id FROM contacts WHERE id = ? AND state IN ('pending', 'retry') AND attempts = ?"
                + self.store.dialect.skip_locked,
                (contact.id, contact.attempts),
            )
            if held.fetchone() is None:
                return None
            block = self._block(db, contact, now, cap, capped_until)
            if block is not None:
                return block
            cur = db.execute(
                "UPDATE contacts SET state = 'dialing', attempts = attempts + 1, updated_at = ?"
                " WHERE id = ? AND state IN ('pending', 'retry') AND attempts = ?",
                (now, contact.id, contact.attempts),
            )
            if cur.rowcount != 1:
                return None
            attempt = contact.attempts + 1
            cur = db.execute(
                "INSERT INTO attempts (campaign, contact_id, attempt, call_id, started_at, caller_id, owner)"
                " VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (self.name, contact.id, attempt, call_id, now, caller_id, self.store.owner),
            )
            attempt_id = int(cur.fetchone()["id"])
        return Claim(contact, attempt_id, attempt, call_id)

    def finish_attempt(
        self,
        claim_attempt_id: int,
        contact_id: int,
        *,
        outcome: str,
        final: bool,
        next_at: float | None,
        now: float,
        sip_code: int | None = None,
        event: str | None = None,
        amd: str | None = None,
        ringing_ms: int | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        """Record the attempt's result and the contact's next state in one transaction."""
        with self.store.transaction() as db:
            db.execute(
                "UPDATE attempts SET ended_at = ?, sip_code = ?, event = ?, amd = ?, outcome = ?,"
                " ringing_ms = ?, detail = ? WHERE id = ? AND ended_at IS NULL",
                (now, sip_code, event, amd, outcome, ringing_ms, json.dumps(detail or {}), claim_attempt_id),
            )
            db.execute(
                "UPDATE contacts SET state = ?, outcome = ?, next_at = ?, updated_at = ? WHERE id = ?",
                (
                    "final" if final else "retry",
                    outcome,
                    next_at if next_at is not None else 0,
                    now,
                    contact_id,
                ),
            )

    def release(
        self,
        claim_attempt_id: int,
        contact_id: int,
        *,
        next_at: float,
        now: float,
        ringing_ms: int | None = None,
        detail: dict[str, Any] | None = None,
        event: str = "paused",
    ) -> None:
        """The attempt was cancelled because the campaign was paused while it rang (event `paused`), or it
        never left (event `no_slot`: the worker's PJSUA had no free call slot): it is recorded (outcome
        cancelled) but the contact goes back to `pending` with `next_at` (a pause: the one it was claimed
        with, its place in line after a resume), and the attempt does not count against the retry policy's
        max_attempts (`counted_attempts`)."""
        assert event in UNCOUNTED_EVENTS, event
        with self.store.transaction() as db:
            db.execute(
                "UPDATE attempts SET ended_at = ?, event = ?, outcome = 'cancelled', ringing_ms = ?,"
                " detail = ? WHERE id = ? AND ended_at IS NULL",
                (now, event, ringing_ms, json.dumps(detail or {}), claim_attempt_id),
            )
            db.execute(
                "UPDATE contacts SET state = 'pending', outcome = 'cancelled', next_at = ?, updated_at = ?"
                " WHERE id = ?",
                (next_at, now, contact_id),
            )

    def counted_attempts(self, contact_id: int, attempts: int) -> int:
        """`attempts` (every attempt made, numbering the attempt rows) less those a pause cancelled or that
        never left (UNCOUNTED_EVENTS): what the retry policy's max_attempts is compared with."""
        rows = self.store.query(
            "SELECT COUNT(*) AS n FROM attempts WHERE contact_id = ? AND event IN ('paused', 'no_slot')",
            (contact_id,),
        )
        return attempts - int(rows[0]["n"])

    # ------------------------------------------------------------------------------ reporting

    def counts(self) -> dict[str, int]:
        rows = self.store.query(
            "SELECT state, COUNT(*) AS n FROM contacts WHERE campaign = ? GROUP BY state", (self.name,)
        )
        return {r["state"]: r["n"] for r in rows}

    def contact_outcomes(self) -> dict[str, int]:
        """Contacts by their latest outcome (suppressed and capped contacts have no attempt row)."""
        rows = self.store.query(
            "SELECT outcome, COUNT(*) AS n FROM contacts WHERE campaign = ? AND outcome IS NOT NULL"
            " GROUP BY outcome",
            (self.name,),
        )
        return {r["outcome"]: r["n"] for r in rows}

    def outcome_counts(self) -> dict[str, int]:
        rows = self.store.query(
            "SELECT outcome, COUNT(*) AS n FROM attempts WHERE campaign = ? AND outcome IS NOT NULL"
            " GROUP BY outcome",
            (self.name,),
        )
        return {r["outcome"]: r["n"] for r in rows}

    def contacts(self) -> list[ContactRow]:
        rows = self.store.query("SELECT * FROM contacts WHERE campaign = ? ORDER BY id", (self.name,))
        return [_contact(r) for r in rows]

    def attempts(self) -> list[dict[str, Any]]:
        rows = self.store.query(
            "SELECT a.*, c.number, c.name FROM attempts a JOIN contacts c ON c.id = a.contact_id"
            " WHERE a.campaign = ? ORDER BY a.started_at, a.id",
            (self.name,),
        )
        return [dict(r) for r in rows]
