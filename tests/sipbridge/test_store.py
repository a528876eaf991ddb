"""The SQLite store against a real database file."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from sipbridge.store import SCHEMA_VERSION, Store, StoreError


def test_call_lifecycle(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.sqlite3")
    call_id = store.create_call("inbound", remote_uri="sip:a@127.0.0.1", variables={"name": "Jo"}, now=100.0)
    store.mark_answered(call_id, now=101.0)
    store.add_event(call_id, "dtmf", {"digit": "5"})
    assert store.count_active_calls() == 1
    assert store.end_call(
        call_id, "completed", reason="caller hung up", sip_status=200, results={"x": 1}, now=130.0
    )
    # A second end (BYE racing a worker crash) must not overwrite the first outcome.
    assert not store.end_call(call_id, "failed", reason="worker died")
    record = store.get_call(call_id)
    assert record is not None
    assert (record.state, record.outcome, record.reason, record.sip_status) == (
        "ended", "completed", "caller hung up", 200,
    )  # fmt: skip
    assert (record.created_at, record.answered_at, record.ended_at) == (100.0, 101.0, 130.0)
    assert record.variables == {"name": "Jo"} and record.results == {"x": 1}
    assert store.count_active_calls() == 0
    store.close()


def test_reopen_keeps_data_and_fails_unfinished(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    store = Store(path)
    done = store.create_call("outbound")
    store.end_call(done, "busy", sip_status=486)
    open_call = store.create_call("inbound")
    store.close()

    store = Store(path)
    assert store.schema_version == SCHEMA_VERSION
    assert store.fail_unfinished("supervisor restarted") == 1
    failed = store.get_call(open_call)
    assert failed is not None and failed.outcome == "failed" and failed.reason == "supervisor restarted"
    kept = store.get_call(done)
    assert kept is not None and kept.outcome == "busy"
    assert [c.id for c in store.list_calls()] == [open_call, done]


def test_bad_direction_rejected(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.sqlite3")
    with pytest.raises(sqlite3.IntegrityError):
        store.create_call("sideways")  # type: ignore[arg-type]


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(StoreError, match="newer than this sipbridge"):
        Store(path)


def test_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    path.write_bytes(b"garbage" * 1000)
    with pytest.raises(StoreError, match="not a usable SQLite database"):
        Store(path)


def test_open_existing_never_creates_a_database(tmp_path: Path) -> None:
    from sipbridge.store import open_existing

    with pytest.raises(StoreError, match="no database at"):
        open_existing(tmp_path / "missing.sqlite3")
    assert not (tmp_path / "missing.sqlite3").exists()
    Store(tmp_path / "s.sqlite3").close()
    open_existing(tmp_path / "s.sqlite3").close()


def corrupt_pages(path: Path) -> None:
    """Overwrite pages in the middle of a database, its header (page 1) intact: what a bad disk does."""
    data = bytearray(path.read_bytes())
    page = int.from_bytes(data[16:18], "big")
    assert len(data) >= 6 * page
    for n in range(2, len(data) // page - 1):
        data[n * page + 100 : n * page + 400] = b"\xa5" * 300
    path.write_bytes(bytes(data))


def test_damaged_pages_are_refused_at_open_with_a_clear_message(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    store = Store(path)
    for i in range(300):
        store.create_call("inbound", remote_uri=f"sip:caller{i}@127.0.0.1", variables={"i": "x" * 200})
    store._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()
    corrupt_pages(path)
    with pytest.raises(StoreError, match=r"is damaged \(PRAGMA quick_check: .+\); restore it from a backup"):
        Store(path)


def test_writable_is_false_while_another_writer_holds_the_lock(tmp_path: Path) -> None:
    """/readyz's store check: a database locked by another writer (a stuck migration) is not ready."""
    store = Store(tmp_path / "db.sqlite3")
    assert store.writable()
    other = sqlite3.connect(tmp_path / "db.sqlite3", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    assert not store.writable()
    other.execute("COMMIT")
    assert store.writable()
    # Real writes still wait their full busy_timeout: the probe's short wait was put back.
    assert store.query("PRAGMA busy_timeout")[0][0] == 5000
    other.close()
    store.close()


def test_rtp_quality_is_stored_with_the_call(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite3")
    call_id = store.create_call("inbound", remote_uri="sip:a@b")
    store.set_rtp_quality(call_id, packets=500, lost=3, late=1, jitter_ms=2.5, jitter_max_ms=9.0)
    columns = "rtp_packets, rtp_lost, rtp_late, rtp_jitter_ms, rtp_jitter_max_ms"
    (row,) = store.query(f"SELECT {columns} FROM calls")
    assert tuple(row) == (500, 3, 1, 2.5, 9.0)
    store.close()
