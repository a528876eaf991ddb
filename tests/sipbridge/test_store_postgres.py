"""The store on a real PostgreSQL (the test session's own server, `tests/sipbridge/postgres.py`): the same
schema and migrations as SQLite, recovery that leaves live hosts alone, contacts claimed across hosts with
`SKIP LOCKED`, and `calls export` from the shared database."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest
import yaml

from sipbridge.cli import main
from sipbridge.dialer.contacts import Contact
from sipbridge.dialer.state import CampaignState
from sipbridge.store import SCHEMA_VERSION, Store, StoreError


def test_schema_migrations_and_call_lifecycle(pg_url: str) -> None:
    store = Store(pg_url)
    assert store.schema_version == SCHEMA_VERSION
    # Epoch seconds with microseconds survive: REAL is translated to an 8-byte float (a 4-byte one would
    # round this to about two minutes).
    t0 = 1767800000.123456
    call_id = store.create_call("inbound", remote_uri="sip:a@127.0.0.1", variables={"name": "Jo"}, now=t0)
    store.mark_answered(call_id, now=t0 + 1)
    store.add_event(call_id, "dtmf", {"digit": "5"})
    assert store.add_turn(call_id, "bot", "Hello", start_ms=0, end_ms=900) == 0
    assert store.add_turn(call_id, "caller", "100% yes?", start_ms=1000, end_ms=1500) == 1
    store.set_agent_results(call_id, agent="script", results={"employed": True}, outcome="verified")
    assert store.end_call(call_id, "completed", reason="caller hung up", sip_status=200, now=t0 + 30)
    assert not store.end_call(call_id, "failed", reason="worker died")
    record = store.get_call(call_id)
    assert record is not None
    assert (record.created_at, record.answered_at, record.ended_at) == (t0, t0 + 1, t0 + 30)
    assert (record.outcome, record.agent_outcome, record.results) == (
        "completed",
        "verified",
        {"employed": True},
    )
    assert [t.text for t in store.list_turns(call_id)] == ["Hello", "100% yes?"]
    with pytest.raises(psycopg.errors.CheckViolation):
        store.create_call("sideways")  # type: ignore[arg-type]
    store.close()
    # Reopening migrates nothing and keeps the data.
    again = Store(pg_url)
    assert again.schema_version == SCHEMA_VERSION and [c.id for c in again.all_calls()] == [call_id]
    again.close()


def test_hosts_starting_together_migrate_once(pg_url: str) -> None:
    with ThreadPoolExecutor(4) as pool:
        stores = list(pool.map(lambda _: Store(pg_url), range(4)))
    assert {s.schema_version for s in stores} == {SCHEMA_VERSION}
    with psycopg.connect(pg_url) as db:
        assert db.execute("SELECT version FROM sipbridge_schema").fetchall() == [(SCHEMA_VERSION,)]
    for s in stores:
        s.close()


def test_newer_schema_is_refused_and_bad_urls_are_named(pg_url: str) -> None:
    Store(pg_url).close()
    with psycopg.connect(pg_url, autocommit=True) as db:
        db.execute("UPDATE sipbridge_schema SET version = %s", (SCHEMA_VERSION + 1,))
    with pytest.raises(StoreError, match="newer than this sipbridge"):
        Store(pg_url)
    with pytest.raises(StoreError, match=r"cannot connect to PostgreSQL at postgresql://u:\*\*\*@/nope"):
        Store(pg_url.replace("sipbridge@", "u:secret@").replace("/t_", "/nope_"))


def test_a_starting_host_fails_only_calls_of_processes_that_are_gone(pg_url: str) -> None:
    host_a = Store(pg_url)
    live = host_a.create_call("inbound")
    host_b = Store(pg_url)
    assert host_b.fail_unfinished("supervisor stopped while the call was active") == 0
    assert host_b.count_active_calls() == 1
    host_a.close()  # host A dies: its session ends
    host_c = Store(pg_url)
    assert host_c.fail_unfinished("supervisor stopped while the call was active") == 1
    failed = host_c.get_call(live)
    assert failed is not None and failed.outcome == "failed"
    host_b.close()
    host_c.close()


def _campaign(store: Store, n: int) -> CampaignState:
    state = CampaignState(store, "c1")
    contacts = [
        Contact(row=i + 2, number=f"+1201555{1000 + i}", timezone="America/New_York") for i in range(n)
    ]
    state.import_campaign("c1.yaml", contacts, [], now=100.0)
    return state


def test_a_contact_another_host_is_claiming_is_skipped_not_waited_for(pg_url: str) -> None:
    state_a = _campaign(Store(pg_url), 2)
    state_b = CampaignState(Store(pg_url), "c1")
    first = state_b.due(100.0, 1)[0]
    # Host A is inside its claim transaction on the first contact (row locked, not yet committed).
    with state_a.store.transaction() as db:
        db.execute("SELECT id FROM contacts WHERE id = ? FOR UPDATE", (first.id,))
        outcome: list[object] = []
        worker = threading.Thread(target=lambda: outcome.append(state_b.claim(first, 100.0)))
        worker.start()
        worker.join(timeout=10)
        # Without SKIP LOCKED host B would block here until host A's transaction ends.
        assert not worker.is_alive() and outcome == [None]
    # The lock is gone (host A's transaction ended without claiming): now host B can take it.
    claim = state_b.claim(first, 100.0)
    assert claim is not None and claim.attempt == 1


def test_hosts_racing_for_the_same_contacts_claim_each_once(pg_url: str) -> None:
    n = 60
    _campaign(Store(pg_url), n)
    hosts = [CampaignState(Store(pg_url), "c1") for _ in range(3)]
    barrier = threading.Barrier(len(hosts))

    def claim_all(state: CampaignState) -> list[int]:
        due = state.due(100.0, n)  # every host sees every contact due
        barrier.wait()
        return [c.contact.id for c in (state.claim(contact, 100.0) for contact in due) if c is not None]

    with ThreadPoolExecutor(len(hosts)) as pool:
        claimed = list(pool.map(claim_all, hosts))
    every = [cid for ids in claimed for cid in ids]
    assert sorted(every) == sorted(set(every)) and len(every) == n
    attempts = hosts[0].attempts()
    assert len(attempts) == n and {a["attempt"] for a in attempts} == {1}


def test_calls_export_and_campaigns_read_the_shared_database(
    pg_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    host_a, host_b = Store(pg_url), Store(pg_url)
    for store, who in ((host_a, "a"), (host_b, "b")):
        call = store.create_call(
            "outbound", remote_uri=f"sip:{who}@127.0.0.1", now=100.0 if who == "a" else 101.0
        )
        store.set_agent_results(call, agent="script", results={"host": who}, outcome="verified")
        store.end_call(call, "completed", now=130.0)
    _campaign(host_a, 1)
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump({"storage": {"url": pg_url, "sqlite_path": str(tmp_path / "no.sqlite3")}})
    )
    capsys.readouterr()
    assert main(["calls", "export", "-c", str(config), "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["remote_uri"], r["results"]) for r in rows] == [
        ("sip:a@127.0.0.1", {"host": "a"}),
        ("sip:b@127.0.0.1", {"host": "b"}),
    ]
    assert main(["calls", "export", "--db", pg_url, "--format", "csv"]) == 0
    assert capsys.readouterr().out.splitlines()[0].endswith("results.host")
    assert main(["campaign", "status", "c1", "-c", str(config)]) == 0
    assert json.loads(capsys.readouterr().out)["contacts"] == {"pending": 1}
    assert not (tmp_path / "no.sqlite3").exists()


def test_doctor_reads_the_shared_store_without_writing(pg_url: str) -> None:
    from sipbridge.tools.checks import check_postgres

    fresh = check_postgres(pg_url)
    assert (fresh.status, fresh.detail.endswith(f"schema 0 of {SCHEMA_VERSION}")) == ("ok", True), fresh
    with psycopg.connect(pg_url) as db:  # nothing was created
        assert db.execute("SELECT to_regclass('sipbridge_schema')").fetchone() == (None,)
    Store(pg_url).close()
    assert check_postgres(pg_url).status == "ok"
    bad = check_postgres(pg_url.replace("/t_", "/missing_"))
    assert bad.status == "fail" and "cannot connect to PostgreSQL" in bad.detail


def test_writable_says_when_this_host_cannot_write_and_recovers(pg_url: str) -> None:
    """The /readyz store check on PostgreSQL: a read-only session and a dropped connection are not ready; a
    dropped connection is opened again by the next check, and writes work again."""
    store = Store(pg_url)
    assert store.writable()
    with store.transaction() as db:
        db.execute("SET SESSION default_transaction_read_only = on")
    assert not store.writable()  # (before: pg_is_in_recovery() alone said yes, and every write then failed)
    with store.transaction() as db:
        db.execute("SET SESSION default_transaction_read_only = off")
    assert store.writable()
    # The server drops this host's session (a restart or an idle-session kill looks the same to it).
    with psycopg.connect(pg_url, autocommit=True) as admin:
        killed = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            (f"sipbridge:{store.owner}",),
        ).fetchall()
    assert killed == [(True,)]
    with pytest.raises(psycopg.OperationalError):
        store.create_call("inbound")  # the write that finds the connection gone fails...
    assert store.writable()  # ...the next probe connects again (before: not ready until a restart)
    call_id = store.create_call("inbound")
    assert store.get_call(call_id) is not None
    store.close()


def test_caller_id_health_on_postgres_matches_sqlite(
    pg_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The caller-ID health query (`/metrics` gauges, `campaign status`) on PostgreSQL: the same history gives
    the same figures as on SQLite, for all time, for a window, and per campaign."""
    from sipbridge.dialer.health import caller_id_health

    from .dialer.test_suppression import NOW, _history

    stores = {"pg": Store(pg_url), "sqlite": Store(tmp_path / "db.sqlite3")}
    for store in stores.values():
        _history(store, NOW)
    results = {
        name: [
            [(h.caller_id, h.report()) for h in caller_id_health(store, short_call_s=10.0, **query)]
            for query in ({}, {"since": NOW + 1}, {"since": NOW - 1}, {"campaign": "c1"}, {"campaign": "c2"})
        ]
        for name, store in stores.items()
    }
    assert results["pg"] == results["sqlite"]
    everything, later, window, c1, c2 = results["pg"]
    assert dict(everything)["+14155550100"] == {
        "attempts": 4, "answered": 3, "answer_rate": 0.75, "short_calls": 1, "short_call_rate": 0.3333,
    }  # fmt: skip
    assert later == [] and window == everything == c1 and c2 == []
    assert main(["campaign", "status", "c1", "--db", pg_url]) == 0
    assert json.loads(capsys.readouterr().out)["caller_ids"] == {k: v for k, v in everything}


def test_the_writer_thread_batches_with_savepoints_on_postgresql(pg_url: str) -> None:
    """The supervisor's writer thread on PostgreSQL: a write that fails inside a batch is undone alone (a
    failed statement would otherwise abort the whole transaction) and the batch's others commit."""
    from sipbridge.store_writer import StoreWriter

    store = Store(pg_url)
    writer = StoreWriter(store)
    try:
        with store.batch():  # hold the writer back: the three writes below share one of its transactions
            created = writer.create_call("inbound", call_id="pg-ok")
            bad = writer.add_turn("pg-missing", "caller", "no such call", start_ms=0, end_ms=1)
            ended = writer.end_call("pg-ok", "completed", sip_status=200)
        with pytest.raises(psycopg.errors.ForeignKeyViolation):
            bad.result(timeout=10)
        assert created.result(timeout=10) == "pg-ok" and ended.result(timeout=10) is True
        assert writer.errors == 1 and "AddTurn of call pg-missing" in (writer.last_error or "")
    finally:
        writer.close()
    other = Store(pg_url)  # another host's connection sees the committed batch
    call = other.get_call("pg-ok")
    assert call is not None and call.state == "ended" and call.sip_status == 200
    other.close()
    store.close()
