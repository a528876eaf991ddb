"""SQLite store: the durable record of every call (and, in later issues, campaigns and results).

One `Store` per supervisor process owns one connection. SQLite serialises writers anyway, so a lock around
the connection is simpler and safer than a pool; callers on the asyncio loop use `asyncio.to_thread` for
anything slow. WAL mode lets `sipbridge calls export` read while the supervisor writes.

Schema versions live in `PRAGMA user_version` and migrate forward in order at open.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

log = logging.getLogger(__name__)

Direction = Literal["inbound", "outbound", "http"]

# Each entry upgrades the schema from version i to i + 1. Never edit a released entry; append a new one.
_MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE calls (
        id            TEXT PRIMARY KEY,
        direction     TEXT NOT NULL CHECK (direction IN ('inbound', 'outbound', 'http')),
        local_uri     TEXT,
        remote_uri    TEXT,
        remote_addr   TEXT,
        worker        INTEGER,
        state         TEXT NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'ended')),
        outcome       TEXT,
        reason        TEXT,
        sip_status    INTEGER,
        created_at    REAL NOT NULL,
        answered_at   REAL,
        ended_at      REAL,
        variables     TEXT NOT NULL DEFAULT '{}',
        results       TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX calls_created ON calls (created_at);
    CREATE TABLE call_events (
        call_id  TEXT NOT NULL REFERENCES calls (id) ON DELETE CASCADE,
        t        REAL NOT NULL,
        kind     TEXT NOT NULL,
        data     TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX call_events_call ON call_events (call_id, t);
    """,
    # 2: conversation turns, recording path and negotiated codec (issue 5).
    """
    CREATE TABLE turns (
        call_id     TEXT NOT NULL REFERENCES calls (id) ON DELETE CASCADE,
        idx         INTEGER NOT NULL,
        who         TEXT NOT NULL CHECK (who IN ('caller', 'bot')),
        text        TEXT NOT NULL DEFAULT '',
        start_ms    INTEGER,
        end_ms      INTEGER,
        audio_path  TEXT,
        interrupted INTEGER NOT NULL DEFAULT 0,
        created_at  REAL NOT NULL,
        PRIMARY KEY (call_id, idx)
    );
    ALTER TABLE calls ADD COLUMN codec TEXT;
    ALTER TABLE calls ADD COLUMN recording_path TEXT;
    """,
    # 3: agent results (issue 7): which agent handled the call and its verdict; captured fields go to the
    # existing `results` JSON column, written as they are captured so a crash mid-call keeps them.
    """
    ALTER TABLE calls ADD COLUMN agent TEXT;
    ALTER TABLE calls ADD COLUMN agent_outcome TEXT;
    ALTER TABLE calls ADD COLUMN results_at REAL;
    CREATE INDEX calls_agent_outcome ON calls (agent_outcome);
    """,
    # 4: outbound campaigns (issue 8). A contact is claimed (state dialing + its attempt row) in one
    # transaction before the INVITE, so a restart knows exactly which attempts were in flight. Times are the
    # dialer's (injectable) clock, epoch seconds.
    """
    CREATE TABLE campaigns (
        name        TEXT PRIMARY KEY,
        source      TEXT NOT NULL,
        status      TEXT NOT NULL CHECK (status IN ('running', 'paused', 'done')),
        row_issues  TEXT NOT NULL DEFAULT '[]',
        created_at  REAL NOT NULL,
        updated_at  REAL NOT NULL
    );
    CREATE TABLE contacts (
        id          INTEGER PRIMARY KEY,
        campaign    TEXT NOT NULL REFERENCES campaigns (name) ON DELETE CASCADE,
        row         INTEGER NOT NULL,
        number      TEXT NOT NULL,
        timezone    TEXT NOT NULL,
        name        TEXT NOT NULL DEFAULT '',
        variables   TEXT NOT NULL DEFAULT '{}',
        state       TEXT NOT NULL CHECK (state IN ('pending', 'dialing', 'retry', 'final')),
        attempts    INTEGER NOT NULL DEFAULT 0,
        next_at     REAL NOT NULL DEFAULT 0,
        outcome     TEXT,
        updated_at  REAL NOT NULL,
        UNIQUE (campaign, number)
    );
    CREATE INDEX contacts_due ON contacts (campaign, state, next_at);
    CREATE TABLE attempts (
        id          INTEGER PRIMARY KEY,
        campaign    TEXT NOT NULL REFERENCES campaigns (name) ON DELETE CASCADE,
        contact_id  INTEGER NOT NULL REFERENCES contacts (id) ON DELETE CASCADE,
        attempt     INTEGER NOT NULL,
        call_id     TEXT NOT NULL UNIQUE,
        started_at  REAL NOT NULL,
        ringing_ms  INTEGER,
        ended_at    REAL,
        sip_code    INTEGER,
        event       TEXT,
        amd         TEXT,
        outcome     TEXT,
        detail      TEXT NOT NULL DEFAULT '{}',
        UNIQUE (contact_id, attempt)
    );
    """,
    # 5: SIP requests refused before any call existed (issue 12), aggregated per minute: a flood adds at most
    # one row per (minute, method, status, reason) instead of one call row per request.
    """
    CREATE TABLE refusals (
        minute   INTEGER NOT NULL,
        method   TEXT NOT NULL,
        code     INTEGER NOT NULL,
        reason   TEXT NOT NULL,
        count    INTEGER NOT NULL,
        PRIMARY KEY (minute, method, code, reason)
    );
    """,
    # 6: received-RTP quality of a call at its end (issue 18), from PJSIP's stream statistics.
    """
    ALTER TABLE calls ADD COLUMN rtp_packets INTEGER;
    ALTER TABLE calls ADD COLUMN rtp_lost INTEGER;
    ALTER TABLE calls ADD COLUMN rtp_late INTEGER;
    ALTER TABLE calls ADD COLUMN rtp_jitter_ms REAL;
    ALTER TABLE calls ADD COLUMN rtp_jitter_max_ms REAL;
    """,
    # 7: compliance (issue 20). The do-not-call / suppression list, one row per E.164 number, checked inside
    # the claim transaction; contacts by number and attempts by start time make the per-number daily cap
    # (attempts to one number across all campaigns since the callee's local midnight) an index lookup. Each
    # attempt keeps the caller ID it was placed with (answer and short-call rates per caller ID).
    """
    CREATE TABLE dnc (
        number      TEXT PRIMARY KEY,
        reason      TEXT NOT NULL DEFAULT '',
        source      TEXT NOT NULL CHECK (source IN ('cli', 'http', 'import', 'opt-out')),
        call_id     TEXT,
        added_at    REAL NOT NULL
    );
    CREATE INDEX contacts_number ON contacts (number);
    CREATE INDEX attempts_contact_started ON attempts (contact_id, started_at);
    ALTER TABLE attempts ADD COLUMN caller_id TEXT;
    CREATE INDEX attempts_caller_id ON attempts (caller_id, started_at);
    """,
)

SCHEMA_VERSION = len(_MIGRATIONS)


class StoreError(Exception):
    """The database cannot be opened or is from a newer sipbridge."""


@dataclass(frozen=True)
class CallRecord:
    id: str
    direction: str
    remote_uri: str | None
    state: str
    outcome: str | None
    reason: str | None
    sip_status: int | None
    created_at: float
    answered_at: float | None
    ended_at: float | None
    variables: dict[str, Any]
    results: dict[str, Any]
    worker: int | None = None
    codec: str | None = None
    recording_path: str | None = None
    agent: str | None = None
    agent_outcome: str | None = None


@dataclass(frozen=True)
class TurnRecord:
    idx: int
    who: str
    text: str
    start_ms: int | None
    end_ms: int | None
    audio_path: str | None
    interrupted: bool


class Store:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # check_same_thread=False: the lock below, not the creating thread, guards the connection.
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open SQLite database {path}: {exc}") from exc
        try:
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA foreign_keys = ON")
            self._db.execute("PRAGMA busy_timeout = 5000")
            self._check_integrity()
            self._migrate()
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise StoreError(f"{path} is not a usable SQLite database: {exc}") from exc

    def _check_integrity(self) -> None:
        """Refuse a damaged database at open, not at the first call that touches a bad page (which would
        drop every call). quick_check reads every page but skips index cross-checks: seconds per GB."""
        problems = [str(row[0]) for row in self._db.execute("PRAGMA quick_check(5)")]
        if problems != ["ok"]:
            self._db.close()
            found = "; ".join(p.replace("*** in database main ***", "").strip() for p in problems)
            found = found.replace("\n", "; ")[:300]
            raise StoreError(
                f"{self.path} is damaged (PRAGMA quick_check: {found}); restore it from a"
                f" backup, or salvage it with `sqlite3 {self.path} .recover | sqlite3 new.sqlite3`"
            )

    def _migrate(self) -> None:
        version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} has schema version {version}, newer than this sipbridge ({SCHEMA_VERSION})"
            )
        for target in range(version, SCHEMA_VERSION):
            # executescript() commits on its own, so the transaction is spelled out inside the script:
            # a migration and its version bump land together or not at all.
            with self._lock:
                self._db.executescript(
                    f"BEGIN IMMEDIATE;\n{_MIGRATIONS[target]}\nPRAGMA user_version = {target + 1};\nCOMMIT;"
                )
            log.info("store %s migrated to schema version %d", self.path, target + 1)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction for callers that own their tables (the dialer's campaign state)."""
        with self._transaction() as db:
            yield db

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return list(self._db.execute(sql, params))

    def writable(self) -> bool:
        """Can a write transaction start now (file writable, its write lock free within 200 ms)? For /readyz:
        a probe must answer quickly, so it does not wait the full busy_timeout of real writes."""
        with self._lock:
            self._db.execute("PRAGMA busy_timeout = 200")
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.execute("ROLLBACK")
                return True
            except sqlite3.Error:
                return False
            finally:
                self._db.execute("PRAGMA busy_timeout = 5000")

    @property
    def schema_version(self) -> int:
        with self._lock:
            return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ------------------------------------------------------------------------------------ calls

    def create_call(
        self,
        direction: Direction,
        *,
        remote_uri: str | None = None,
        local_uri: str | None = None,
        remote_addr: str | None = None,
        worker: int | None = None,
        variables: dict[str, Any] | None = None,
        call_id: str | None = None,
        now: float | None = None,
    ) -> str:
        call_id = call_id or uuid.uuid4().hex
        with self._transaction() as db:
            db.execute(
                "INSERT INTO calls (id, direction, local_uri, remote_uri, remote_addr, worker, created_at,"
                " variables) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    call_id,
                    direction,
                    local_uri,
                    remote_uri,
                    remote_addr,
                    worker,
                    time.time() if now is None else now,
                    json.dumps(variables or {}),
                ),
            )
        return call_id

    def add_event(self, call_id: str, kind: str, data: dict[str, Any] | None = None) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT INTO call_events (call_id, t, kind, data) VALUES (?, ?, ?, ?)",
                (call_id, time.time(), kind, json.dumps(data or {})),
            )

    def mark_answered(self, call_id: str, now: float | None = None) -> None:
        with self._transaction() as db:
            db.execute(
                "UPDATE calls SET answered_at = ? WHERE id = ? AND answered_at IS NULL",
                (time.time() if now is None else now, call_id),
            )

    def end_call(
        self,
        call_id: str,
        outcome: str,
        *,
        reason: str | None = None,
        sip_status: int | None = None,
        results: dict[str, Any] | None = None,
        now: float | None = None,
    ) -> bool:
        """Close a call once; a second end (e.g. BYE racing a worker crash) is ignored and returns False."""
        with self._transaction() as db:
            cursor = db.execute(
                "UPDATE calls SET state = 'ended', outcome = ?, reason = ?, sip_status = ?, ended_at = ?,"
                " results = COALESCE(?, results) WHERE id = ? AND state = 'active'",
                (
                    outcome,
                    reason,
                    sip_status,
                    time.time() if now is None else now,
                    None if results is None else json.dumps(results),
                    call_id,
                ),
            )
            return cursor.rowcount == 1

    def set_rtp_quality(
        self, call_id: str, *, packets: int, lost: int, late: int, jitter_ms: float, jitter_max_ms: float
    ) -> None:
        with self._transaction() as db:
            db.execute(
                "UPDATE calls SET rtp_packets = ?, rtp_lost = ?, rtp_late = ?, rtp_jitter_ms = ?,"
                " rtp_jitter_max_ms = ? WHERE id = ?",
                (packets, lost, late, jitter_ms, jitter_max_ms, call_id),
            )

    def set_call_media(self, call_id: str, *, codec: str | None, recording_path: str | None) -> None:
        with self._transaction() as db:
            db.execute(
                "UPDATE calls SET codec = ?, recording_path = ? WHERE id = ?",
                (codec, recording_path, call_id),
            )

    def set_agent_results(
        self,
        call_id: str,
        *,
        agent: str | None = None,
        results: dict[str, Any] | None = None,
        outcome: str | None = None,
    ) -> None:
        """Record the agent of a call, its captured fields (the whole dict) and its outcome; None keeps."""
        with self._transaction() as db:
            db.execute(
                "UPDATE calls SET agent = COALESCE(?, agent), results = COALESCE(?, results),"
                " agent_outcome = COALESCE(?, agent_outcome), results_at = ? WHERE id = ?",
                (agent, None if results is None else json.dumps(results), outcome, time.time(), call_id),
            )

    def add_turn(
        self,
        call_id: str,
        who: Literal["caller", "bot"],
        text: str,
        *,
        start_ms: int | None,
        end_ms: int | None,
        audio_path: str | None = None,
        interrupted: bool = False,
    ) -> int:
        """Append a turn; returns its index within the call (0, 1, ...)."""
        with self._transaction() as db:
            row = db.execute("SELECT COALESCE(MAX(idx) + 1, 0) FROM turns WHERE call_id = ?", (call_id,))
            idx = int(row.fetchone()[0])
            db.execute(
                "INSERT INTO turns (call_id, idx, who, text, start_ms, end_ms, audio_path, interrupted,"
                " created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (call_id, idx, who, text, start_ms, end_ms, audio_path, int(interrupted), time.time()),
            )
        return idx

    def list_turns(self, call_id: str) -> list[TurnRecord]:
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM turns WHERE call_id = ? ORDER BY idx", (call_id,)
            ).fetchall()
        return [
            TurnRecord(
                idx=r["idx"],
                who=r["who"],
                text=r["text"],
                start_ms=r["start_ms"],
                end_ms=r["end_ms"],
                audio_path=r["audio_path"],
                interrupted=bool(r["interrupted"]),
            )
            for r in rows
        ]

    def unfinished_recordings(self) -> list[str]:
        """Recording paths of calls still active (a previous process died with them open)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT recording_path FROM calls WHERE state = 'active' AND recording_path IS NOT NULL"
            ).fetchall()
        return [str(r[0]) for r in rows]

    def fail_unfinished(self, reason: str) -> int:
        """Record calls left active by a previous process (crash, kill -9) as failed: never silently lost."""
        with self._transaction() as db:
            cursor = db.execute(
                "UPDATE calls SET state = 'ended', outcome = 'failed', reason = ?, ended_at = ?"
                " WHERE state = 'active'",
                (reason, time.time()),
            )
            return cursor.rowcount

    def add_refusals(self, counts: list[tuple[str, int, str, int]], now: float | None = None) -> None:
        """Add refused requests to their minute's aggregate rows (method, code, reason, count)."""
        minute = int((time.time() if now is None else now) // 60)
        with self._transaction() as db:
            db.executemany(
                "INSERT INTO refusals (minute, method, code, reason, count) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (minute, method, code, reason) DO UPDATE SET count = count + excluded.count",
                [(minute, m, c, r, n) for m, c, r, n in counts],
            )

    def get_call(self, call_id: str) -> CallRecord | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM calls WHERE id = ?", (call_id,)).fetchone()
        return None if row is None else _call_from_row(row)

    def list_calls(self, *, limit: int = 100) -> list[CallRecord]:
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM calls ORDER BY created_at DESC LIMIT ?", (limit,)
            ).fetchall()
        return [_call_from_row(row) for row in rows]

    def all_calls(self) -> list[CallRecord]:
        """Every call, oldest first (exports)."""
        with self._lock:
            rows = self._db.execute("SELECT * FROM calls ORDER BY created_at, id").fetchall()
        return [_call_from_row(row) for row in rows]

    def count_active_calls(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM calls WHERE state = 'active'").fetchone()[0])


def open_existing(path: Path) -> Store:
    """Open a database that must already exist (export and status commands must not create an empty one)."""
    if not path.is_file():
        raise StoreError(f"no database at {path}")
    return Store(path)


def _call_from_row(row: sqlite3.Row) -> CallRecord:
    return CallRecord(
        id=row["id"],
        direction=row["direction"],
        remote_uri=row["remote_uri"],
        state=row["state"],
        outcome=row["outcome"],
        reason=row["reason"],
        sip_status=row["sip_status"],
        created_at=row["created_at"],
        answered_at=row["answered_at"],
        ended_at=row["ended_at"],
        variables=json.loads(row["variables"]),
        results=json.loads(row["results"]),
        worker=row["worker"],
        codec=row["codec"],
        recording_path=row["recording_path"],
        agent=row["agent"],
        agent_outcome=row["agent_outcome"],
    )
