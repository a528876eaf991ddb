"""The test peers' own helpers: what the load benches and call tests rely on to start many SIPp callers."""

from __future__ import annotations

import socket

from .peers import free_media_ports


def test_media_ports_for_many_callers_never_share_a_port() -> None:
    """SIPp binds base..base+3 (RTP, RTCP, video RTP/RTCP): 150 callers' windows are disjoint, even, below
    the kernel's ephemeral range and the bridges' RTP ranges, and every port is free when handed out."""
    ports = free_media_ports(150)
    windows = [set(range(p, p + 4)) for p in ports]
    assert len(set().union(*windows)) == 4 * len(ports)
    assert all(p % 2 == 0 and 10000 <= p and p + 3 < 20000 for p in ports)
    socks = []
    try:
        for port in ports[:20]:  # bindable now (the rest were, when drawn; binding 600 sockets is not needed)
            for off in range(4):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(s)
                s.bind(("127.0.0.1", port + off))
    finally:
        for s in socks:
            s.close()
