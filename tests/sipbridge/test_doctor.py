"""`sipbridge doctor` on good and broken configs: the real command, real ports, real SQLite files, the real
pjsua2 and torch of this machine. Nothing reaches the network: the hub is a loopback port with no server."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest
import yaml

from sipbridge.store import Store

from .peers import free_tcp_port, free_udp_port
from .procs import SIPBRIDGE

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "tests" / "fixtures" / "dia2-tiny"


def doctor(config: dict, work: Path, env: dict[str, str] | None = None) -> tuple[int, dict[str, str], str]:
    """Exit code, {check name: its line}, the whole output."""
    path = work / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    hub = f"http://127.0.0.1:{free_tcp_port()}"  # refuses connections: a hub that cannot be reached
    result = subprocess.run(
        [*SIPBRIDGE, "doctor", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=work,
        env={**os.environ, "HF_HOME": str(work / "hf"), "HF_ENDPOINT": hub, **(env or {})},
    )
    lines = {}
    for line in result.stdout.splitlines():
        if line.startswith(("ok ", "warn ", "fail ", "skip ")):
            lines[line[6:17].strip()] = line
    return result.returncode, lines, result.stdout + result.stderr


def good_config(work: Path) -> dict:
    return {
        "sip": {"port": free_udp_port()},
        "http": {"port": free_tcp_port()},
        "media": {"rtp_port_min": 41000, "rtp_port_max": 41099},
        "storage": {
            "sqlite_path": str(work / "db" / "sipbridge.sqlite3"),
            "recordings_dir": str(work / "rec"),
        },
    }


def test_a_good_config_passes_with_one_line_per_check(tmp_path: Path) -> None:
    config = good_config(tmp_path)
    Store(Path(config["storage"]["sqlite_path"])).close()  # an existing, healthy database
    code, lines, out = doctor(config, tmp_path)
    assert code == 0, out
    for name in (
        "config",
        "sip port",
        "http port",
        "rtp ports",
        "pjsua2",
        "espeak-ng",
        "asr",
        "vad",
        "store",
    ):
        assert lines[name].startswith("ok "), out
    assert "4 calls per process" in lines["pjsua2"]  # measured on the installed wheel
    assert "quick_check ok" in lines["store"]
    for name in ("sip front", "gpu", "tts model"):
        assert lines[name].startswith("skip "), out
    assert lines["clock"].split()[0] in ("ok", "warn")  # this machine may or may not run a time service
    assert "fail" not in out


def test_a_broken_config_fails_each_miss_and_says_how_to_fix_it(tmp_path: Path) -> None:
    config = good_config(tmp_path)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the store's folder should be\n")
    config["storage"]["sqlite_path"] = str(blocker / "sipbridge.sqlite3")
    config["sip"]["max_calls"] = 8
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sip, socket.socket() as http:
        sip.bind(("127.0.0.1", 0))
        http.bind(("127.0.0.1", 0))
        http.listen()
        config["sip"]["port"] = sip.getsockname()[1]
        config["http"]["port"] = http.getsockname()[1]
        code, lines, out = doctor(config, tmp_path)
    assert code == 1, out
    assert lines["sip port 0"].startswith("fail ") and "in use" in lines["sip port 0"]
    assert "ss -lunp" in lines["sip port 0"] and "sip.port" in lines["sip port 0"]
    assert lines["http port"].startswith("fail ") and "http.port" in lines["http port"]
    assert lines["store"].startswith("fail ") and "is not a folder" in lines["store"], out
    assert "-> fix: set storage.sqlite_path" in lines["store"]
    assert "2 worker(s)" in lines["pjsua2"]
    # Two workers need the front; on a box without kamailio the line names the Debian package.
    front = lines["sip front"]
    assert (front.startswith("ok ") and "/kamailio" in front) or "apt-get install kamailio" in front, out
    assert "problem(s) to fix" in out.rstrip().splitlines()[-1]


def test_a_corrupt_database_fails_quick_check(tmp_path: Path) -> None:
    config = good_config(tmp_path)
    db = Path(config["storage"]["sqlite_path"])
    db.parent.mkdir()
    db.write_bytes(b"SQLite format 3\x00" + os.urandom(4096))
    code, lines, out = doctor(config, tmp_path)
    assert code == 1 and lines["store"].startswith("fail "), out
    assert "restore it from a backup" in lines["store"]


def test_dia2_without_cuda_and_without_cached_weights(tmp_path: Path) -> None:
    config = good_config(tmp_path)
    config["engine"] = {"kind": "dia2", "dia2": {"device": "cuda"}}
    # CUDA_VISIBLE_DEVICES="" hides any GPU, so this holds on a CUDA host as on this CPU-only one.
    # HF_HUB_OFFLINE=0: another test in this process may have set it (peers.Ears); here the hub must be tried.
    code, lines, out = doctor(config, tmp_path, env={"CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "0"})
    assert code == 1, out
    assert lines["gpu"].startswith("fail ") and ("CPU build" in lines["gpu"] or "sees no GPU" in lines["gpu"])
    assert "download.pytorch.org" in lines["gpu"] or "nvidia-smi" in lines["gpu"]
    model = lines["tts model"]
    assert model.startswith("fail ") and "not cached and the hub is unreachable" in model, out
    assert "engine.dia2.model to a local folder" in model
    assert lines["codec"].startswith("fail ") and "kyutai/mimi" in lines["codec"]


def test_dia2_with_a_local_checkpoint(tmp_path: Path) -> None:
    """Offline, as a production GPU host without hub access runs: a local folder needs no cache."""
    config = good_config(tmp_path)
    config["engine"] = {
        "kind": "dia2",
        "dia2": {"model": str(TINY), "device": "cpu", "voice": {"prefix_wav": str(TINY / "prefix_s1.wav")}},
    }
    env = {"HF_HUB_OFFLINE": "1"}
    code, lines, out = doctor(config, tmp_path, env=env)
    assert code == 0, out
    assert lines["gpu"].startswith("warn ") and "slower than real time" in lines["gpu"]
    assert lines["tts model"].startswith("ok ") and "model.safetensors" in lines["tts model"]
    assert "codec" not in lines  # the tiny checkpoint carries its own Mimi
    assert lines["voice"].split()[0] in ("ok", "warn")


def test_an_invalid_config_is_one_failed_line(tmp_path: Path) -> None:
    code, lines, out = doctor({"sip": {"max_calls": "many"}}, tmp_path)
    assert code == 1
    assert lines["config"].startswith("fail ") and "sip.max_calls" in lines["config"], out


def test_weights_not_cached_are_a_warning_while_the_hub_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    """A reachable hub (here a loopback listener: only the TCP connection is tried) means a first start that
    downloads; unreachable, or HF_HUB_OFFLINE=1, means it cannot start at all."""
    from sipbridge.tools.speech_checks import _not_cached

    with socket.socket() as hub:
        hub.bind(("127.0.0.1", 0))
        hub.listen()
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{hub.getsockname()[1]}")
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        reachable = _not_cached("tts model", "org/model", "not in the cache", "engine.dia2.model")
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        offline = _not_cached("tts model", "org/model", "not in the cache", "engine.dia2.model")
    assert reachable.status == "warn" and "downloaded at the first start" in reachable.detail
    assert offline.status == "fail" and "HF_HUB_OFFLINE=1" in offline.detail
