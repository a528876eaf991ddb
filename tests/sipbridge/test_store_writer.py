"""The store's writer thread (sipbridge/store_writer.py): the supervisor's event loop queues its call records
and one thread commits them, in order, a queue's worth per transaction. Checked on a real SQLite file, read
back through a second connection as another process (the CLI, `calls export`) would."""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path

import pytest

from sipbridge.store import Store, StoreError
from sipbridge.store_writer import StoreWriter


def reader(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path)
    db.row_factory = sqlite3.Row
    return db


def test_writes_are_committed_in_order_before_their_future_completes(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite3")
    writer = StoreWriter(store)
    try:
        writer.create_call("inbound", call_id="c1", remote_uri="sip:a@127.0.0.1")
        writer.mark_answered("c1")
        turns = [
            writer.add_turn("c1", "bot" if i % 2 else "caller", f"t{i}", start_ms=i, end_ms=i)
            for i in range(5)
        ]
        writer.add_event("c1", "media", {"underruns": 0})
        ended = writer.end_call("c1", "completed", reason="remote: bye", sip_status=200)
        assert ended.result(timeout=10) is True  # Store.end_call's answer comes back through the future
        assert [t.result() for t in turns] == [0, 1, 2, 3, 4]
        # Another connection sees the end, and everything queued before it, once the future is done.
        db = reader(store.path)  # type: ignore[arg-type]
        row = db.execute(
            "SELECT state, outcome, answered_at, sip_status FROM calls WHERE id = 'c1'"
        ).fetchone()
        assert (row["state"], row["outcome"], row["sip_status"]) == ("ended", "completed", 200)
        assert row["answered_at"] is not None
        texts = [r["text"] for r in db.execute("SELECT text FROM turns WHERE call_id = 'c1' ORDER BY idx")]
        assert texts == [f"t{i}" for i in range(5)]
        assert [r["kind"] for r in db.execute("SELECT kind FROM call_events")] == ["media"]
        db.close()
        assert writer.health()["written"] == 9 and writer.errors == 0
    finally:
        writer.close()
        store.close()


def test_a_failing_write_is_undone_alone_and_surfaced(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A turn for a call that has no row breaks the foreign key. Its savepoint is undone, its future holds
    the error, it is logged with its call and counted; the writes batched with it still commit."""
    store = Store(tmp_path / "db.sqlite3")
    writer = StoreWriter(store)
    try:
        with store.batch():  # hold the writer back, so that all of these land in one of its batches
            good = writer.create_call("inbound", call_id="ok")
            bad = writer.add_turn("missing", "caller", "lost?", start_ms=0, end_ms=1)
            after = writer.end_call("ok", "completed")
        with caplog.at_level(logging.ERROR, logger="sipbridge.store_writer"):
            with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
                bad.result(timeout=10)
            assert good.result(timeout=10) == "ok" and after.result(timeout=10) is True
        assert writer.errors == 1
        assert writer.last_error is not None and "AddTurn of call missing" in writer.last_error
        assert any("AddTurn of call missing" in r.getMessage() for r in caplog.records)
        assert store.get_call("ok").state == "ended"  # type: ignore[union-attr]
        assert store.list_turns("missing") == []
    finally:
        writer.close()
        store.close()


def test_close_commits_everything_still_queued_and_refuses_later_writes(tmp_path: Path) -> None:
    """What a stop does: the sessions' last writes are queued behind a slow commit when the supervisor
    closes the writer; close() returns only once all of them are in the file."""
    store = Store(tmp_path / "db.sqlite3")
    writer = StoreWriter(store)
    closer = threading.Thread(target=writer.close)
    with store.batch():  # the writer is stuck behind this transaction (a slow fsync) while calls end
        for i in range(300):
            writer.create_call("inbound", call_id=f"c{i}")
            writer.end_call(f"c{i}", "completed")
        closer.start()
        closer.join(timeout=0.2)
        assert closer.is_alive()  # close() waits for the queue, it does not drop it
    closer.join(timeout=30)
    assert not closer.is_alive()
    with pytest.raises(StoreError, match="after the store writer closed"):
        writer.end_call("c0", "failed")
    db = reader(store.path)  # type: ignore[arg-type]
    ended = db.execute(
        "SELECT COUNT(*) FROM calls WHERE state = 'ended' AND outcome = 'completed'"
    ).fetchone()
    assert ended[0] == 300
    db.close()
    # Queued while one commit ran: they went in a few transactions, not 600.
    assert writer.batches <= 4 and writer.written == 600
    store.close()


def test_a_failed_commit_fails_every_write_of_its_batch(tmp_path: Path) -> None:
    """When the transaction itself cannot be had (here: the connection is gone), none of the batch is
    written and each of its futures says so; the writer goes on with the next batch."""
    store = Store(tmp_path / "db.sqlite3")
    writer = StoreWriter(store)
    store.close()
    first = writer.create_call("inbound", call_id="x")
    with pytest.raises(sqlite3.ProgrammingError):
        first.result(timeout=10)
    assert writer.errors == 1 and "CreateCall of call x" in (writer.last_error or "")
    writer.close()
