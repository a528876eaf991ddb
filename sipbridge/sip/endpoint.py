"""The worker's pjsua2 library: the `Endpoint`, its SIP transports (UDP, TCP, TLS) and codecs (main thread).

`SipEndpoint` owns the pjsua2 objects that live as long as the worker: the Endpoint, the log writer PJSIP
points at and the bound SIP ports. The account and the calls are `CallControl`'s
(sipbridge/sip/call_control.py).
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass
from typing import Any

import pjsua2 as pj

from sipbridge.sip.settings import WorkerSettings
from sipbridge.sip.wire import wire_text

log = logging.getLogger("sipbridge.worker")

_CODEC_IDS = {"PCMU": "PCMU/8000", "PCMA": "PCMA/8000", "G722": "G722/16000"}


class _PjLogWriter(pj.LogWriter):
    def write(self, entry: pj.LogEntry) -> None:
        # PJSIP quotes whole packets in some warnings (parse errors): one escaped line, never forged ones.
        log.warning("pjsip: %s", wire_text(entry.msg.strip(), 4096))


class StartupError(Exception):
    """The worker could not bind its ports or start PJSIP."""


@dataclass
class SipEndpoint:
    settings: WorkerSettings
    ep: pj.Endpoint | None = None
    sip_udp_port: int = 0
    sip_tcp_port: int | None = None
    sip_tls_port: int | None = None

    def start(self) -> pj.Endpoint:
        """Create and start the library with its transports (StartupError names what could not bind)."""
        s = self.settings
        ep = pj.Endpoint()
        ep.libCreate()
        cfg = pj.EpConfig()
        cfg.uaConfig.maxCalls = s.max_calls
        cfg.uaConfig.userAgent = s.user_agent
        # SIP callbacks on our main thread (polled), so creating/dropping pjsua2 objects happens there.
        cfg.uaConfig.threadCnt = 0
        cfg.uaConfig.mainThreadOnly = True
        # PJSIP's own log: errors and warnings only, through Python logging (the writer is kept alive on
        # self: PJSIP holds a raw pointer to it).
        self._log_writer = _PjLogWriter()
        cfg.logConfig.writer = self._log_writer
        cfg.logConfig.level = 2
        cfg.logConfig.consoleLevel = 2
        cfg.logConfig.msgLogging = 0
        cfg.medConfig.noVad = True  # send every frame: the caller hears real silence, RTP stays at 50/s
        cfg.medConfig.ecTailLen = 0
        cfg.medConfig.clockRate = s.clock_rate
        cfg.medConfig.sndClockRate = s.clock_rate
        cfg.medConfig.ptime = s.ptime_ms
        # The receive jitter buffer's prefetch delays every caller frame before VAD and barge-in hear it
        # (PJSIP's default minimum is 60 ms); config.MediaConfig documents the trade-off.
        cfg.medConfig.jbInit = s.jitter_buffer_ms
        cfg.medConfig.jbMinPre = s.jitter_buffer_min_ms
        cfg.medConfig.jbMaxPre = s.jitter_buffer_max_prefetch_ms
        cfg.medConfig.jbMax = s.jitter_buffer_max_ms
        ep.libInit(cfg)
        self.ep = ep
        try:
            tcfg = pj.TransportConfig()
            tcfg.port = s.sip_port
            # Behind the SIP front, SIP binds a private address and is reached only by the front.
            tcfg.boundAddress = s.sip_bind_address or s.bind_address
            tcfg.publicAddress = "" if s.front_uri else s.public_address
            udp = ep.transportCreate(pj.PJSIP_TRANSPORT_UDP, tcfg)
            self.sip_udp_port = int(ep.transportGetInfo(udp).localName.rsplit(":", 1)[1])
            if "tcp" in s.transports:
                tcfg.port = self.sip_udp_port
                tcp = ep.transportCreate(pj.PJSIP_TRANSPORT_TCP, tcfg)
                self.sip_tcp_port = int(ep.transportGetInfo(tcp).localName.rsplit(":", 1)[1])
        except pj.Error as exc:
            raise StartupError(
                f"cannot bind SIP {tcfg.boundAddress}:{s.sip_port} ({exc.info().strip()})"
            ) from None
        if "tls" in s.transports:
            check_tls_files(s.tls)
            try:
                self.sip_tls_port = self._start_tls(ep)
            except pj.Error as exc:
                tls = s.tls
                raise StartupError(
                    f"cannot start SIP TLS on {s.bind_address}:{tls['port']} with sip.tls.cert_file"
                    f" {tls['cert_file']}, sip.tls.key_file {tls['key_file']}"
                    + (f", sip.tls.ca_file {tls['ca_file']}" if tls.get("ca_file") else "")
                    + f" ({exc.info().strip()})"
                ) from None
        ep.libStart()
        return ep

    def use_codecs(self) -> None:
        """No sound card, and the configured codecs in order of preference (every other one off)."""
        assert self.ep is not None
        ep = self.ep
        ep.audDevManager().setNullDev()  # no sound card: a null port clocks the conference bridge
        wanted = {_CODEC_IDS[c]: 255 - i for i, c in enumerate(self.settings.codecs)}
        for codec in ep.codecEnum2():
            name = "/".join(codec.codecId.split("/")[:2])
            ep.codecSetPriority(codec.codecId, wanted.get(name, 0))

    def _start_tls(self, ep: pj.Endpoint) -> int:
        """SIP over TLS (sip.tls): our certificate, TLS 1.2 or newer, and the trunk's client certificate
        checked against the CA list when `verify_client` is on (mTLS)."""
        s = self.settings
        tls = s.tls
        tcfg = pj.TransportConfig()
        tcfg.port = int(tls["port"])
        tcfg.boundAddress = s.bind_address
        tcfg.publicAddress = s.public_address
        tc = tcfg.tlsConfig
        tc.certFile = tls["cert_file"]
        tc.privKeyFile = tls["key_file"]
        tc.CaListFile = tls.get("ca_file") or ""
        tc.method = pj.PJSIP_TLSV1_2_METHOD
        tc.proto = pj.PJ_SSL_SOCK_PROTO_TLS1_2 | pj.PJ_SSL_SOCK_PROTO_TLS1_3
        tc.verifyClient = bool(tls["verify_client"])
        tc.requireClientCert = bool(tls["verify_client"])
        tc.verifyServer = bool(tls["verify_server"])
        transport = ep.transportCreate(pj.PJSIP_TRANSPORT_TLS, tcfg)
        return int(ep.transportGetInfo(transport).localName.rsplit(":", 1)[1])

    def destroy(self) -> None:
        """libDestroy, once every pjsua2 object of the worker is dropped."""
        if self.ep is not None:
            self.ep.libDestroy()
            self.ep = None


def check_tls_files(tls: dict[str, Any]) -> None:
    """PJSIP opens a TLS listener even when its certificate cannot be read (each handshake then fails): check
    the files here, with OpenSSL through Python's ssl, and name the key that is wrong."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(tls["cert_file"], tls["key_file"])
    except (OSError, ssl.SSLError) as exc:
        raise StartupError(
            f"sip.tls.cert_file {tls['cert_file']} / sip.tls.key_file {tls['key_file']}: not a readable PEM"
            f" certificate and its private key ({exc})"
        ) from None
    if tls.get("ca_file"):
        try:
            context.load_verify_locations(tls["ca_file"])
        except (OSError, ssl.SSLError) as exc:
            raise StartupError(
                f"sip.tls.ca_file {tls['ca_file']}: not a readable PEM CA list ({exc})"
            ) from None
