"""The worker's SIP account: which INVITEs it takes (source allow-list) and the trunk registration."""

from __future__ import annotations

import ipaddress
import logging
from typing import TYPE_CHECKING

import pjsua2 as pj

from sipbridge.sip.settings import WorkerSettings

if TYPE_CHECKING:
    from sipbridge.sip.call_control import CallControl

log = logging.getLogger("sipbridge.worker")


class SourceFilter:
    """`sip.allowed_sources` as networks; `allows("127.0.0.1:5070")` (PJSIP's `srcAddress` form)."""

    def __init__(self, cidrs: list[str]) -> None:
        self.networks = [ipaddress.ip_network(c, strict=False) for c in cidrs]

    def allows(self, address: str) -> bool:
        host = address
        if host.startswith("["):  # [v6]:port
            host = host[1 : host.index("]")]
        elif host.count(":") == 1:  # v4:port
            host = host.rsplit(":", 1)[0]
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(ip in net for net in self.networks)


def loose_route(uri: str) -> str:
    """A proxy URI as a loose router (`;lr`): requests keep their own Request-URI and reach the proxy through
    a Route header. Without `lr` PJSIP would route strictly and put the proxy in the Request-URI."""
    return uri if ";lr" in uri.split(">", 1)[0] else f"{uri};lr"


def account_config(settings: WorkerSettings, sip_port: int) -> pj.AccountConfig:
    cfg = pj.AccountConfig()
    host = settings.sip_bind_address or settings.public_address
    cfg.idUri = f"sip:sipbridge@{host}:{sip_port}"
    trunk = settings.trunk
    cfg.regConfig.registrarUri = ""
    if settings.front_uri:
        # Everything this worker sends out (dialer INVITEs, the trunk REGISTER) leaves through the front, so
        # the trunk sees one source address; the front also puts its own address in the REGISTER's Contact.
        cfg.sipConfig.proxies.append(loose_route(settings.front_uri))
        cfg.natConfig.contactRewriteUse = 0
        cfg.natConfig.viaRewriteUse = 0
    if trunk is not None:
        if trunk.username and trunk.password:
            # On every worker: the trunk may challenge our INVITEs (401/407), not only the REGISTER.
            cred = pj.AuthCredInfo("digest", trunk.realm, trunk.username, 0, trunk.password)
            cfg.sipConfig.authCreds.append(cred)
        if trunk.outbound_proxy:
            cfg.sipConfig.proxies.append(loose_route(trunk.outbound_proxy))
        if trunk.register and trunk.registrar:
            registrar_host = trunk.registrar.split(":", 1)[1]
            cfg.idUri = f"sip:{trunk.username}@{registrar_host}"
            cfg.regConfig.registrarUri = trunk.registrar
            cfg.regConfig.timeoutSec = trunk.expiry_s
            cfg.regConfig.retryIntervalSec = 30
    media = cfg.mediaConfig.transportConfig
    media.boundAddress = settings.bind_address
    media.publicAddress = settings.public_address
    media.port = settings.rtp_port
    media.portRange = settings.rtp_port_range
    # SRTP with SDES keys; secure signalling 0: keys may be offered over any transport (the operator pairs
    # SRTP with sip TLS; docs/DEPLOY.md), so a UDP test or a trunk on a private link still works.
    cfg.mediaConfig.srtpUse = _SRTP[settings.srtp]
    cfg.mediaConfig.srtpSecureSignaling = 0
    return cfg


_SRTP = {
    "off": pj.PJMEDIA_SRTP_DISABLED,
    "optional": pj.PJMEDIA_SRTP_OPTIONAL,
    "mandatory": pj.PJMEDIA_SRTP_MANDATORY,
}


class BridgeAccount(pj.Account):
    def __init__(self, control: CallControl) -> None:
        super().__init__()
        self.control = control

    def onIncomingCall(self, prm: pj.OnIncomingCallParam) -> None:
        try:
            self.control.on_incoming(self, prm)
        except Exception:  # never unwind into PJSIP (its C code cannot take it)
            log.exception("incoming call %d could not be taken", prm.callId)

    def onRegState(self, prm: pj.OnRegStateParam) -> None:
        self.control.on_reg_state(prm)
