"""The store: the durable record of every call, campaign and result, in SQLite or PostgreSQL.

One `Store` per supervisor process owns one connection. SQLite serialises writers anyway, so a lock around
the connection is simpler and safer than a pool. The supervisor's event loop does not call the write methods
itself: its call records go through `sipbridge.store_writer.StoreWriter`, one thread that applies them in
order and commits a whole queue's worth in one transaction (`batch`: one fsync, each write its own
savepoint). WAL mode lets `sipbridge calls export` read while the supervisor writes.

SQLite (a file) is the embedded default; PostgreSQL (`storage.url: postgresql://...`) is one store shared by
several hosts. Both run the same SQL and the same migrations: every statement is written once, in the common
subset (`?` placeholders, `ON CONFLICT DO NOTHING`, `RETURNING`), and `sipbridge.store_dialect` translates the
little that differs (placeholders, column types in migrations, where the schema version lives, row locks).

Schema versions migrate forward in order at open. Rows a process leaves open (active calls, dial attempts)
carry its `owner` id, so a host that starts recovers only what a dead process left, never a live host's calls.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from sipbridge.store_dialect import Dialect, DialectError, connect, is_url, redact

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
    # 8: the process that owns an open call or attempt (issue 19: several hosts on one PostgreSQL store). A
    # starting host closes only rows whose owner is gone, not those of hosts still running.
    """
    ALTER TABLE calls ADD COLUMN owner TEXT;
    ALTER TABLE attempts ADD COLUMN owner TEXT;
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


class _Tx:
    """The connection inside one transaction, speaking the common SQL (`?` placeholders)."""

    def __init__(self, db: Any, dialect: Dialect) -> None:
        self._db = db
        self._dialect = dialect

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        return self._db.execute(self._dialect.sql(sql), params)

    def executemany(self, sql: str, params: list[tuple[Any, ...]]) -> Any:
        if hasattr(self._db, "executemany"):
            return self._db.executemany(self._dialect.sql(sql), params)
        with self._db.cursor() as cur:
            cur.executemany(self._dialect.sql(sql), params)
            return cur


class Store:
    def __init__(self, path: Path | str) -> None:
        """`path`: an SQLite file, or a `postgresql://` URL."""
        self.path = path
        self.where = redact(str(path))
        self.owner = uuid.uuid4().hex
        # Re-entrant: the writer thread's `batch` holds it around the writes (each a savepoint) it groups.
        self._lock = threading.RLock()
        self._batched = False
        try:
            self._db, self._dialect = connect(path, self.owner)
        except DialectError as exc:
            raise StoreError(str(exc)) from exc
        try:
            self._migrate()
        except self._dialect.errors as exc:
            self._db.close()
            raise StoreError(f"{self.where} is not a usable {self._dialect.label} database: {exc}") from exc

    @property
    def dialect(self) -> Dialect:
        return self._dialect

    def _migrate(self) -> None:
        version = self._dialect.read_version(self._db)
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.where} has schema version {version}, newer than this sipbridge ({SCHEMA_VERSION})"
            )
        for target in range(version, SCHEMA_VERSION):
            # A migration and its version bump land together or not at all; with several hosts on one
            # PostgreSQL store, the first to start migrates and the others find the work done.
            with self._lock:
                done = self._dialect.migrate(self._db, _MIGRATIONS[target], target + 1)
            if done:
                log.info("store %s migrated to schema version %d", self.where, target + 1)

    @contextmanager
    def _transaction(self) -> Iterator[_Tx]:
        with self._lock:
            if self._batched:
                with self._savepoint() as db:
                    yield db
                return
            self._db.execute(self._dialect.begin)
            try:
                yield _Tx(self._db, self._dialect)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    @contextmanager
    def _savepoint(self) -> Iterator[_Tx]:
        """One write inside a batch: undone alone if it fails, so the batch's other writes still commit."""
        self._db.execute("SAVEPOINT write")
        try:
            yield _Tx(self._db, self._dialect)
        except BaseException:
            self._db.execute("ROLLBACK TO SAVEPOINT write")
            self._db.execute("RELEASE SAVEPOINT write")
            raise
        self._db.execute("RELEASE SAVEPOINT write")

    @contextmanager
    def batch(self) -> Iterator[None]:
        """One transaction around several writes (the writer thread's group commit): the write methods called
        inside become savepoints, and all of them commit together, with one fsync. If BEGIN or COMMIT fails,
        none of them is written."""
        with self._lock:
            self._db.execute(self._dialect.begin)
            self._batched = True
            try:
                yield
                self._db.execute("COMMIT")
            except BaseException:
                with suppress(
                    *self._dialect.errors
                ):  # a failed COMMIT may have ended the transaction already
                    self._db.execute("ROLLBACK")
                raise
            finally:
                self._batched = False

    @contextmanager
    def transaction(self) -> Iterator[_Tx]:
        """One write transaction for callers that own their tables (the dialer's campaign state)."""
        with self._transaction() as db:
            yield db

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        """Rows (mapping column name to value) of one read, in the common SQL."""
        with self._lock:
            return list(self._db.execute(self._dialect.sql(sql), params))

    def orphaned(self, column: str) -> tuple[str, tuple[Any, ...]]:
        """A condition (and its parameters) on an `owner` column: true when the owning process is gone."""
        return self._dialect.orphaned(column), (self.owner,)

    def writable(self) -> bool:
        """Can a write transaction start now (database writable, its write lock free within 200 ms)? For
        /readyz: a probe must answer quickly, so it does not wait the full timeout of real writes. A
        PostgreSQL connection the server dropped (restart, failover, idle kill) is opened again here, so
        the host is ready again, and writes work again, from the first probe after the server is back."""
        with self._lock:
            if self._dialect.lost(self._db):
                try:
                    self._db, self._dialect = connect(self.path, self.owner)
                except DialectError as exc:
                    log.warning("store %s: connection lost and not back yet: %s", self.where, exc)
                    return False
                log.warning("store %s: connection was lost; connected again", self.where)
            return self._dialect.writable(self._db)

    @property
    def schema_version(self) -> int:
        with self._lock:
            return self._dialect.read_version(self._db)

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
                " variables, owner) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    call_id,
                    direction,
                    local_uri,
                    remote_uri,
                    remote_addr,
                    worker,
                    time.time() if now is None else now,
                    json.dumps(variables or {}),
                    self.owner,
                ),
            )
        return call_id

    def add_event(
        self, call_id: str, kind: str, data: dict[str, Any] | None = None, *, now: float | None = None
    ) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT INTO call_events (call_id, t, kind, data) VALUES (?, ?, ?, ?)",
                (call_id, time.time() if now is None else now, kind, json.dumps(data or {})),
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
            row = db.execute("SELECT COALESCE(MAX(idx) + 1, 0) AS n FROM turns WHERE call_id = ?", (call_id,))
            idx = int(row.fetchone()["n"])
            db.execute(
                "INSERT INTO turns (call_id, idx, who, text, start_ms, end_ms, audio_path, interrupted,"
                " created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (call_id, idx, who, text, start_ms, end_ms, audio_path, int(interrupted), time.time()),
            )
        return idx

    def list_turns(self, call_id: str) -> list[TurnRecord]:
        rows = self.query("SELECT * FROM turns WHERE call_id = ? ORDER BY idx", (call_id,))
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
        """Recording paths of calls still active (a previous process died with them open). On a shared
        PostgreSQL store only those of processes that are gone: a live host's recordings are its own."""
        gone, params = self.orphaned("owner")
        rows = self.query(
            "SELECT recording_path FROM calls"
            f" WHERE state = 'active' AND recording_path IS NOT NULL AND {gone}",
            params,
        )
        return [str(r["recording_path"]) for r in rows]

    def fail_unfinished(self, reason: str) -> int:
        """Record calls left active by a previous process (crash, kill -9) as failed: never silently lost.
        Calls of processes still running (other hosts on a shared store) are theirs to end."""
        gone, params = self.orphaned("owner")
        with self._transaction() as db:
            cursor = db.execute(
                "UPDATE calls SET state = 'ended', outcome = 'failed', reason = ?, ended_at = ?"
                f" WHERE state = 'active' AND {gone}",
                (reason, time.time(), *params),
            )
            return cursor.rowcount

    def add_refusals(self, counts: list[tuple[str, int, str, int]], now: float | None = None) -> None:
        """Add refused requests to their minute's aggregate rows (method, code, reason, count)."""
        minute = int((time.time() if now is None else now) // 60)
        with self._transaction() as db:
            db.executemany(
                "INSERT INTO refusals (minute, method, code, reason, count) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (minute, method, code, reason)"
                " DO UPDATE SET count = refusals.count + excluded.count",
                [(minute, m, c, r, n) for m, c, r, n in counts],
            )

    def get_call(self, call_id: str) -> CallRecord | None:
        rows = self.query("SELECT * FROM calls WHERE id = ?", (call_id,))
        return _call_from_row(rows[0]) if rows else None

    def list_calls(self, *, limit: int = 100) -> list[CallRecord]:
        rows = self.query("SELECT * FROM calls ORDER BY created_at DESC LIMIT ?", (limit,))
        return [_call_from_row(row) for row in rows]

    def all_calls(self) -> list[CallRecord]:
        """Every call, oldest first (exports)."""
        rows = self.query("SELECT * FROM calls ORDER BY created_at, id")
        return [_call_from_row(row) for row in rows]

    def count_active_calls(self) -> int:
        return int(self.query("SELECT COUNT(*) AS n FROM calls WHERE state = 'active'")[0]["n"])


def open_existing(path: Path | str) -> Store:
    """Open a database that must already exist (export and status commands must not create an empty one).
    A PostgreSQL URL names a server's database, which exists or fails to connect."""
    if is_url(str(path)):
        return Store(str(path))
    path = Path(path)
    if not path.is_file():
        raise StoreError(f"no database at {path}")
    return Store(path)


def _call_from_row(row: Any) -> CallRecord:
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
