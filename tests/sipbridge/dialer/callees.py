"""SIPp as the *callee* of the dialer's calls (UAS scenarios), on loopback.

Each `Callee` is one SIPp process on its own SIP port that answers every INVITE the same way: human (short
greeting, then an answer), voicemail (long greeting, beep, silence while the message is recorded), or a
final error (486, 603, 404), or ringing until the dialer CANCELs, or ringing and answering unless the dialer
CANCELs first.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..peers import RATE, SIPP, caller_audio, free_media_port, free_udp_port, write_ulaw

_SDP = """v=0
o=user1 53655765 2353687637 IN IP[local_ip_type] [local_ip]
s=-
c=IN IP[media_ip_type] [media_ip]
t=0 0
m=audio [media_port] RTP/AVP 0
a=rtpmap:0 PCMU/8000
"""


def _response(
    status: str,
    *,
    tag: bool = True,
    cseq: str = "[last_CSeq:]",
    contact: bool = False,
    sdp: bool = False,
    retrans: bool = False,
    headers: tuple[str, ...] = (),
) -> str:
    """One SIPp `<send>` of a response to the last request: `tag` adds ours to To (every response of the
    INVITE's dialog; not the BYE's 200, whose To has it already), `cseq` overrides the CSeq line (the 487
    answers the INVITE after a CANCEL was the last request)."""
    to = "[last_To:];tag=[pid]SIPpTag01[call_number]" if tag else "[last_To:]"
    lines = ["[last_Via:]", "[last_From:]", to, "[last_Call-ID:]", cseq]
    if contact:
        lines.append("Contact: <sip:[local_ip]:[local_port];transport=[transport]>")
    lines += headers
    if sdp:
        lines += ["Content-Type: application/sdp", "Content-Length: [len]", "", _SDP]
    else:
        lines += ["Content-Length: 0", "", ""]
    attrs = ' retrans="500"' if retrans else ""
    return f"  <send{attrs}><![CDATA[\nSIP/2.0 {status}\n" + "\n".join(lines) + "]]></send>\n"


_HEAD = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="sipbridge test callee">
{invite}
""" + _response("180 Ringing", contact=True)

# The callee's own BYE needs the caller's From (with its tag) as To; SIPp rejects a scenario that captures
# a variable it never uses, so only scenarios that hang up capture it.
_INVITE = '  <recv request="INVITE" crlf="true" rrs="true"/>\n'
_INVITE_KEEP_FROM = """  <recv request="INVITE" crlf="true" rrs="true">
    <action><ereg regexp=".*" search_in="hdr" header="From:" assign_to="caller"/></action>
  </recv>
"""


def _head(keep_from: bool = False) -> str:
    return _HEAD.replace("{invite}\n", _INVITE_KEEP_FROM if keep_from else _INVITE)


_FINAL = (
    '  <pause milliseconds="{ring_ms}"/>\n'
    + _response("{code} {reason}")
    + '  <recv request="ACK"/>\n</scenario>\n'
)

_RING_FOREVER = (
    '  <recv request="CANCEL"/>\n'
    + _response("200 OK")
    + _response("487 Request Terminated", cseq="CSeq: [cseq] INVITE")
    + '  <recv request="ACK"/>\n</scenario>\n'
)

_ANSWER = (
    '  <pause milliseconds="{ring_ms}"/>\n'
    + _response("200 OK", contact=True, sdp=True, retrans=True)
    + '  <recv request="ACK" crlf="true"/>\n'
)
_STREAM = """  <nop><action><exec rtp_stream="{audio},1,0"/></action></nop>
"""

_WAIT_BYE = (
    '  <recv request="BYE" timeout="{timeout_ms}"/>\n' + _response("200 OK", tag=False) + "</scenario>\n"
)

# The callee's BYE follows the dialog's route set (RFC 3261 12.2.1.1): Request-URI = the worker's Contact,
# Route = the Record-Route of our INVITE (the SIP front's; captured by rrs="true"). Without the Route the
# front cannot tell the BYE is in one of its dialogs and answers 404: the call then stays up until the RTP
# watchdog, holding a PJSUA call slot.
_SEND_BYE = """  <pause milliseconds="{talk_ms}"/>
  <send retrans="500"><![CDATA[
BYE [next_url] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: <sip:callee@[local_ip]:[local_port]>;tag=[pid]SIPpTag01[call_number]
To: [$caller]
Call-ID: [call_id]
CSeq: 2 BYE
Contact: <sip:[local_ip]:[local_port];transport=[transport]>
[routes]
Max-Forwards: 70
Content-Length: 0

]]></send>
  <recv response="200" crlf="true"/>
</scenario>
"""


def error_scenario(code: int, reason: str, ring_ms: int = 200) -> str:
    return _head() + _FINAL.format(code=code, reason=reason, ring_ms=ring_ms)


def challenge_scenario(username: str, password: str, *, hold_ms: int = 1500) -> str:
    """A trunk that authenticates calls, not registrations: each INVITE gets 401; the INVITE sent again with
    valid Authorization gets 486 Busy Here after `hold_ms` (so calls overlap), a wrong one 403. (SIPp's
    `verifyauth` reads Authorization, so the challenge is 401, not a proxy's 407; PJSIP answers both.)"""
    challenge = 'WWW-Authenticate: Digest realm="trunk.test", nonce="5a1b2c3d", algorithm=MD5'
    return (
        '<?xml version="1.0" encoding="ISO-8859-1" ?>\n<scenario name="sipbridge test trunk">\n'
        '  <recv request="INVITE" crlf="true"/>\n'
        + _response("401 Unauthorized", headers=(challenge,))
        + '  <recv request="ACK"/>\n'
        + '  <recv request="INVITE" crlf="true">\n'
        + f'    <action><verifyauth assign_to="ok" username="{username}" password="{password}"/></action>\n'
        + '  </recv>\n  <nop test="ok" next="good"/>\n'
        + _response("403 Forbidden")
        + '  <recv request="ACK"/>\n  <nop next="end"/>\n  <label id="good"/>\n'
        + _response("180 Ringing", contact=True)  # stops the INVITE's retransmissions while we hold
        + f'  <pause milliseconds="{hold_ms}"/>\n'
        + _response("486 Busy Here")
        + '  <recv request="ACK"/>\n  <label id="end"/>\n</scenario>\n'
    )


def ring_scenario() -> str:
    return _head() + _RING_FOREVER


def ring_then_answer_scenario(audio: Path | None, *, answer_after_ms: int, talk_ms: int) -> str:
    """Ring; a CANCEL within `answer_after_ms` ends the call (200, 487, ACK), else answer, stream `audio` and
    hang up after `talk_ms`. The same scenario serves a cancelled call and the redial that follows it."""
    cancel = _RING_FOREVER.replace(
        '  <recv request="CANCEL"/>',
        f'  <recv request="CANCEL" timeout="{answer_after_ms}" ontimeout="answer"/>',
    ).replace("</scenario>\n", '  <nop next="end"/>\n  <label id="answer"/>\n')
    answer = _ANSWER.format(ring_ms=0).replace('  <pause milliseconds="0"/>\n', "")
    if audio is not None:
        answer += _STREAM.format(audio=audio)
    bye = _SEND_BYE.format(talk_ms=talk_ms).replace("</scenario>\n", '  <label id="end"/>\n</scenario>\n')
    return _head(keep_from=True) + cancel + answer + bye


def answer_scenario(
    audio: Path | None, *, ring_ms: int = 300, talk_ms: int | None = None, timeout_ms: int = 30000
) -> str:
    """Answer and stream `audio`; then hang up after `talk_ms`, or (None) wait for the dialer's BYE."""
    body = _head(keep_from=talk_ms is not None) + _ANSWER.format(ring_ms=ring_ms)
    if audio is not None:
        body += _STREAM.format(audio=audio)
    if talk_ms is None:
        return body + _WAIT_BYE.format(timeout_ms=timeout_ms)
    return body + _SEND_BYE.format(talk_ms=talk_ms)


@dataclass(frozen=True)
class VoicemailAudio:
    path: Path
    beep_end_s: float  # from the start of the stream (= the answer)


def greeting_audio(work: Path, text: str, tail_s: float = 12.0) -> Path:
    """`text` (espeak-ng en-us, 150 wpm) after 0.4 s, then silence: a short answer or a short greeting."""
    path = work / f"{''.join(c for c in text.lower() if c.isalpha())}.ulaw"
    return caller_audio(text, 0.4, tail_s).write_ulaw(path)


def human_audio(work: Path, tail_s: float = 12.0) -> Path:
    """ "HR, this is Dana." then a pause (waiting for us), then silence: a person answering."""
    hello = caller_audio("HR, this is Dana.", 0.4, 3.0)
    answer = caller_audio("Yes, she works here.", 0.0, tail_s)
    return write_ulaw(work / "human.ulaw", hello.pcm, answer.pcm)


def opt_out_audio(work: Path, tail_s: float = 20.0) -> Path:
    """A person who answers, then (while the bot greets them) asks not to be called again."""
    hello = caller_audio("HR, this is Dana.", 0.4, 2.5)
    # Two of the default phrases: tiny.en once heard espeak's "stop calling me" as "start calling me".
    stop = caller_audio("Stop calling me. Remove me from your list.", 0.0, tail_s)
    return write_ulaw(work / "optout.ulaw", hello.pcm, stop.pcm)


def voicemail_audio(work: Path, tail_s: float = 15.0) -> VoicemailAudio:
    """A long greeting, a 1 kHz beep, then silence (what a recorder sends while it records)."""
    greeting = caller_audio(
        "Hi, you have reached the human resources department of Acme. We are not able to take your call"
        " right now. Please leave your name, number and a short message after the tone.",
        0.3,
        0.5,
    )
    t = np.arange(int(0.4 * RATE)) / RATE
    beep = (0.3 * 32767 * np.sin(2 * np.pi * 1000 * t)).astype(np.int16)
    tail = np.zeros(int(tail_s * RATE), np.int16)
    path = write_ulaw(work / "voicemail.ulaw", greeting.pcm.astype(np.int16), beep, tail)
    return VoicemailAudio(path, (len(greeting.pcm) + len(beep)) / RATE)


@dataclass
class Callee:
    proc: subprocess.Popen[bytes]
    sip_port: int
    media_port: int
    work: Path

    @classmethod
    def start(cls, scenario: str, work: Path, *, calls: int | None = None, trace_msg: bool = False) -> Callee:
        work.mkdir(parents=True, exist_ok=True)
        xml = work / "callee.xml"
        xml.write_text(scenario)
        sip_port, media_port = free_udp_port(), free_media_port()
        args = [
            SIPP,
            "-sf",
            str(xml),
            "-i",
            "127.0.0.1",
            "-p",
            str(sip_port),
            "-mi",
            "127.0.0.1",
            "-mp",
            str(media_port),
            "-nostdin",
            "-trace_err",
            "-error_file",
            str(work / "errors.log"),
        ]
        if calls is not None:
            args += ["-m", str(calls)]
        if trace_msg:  # every SIP message SIPp sent and received, for tests that check what reached it
            args += ["-trace_msg", "-message_file", str(work / "messages.log")]
        proc = subprocess.Popen(
            args, cwd=work, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        return cls(proc, sip_port, media_port, work)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        if self.proc.stderr is not None:
            self.proc.stderr.close()

    def messages(self) -> str:
        path = self.work / "messages.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def errors(self) -> str:
        path = self.work / "errors.log"
        return path.read_text(errors="replace") if path.exists() else ""
