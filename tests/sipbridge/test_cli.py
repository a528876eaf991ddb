"""The `sipbridge` command as a user runs it: real processes, real HTTP, real SQLite."""

from __future__ import annotations

import signal
import socket
import sqlite3
import subprocess
from pathlib import Path

import httpx
import pytest
import yaml

from sipbridge.store import SCHEMA_VERSION, Store

from .procs import SIPBRIDGE, LoggedProcess

ROOT = Path(__file__).resolve().parents[2]


def run_cli(
    *args: str, cwd: Path = ROOT, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [*SIPBRIDGE, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def test_help_lists_every_subcommand() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("run", "check-config", "config-reference"):
        assert command in result.stdout
    for command in ("run", "check-config"):
        sub = run_cli(command, "--help")
        assert sub.returncode == 0 and "--config" in sub.stdout and "--set" in sub.stdout


def test_check_config_prints_resolved_config_with_secrets_masked(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("http:\n  bearer_token: ${TOKEN}\nsip:\n  port: 5070\n")
    result = run_cli("check-config", str(cfg), "--set", "sip.max_calls=9", env={"TOKEN": "very-secret-token"})
    assert result.returncode == 0, result.stderr
    assert "very-secret-token" not in result.stdout
    data = yaml.safe_load(result.stdout)
    assert data["http"]["bearer_token"] == "********"
    assert data["sip"]["port"] == 5070 and data["sip"]["max_calls"] == 9
    # --config is the same as FILE
    assert run_cli("check-config", "--config", str(cfg), env={"TOKEN": "x"}).returncode == 0


def test_check_config_errors_exit_2(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("sip:\n  port: 5060\n  prot: 5061\n")
    result = run_cli("check-config", str(cfg))
    assert result.returncode == 2
    assert f"{cfg}:3: sip.prot: unknown key" in result.stderr
    result = run_cli("check-config", "--set", "vad.threshold=2")
    assert result.returncode == 2
    assert "--set: vad.threshold: Input should be less than 1" in result.stderr


def test_check_config_default_embedded() -> None:
    result = run_cli("check-config")
    assert result.returncode == 0
    assert result.stdout.startswith("# <embedded default>: valid")


def test_config_reference_matches_schema_doc() -> None:
    result = run_cli("config-reference")
    assert result.returncode == 0
    assert result.stdout == (ROOT / "config" / "SCHEMA.md").read_text(encoding="utf-8")


def run_args(tmp_path: Path, *extra: str) -> list[str]:
    return [
        "run",
        "--set", "http.port=0",
        "--set", "sip.port=0",
        "--set", f"storage.sqlite_path={tmp_path / 'db' / 'sipbridge.sqlite3'}",
        "--set", f"storage.recordings_dir={tmp_path / 'rec'}",
        *extra,
    ]  # fmt: skip


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_run_serves_healthz_and_stops_cleanly(tmp_path: Path, sig: signal.Signals) -> None:
    proc = LoggedProcess.start(run_args(tmp_path), cwd=tmp_path)
    try:
        port = int(proc.wait_for(r"http listening on http://127\.0\.0\.1:(\d+)").group(1))
        proc.wait_for(r"sipbridge ready")
        response = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10)
        assert response.status_code == 200
        body = response.json()
        assert body["status"] == "ok"
        assert body["store"]["schema_version"] == SCHEMA_VERSION
        assert body["store"]["active_calls"] == 0
        assert body["process"]["config"] == "<embedded default>"
        assert body["asr"]["warm"] is True  # ready is said once the ASR's warm-up run is over
    finally:
        proc.proc.send_signal(sig)
    assert proc.finish() == 0, "\n".join(proc.seen)
    assert any("stopped cleanly" in line for line in proc.seen)
    db = sqlite3.connect(tmp_path / "db" / "sipbridge.sqlite3")
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert (tmp_path / "rec").is_dir()


def test_run_records_calls_left_active_as_failed(tmp_path: Path) -> None:
    store = Store(tmp_path / "db" / "sipbridge.sqlite3")
    call_id = store.create_call("inbound", remote_uri="sip:caller@127.0.0.1")
    store.close()

    proc = LoggedProcess.start(run_args(tmp_path), cwd=tmp_path)
    try:
        proc.wait_for(r"recorded 1 call\(s\) left active by a previous run as failed")
        proc.wait_for(r"sipbridge ready")
    finally:
        proc.proc.send_signal(signal.SIGTERM)
    assert proc.finish() == 0
    record = Store(tmp_path / "db" / "sipbridge.sqlite3").get_call(call_id)
    assert record is not None and record.state == "ended" and record.outcome == "failed"


def test_run_port_in_use_fails_with_message(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        proc = LoggedProcess.start([*run_args(tmp_path), "--set", f"http.port={port}"], cwd=tmp_path)
        assert proc.finish() == 1
    assert any("cannot start" in line and "Address already in use" in line for line in proc.seen), proc.seen


def test_run_with_bad_config_exits_2(tmp_path: Path) -> None:
    proc = LoggedProcess.start([*run_args(tmp_path), "--set", "sip.transports=[sctp]"], cwd=tmp_path)
    assert proc.finish() == 2
    assert any("sip.transports[0]" in line for line in proc.seen), proc.seen


def test_run_with_unusable_database_exits_1(tmp_path: Path) -> None:
    (tmp_path / "db").mkdir()
    (tmp_path / "db" / "sipbridge.sqlite3").write_bytes(b"this is not a database" * 100)
    proc = LoggedProcess.start(run_args(tmp_path), cwd=tmp_path)
    assert proc.finish() == 1
    assert any("is not a usable SQLite database" in line for line in proc.seen), proc.seen


def test_export_and_campaign_status_refuse_a_missing_database(tmp_path: Path) -> None:
    missing = tmp_path / "nope.sqlite3"
    commands = (("calls", "export"), ("campaign", "status", "x"))
    for args in ((*command, "--db", str(missing)) for command in commands):
        result = run_cli(*args)
        assert result.returncode == 1, (args, result.stderr)
        assert f"no database at {missing}" in result.stderr
    assert not missing.exists()


def test_export_reports_a_damaged_database_without_a_traceback(tmp_path: Path) -> None:
    from .test_store import corrupt_pages

    path = tmp_path / "db.sqlite3"
    store = Store(path)
    for i in range(300):
        store.create_call("inbound", remote_uri=f"sip:caller{i}@127.0.0.1", variables={"i": "x" * 200})
    store.close()
    corrupt_pages(path)
    result = run_cli("calls", "export", "--db", str(path))
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert "is damaged (PRAGMA quick_check" in result.stderr and "restore it from a backup" in result.stderr
