"""The do-not-call (suppression) list and the per-number daily attempt cap.

One list per deployment (table `dnc`, schema 5), keyed by the E.164 number, fed by `sipbridge dnc
add|remove|import`, `POST/DELETE /dnc` and callees who opt out mid-call. The dialer checks it, and the cap,
*inside* the transaction that claims a contact (`CampaignState.claim`): SQLite's `BEGIN IMMEDIATE` holds the
write lock from the check to the attempt row, so a number added to the list, or a call placed to the same
number by another campaign (another `dial` process on the same database), cannot slip between the check and
the INVITE.

The cap counts attempt rows (every INVITE we sent, whatever its outcome, a pause-cancelled one included: the
phone may have rung; not one PJSUA refused locally, event `no_slot`: nothing was sent) to the number across
all campaigns since the callee's local midnight.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo

from sipbridge.dialer.numbers import NumberError, normalize_e164
from sipbridge.dialer.outcomes import Outcome
from sipbridge.store import Store

__all__ = [
    "Block",
    "DncEntry",
    "DncList",
    "ImportResult",
    "blocked",
    "local_day_start",
    "next_local_day",
]

Source = Literal["cli", "http", "import", "opt-out"]
_MAX_REASON = 200


@dataclass(frozen=True)
class DncEntry:
    number: str
    reason: str
    source: str
    added_at: float
    call_id: str | None = None


@dataclass(frozen=True)
class Block:
    """Why a contact may not be dialed now."""

    outcome: Outcome  # SUPPRESSED or CAPPED
    reason: str


@dataclass(frozen=True)
class ImportResult:
    added: int
    already: int
    issues: list[str]  # "line N: 'cell': why", one per rejected row


def local_day_start(now: float, tz: str) -> float:
    """Epoch seconds of the callee's last local midnight (the cap's day)."""
    zone = ZoneInfo(tz)
    local = datetime.fromtimestamp(now, zone)
    return datetime.combine(local.date(), time(0), tzinfo=zone).timestamp()


def next_local_day(now: float, tz: str) -> datetime:
    """The callee's next local midnight (a capped contact is looked at again from then on)."""
    zone = ZoneInfo(tz)
    local = datetime.fromtimestamp(now, zone)
    return datetime.combine(local.date() + timedelta(days=1), time(0), tzinfo=zone)


def blocked(db: Any, number: str, *, cap: int | None, day_start: float) -> Block | None:
    """Run inside the claim's transaction: the DNC list first (final), then the daily cap."""
    row = db.execute("SELECT reason, source FROM dnc WHERE number = ?", (number,)).fetchone()
    if row is not None:
        why = f" ({row['reason']})" if row["reason"] else ""
        return Block(Outcome.SUPPRESSED, f"on the do-not-call list, source {row['source']}{why}")
    if cap is None:
        return None
    made = db.execute(
        "SELECT COUNT(*) AS n FROM attempts a JOIN contacts c ON c.id = a.contact_id"
        " WHERE c.number = ? AND a.started_at >= ? AND COALESCE(a.event, '') != 'no_slot'",
        (number, day_start),
    ).fetchone()["n"]
    if made >= cap:
        return Block(Outcome.CAPPED, f"{made} attempt(s) to this number today, all campaigns; cap is {cap}")
    return None


def parse_number(raw: str, region: str | None = None) -> str:
    """E.164 or NumberError (the list holds only numbers the dialer could dial)."""
    return normalize_e164(raw, region)


def _clean_reason(reason: str | None) -> str:
    text = " ".join((reason or "").split())
    if len(text) > _MAX_REASON:
        raise ValueError(f"reason is longer than {_MAX_REASON} characters")
    return text


@dataclass
class DncList:
    store: Store

    def add(
        self,
        number: str,
        reason: str | None = None,
        source: Source = "cli",
        *,
        now: float,
        call_id: str | None = None,
    ) -> bool:
        """Add `number` (already E.164); False if it was on the list already (its first entry is kept)."""
        with self.store.transaction() as db:
            cur = db.execute(
                "INSERT INTO dnc (number, reason, source, call_id, added_at)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (number) DO NOTHING",
                (number, _clean_reason(reason), source, call_id, now),
            )
            return cur.rowcount == 1

    def remove(self, number: str) -> bool:
        with self.store.transaction() as db:
            return db.execute("DELETE FROM dnc WHERE number = ?", (number,)).rowcount == 1

    def get(self, number: str) -> DncEntry | None:
        rows = self.store.query("SELECT * FROM dnc WHERE number = ?", (number,))
        return _entry(rows[0]) if rows else None

    def entries(self) -> list[DncEntry]:
        return [_entry(r) for r in self.store.query("SELECT * FROM dnc ORDER BY number")]

    def import_csv(self, path: Path, *, region: str | None, now: float) -> ImportResult:
        """Numbers from the first column, or the `number` column when the header names one; a `reason`
        column is kept. Bad rows are listed by line and skipped; the good ones go in one transaction."""
        good: list[tuple[str, str]] = []
        issues: list[str] = []
        for line, raw, reason in _csv_rows(path):
            try:
                good.append((parse_number(raw, region), _clean_reason(reason)))
            except (NumberError, ValueError) as exc:
                issues.append(f"line {line}: {raw!r}: {getattr(exc, 'reason', exc)}")
        added = 0
        with self.store.transaction() as db:
            for number, reason in good:
                added += db.execute(
                    "INSERT INTO dnc (number, reason, source, added_at) VALUES (?, ?, 'import', ?)"
                    " ON CONFLICT (number) DO NOTHING",
                    (number, reason, now),
                ).rowcount
        return ImportResult(added, len(good) - added, issues)


def _csv_rows(path: Path) -> Iterator[tuple[int, str, str]]:
    """(line, number cell, reason cell) per non-empty row; a header row (no digit in its number cell) is
    read for the column names."""
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        number_col, reason_col = 0, None
        for i, row in enumerate(reader):
            cells = [c.strip() for c in row]
            if not any(cells):
                continue
            if i == 0 and not any(ch.isdigit() for ch in cells[0]):
                names = [c.lower() for c in cells]
                number_col = names.index("number") if "number" in names else 0
                reason_col = names.index("reason") if "reason" in names else None
                continue
            number = cells[number_col] if number_col < len(cells) else ""
            reason = cells[reason_col] if reason_col is not None and reason_col < len(cells) else ""
            yield reader.line_num, number, reason


def _entry(row: Any) -> DncEntry:
    return DncEntry(row["number"], row["reason"], row["source"], row["added_at"], row["call_id"])
