"""Durability of the SQLite store: a writer killed (SIGKILL) in the middle of its writes loses no committed
call or turn, and the file stays sound. The writer is a separate process opening `Store` exactly as the
supervisor does; it reports each write only after `Store` returned, i.e. after COMMIT."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

from sipbridge.store import Store

ROOT = Path(__file__).resolve().parents[2]

_WRITER = """
import sys
from pathlib import Path
from sipbridge.store import Store

store = Store(Path(sys.argv[1]))
i = 0
while True:
    call = store.create_call("inbound", remote_uri=f"sip:{i}@127.0.0.1")
    print("call", call, flush=True)
    for k in range(3):
        store.add_turn(call, "caller" if k % 2 else "bot", f"turn {k} of call {i}", start_ms=k, end_ms=k + 1)
        print("turn", call, k, flush=True)
    store.end_call(call, "completed")
    print("ended", call, flush=True)
    i += 1
"""


def test_a_killed_writer_loses_no_committed_call_or_turn(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    writer = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert writer.stdout is not None
    committed: list[list[str]] = []
    for line in writer.stdout:
        committed.append(line.split())
        if len(committed) == 150:  # mid-stream: the writer is inside its next transaction or between two
            writer.send_signal(signal.SIGKILL)
            break
    writer.wait(timeout=30)
    writer.stdout.close()
    assert writer.returncode == -signal.SIGKILL

    # The file is sound (the WAL is replayed at open) ...
    raw = sqlite3.connect(path)
    assert raw.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    raw.close()
    store = Store(path)
    # ... and every write reported as committed is there.
    for kind, call_id, *rest in committed:
        record = store.get_call(call_id)
        assert record is not None, (kind, call_id)
        if kind == "turn":
            assert int(rest[0]) in [t.idx for t in store.list_turns(call_id)]
        if kind == "ended":
            assert record.state == "ended" and record.outcome == "completed"
    # The call the kill interrupted is recorded as failed at the next start, not left active.
    assert store.fail_unfinished("supervisor stopped while the call was active") <= 1
    assert store.count_active_calls() == 0


def test_the_journal_settings_are_the_chosen_ones(tmp_path: Path) -> None:
    """WAL (readers while writing; a killed writer's commits are replayed) and synchronous FULL (a commit is
    on disk when it returns: power loss keeps it too). See docs/RELIABILITY.md."""
    store = Store(tmp_path / "db.sqlite3")
    mode = store.query("PRAGMA journal_mode")[0][0]
    sync = store.query("PRAGMA synchronous")[0][0]
    assert (mode, sync) == ("wal", 2)
    store.close()
