"""The SIP front's files rendered from the YAML, its RPC answers parsed, what the workers get behind it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from sipbridge.config import Config
from sipbridge.sip.front import (
    KAMAILIO_PACKAGE,
    KAMAILIO_TLS_PACKAGE,
    FrontCheck,
    address_list,
    check_front,
    dispatcher_list,
    find_module,
    front_uri,
    parse_counters,
    parse_destinations,
    render_front,
    states_to_fix,
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


def tls_config(tmp_path: Path, **tls: object) -> Config:
    (tmp_path / "c.pem").write_text("cert")
    (tmp_path / "k.pem").write_text("key")
    files = {"cert_file": str(tmp_path / "c.pem"), "key_file": str(tmp_path / "k.pem")}
    return config(max_calls=8, transports=["udp", "tls"], tls={**files, **tls})


def test_the_front_terminates_tls_from_sip_tls(tmp_path: Path) -> None:
    cfg = tls_config(tmp_path, ca_file=str(tmp_path / "c.pem"), verify_client=True)
    files = render_front(cfg, 5070, worker_destinations(cfg, [1, 2]), tmp_path, tls_port=5071)
    defs = files["front-defs.cfg"].splitlines()
    assert "listen=udp:127.0.0.1:5070" in defs and "listen=tls:127.0.0.1:5071" in defs
    assert "#!define WITH_TLS 1" in defs and f'#!define TLS_CONFIG "{tmp_path}/tls.cfg"' in defs
    server, client = files["tls.cfg"].split("[client:default]")
    assert f"certificate = {tmp_path}/c.pem" in server and f"private_key = {tmp_path}/k.pem" in server
    assert "verify_certificate = yes" in server and "require_certificate = yes" in server  # mTLS
    assert f"ca_list = {tmp_path}/c.pem" in client and "verify_certificate = no" in client
    assert "method = TLSv1.2+" in server and "method = TLSv1.2+" in client
    # Plain SIP has no tls.cfg and no TLS in the Kamailio config.
    plain = render_front(config(max_calls=8), 5070, [], tmp_path)
    assert "tls.cfg" not in plain and "WITH_TLS" not in plain["front-defs.cfg"]
    # Behind the front a worker speaks UDP to it only: the front holds the certificate.
    assert worker_settings(cfg, 0, "/tmp/x.sock", front_uri="sip:127.0.0.1:5070").transports == ["udp"]
    tcp_tls = config(max_calls=8, transports=["tcp", "tls"], tls=cfg.sip.tls.model_dump(mode="json"))
    assert worker_settings(tcp_tls, 0, "/tmp/x.sock", front_uri="sip:127.0.0.1:5070").transports == [
        "udp",
        "tcp",
    ]
    assert worker_settings(cfg, 0, "/tmp/x.sock").transports == ["udp", "tls"]  # no front: the worker's TLS


def test_a_tls_trunk_registration_names_the_fronts_tls_socket(tmp_path: Path) -> None:
    trunk = {"registrar": "sip:sip.carrier.example;transport=tls", "username": "u", "password": "p"}
    cfg = tls_config(tmp_path)
    cfg = Config.model_validate({"sip": {**cfg.sip.model_dump(mode="json", by_alias=True), "trunk": trunk}})
    defs = render_front(cfg, 5070, [], tmp_path, tls_port=5071)["front-defs.cfg"]
    assert '#!define PUBLIC_HOSTPORT "127.0.0.1:5071;transport=tls"' in defs
    assert (
        '#!define PUBLIC_HOSTPORT "127.0.0.1:5070"'
        in render_front(tls_config(tmp_path), 5070, [], tmp_path, 5071)["front-defs.cfg"]
    )


def test_a_missing_tls_module_is_named_with_its_package(tmp_path: Path) -> None:
    problem = FrontCheck(needed=True, binary="/usr/sbin/kamailio", tls=True, tls_module=None).problem
    assert problem is not None and f"`{KAMAILIO_TLS_PACKAGE}`" in problem
    assert FrontCheck(needed=True, binary="/usr/sbin/kamailio", tls=True, tls_module="/x/tls.so").ok
    assert FrontCheck(needed=False, binary=None, tls=True).ok
    assert find_module("tls.so", [str(tmp_path / "*")]) is None
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "tls.so").write_bytes(b"")
    assert find_module("tls.so", [str(tmp_path / "*")]) == str(tmp_path / "mods" / "tls.so")


@pytest.mark.skipif(shutil.which("kamailio") is None, reason="kamailio is not installed")
def test_rendered_tls_config_is_accepted_by_kamailio(tmp_path: Path) -> None:
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=front",
         "-keyout", str(tmp_path / "k.pem"), "-out", str(tmp_path / "c.pem")],
        check=True, capture_output=True,
    )  # fmt: skip
    tls = {"cert_file": str(tmp_path / "c.pem"), "key_file": str(tmp_path / "k.pem")}
    cfg = config(max_calls=8, transports=["udp", "tcp", "tls"], tls=tls)
    for name, text in render_front(cfg, 5071, worker_destinations(cfg, [1, 2]), tmp_path, 5072).items():
        (tmp_path / name).write_text(text)
    done = subprocess.run(
        ["kamailio", "-c", "-f", str(tmp_path / "kamailio.cfg")], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0 and "config file ok" in done.stderr.lower(), done.stderr


def test_front_states_follow_the_supervisors_wish_both_ways() -> None:
    """Soak defect B: Kamailio re-activates a worker the supervisor counts full (a timed-out INVITE's `ip`,
    then a probe), and a poll taken before the supervisor's last RPC shows an old state. Whatever the view,
    what differs from the wish is sent again: a full worker that is not disabled is disabled again; a free
    one left disabled (the stale-view case that left a worker out for the rest of a soak) is enabled."""
    full = {0, 2}
    states = ["active", "disabled", "inactive", "disabled", None]
    assert states_to_fix(full, states, draining=False) == ({0, 2}, {1, 3})
    assert states_to_fix(full, ["disabled", "active", "disabled", "trying", "active"], False) == (
        set(),
        set(),
    )
    assert states_to_fix(full, states, draining=True) == ({0, 2}, set())  # a drain keeps all disabled
