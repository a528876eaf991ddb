"""deploy/: the systemd unit passes `systemd-analyze verify` and keeps its hardening; the Dockerfiles, the
compose file and the Prometheus config are checked for what matters to a drain-safe, non-root deployment.

Docker's daemon does not run on the test machines and no registry is reachable, so the images are not built
here: the Dockerfiles are parsed (instructions, continuation lines, exec-form JSON) and checked by rules of
our own, and every path they COPY must exist in the checkout and not be excluded by .dockerignore.
"""

from __future__ import annotations

import fnmatch
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sipbridge.config import ShutdownConfig, load_config

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
UNIT = DEPLOY / "systemd" / "sipbridge.service"
DRAIN_S = ShutdownConfig().drain_timeout_s
INSTRUCTIONS = {
    "FROM", "ARG", "ENV", "RUN", "COPY", "ADD", "WORKDIR", "USER", "EXPOSE", "VOLUME", "STOPSIGNAL",
    "HEALTHCHECK", "ENTRYPOINT", "CMD", "LABEL", "SHELL", "ONBUILD",
}  # fmt: skip


# ------------------------------------------------------------------------------------------- systemd


def unit_settings(path: Path) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_unit_verifies_cleanly(tmp_path: Path) -> None:
    # verify checks that ExecStart's program exists: point it at this machine's venv instead of /opt.
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace("/opt/sipbridge/.venv", sys.prefix))
    out = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and not out.stderr.strip(), out.stderr  # unknown keys only warn: none allowed


def test_systemd_unit_is_hardened_and_outlasts_the_drain() -> None:
    s = unit_settings(UNIT)
    assert s["User"] == ["sipbridge"] and s["Group"] == ["sipbridge"]
    assert s["ProtectSystem"] == ["strict"] and s["ReadWritePaths"] == ["/var/lib/sipbridge"]
    assert s["NoNewPrivileges"] == ["true"] and s["CapabilityBoundingSet"] == [""]
    assert s["PrivateTmp"] == ["true"] and s["ProtectHome"] == ["true"]
    assert int(s["LimitNOFILE"][0]) >= 65536
    assert s["KillSignal"] == ["SIGTERM"]
    assert float(s["TimeoutStopSec"][0]) > DRAIN_S  # systemd never SIGKILLs a bridge still draining
    assert s["RestartPreventExitStatus"] == ["2"]  # config errors exit 2: restarting cannot fix them
    (start,) = s["ExecStart"]
    assert "--set logging.json_format=true" in start and s["StandardError"] == ["journal"]
    assert "sipbridge run -c /etc/sipbridge/sipbridge.yaml" in start


# ------------------------------------------------------------------------------------------- docker


def dockerfile(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    steps: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        word, _, rest = line.partition(" ")
        steps.append((word.upper(), rest.strip()))
    assert not pending, f"{path.name}: ends inside a continuation"
    return steps


def dockerignored(rel: str) -> bool:
    patterns = [p for p in (ROOT / ".dockerignore").read_text().splitlines() if p and not p.startswith("#")]
    return any(fnmatch.fnmatch(rel, p) or rel.startswith(p.rstrip("/") + "/") for p in patterns)


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.cuda"])
def test_dockerfile_lints(name: str) -> None:
    steps = dockerfile(DEPLOY / name)
    kinds = [k for k, _ in steps]
    assert set(kinds) <= INSTRUCTIONS, set(kinds) - INSTRUCTIONS
    assert kinds[0] == "FROM" and kinds.count("FROM") == 1
    base = steps[0][1]
    assert ":" in base and not base.endswith(":latest"), f"unpinned base image {base}"
    for kind, args in steps:
        if kind == "RUN" and "apt-get update" in args:
            # update and install in one layer (no stale lists), and the lists removed in that layer.
            assert (
                "apt-get install" in args
                and "--no-install-recommends" in args
                and "rm -rf /var/lib/apt/lists" in args
            )
        if kind == "COPY":
            *sources, _dest = args.split()
            for source in sources:
                assert (ROOT / source).exists(), f"{name}: COPY {source}: not in the checkout"
                assert not dockerignored(source), f"{name}: COPY {source}: excluded by .dockerignore"
        if kind in ("ENTRYPOINT", "CMD"):
            assert isinstance(json.loads(args), list), f"{kind} must be exec form (signals reach sipbridge)"
    users = [args for kind, args in steps if kind == "USER"]
    assert users and users[-1] not in ("root", "0"), "the image must not run as root"
    assert kinds.index("USER") < kinds.index("ENTRYPOINT")
    assert ("STOPSIGNAL", "SIGTERM") in steps
    assert "HEALTHCHECK" in kinds
    entry = json.loads(dict(steps)["ENTRYPOINT"]) + json.loads(dict(steps)["CMD"])
    assert entry[:4] == ["sipbridge", "run", "-c", "/etc/sipbridge/sipbridge.yaml"]  # command 1's job
    overrides = [entry[i + 1] for i, word in enumerate(entry) if word == "--set"]
    assert load_config(None, overrides, env={}).config.logging.json_format  # the override is a real key
    if name == "Dockerfile.cuda":
        assert base.startswith("nvidia/cuda:") and "-runtime-" in base
        assert any("whl/cu" in args for kind, args in steps if kind == "ARG")  # torch's CUDA wheel


def test_compose_drains_and_wires_prometheus() -> None:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = compose["services"]
    bridge = services["sipbridge"]
    grace = bridge["stop_grace_period"]
    assert grace.endswith("s") and float(grace[:-1]) > DRAIN_S
    assert bridge["stop_signal"] == "SIGTERM" and bridge["network_mode"] == "host"
    assert bridge["build"]["dockerfile"].startswith("deploy/${SIPBRIDGE_IMAGE_FILE:-Dockerfile}")
    assert bridge["logging"]["driver"] == "journald"
    assert services["prometheus"]["profiles"] == ["prometheus"]
    assert services["front"]["profiles"] == ["front"]
    (mount,) = [v for v in services["prometheus"]["volumes"] if "prometheus.yml" in v]
    prometheus = yaml.safe_load((DEPLOY / mount.split(":")[0]).read_text())
    (job,) = prometheus["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == ["127.0.0.1:8080"]  # http.port's default
