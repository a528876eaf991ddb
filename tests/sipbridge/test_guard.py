"""The worker's request guard as data (sipbridge/sip/guard.py), the wire-string boundary
(sipbridge/sip/wire.py), the log escaping and the WAV header repair: pure functions, no SIP stack."""

from __future__ import annotations

import logging
import shutil
import struct
import wave
from pathlib import Path

import pytest

from sipbridge.logs import setup_logging
from sipbridge.media.recorder import StereoRecorder, repair_wav_header
from sipbridge.sip.guard import MAX_COPIED_HEADERS, RequestGuard, WireRequest, parse_request, sdp_refusal
from sipbridge.sip.wire import wire_text

SDP4 = b"v=0\r\nc=IN IP4 127.0.0.1\r\nm=audio 4000 RTP/AVP 0\r\n"


def req(
    method: str, call_id: str = "c1", to_tag: bool = False, body: bytes = SDP4, copied: int = 300
) -> WireRequest:
    invite = method == "INVITE"
    return WireRequest(
        method,
        call_id,
        to_tag,
        copied,
        body if invite else b"",
        content_type="application/sdp" if invite else "",
    )


def guard() -> RequestGuard:
    return RequestGuard.from_cidrs(["10.0.0.0/8", "127.0.0.1/32"])


@pytest.mark.parametrize(
    ("method", "ip", "to_tag", "code"),
    [
        ("INVITE", "10.1.2.3", False, 0),
        ("INVITE", "192.0.2.1", False, 403),
        ("OPTIONS", "10.1.2.3", False, 0),
        ("OPTIONS", "192.0.2.1", False, 403),
        ("ACK", "192.0.2.1", True, -1),  # never answered
        ("SUBSCRIBE", "10.1.2.3", False, 405),
        ("MESSAGE", "10.1.2.3", False, 405),
        ("REGISTER", "10.1.2.3", False, 405),
        ("NOTIFY", "10.1.2.3", False, 405),  # only inside a dialog (REFER status)
        ("NOTIFY", "10.1.2.3", True, 0),
        ("FROB", "10.1.2.3", False, 501),
        ("SUBSCRIBE", "192.0.2.1", False, 403),  # the ACL first: strangers learn nothing of our methods
    ],
)
def test_out_of_dialog_policy(method: str, ip: str, to_tag: bool, code: int) -> None:
    assert guard().check(req(method, to_tag=to_tag), ip).code == code


def test_in_dialog_requests_must_come_from_the_dialogs_peer() -> None:
    g = guard()
    assert g.check(req("INVITE"), "10.0.0.5").passes
    assert g.check(req("INVITE"), "10.0.0.5").passes  # its retransmission
    for method in ("BYE", "INVITE", "INFO", "UPDATE"):
        assert g.check(req(method, to_tag=True), "10.0.0.6").code == 403, (
            method
        )  # allowed source, not the peer
        assert g.check(req(method, to_tag=True), "192.0.2.1").code == 403, method
        assert g.check(req(method, to_tag=True), "10.0.0.5").passes, method
    assert g.check(req("CANCEL"), "10.0.0.6").code == 403
    assert g.check(req("ACK", to_tag=True), "10.0.0.6").code == -1
    # An outbound dialog: its peer is whoever answered.
    g.expect("out1", now=0.0)
    g.answered_by("out1", "10.9.9.9")
    g.answered_by("out1", "10.0.0.1")  # a second answer does not move it
    assert g.check(req("BYE", "out1", True), "10.9.9.9").passes
    assert g.check(req("BYE", "out1", True), "10.0.0.1").code == 403
    g.forget("out1")
    assert g.check(req("BYE", "out1", True), "10.0.0.1").passes  # unknown dialog: PJSIP answers 481


def test_refused_requests_are_counted_and_dialogs_pruned() -> None:
    g = guard()
    for _ in range(3):
        g.check(req("OPTIONS"), "192.0.2.1")
    g.check(req("MESSAGE"), "10.0.0.1")
    assert sorted(g.take_refused()) == [
        ("MESSAGE", 405, "method not allowed", 1),
        ("OPTIONS", 403, "source not allowed", 3),
    ]
    assert g.take_refused() == []
    g.check(req("INVITE", "a"), "10.0.0.1", now=0.0)
    g.check(req("INVITE", "b"), "10.0.0.1", now=0.0)
    g.prune({"b"}, now=100.0)
    assert set(g.dialogs) == {"b"}


def test_new_invites_refused_before_media() -> None:
    g = guard()
    assert g.check(req("INVITE", "big", copied=MAX_COPIED_HEADERS + 1), "10.0.0.1").code == 513
    v6 = b"v=0\r\nc=IN IP6 ::1\r\nm=audio 4000 RTP/AVP 0\r\n"
    assert g.check(req("INVITE", "v6", body=v6), "10.0.0.1").code == 488
    assert g.check(req("INVITE", "late", body=b""), "10.0.0.1").passes  # offer in the ACK
    assert "big" not in g.dialogs and "v6" not in g.dialogs
    # The INVITE bucket: 10 at once, then 10 a second.
    g = guard()
    codes = [g.check(req("INVITE", f"c{i}"), "10.0.0.1", now=0.0).code for i in range(12)]
    assert codes == [0] * 10 + [503, 503]
    assert g.check(req("INVITE", "later"), "10.0.0.1", now=0.15).passes


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (SDP4, None),
        (
            b"v=0\r\nc=IN IP4 host.example\r\nm=audio 4000 RTP/AVP 0\r\n",
            "connection address is not an IP address",
        ),
        (
            b"v=0\r\nc=IN IP4 224.0.0.1\r\nm=audio 4000 RTP/AVP 0\r\n",
            "connection address of another family or multicast",
        ),
        (
            b"v=0\r\nc=IN IP4 999.1.1.1\r\nm=audio 4000 RTP/AVP 0\r\n",
            "connection address is not an IP address",
        ),
        (b"v=0\r\nc=IN IP4 127.0.0.1\r\nm=video 4000 RTP/AVP 31\r\n", "no audio stream offered"),
        (b"v=0\r\nc=XX\r\nm=audio 4000 RTP/AVP 0\r\n", "unusable connection line"),
    ],
)
def test_sdp_refusal(body: bytes, why: str | None) -> None:
    assert sdp_refusal(body, 4) == why


def test_parse_request_reads_compact_forms_and_counts_copied_headers() -> None:
    raw = (
        b"BYE sip:b@h SIP/2.0\r\nv: SIP/2.0/UDP h;branch=z9\r\nf: <sip:a@h>;tag=1\r\n"
        b"t: <sip:b@h> ; tag = 2\r\ni: abc@h\r\nCSeq: 2 BYE\r\nl: 0\r\n\r\n"
    )
    parsed = parse_request(raw)
    assert parsed is not None and (parsed.method, parsed.call_id, parsed.to_tag) == ("BYE", "abc@h", True)
    assert parsed.copied_bytes == sum(len(line) + 2 for line in raw.split(b"\r\n")[1:6])
    assert parse_request(b"SIP/2.0 200 OK\r\n\r\n") is None


def test_wire_text_is_valid_utf8_without_controls_and_bounded() -> None:
    raw = b'"\xff\xfe\x1b[31m" <sip:a@h>\r\nX: forged'.decode(
        "utf-8", "surrogateescape"
    )  # as pjsua2 hands it
    safe = wire_text(raw)
    safe.encode("utf-8")  # would raise on a lone surrogate
    assert safe == '"\ufffd\ufffd\\x1b[31m" <sip:a@h>\\x0d\\x0aX: forged'
    assert len(wire_text("é" * 1700)) == 512 and wire_text("\u2028") == "\\u2028"


@pytest.mark.parametrize("json_format", [False, True])
def test_log_lines_cannot_be_forged(json_format: bool, capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("INFO", json_format=json_format)
    logging.getLogger("t").warning("from peer: %s", "x\r\n2026-01-01T00:00:00.000Z INFO forged")
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "forged" in err
    setup_logging("WARNING")


def test_wav_header_repaired_after_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "call.wav"
    rec = StereoRecorder(path, 8000)
    for _ in range(60):
        rec.caller(b"\x01\x00" * 160)
        rec.bot(b"\x02\x00" * 160)
    crashed = tmp_path / "crashed.wav"
    shutil.copy(path, crashed)  # what a kill -9 leaves: the header is already up to date
    with wave.open(str(crashed)) as w:
        assert w.getnframes() == 60 * 160
    data = bytearray(crashed.read_bytes())
    data[4:8] = struct.pack("<I", 36)  # a header never updated (libsndfile's default)
    data[40:44] = struct.pack("<I", 0)
    crashed.write_bytes(bytes(data + b"\x00\x01"))  # and half a frame past the end
    assert repair_wav_header(crashed) and not repair_wav_header(crashed)
    with wave.open(str(crashed)) as w:
        assert w.getnframes() == 60 * 160
    rec.close()
    assert not repair_wav_header(path)


def raw(method: str, *headers: str, body: bytes = b"") -> bytes:
    head = [f"{method} sip:b@10.0.0.1 SIP/2.0", "Via: SIP/2.0/UDP 10.0.0.5;branch=z9hG4bKx", "Call-ID: c9"]
    return ("\r\n".join(head + list(headers)) + "\r\n\r\n").encode() + body


@pytest.mark.parametrize(
    ("packet", "code"),
    [
        # RFC 4475 mismatch01: the CSeq's method is not the request's
        (raw("OPTIONS", "CSeq: 1 INVITE", "Content-Length: 0"), 400),
        # mcl01: two Content-Lengths that disagree
        (raw("OPTIONS", "CSeq: 1 OPTIONS", "Content-Length: 0", "l: 5"), 400),
        # clerr: Content-Length past the end of the datagram
        (
            raw(
                "INVITE", "CSeq: 1 INVITE", "Content-Type: application/sdp", "Content-Length: 500", body=SDP4
            ),
            400,
        ),
        # dblreq: octets after the declared body are ignored (RFC 3261 18.3), not an error
        (raw("OPTIONS", "CSeq: 1 OPTIONS", "Content-Length: 0", body=b"junk"), 0),
        # folded CSeq (RFC 4475 wsinv) read whole
        (raw("OPTIONS", "cSeQ:", "  9", "  OPTIONS", "Content-Length: 0"), 0),
        # invut: a body that is not SDP
        (raw("INVITE", "CSeq: 1 INVITE", "c: application/unknownformat", f"l: {len(SDP4)}", body=SDP4), 415),
        # mpart01: multipart is an offer PJSIP can read
        (
            raw(
                "INVITE",
                "CSeq: 1 INVITE",
                "Content-Type: multipart/mixed;boundary=x",
                f"l: {len(SDP4)}",
                body=SDP4,
            ),
            0,
        ),
        # a datagram that filled PJSIP's receive buffer was cut: 513, never a call
        (raw("INVITE", "CSeq: 1 INVITE", "X-Huge: " + "h" * 4000), 513),
        (raw("ACK", "CSeq: 1 INVITE", "Content-Length: 0"), -1),  # a malformed ACK is dropped, not answered
    ],
)
def test_framing_and_body_type_are_checked_before_pjsip_acts(packet: bytes, code: int) -> None:
    request = parse_request(packet[:4000])
    assert request is not None
    assert guard().check(request, "10.0.0.5").code == code, request.problem
