"""The SIP front: Kamailio at the deployment's one SIP address, dispatching calls to the media workers.

The routing logic is `sipbridge/sip/kamailio.cfg` (a plain Kamailio config, readable on its own); this module
renders the deployment's values next to it (`front-defs.cfg`, `dispatcher.list`, `address.list`) from the
YAML config, runs Kamailio as a supervised child (restarted when it dies, like a worker), and reads its view
through its JSON-RPC socket: each destination's state and calls, and the counters /metrics shows.

    trunk ──► Kamailio (sip.bind_address:sip.port) ──► worker i (sip.front.worker_address:any port)

Pure pieces (`render_front`, `dispatcher_list`, `parse_destinations`, ...) hold no I/O; `SipFront` owns the
process and `KamailioRpc` the socket. docs/DEPLOY.md describes the multi-host use of the same config.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import glob
import ipaddress
import json
import logging
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from sipbridge.config import CALLS_PER_WORKER, Config

log = logging.getLogger(__name__)

KAMAILIO_PACKAGE = "kamailio"  # Debian package that provides the binary (deploy/setup.sh installs it)
KAMAILIO_TLS_PACKAGE = "kamailio-tls-modules"  # Debian package with tls.so (the front's SIP over TLS)
# Where Kamailio's modules live (Debian multiarch, then source installs); tls.so is looked for here.
MODULE_DIRS = ("/usr/lib/*/kamailio/modules", "/usr/lib/kamailio/modules", "/usr/local/lib*/kamailio/modules")
_READY_TIMEOUT_S = 15.0
_STOP_TIMEOUT_S = 5.0
_POLL_S = 0.5
_MAX_BACKOFF_S = 5.0
# Kamailio's own counters (kamailio.cfg, statistics module) and the /metrics names they are shown under.
COUNTERS = {
    "sipbridge_full": "busy",
    "sipbridge_rejected": "rejected",
    "sipbridge_limited": "limited",
    "sipbridge_dispatched": "dispatched",
    "sipbridge_failover": "failover",
}
_STATES = {"A": "active", "I": "inactive", "T": "trying", "D": "disabled"}


class FrontError(Exception):
    """The front cannot start: Kamailio missing, its config rejected, its port taken."""


# ------------------------------------------------------------------------------------- what to run


@dataclass(frozen=True)
class FrontCheck:
    """Is a front needed by this config, and is Kamailio there? (`sipbridge doctor` reuses this.)"""

    needed: bool
    binary: str | None  # resolved path, None when not found
    tls: bool = False  # the front must terminate SIP over TLS (sip.transports has tls)
    tls_module: str | None = None  # resolved path of tls.so, None when not found

    @property
    def ok(self) -> bool:
        return self.problem is None

    @property
    def problem(self) -> str | None:
        if not self.needed:
            return None
        if self.binary is None:
            return (
                "the SIP front needs Kamailio (more than one worker, or sip.front.mode: on) but it was not "
                f"found: install the Debian package `{KAMAILIO_PACKAGE}` (deploy/setup.sh does) or set "
                "sip.front.binary"
            )
        if self.tls and self.tls_module is None:
            return (
                "sip.transports has tls, which the SIP front terminates with Kamailio's tls module, but "
                f"tls.so was not found: install the Debian package `{KAMAILIO_TLS_PACKAGE}` "
                "(deploy/setup.sh does)"
            )
        return None


def find_module(name: str, dirs: Sequence[str] = MODULE_DIRS) -> str | None:
    """The first `name` (e.g. tls.so) in Kamailio's module directories."""
    for pattern in dirs:
        for found in sorted(glob.glob(os.path.join(pattern, name))):
            return found
    return None


def check_front(config: Config) -> FrontCheck:
    needed, tls = config.sip.uses_front, "tls" in config.sip.transports
    return FrontCheck(
        needed,
        shutil.which(config.sip.front.binary),
        tls=needed and tls,
        tls_module=find_module("tls.so") if needed and tls else None,
    )


@dataclass(frozen=True)
class Destination:
    """One line of dispatcher.list: a worker (or a sipbridge host) and how many calls it takes."""

    uri: str
    duid: str
    maxload: int = CALLS_PER_WORKER


def dispatcher_list(destinations: Sequence[Destination]) -> str:
    """Set 1, flag 8 (probed), call-load attributes; one line each (Kamailio's file format)."""
    lines = ["# setid uri flags priority attrs  (written by sipbridge; set 1 = where new calls go)"]
    lines += [f"1 {d.uri} 8 0 duid={d.duid};maxload={d.maxload}" for d in destinations]
    return "\n".join(lines) + "\n"


def address_list(allowed: Sequence[str], exempt: Sequence[str]) -> str:
    """permissions' address file: group 1 may call in, group 2 is exempt from the rate limit."""
    lines = ["# group address netmask  (written by sipbridge; 1 = allowed sources, 2 = no rate limit)"]
    for group, cidrs in ((1, allowed), (2, exempt)):
        for cidr in cidrs:
            net = ipaddress.ip_network(cidr, strict=False)
            addr = f"[{net.network_address}]" if net.version == 6 else str(net.network_address)
            lines.append(f"{group} {addr} {net.prefixlen}")
    return "\n".join(lines) + "\n"


def _quote(text: str) -> str:
    """A Kamailio string literal. Its escapes (\\r, \\n) are meant, so only quotes are refused: the values are
    paths and addresses from a validated config."""
    if '"' in text:
        raise FrontError(f"a double quote cannot go into the front's config: {text!r}")
    return f'"{text}"'


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def front_defs(config: Config, port: int, run_dir: Path, tls_port: int | None = None) -> str:
    """The deployment values kamailio.cfg includes: listen sockets and #!define's."""
    sip, front = config.sip, config.sip.front
    public = sip.public_address or sip.bind_address
    lines = ["# Written by sipbridge from its config (sipbridge/sip/front.py); kamailio.cfg includes it."]
    for proto in sip.transports:
        if proto == "tls":
            lines.append(f"listen=tls:{_hostport(sip.bind_address, _tls_port(config, tls_port))}")
        else:
            lines.append(f"listen={proto}:{_hostport(sip.bind_address, port)}")
    if "udp" not in sip.transports:
        # The workers are reached over UDP: a private socket for that hop when the trunk side is TCP only.
        lines.append(f"listen=udp:{_hostport(front.worker_address, port)}")
    defines: dict[str, str | int] = {
        "DISPATCHER_LIST": _quote(str(run_dir / "dispatcher.list")),
        "ADDRESS_LIST": _quote(str(run_dir / "address.list")),
        "RPC_SOCKET": _quote(str(run_dir / "rpc.sock")),
        "CHILDREN": front.children,
        "PROBE_INTERVAL_S": front.probe_interval_s,
        "PROBE_TIMEOUT_MS": front.probe_timeout_ms,
        "INVITE_TIMEOUT_MS": front.invite_timeout_ms,
        "TRUNK_TIMEOUT_MS": front.trunk_timeout_ms,
        "RETRY_AFTER": _quote(f"Retry-After: {front.retry_after_s}\\r\\n"),
        "PUBLIC_HOSTPORT": _quote(_register_contact(config, public, port, tls_port)),
    }
    if front.rate_limit_per_s:
        defines["RATE_LIMIT"] = front.rate_limit_per_s
    if "tls" in sip.transports:
        defines["WITH_TLS"] = 1
        defines["TLS_CONFIG"] = _quote(str(run_dir / "tls.cfg"))
    lines += [f"#!define {name} {value}" for name, value in defines.items()]
    return "\n".join(lines) + "\n"


def _trunk_over_tls(config: Config) -> bool:
    """Does the deployment's REGISTER leave over TLS (a sips: or transport=tls registrar or proxy)?"""
    trunk = config.sip.trunk
    uris = [u.lower() for u in (trunk.registrar, trunk.outbound_proxy) if u]
    return any(u.startswith("sips:") or "transport=tls" in u for u in uris)


def _register_contact(config: Config, public: str, port: int, tls_port: int | None) -> str:
    """Where the trunk sends INVITEs (our REGISTER's Contact): the front, over TLS if we register over TLS."""
    if "tls" in config.sip.transports and _trunk_over_tls(config):
        return f"{_hostport(public, _tls_port(config, tls_port))};transport=tls"
    return _hostport(public, port)


def _tls_port(config: Config, tls_port: int | None) -> int:
    port = tls_port if tls_port is not None else config.sip.tls.port
    if not port:
        raise FrontError("the SIP front's TLS port is 0: pick one (pick_port) or set sip.tls.port")
    return port


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def tls_cfg(config: Config) -> str:
    """Kamailio's tls module profiles from sip.tls: the server side (the trunk connects to us; mTLS when
    verify_client) and the client side (we connect to the trunk: dialer calls, REGISTER)."""
    tls = config.sip.tls
    ca = f"ca_list = {tls.ca_file.resolve()}\n" if tls.ca_file else ""
    cert = tls.cert_file.resolve() if tls.cert_file else ""
    key = tls.key_file.resolve() if tls.key_file else ""
    return (
        "# Written by sipbridge from sip.tls (sipbridge/sip/front.py): the front terminates SIP over TLS.\n"
        "[server:default]\n"
        "method = TLSv1.2+\n"
        f"certificate = {cert}\n"
        f"private_key = {key}\n"
        f"{ca}"
        f"verify_certificate = {_yes(tls.verify_client)}\n"
        f"require_certificate = {_yes(tls.verify_client)}\n"
        "\n"
        "[client:default]\n"
        "method = TLSv1.2+\n"
        f"{ca}"
        f"verify_certificate = {_yes(tls.verify_server)}\n"
        f"require_certificate = {_yes(tls.verify_server)}\n"
    )


def template_text() -> str:
    return (resources.files("sipbridge.sip") / "kamailio.cfg").read_text(encoding="utf-8")


def render_front(
    config: Config,
    port: int,
    destinations: Sequence[Destination],
    run_dir: Path,
    tls_port: int | None = None,
) -> dict[str, str]:
    """Every file the front runs from, by name (all go into `run_dir`)."""
    sip = config.sip
    files = {
        "kamailio.cfg": template_text(),
        "front-defs.cfg": front_defs(config, port, run_dir, tls_port),
        "dispatcher.list": dispatcher_list(destinations),
        "address.list": address_list(sip.allowed_sources, sip.front.rate_limit_exempt),
    }
    if "tls" in sip.transports:
        files["tls.cfg"] = tls_cfg(config)
    return files


def worker_destinations(config: Config, ports: Sequence[int]) -> list[Destination]:
    """The workers as the front's destinations: worker i takes its share of sip.max_calls."""
    host = config.sip.front.worker_address
    out = []
    for i, port in enumerate(ports):
        share = min(CALLS_PER_WORKER, config.sip.max_calls - i * CALLS_PER_WORKER)
        out.append(Destination(f"sip:{_hostport(host, port)}", f"w{i}", share))
    return out


def pick_port(host: str) -> int:
    """A port free for both UDP and TCP on `host` (sip.port: 0 with a front: Kamailio needs a number)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(50):
        with socket.socket(family, socket.SOCK_DGRAM) as udp:
            udp.bind((host, 0))
            port = int(udp.getsockname()[1])
            with socket.socket(family, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind((host, port))
                except OSError:
                    continue
                return port
    raise FrontError(f"no free SIP port on {host}")


def front_uri(config: Config, port: int) -> str:
    """How a worker reaches the front: its listen address (loopback when it listens on every address)."""
    host = config.sip.bind_address
    if ipaddress.ip_address(host).is_unspecified:
        host = "::1" if ":" in host else "127.0.0.1"
    return f"sip:{_hostport(host, port)}"


# ------------------------------------------------------------------------------------- its view


@dataclass(frozen=True)
class DestinationState:
    uri: str
    duid: str
    state: str  # active / inactive / trying / disabled
    probing: bool
    calls: int
    maxload: int


def parse_destinations(result: Mapping[str, Any]) -> list[DestinationState]:
    """`dispatcher.list`'s JSON-RPC result → one state per destination, ordered by duid."""
    out = []
    for record in result.get("RECORDS", []):
        for target in record.get("SET", {}).get("TARGETS", []):
            dest = target["DEST"]
            flags = str(dest.get("FLAGS", ""))
            attrs = dest.get("ATTRS") or {}
            out.append(
                DestinationState(
                    uri=dest["URI"],
                    duid=str(attrs.get("DUID") or ""),
                    state=_STATES.get(flags[:1], flags[:1] or "unknown"),
                    probing="P" in flags[1:],
                    calls=int((dest.get("RUNTIME") or {}).get("DLGLOAD", 0)),
                    maxload=int(attrs.get("MAXLOAD", 0)),
                )
            )
    return sorted(out, key=lambda d: (len(d.duid), d.duid))


def parse_counters(result: Sequence[str]) -> dict[str, int]:
    """`stats.get_statistics`'s lines ("script:sipbridge_full = 3") → {"busy": 3, ...}."""
    out = {}
    for line in result:
        name, _, value = line.partition(" = ")
        key = COUNTERS.get(name.split(":", 1)[-1])
        if key is not None and value.strip().lstrip("-").isdigit():
            out[key] = int(value)
    return out


class RpcError(Exception):
    pass


@dataclass
class KamailioRpc:
    """JSON-RPC over Kamailio's Unix datagram socket (jsonrpcs module); one request at a time."""

    server: str
    client: str
    _sock: socket.socket | None = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _next_id: int = 0

    def _open(self) -> socket.socket:
        if self._sock is None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.client)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.bind(self.client)
            sock.setblocking(False)
            self._sock = sock
        return self._sock

    async def call(self, method: str, *params: Any, timeout: float = 2.0) -> Any:
        loop = asyncio.get_running_loop()
        async with self._lock:
            sock = self._open()
            self._next_id += 1
            request = {"jsonrpc": "2.0", "method": method, "params": list(params), "id": self._next_id}
            await loop.sock_sendto(sock, json.dumps(request).encode(), self.server)
            while True:
                data = await asyncio.wait_for(loop.sock_recv(sock, 1 << 20), timeout)
                reply = json.loads(data)
                if reply.get("id") == self._next_id:
                    break  # a late answer to an earlier, timed-out request is skipped
        if "error" in reply:
            raise RpcError(f"{method}: {reply['error']}")
        return reply.get("result")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.client)


# ------------------------------------------------------------------------------------- the process


_PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True)  # loaded here, in the parent: no dlopen between fork and exec


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the supervisor dies, so no orphan keeps the SIP port."""
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def states_to_fix(full: set[int], states: Sequence[str | None], draining: bool) -> tuple[set[int], set[int]]:
    """Destinations whose Kamailio state differs from the supervisor's wish: (to disable again: counted full
    but not disabled; to enable again: disabled but not full). `states` is Kamailio's view per destination
    (None: not in the view). During a drain every destination stays disabled."""
    disable = {i for i, state in enumerate(states) if i in full and state not in (None, "disabled")}
    enable = set()
    if not draining:
        enable = {i for i, state in enumerate(states) if i not in full and state == "disabled"}
    return disable, enable


@dataclass
class SipFront:
    """Kamailio as a child of the supervisor: started on the rendered config, restarted when it dies."""

    config: Config
    port: int
    destinations: list[Destination]
    run_dir: Path | None = None
    tls_port: int | None = None  # the front's SIP-over-TLS port (sip.transports has tls), else None
    proc: asyncio.subprocess.Process | None = None
    restarts: int = 0
    started_at: float = 0.0
    view: list[DestinationState] = field(default_factory=list)
    view_at: float = 0.0
    _counters: dict[str, int] = field(default_factory=dict)  # this Kamailio's, since it started
    _base: dict[str, int] = field(default_factory=dict)  # earlier Kamailios' totals (restarts reset theirs)
    _rpc: KamailioRpc | None = None
    _stopping: bool = False
    _own_dir: bool = False
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    # Workers full by the supervisor's count, dialer calls included (see `worker_load`): wanted / as set.
    _full: set[int] = field(default_factory=set)
    _full_set: set[int] = field(default_factory=set)
    _full_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _draining: bool = False

    @property
    def listen(self) -> str:
        return _hostport(self.config.sip.bind_address, self.port)

    def counters(self) -> dict[str, int]:
        return {k: self._base.get(k, 0) + self._counters.get(k, 0) for k in COUNTERS.values()}

    def counter(self, key: str) -> Callable[[], float]:
        """A reader of one counter (for a /metrics gauge)."""
        return lambda: self.counters()[key]

    async def start(self) -> None:
        check = check_front(self.config)
        if check.problem:
            raise FrontError(check.problem)
        self.run_dir = self.run_dir or self.config.sip.front.run_dir
        if self.run_dir is None:
            self.run_dir = Path(tempfile.mkdtemp(prefix="sipbridge-front-"))
            self._own_dir = True
        self.run_dir = self.run_dir.resolve()  # Kamailio runs in it: relative paths would resolve twice
        self.run_dir.mkdir(parents=True, exist_ok=True)
        files = render_front(self.config, self.port, self.destinations, self.run_dir, self.tls_port)
        for name, text in files.items():
            (self.run_dir / name).write_text(text, encoding="utf-8")
        self._rpc = KamailioRpc(str(self.run_dir / "rpc.sock"), str(self.run_dir / "rpc-client.sock"))
        await self._spawn()
        await self._wait_ready()
        log.info("sip front: kamailio pid %d on %s, config %s", self._pid(), self.listen, self.cfg_path)
        self._track(self._poll(), "front-poll")

    @property
    def cfg_path(self) -> Path:
        assert self.run_dir is not None
        return self.run_dir / "kamailio.cfg"

    def _pid(self) -> int:
        return self.proc.pid if self.proc else 0

    async def _spawn(self) -> None:
        assert self.run_dir is not None
        binary = shutil.which(self.config.sip.front.binary)
        if binary is None:
            raise FrontError(check_front(self.config).problem or "kamailio not found")
        self._counters = {}
        self.started_at = time.monotonic()
        self.proc = await asyncio.create_subprocess_exec(
            binary,
            "-DD",  # stay in the foreground: we are its supervisor
            "-E",  # log to stderr, which we forward into our log
            "-f",
            str(self.cfg_path),
            "-Y",
            str(self.run_dir),
            "-P",
            str(self.run_dir / "kamailio.pid"),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            cwd=self.run_dir,
            start_new_session=True,  # its own group: Ctrl+C reaches us; we stop it in order
            preexec_fn=_die_with_parent,
        )
        self._track(self._forward_log(self.proc), f"front-log-{self.proc.pid}")
        self._track(self._watch(self.proc), f"front-watch-{self.proc.pid}")

    async def _wait_ready(self) -> None:
        """Ready once its RPC answers (it binds the SIP sockets before that); an early exit fails start."""
        assert self.proc is not None and self._rpc is not None
        deadline = time.monotonic() + _READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.returncode is not None:
                raise FrontError(
                    f"kamailio exited with code {self.proc.returncode} during start (its log above says why; "
                    f"config {self.cfg_path})"
                )
            try:
                await self._refresh(timeout=0.3)
                return
            except (OSError, TimeoutError, RpcError, ValueError):
                await asyncio.sleep(0.1)  # not listening yet; its exit is checked on the next turn
        raise FrontError(f"kamailio did not answer on its RPC socket in {_READY_TIMEOUT_S:.0f} s")

    async def _forward_log(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stderr is not None
        async for raw in proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            if not line.strip():
                continue
            level = logging.INFO
            if any(w in line for w in ("ERROR", "CRITICAL", "ALERT", "WARNING")):
                level = logging.WARNING
            log.log(level, "kamailio: %s", line.strip())

    async def _watch(self, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        # Its children may outlive a killed main process and keep the SIP port: end the whole group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        if self._stopping or proc is not self.proc:
            return
        log.error("sip front: kamailio (pid %d) died with code %s; restarting", proc.pid, code)
        for key, value in self._counters.items():
            self._base[key] = self._base.get(key, 0) + value
        self._counters = {}
        self.view = []
        self.restarts += 1
        if time.monotonic() - self.started_at < 10:
            await asyncio.sleep(min(_MAX_BACKOFF_S, 0.5 * self.restarts))
        if self._stopping:
            return
        try:
            await self._spawn()
            await self._wait_ready()
            log.info("sip front: kamailio restarted, pid %d", self._pid())
            self._full_set.clear()  # a new Kamailio starts from dispatcher.list: every worker active
            self._track(self._sync_full(), "front-load")
        except (FrontError, OSError) as exc:
            log.error("sip front: restarting kamailio failed: %s", exc)

    def _track(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _refresh(self, timeout: float = 1.0) -> None:
        assert self._rpc is not None
        listed = await self._rpc.call("dispatcher.list", timeout=timeout)
        stats = await self._rpc.call("stats.get_statistics", *COUNTERS, timeout=timeout)
        self.view = parse_destinations(listed or {})
        self._counters = parse_counters(stats or [])
        self.view_at = time.monotonic()
        self._recheck_full()

    def _recheck_full(self) -> None:
        """Kamailio's states must follow the supervisor's wish, but Kamailio changes them by itself: a
        timed-out INVITE marks a destination inactive (`ip`, the failure route) and the next answered probe
        makes it active, so a worker counted full was sent INVITEs PJSIP refused with 486 while `_full_set`
        still said it was disabled (soak defect B). Every poll compares the wish with what Kamailio shows and
        sends again what differs, both ways: a view fetched before the last RPC then costs a redundant RPC,
        never a worker left disabled (comparing `_full_set` alone with a stale view did that)."""
        states = [self._view_state(d.uri) for d in self.destinations]
        disable, enable = states_to_fix(self._full, states, self._draining)
        if disable or enable:
            self._full_set = (self._full_set - disable) | enable
            self._track(self._sync_full(), "front-load")

    def _view_state(self, uri: str) -> str | None:
        return next((d.state for d in self.view if d.uri == uri), None)

    async def _poll(self) -> None:
        while not self._stopping:
            await asyncio.sleep(_POLL_S)
            if self.proc is None or self.proc.returncode is not None:
                continue
            try:
                await self._refresh()
            except (OSError, TimeoutError, RpcError, ValueError) as exc:
                log.debug("sip front: RPC failed: %s", exc)

    async def worker_down(self, index: int) -> None:
        """A worker died (the supervisor knows at once): out of the rotation now, not at the next probe.
        The probes put it back when its successor answers."""
        if self._rpc is None or not 0 <= index < len(self.destinations):
            return
        # Its calls died with it: not full any more, and from now on its state is the probes' to set (a wish
        # to keep it disabled would keep its successor out; `_recheck_full` acts on wishes only).
        self._full.discard(index)
        self._full_set.discard(index)
        uri = self.destinations[index].uri
        try:
            await self._rpc.call("dispatcher.set_state", "ip", 1, uri)
            log.info("sip front: %s marked inactive (worker %d died)", uri, index)
        except (OSError, TimeoutError, RpcError, ValueError) as exc:
            log.warning("sip front: could not mark %s inactive: %s", uri, exc)

    def worker_load(self, index: int, calls: int) -> None:
        """The supervisor's count of worker `index`'s calls changed. Kamailio's call-load routing counts only
        the INVITEs it dispatched, so a worker busy with dialer calls (they leave through the front, but as
        requests of the worker) would still be sent INVITEs it must refuse. While the supervisor counts it
        full, its destination is disabled (`d`: not probed back), so new calls go elsewhere or get the
        front's own 503; it is made active again when a slot frees."""
        if not 0 <= index < len(self.destinations):
            return
        full = calls >= self.destinations[index].maxload
        if full == (index in self._full):
            return
        (self._full.add if full else self._full.discard)(index)
        if self._rpc is not None:
            self._track(self._sync_full(), "front-load")

    async def _sync_full(self) -> None:
        """Bring Kamailio's states to the wanted ones (one RPC per change; the latest wish wins)."""
        async with self._full_lock:
            for index in sorted(self._full ^ self._full_set):
                full = index in self._full
                if self._draining and not full:
                    continue  # the drain keeps every destination disabled
                uri = self.destinations[index].uri
                try:
                    assert self._rpc is not None
                    await self._rpc.call("dispatcher.set_state", "d" if full else "ap", 1, uri)
                except (OSError, TimeoutError, RpcError, ValueError) as exc:
                    log.warning("sip front: could not mark %s %s: %s", uri, "full" if full else "free", exc)
                    continue
                (self._full_set.add if full else self._full_set.discard)(index)
                log.info("sip front: %s %s", uri, "full: no new INVITEs" if full else "has a free slot again")

    async def drain(self, reason: str) -> None:
        """Graceful drain: every destination disabled (`d`: not probed back to active), so the front itself
        answers new INVITEs 503 + Retry-After instead of failing over across refusing workers; dialogs in
        progress keep their Record-Route path, so live calls are not touched."""
        if self._rpc is None:
            return
        self._draining = True
        for dest in self.destinations:
            try:
                await self._rpc.call("dispatcher.set_state", "d", 1, dest.uri)
            except (OSError, TimeoutError, RpcError, ValueError) as exc:
                log.warning("sip front: could not disable %s for the drain: %s", dest.uri, exc)
        log.info("sip front: every destination disabled (%s): new INVITEs get 503", reason)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def health(self) -> dict[str, Any]:
        running = self.running
        fresh = running and time.monotonic() - self.view_at < 5 * _POLL_S + 1
        destinations = [
            {"uri": d.uri, "state": d.state, "probing": d.probing, "calls": d.calls, "maxload": d.maxload}
            for d in self.view
        ]
        # A worker disabled because its slots are taken (dialer calls included) is busy, not broken.
        full = {self.destinations[i].uri for i in self._full_set}
        return {
            "ok": bool(fresh and any(d.state == "active" or d.uri in full for d in self.view)),
            "pid": self._pid() if running else None,
            "listen": self.listen,
            "tls_listen": _hostport(self.config.sip.bind_address, self.tls_port) if self.tls_port else None,
            "transports": list(self.config.sip.transports),
            "config": str(self.cfg_path) if self.run_dir else None,
            "restarts": self.restarts,
            "destinations": destinations,
            "counters": self.counters(),
        }

    async def stop(self) -> None:
        self._stopping = True
        proc = self.proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), _STOP_TIMEOUT_S)
            except TimeoutError:
                log.warning("sip front: kamailio did not stop in %.0f s, killing it", _STOP_TIMEOUT_S)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
        if self._tasks:
            # Its last log lines first (the pipe closes with the process), then the rest is cancelled.
            await asyncio.wait(self._tasks, timeout=1)
        for task in list(self._tasks):
            task.cancel()
        if self._rpc is not None:
            self._rpc.close()
        if self._own_dir and self.run_dir is not None:
            shutil.rmtree(self.run_dir, ignore_errors=True)
