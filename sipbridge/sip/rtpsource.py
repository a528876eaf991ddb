"""Only the call's peer may send us its RTP: the kernel drops datagrams from any other source.

PJSIP 2.15 adopts a new RTP source address after a few packets from it (`PJMEDIA_RTP_NAT_PROBATION_CNT`,
10, counted only while the real peer is quiet for that long) and, before the peer's first packet, plays
whatever arrives. Its switch-off, `PJMEDIA_UDP_NO_SRC_ADDR_CHECKING`, is an option of the C transport that
pjsua 2.15 does not expose (no field in pjsua2's MediaConfig or AccountMediaConfig), and it would still let
packets from a stranger be played before the peer's. So anyone who reaches a worker's RTP port could speak
into a call (issue 15's security finding).

The worker `connect()`s the call's RTP and RTCP sockets to the peer instead: a connected UDP socket
receives only from that address, in the kernel, before PJSIP reads anything; PJSIP keeps sending with
`sendto`, which a connected UDP socket allows. Which peer (`media.rtp_source`):

- `sdp`: the address of the SDP's c=/m= lines, from the answer on (and again after a re-INVITE moves it);
- `latch`: the source of the first RTP packet that arrives (symmetric RTP behind a NAT, whose SDP names a
  private address): until that packet, anyone may be first;
- `any`: no filter (PJSIP's own behaviour).

The sockets are PJSIP's own: found among the process's descriptors by their local address, and connected
through a duplicate, which shares the socket.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
from dataclasses import dataclass

log = logging.getLogger("sipbridge.worker")

_FD_DIR = "/proc/self/fd"


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    @property
    def family(self) -> socket.AddressFamily:
        return socket.AF_INET6 if ":" in self.host else socket.AF_INET

    def usable(self) -> bool:
        """A unicast address and a port: 0.0.0.0 (hold) or port 0 names no peer to filter on."""
        try:
            addr = ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return self.port > 0 and not addr.is_unspecified and not addr.is_multicast


def parse_endpoint(text: str) -> Endpoint | None:
    """`1.2.3.4:5004` or `[::1]:5004` (pjsua2's address strings) -> Endpoint; None for anything else."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not port.isdigit():
        return None
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    return Endpoint(host, int(port)) if host else None


def find_udp_socket(local: Endpoint) -> int | None:
    """The descriptor of this process's UDP socket bound to `local`, or None. PJSIP names a socket by the
    address it advertises (`sip.public_address` behind a NAT), which may not be the one it is bound to: a
    socket of the family on that port is taken then (a worker binds one address, so one socket has it)."""
    by_port = None
    for name in os.listdir(_FD_DIR):
        try:
            if not os.readlink(f"{_FD_DIR}/{name}").startswith("socket:"):
                continue
            with socket.fromfd(int(name), local.family, socket.SOCK_DGRAM) as sock:
                kind = sock.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE)
                family = sock.getsockopt(socket.SOL_SOCKET, socket.SO_DOMAIN)
                if kind != socket.SOCK_DGRAM or family != local.family:
                    continue
                bound = sock.getsockname()
        except OSError:
            continue  # closed meanwhile, or not of this family
        if bound[1] == local.port:
            if _same_host(bound[0], local.host):
                return int(name)
            by_port = int(name)
    return by_port


def _same_host(bound: str, named: str) -> bool:
    try:
        return ipaddress.ip_address(bound) == ipaddress.ip_address(named)
    except ValueError:
        return False


def restrict(local_text: str, peer_text: str) -> bool:
    """Connect our UDP socket bound to `local_text` to `peer_text`; False if either is unusable or the socket
    is not found (the call then keeps PJSIP's behaviour, and the caller logs it)."""
    local, peer = parse_endpoint(local_text), parse_endpoint(peer_text)
    if local is None or peer is None or not peer.usable() or peer.family != local.family:
        return False
    fd = find_udp_socket(local)
    if fd is None:
        return False
    try:
        with socket.fromfd(fd, local.family, socket.SOCK_DGRAM) as sock:
            sock.connect((peer.host, peer.port))
    except OSError as exc:
        log.warning("rtp source filter: connecting %s to %s failed: %s", local_text, peer_text, exc)
        return False
    return True
