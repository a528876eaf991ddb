"""The checks of `sipbridge doctor`: each looks at one thing a deployment needs and says how to fix a miss.

Every check is a function of the loaded config returning `Check`s; none changes anything (ports are bound and
released at once, the database is opened read-only, a probe file is created and removed). This module holds
the system's (ports, pjsua2, SIP front, store, clock); sipbridge/tools/speech_checks.py the speech stack's.
"""

from __future__ import annotations

import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from sipbridge.config import CALLS_PER_WORKER, Config
from sipbridge.sip.front import KAMAILIO_PACKAGE

Status = Literal["ok", "warn", "fail", "skip"]
_MIN_FREE_BYTES = 1 << 30  # recordings fill a disk quietly; below 1 GiB free is worth a warning


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    fix: str = ""  # what to do about it (for warn and fail)


CheckFn = Callable[[Config], list[Check]]


# ------------------------------------------------------------------------------------------ ports


def _bind(kind: int, host: str, port: int) -> OSError | None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, kind) as s:
        if kind == socket.SOCK_STREAM:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the supervisor binds HTTP
        try:
            s.bind((host, port))
        except OSError as exc:
            return exc
    return None


def _port_check(name: str, proto: str, host: str, port: int, key: str) -> Check:
    if port == 0:
        return Check(
            name, "ok", f"{proto} {host}: any free port ({key}: 0; the one taken is logged at start)"
        )
    error = _bind(socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM, host, port)
    if error is None:
        return Check(name, "ok", f"{proto} {host}:{port} free")
    if error.errno == 99:  # EADDRNOTAVAIL
        return Check(
            name,
            "fail",
            f"{host} is not an address of this host",
            f"set {key.split('.')[0]}."
            f"{'bind_address' if key.startswith('sip') else 'bind'} to one of its addresses",
        )
    flag = "-lunp" if proto == "udp" else "-ltnp"
    return Check(
        name,
        "fail",
        f"{proto} {host}:{port} in use ({error.strerror})",
        f"is sipbridge already running? see who holds it: ss {flag} 'sport = :{port}'; or change {key}",
    )


def check_ports(config: Config) -> list[Check]:
    sip, http = config.sip, config.http
    out = []
    for i in range(sip.workers):
        port = sip.port + i if sip.port else 0
        for proto in sip.transports:
            out.append(
                _port_check(
                    f"sip port {i}" if sip.workers > 1 else "sip port",
                    proto,
                    sip.bind_address,
                    port,
                    "sip.port",
                )
            )
    out.append(_port_check("http port", "tcp", http.bind, http.port, "http.port"))
    out.append(_rtp_check(config))
    return out


def _rtp_check(config: Config) -> Check:
    media, host = config.media, config.sip.bind_address
    ports = range(media.rtp_port_min, media.rtp_port_max + 1)
    busy = sum(_bind(socket.SOCK_DGRAM, host, p) is not None for p in ports)
    needed = 2 * config.sip.max_calls  # RTP and RTCP per call
    detail = f"udp {media.rtp_port_min}-{media.rtp_port_max}: {len(ports) - busy} free, {busy} in use"
    fix = "widen media.rtp_port_min..rtp_port_max or free the ports"
    if len(ports) - busy < needed:
        return Check("rtp ports", "fail", f"{detail}; {sip_calls(config)} need {needed}", fix)
    return Check("rtp ports", "warn" if busy else "ok", detail, fix if busy else "")


def sip_calls(config: Config) -> str:
    return f"max_calls {config.sip.max_calls}"


# ------------------------------------------------------------------------------------------ pjsua2

# Measures the wheel's compile-time PJSUA_MAX_CALLS: place calls (to a loopback socket that never answers)
# until pjsua refuses one. A process of its own, because one process can hold only one pjsua2 Endpoint.
_CAP_PROBE = """
import os, socket, sys
import pjsua2 as pj
ep = pj.Endpoint(); ep.libCreate(); cfg = pj.EpConfig()
cfg.logConfig.level = 0; cfg.logConfig.consoleLevel = 0; cfg.uaConfig.maxCalls = 64
cfg.uaConfig.threadCnt = 0; cfg.uaConfig.mainThreadOnly = True
ep.libInit(cfg)
tcfg = pj.TransportConfig(); tcfg.boundAddress = "127.0.0.1"
ep.transportCreate(pj.PJSIP_TRANSPORT_UDP, tcfg); ep.libStart(); ep.audDevManager().setNullDev()
acc = pj.Account(); acfg = pj.AccountConfig(); acfg.idUri = "sip:doctor@127.0.0.1"; acc.create(acfg)
sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); sink.bind(("127.0.0.1", 0))
calls, placed = [], 0
for _ in range(64):
    call = pj.Call(acc); calls.append(call)
    try:
        call.makeCall("sip:doctor@127.0.0.1:%d" % sink.getsockname()[1], pj.CallOpParam(True))
    except pj.Error:
        break
    placed += 1
print("CAP", placed, ep.libVersion().full, flush=True)
os._exit(0)
"""


def check_pjsua2(config: Config) -> list[Check]:
    fix = "pip install 'sipbridge[sip]' (bash deploy/setup.sh does it)"
    try:
        done = subprocess.run(
            [sys.executable, "-c", _CAP_PROBE],
            capture_output=True,
            text=True,
            timeout=20,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        return [Check("pjsua2", "fail", "the call-cap probe hung", fix)]
    words = next((ln.split() for ln in done.stdout.splitlines() if ln.startswith("CAP ")), None)
    if words is None:
        why = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return [Check("pjsua2", "fail", f"cannot use pjsua2: {why}", fix)]
    cap, version = int(words[1]), words[2] if len(words) > 2 else "?"
    workers = config.sip.workers
    detail = (
        f"pjsua2 {version}: {cap} calls per process; {sip_calls(config)} -> {workers} worker(s) of "
        f"<= {CALLS_PER_WORKER}"
    )
    if cap < CALLS_PER_WORKER:
        return [
            Check(
                "pjsua2",
                "fail",
                detail,
                f"sipbridge plans {CALLS_PER_WORKER} calls per worker: "
                "install pjsua2-python 2.15.1 (its wheel allows 4)",
            )
        ]
    return [Check("pjsua2", "ok", detail)]


def find_program(name: str) -> str | None:
    """On PATH, or in the sbin folders Debian puts daemons in (not on a normal user's PATH)."""
    found = shutil.which(name)
    if found is None:
        for folder in ("/usr/sbin", "/usr/local/sbin", "/sbin"):
            candidate = Path(folder) / name
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
    return found


def check_front(config: Config) -> list[Check]:
    """The front's own rule (sip.front.mode, sip.front.binary) decides; this only words the answer."""
    workers = config.sip.workers
    if not config.sip.uses_front:
        why = f"{sip_calls(config)} fits one worker" if workers == 1 else "sip.front.mode is off"
        return [Check("sip front", "skip", f"not used: {why}")]
    binary = config.sip.front.binary
    path = find_program(binary) if "/" not in binary else (binary if os.access(binary, os.X_OK) else None)
    if path is None:
        return [
            Check(
                "sip front",
                "fail",
                f"{sip_calls(config)} over {workers} workers needs the Kamailio front at one address, "
                f"and {binary} is not installed",
                f"apt-get install {KAMAILIO_PACKAGE} (Debian package '{KAMAILIO_PACKAGE}'), "
                "set sip.front.binary, or keep max_calls <= 4",
            )
        ]
    return [Check("sip front", "ok", f"kamailio at {path} in front of {workers} workers")]


# ------------------------------------------------------------------------------------------ store


def _writable_dir(path: Path) -> str | None:
    """None when files can be created in `path` (or in the folder that would hold it, if not there yet)."""
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        return f"{probe} is not a folder"
    try:  # really create a file: as root, os.access says yes even on a read-only mount
        fd, name = tempfile.mkstemp(prefix=".sipbridge-doctor-", dir=probe)
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        return f"cannot create files in {probe}: {exc.strerror or exc}"
    if probe != path:
        try:
            path.relative_to(probe)
        except ValueError:
            return f"{path} cannot be created"
    return None


def check_postgres(url: str) -> Check:
    """Connect and read the schema version, writing nothing (the first `run` migrates)."""
    from sipbridge.store import SCHEMA_VERSION
    from sipbridge.store_dialect import DialectError, connect, redact

    try:
        db, dialect = connect(url, "doctor")
    except DialectError as exc:
        return Check("store", "fail", str(exc), "check storage.url: host, database, user and password")
    try:
        version = dialect.read_version(db)
    except dialect.errors as exc:
        return Check("store", "fail", f"{redact(url)}: {exc}", "grant the user access to the database")
    finally:
        db.close()
    if version > SCHEMA_VERSION:
        return Check(
            "store",
            "fail",
            f"{redact(url)}: schema {version} is newer than this sipbridge ({SCHEMA_VERSION})",
            "upgrade sipbridge on this host (every host of a shared store runs the same version)",
        )
    return Check("store", "ok", f"{redact(url)}: PostgreSQL, schema {version} of {SCHEMA_VERSION}")


def check_store(config: Config) -> list[Check]:
    from sipbridge.store import SCHEMA_VERSION

    if config.storage.url:
        return [check_postgres(config.storage.url)]
    path = Path(config.storage.sqlite_path)
    fix = "set storage.sqlite_path to a file in a folder sipbridge may write"
    problem = _writable_dir(path.parent)
    if problem is not None:
        return [Check("store", "fail", f"{path}: {problem}", fix)]
    if not path.exists():
        return [Check("store", "ok", f"{path}: will be created at the first start"), _disk_check(path)]
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            result = db.execute("PRAGMA quick_check").fetchone()[0]
            version = int(db.execute("PRAGMA user_version").fetchone()[0])
        finally:
            db.close()
    except sqlite3.Error as exc:
        return [
            Check(
                "store",
                "fail",
                f"{path}: not a usable SQLite database ({exc})",
                "restore it from a backup, or move it away to start a new one",
            )
        ]
    if result != "ok":
        return [
            Check(
                "store",
                "fail",
                f"{path}: quick_check says {result}",
                "restore it from a backup (sqlite3 .recover can save what is left)",
            )
        ]
    if version > SCHEMA_VERSION:
        return [
            Check(
                "store",
                "fail",
                f"{path}: schema {version} is newer than this sipbridge ({SCHEMA_VERSION})",
                "upgrade sipbridge, or point storage.sqlite_path at another file",
            )
        ]
    return [
        Check("store", "ok", f"{path}: quick_check ok, schema {version}/{SCHEMA_VERSION}"),
        _disk_check(path),
    ]


def _disk_check(path: Path) -> Check:
    folder = path.parent
    while not folder.exists() and folder.parent != folder:
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    detail = f"{free / 2**30:.1f} GiB free in {folder}"
    if free < _MIN_FREE_BYTES:
        return Check("disk", "warn", detail, "free space: recordings and the database grow with every call")
    return Check("disk", "ok", detail)


def check_recordings(config: Config) -> list[Check]:
    storage = config.storage
    path = Path(storage.recordings_dir)
    problem = _writable_dir(path)
    if problem is None:
        state = "on" if storage.record_calls else "off (storage.record_calls)"
        return [Check("recordings", "ok", f"{path} writable; recording {state}")]
    status: Status = "fail" if storage.record_calls else "warn"
    return [
        Check("recordings", status, f"{path}: {problem}", "set storage.recordings_dir to a writable folder")
    ]


# ------------------------------------------------------------------------------------------ clock


def _run(args: list[str]) -> str | None:
    if shutil.which(args[0]) is None:
        return None
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=5, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def clock_sync() -> tuple[bool | None, str]:
    """(synchronised?, how we know); None when no time service answers."""
    out = _run(["timedatectl", "show", "-p", "NTPSynchronized", "--value"])
    if out is not None and out.strip() in ("yes", "no"):
        return out.strip() == "yes", "timedatectl"
    out = _run(["chronyc", "-n", "tracking"])
    if out is not None:
        leap = next(
            (ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Leap status")), ""
        )
        return leap == "Normal", f"chronyc (leap status {leap or '?'})"
    out = _run(["ntpstat"])
    if out is not None:
        return True, "ntpstat"
    out = _run(["ntpq", "-pn"])
    if out is not None:
        return any(ln.startswith("*") for ln in out.splitlines()), "ntpq"
    return None, "no timedatectl, chronyc or ntpq answered"


def check_clock(config: Config) -> list[Check]:
    synced, how = clock_sync()
    why = (
        "calling windows and retries follow the wall clock"
        if config.dialer.enabled
        else "call times are stored"
    )
    if synced is None:
        return [
            Check(
                "clock", "warn", f"sync unknown: {how}", f"run a time service ({why}): apt-get install chrony"
            )
        ]
    if not synced:
        return [
            Check(
                "clock",
                "warn" if not config.dialer.enabled else "fail",
                f"not synchronised ({how})",
                f"enable NTP: timedatectl set-ntp true, or apt-get install chrony ({why})",
            )
        ]
    return [Check("clock", "ok", f"synchronised ({how})")]
