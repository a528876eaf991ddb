"""A pjsua2 SIP peer for the TLS + SRTP tests, run as its own process (one PJSIP Endpoint per process).

    python -m tests.sipbridge.tls_peer --target sip:bridge@127.0.0.1:5061 --ca ca.pem --wav heard.wav ...

It has only a TLS transport (so the call can only go over TLS), offers SRTP as told, records what it hears
into a WAV, hangs up after `--talk-s`, and prints one JSON line: whether the call was answered, the final SIP
code, and whether the bridge's answer (read off the wire after TLS) set up SRTP (RTP/SAVP with SDES keys).
"""

from __future__ import annotations

import argparse
import json
import time

import pjsua2 as pj

_SRTP = {
    "off": pj.PJMEDIA_SRTP_DISABLED,
    "optional": pj.PJMEDIA_SRTP_OPTIONAL,
    "mandatory": pj.PJMEDIA_SRTP_MANDATORY,
}


class PeerCall(pj.Call):
    def __init__(self, account: pj.Account, wav: str) -> None:
        super().__init__(account)
        self.wav = wav
        self.confirmed = False
        self.disconnected = False
        self.code = 0
        self.srtp = False
        self.recorder: pj.AudioMediaRecorder | None = None
        self.media_index = -1
        self.rx_packets = 0  # RTP packets our stream took in (after SRTP unprotect: bad ones never count)

    def onCallState(self, prm: pj.OnCallStateParam) -> None:
        info = self.getInfo()
        self.code = int(info.lastStatusCode)
        if info.state == pj.PJSIP_INV_STATE_CONFIRMED:
            self.confirmed = True
        elif info.state == pj.PJSIP_INV_STATE_DISCONNECTED:
            self.disconnected = True

    def onCallTsxState(self, prm: pj.OnCallTsxStateParam) -> None:
        # The bridge's answer as it came off the wire (after TLS): its SDP says how the media is protected.
        body = prm.e.body.tsxState
        if body.tsx.method == "INVITE" and body.type == pj.PJSIP_EVENT_RX_MSG and body.tsx.statusCode == 200:
            answer = str(body.src.rdata.wholeMsg)
            self.srtp = "RTP/SAVP" in answer and "a=crypto:" in answer

    def onCallMediaState(self, prm: pj.OnCallMediaStateParam) -> None:
        info = self.getInfo()  # kept alive while its media vector is read (SWIG frees a temporary's)
        for media in info.media:
            if media.type == pj.PJMEDIA_TYPE_AUDIO and media.status == pj.PJSUA_CALL_MEDIA_ACTIVE:
                self.media_index = media.index
                if self.recorder is None:
                    self.recorder = pj.AudioMediaRecorder()
                    self.recorder.createRecorder(self.wav)
                    self.getAudioMedia(media.index).startTransmit(self.recorder)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", required=True)
    ap.add_argument("--ca", default="")
    ap.add_argument("--cert", default="")
    ap.add_argument("--key", default="")
    ap.add_argument("--srtp", choices=sorted(_SRTP), default="mandatory")
    ap.add_argument("--talk-s", type=float, default=4.0)
    ap.add_argument("--wav", required=True)
    args = ap.parse_args()

    ep = pj.Endpoint()
    ep.libCreate()
    cfg = pj.EpConfig()
    cfg.uaConfig.threadCnt = 0
    cfg.uaConfig.mainThreadOnly = True
    cfg.logConfig.level = 2
    cfg.logConfig.consoleLevel = 2
    cfg.medConfig.noVad = True
    ep.libInit(cfg)
    tcfg = pj.TransportConfig()
    tcfg.port = 0
    tcfg.boundAddress = "127.0.0.1"
    tls = tcfg.tlsConfig
    tls.method = pj.PJSIP_TLSV1_2_METHOD
    tls.CaListFile = args.ca
    tls.certFile = args.cert
    tls.privKeyFile = args.key
    tls.verifyServer = bool(args.ca)  # the bridge's certificate must chain to our CA and name 127.0.0.1
    ep.transportCreate(pj.PJSIP_TRANSPORT_TLS, tcfg)
    ep.libStart()
    ep.audDevManager().setNullDev()

    acfg = pj.AccountConfig()
    acfg.idUri = "sip:peer@127.0.0.1;transport=tls"
    acfg.mediaConfig.srtpUse = _SRTP[args.srtp]
    acfg.mediaConfig.srtpSecureSignaling = 0
    acfg.mediaConfig.transportConfig.boundAddress = "127.0.0.1"
    account = pj.Account()
    account.create(acfg)
    call = PeerCall(account, args.wav)
    error = ""
    try:
        call.makeCall(args.target, pj.CallOpParam(True))
    except pj.Error as exc:
        error = exc.info().strip()
        call.disconnected = True
    deadline = time.monotonic() + 20
    while not call.confirmed and not call.disconnected and time.monotonic() < deadline:
        ep.libHandleEvents(10)
    if call.confirmed:
        end = time.monotonic() + args.talk_s
        while not call.disconnected and time.monotonic() < end:
            ep.libHandleEvents(10)
            if call.media_index >= 0 and not call.disconnected:
                call.rx_packets = int(call.getStreamStat(call.media_index).rtcp.rxStat.pkt)
        if not call.disconnected:
            call.hangup(pj.CallOpParam(True))
    deadline = time.monotonic() + 10
    while not call.disconnected and time.monotonic() < deadline:
        ep.libHandleEvents(10)
    print(
        json.dumps(
            {
                "confirmed": call.confirmed,
                "code": call.code,
                "srtp": call.srtp,
                "rx_packets": call.rx_packets,
                "error": error,
            }
        )
    )
    call.recorder = None
    del call
    account.shutdown()
    ep.libDestroy()


if __name__ == "__main__":
    main()
