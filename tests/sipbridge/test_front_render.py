"""The SIP front's files rendered from the YAML, its RPC answers parsed, what the workers get behind it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from sipbridge.config import Config
from sipbridge.sip.front import (
    KAMAILIO_PACKAGE,
    address_list,
    check_front,
    dispatcher_list,
    front_uri,
    parse_counters,
    parse_destinations,
    render_front,
    worker_destinations,
)
from sipbridge.sip.settings import worker_settings


def config(**sip: object) -> Config:
    return Config.model_validate({"sip": sip})


def test_front_runs_for_more_than_one_worker_unless_told() -> None:
    assert not config(max_calls=4).sip.uses_front
    assert config(max_calls=5).sip.uses_front
    assert config(max_calls=4, front={"mode": "on"}).sip.uses_front
    assert not config(max_calls=64, front={"mode": "off"}).sip.uses_front


def test_missing_kamailio_is_named_with_its_package() -> None:
    check = check_front(config(max_calls=8, front={"binary": "no-such-kamailio"}))
    assert check.needed and check.binary is None and not check.ok
    assert check.problem is not None and f"`{KAMAILIO_PACKAGE}`" in check.problem
    assert check_front(config(max_calls=4, front={"binary": "no-such-kamailio"})).ok  # not needed


def test_each_worker_takes_its_share_of_max_calls() -> None:
    dests = worker_destinations(config(max_calls=10), [5061, 5062, 5063])
    assert [(d.uri, d.duid, d.maxload) for d in dests] == [
        ("sip:127.0.0.1:5061", "w0", 4), ("sip:127.0.0.1:5062", "w1", 4), ("sip:127.0.0.1:5063", "w2", 2),
    ]  # fmt: skip
    assert dispatcher_list(dests).splitlines()[1:] == [
        "1 sip:127.0.0.1:5061 8 0 duid=w0;maxload=4",
        "1 sip:127.0.0.1:5062 8 0 duid=w1;maxload=4",
        "1 sip:127.0.0.1:5063 8 0 duid=w2;maxload=2",
    ]


def test_address_list_groups_and_ipv6() -> None:
    text = address_list(["10.1.2.3/24", "::1/128"], ["192.0.2.7"])
    assert text.splitlines()[1:] == ["1 10.1.2.0 24", "1 [::1] 128", "2 192.0.2.7 32"]


def test_defs_carry_the_config(tmp_path: Path) -> None:
    cfg = config(
        bind_address="0.0.0.0", public_address="203.0.113.5", transports=["udp", "tcp"], max_calls=8,
        front={"probe_interval_s": 2, "probe_timeout_ms": 600, "retry_after_s": 30, "rate_limit_per_s": 0},
    )  # fmt: skip
    files = render_front(cfg, 5070, worker_destinations(cfg, [40001, 40002]), tmp_path)
    defs = files["front-defs.cfg"].splitlines()
    assert "listen=udp:0.0.0.0:5070" in defs and "listen=tcp:0.0.0.0:5070" in defs
    assert '#!define PUBLIC_HOSTPORT "203.0.113.5:5070"' in defs
    assert "#!define PROBE_INTERVAL_S 2" in defs and "#!define PROBE_TIMEOUT_MS 600" in defs
    assert '#!define RETRY_AFTER "Retry-After: 30\\r\\n"' in defs
    assert not any("RATE_LIMIT" in line for line in defs)  # 0 = no limit: the block is left out
    assert f'#!define DISPATCHER_LIST "{tmp_path}/dispatcher.list"' in defs
    assert files["kamailio.cfg"].startswith("#!KAMAILIO")
    assert 'include_file "front-defs.cfg"' in files["kamailio.cfg"]
    assert front_uri(cfg, 5070) == "sip:127.0.0.1:5070"  # workers reach a front on 0.0.0.0 over loopback


@pytest.mark.skipif(shutil.which("kamailio") is None, reason="kamailio is not installed")
def test_rendered_config_is_accepted_by_kamailio(tmp_path: Path) -> None:
    cfg = config(max_calls=12, transports=["udp", "tcp"], allowed_sources=["127.0.0.0/8", "::1/128"])
    for name, text in render_front(cfg, 5071, worker_destinations(cfg, [1, 2, 3]), tmp_path).items():
        (tmp_path / name).write_text(text)
    done = subprocess.run(
        ["kamailio", "-c", "-f", str(tmp_path / "kamailio.cfg")], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0 and "config file ok" in done.stderr.lower(), done.stderr


def test_workers_behind_the_front_answer_only_it() -> None:
    cfg = config(max_calls=8, port=5060, allowed_sources=["198.51.100.0/24"], public_address="203.0.113.5")
    direct = worker_settings(cfg, 1, "/tmp/x.sock")
    assert (direct.sip_port, direct.allowed_sources, direct.front_uri) == (5061, ["198.51.100.0/24"], None)
    behind = worker_settings(cfg, 1, "/tmp/x.sock", front_uri="sip:127.0.0.1:5060")
    assert behind.sip_port == 0 and behind.sip_bind_address == "127.0.0.1"
    assert behind.allowed_sources == ["127.0.0.1/32"]  # the callers' sources are checked at the front
    assert behind.public_address == "203.0.113.5" and behind.bind_address == "127.0.0.1"  # RTP as before
    assert worker_settings(cfg, 1, "/tmp/x.sock", 41000, "sip:127.0.0.1:5060").sip_port == 41000  # respawn


def test_rpc_answers_parse() -> None:
    listed = {
        "NRSETS": 1,
        "RECORDS": [{"SET": {"ID": 1, "TARGETS": [
            {"DEST": {"URI": "sip:127.0.0.1:5992", "FLAGS": "IP", "ATTRS": {"DUID": "w1", "MAXLOAD": 4},
                      "RUNTIME": {"DLGLOAD": 0}}},
            {"DEST": {"URI": "sip:127.0.0.1:5991", "FLAGS": "AP", "ATTRS": {"DUID": "w0", "MAXLOAD": 4},
                      "RUNTIME": {"DLGLOAD": 3}}},
        ]}}],
    }  # fmt: skip
    states = parse_destinations(listed)
    assert [(d.duid, d.state, d.probing, d.calls) for d in states] == [
        ("w0", "active", True, 3), ("w1", "inactive", True, 0),
    ]  # fmt: skip
    counters = parse_counters(["script:sipbridge_full = 2", "script:sipbridge_limited = 380", "core:x = 1"])
    assert counters == {"busy": 2, "limited": 380}
