"""What a media worker needs to know, derived once from the deployment config by the supervisor.

A worker never reads the YAML itself: the supervisor hands it this JSON on stdin (not argv, so the trunk
password never shows in `ps`), which also keeps each worker's port and RTP range decided in one place.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sipbridge.config import CALLS_PER_WORKER, Config


@dataclass(frozen=True)
class TrunkSettings:
    """The trunk as one worker uses it. Every worker gets the credentials (a carrier may challenge any INVITE)
    and the outbound proxy; only `register` workers (worker 0) send REGISTER."""

    registrar: str | None
    username: str | None
    password: str | None
    realm: str
    expiry_s: int
    register: bool
    outbound_proxy: str | None = None


@dataclass(frozen=True)
class WorkerSettings:
    index: int
    ipc_path: str
    bind_address: str
    public_address: str
    sip_port: int  # 0 = any free port
    transports: list[str]
    max_calls: int
    rtp_port: int  # first RTP port of this worker's slice of the media range
    rtp_port_range: int
    codecs: list[str]
    allowed_sources: list[str]
    user_agent: str
    clock_rate: int
    ptime_ms: int
    jitter_buffer_ms: int
    jitter_buffer_min_ms: int
    jitter_buffer_max_prefetch_ms: int
    jitter_buffer_max_ms: int
    dead_media_timeout_s: float
    vad: dict[str, Any]
    barge_in_min_ms: int
    recordings_dir: str | None
    log_level: str
    log_json: bool
    trunk: TrunkSettings | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # Behind the SIP front (sip.front): SIP binds this private address (RTP stays on bind_address and
    # public_address), and every request the worker starts is routed through `front_uri` (a loose route).
    sip_bind_address: str | None = None
    front_uri: str | None = None
    # sip.tls as plain values (port already this worker's), and media.srtp: off | optional | mandatory.
    tls: dict[str, Any] = field(default_factory=dict)
    srtp: str = "off"
    rtp_source: str = "sdp"  # media.rtp_source: sdp | latch | any (sipbridge/sip/rtpsource.py)
    playback_margin_ms: int = 80  # media.playback_margin_ms: reply audio held before an utterance starts
    echo_return_db: float | None = None  # vad.echo_return_db: the echo gate (None: off)
    echo_tail_ms: int = 800  # vad.echo_tail_ms
    echo_canceller: str = "webrtc"  # vad.echo_canceller

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> WorkerSettings:
        data = json.loads(text)
        trunk = data.pop("trunk")
        return cls(**data, trunk=TrunkSettings(**trunk) if trunk else None)


def uri_host(uri: str) -> str:
    """The host of `sip:host:port;params` (IPv6 in brackets or not)."""
    rest = uri.split(":", 1)[1].split(";", 1)[0].split("@")[-1]
    return rest[1 : rest.index("]")] if rest.startswith("[") else rest.split(":", 1)[0]


def worker_settings(
    config: Config, index: int, ipc_path: str, sip_port: int | None = None, front_uri: str | None = None
) -> WorkerSettings:
    """`sip_port` overrides the configured one: a respawned worker takes the port its predecessor bound.
    `front_uri` (the SIP front's address as the workers reach it) puts the worker behind the front."""
    sip, media = config.sip, config.media
    workers = sip.workers
    # Each worker gets its own slice of the RTP range so two pjsua2 processes never race for a port.
    span = (media.rtp_port_max - media.rtp_port_min + 1) // workers
    t = sip.trunk
    trunk = None
    if t.register_ or t.username or t.outbound_proxy:
        trunk = TrunkSettings(
            registrar=t.registrar,
            username=t.username,
            password=t.password.get_secret_value() if t.password is not None else None,
            realm=t.realm,
            expiry_s=t.expiry_s,
            # One registration per deployment: worker 0 registers; the others are reached directly (or,
            # later, through the SIP front), so the registrar never forks INVITEs over several contacts.
            register=t.register_ and index == 0,
            outbound_proxy=t.outbound_proxy,
        )
    if front_uri is not None:
        # Only the front talks to a worker: the allow-list at the worker is the front itself (the callers'
        # sources are checked at the front), and its SIP port is any free one on the private address.
        allowed = [str(ipaddress.ip_network(uri_host(front_uri)))]
        port = sip_port if sip_port is not None else 0
        # The front reaches us over UDP and terminates TLS itself (its tls.cfg has the certificate); TCP stays
        # open on the private address when configured (a probe or a test may speak it to a worker directly).
        transports = ["udp", *(["tcp"] if "tcp" in sip.transports else [])]
    else:
        allowed = list(sip.allowed_sources)
        port = sip_port if sip_port is not None else (sip.port + index if sip.port else 0)
        transports = list(sip.transports)
    return WorkerSettings(
        index=index,
        ipc_path=ipc_path,
        bind_address=sip.bind_address,
        public_address=sip.public_address or sip.bind_address,
        sip_port=port,
        transports=transports,
        max_calls=min(CALLS_PER_WORKER, sip.max_calls - index * CALLS_PER_WORKER),
        rtp_port=media.rtp_port_min + index * span,
        rtp_port_range=span,
        codecs=list(sip.codecs),
        allowed_sources=allowed,
        user_agent=sip.user_agent,
        clock_rate=media.clock_rate,
        ptime_ms=media.ptime_ms,
        jitter_buffer_ms=media.jitter_buffer_ms,
        jitter_buffer_min_ms=media.jitter_buffer_min_ms,
        jitter_buffer_max_prefetch_ms=media.jitter_buffer_max_prefetch_ms,
        jitter_buffer_max_ms=media.jitter_buffer_max_ms,
        dead_media_timeout_s=media.dead_media_timeout_s,
        playback_margin_ms=media.playback_margin_ms,
        vad=dataclasses.asdict(config.vad.segmenter_settings()),
        # A backchannel ("uh-huh") must not cut the bot: it is held until the speech outlasts one.
        barge_in_min_ms=max(config.vad.barge_in_min_ms, config.vad.backchannel_ms),
        echo_return_db=config.vad.echo_return_db,
        echo_tail_ms=config.vad.echo_tail_ms,
        echo_canceller=config.vad.echo_canceller,
        recordings_dir=str(Path(config.storage.recordings_dir).resolve())
        if config.storage.record_calls
        else None,
        log_level=config.logging.level,
        log_json=config.logging.json_format,
        trunk=trunk,
        sip_bind_address=sip.front.worker_address if front_uri is not None else None,
        front_uri=front_uri,
        tls=_tls(config, index),
        srtp=media.srtp,
        rtp_source=media.rtp_source,
    )


def _tls(config: Config, index: int) -> dict[str, Any]:
    tls = config.sip.tls
    return {
        "port": tls.port + index if tls.port else 0,
        "cert_file": str(tls.cert_file) if tls.cert_file else "",
        "key_file": str(tls.key_file) if tls.key_file else "",
        "ca_file": str(tls.ca_file) if tls.ca_file else "",
        "verify_client": tls.verify_client,
        "verify_server": tls.verify_server,
    }
