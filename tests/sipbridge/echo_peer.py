"""A phone line that echoes: a SIP caller (hand-driven, `RawSip`) whose RTP sends the bridge's own audio back
attenuated and delayed (a hybrid's echo), mixed with the caller's speech if it has any.

Its RTP is paced by the bridge's: every packet the bridge sends is answered by one packet carrying the
caller's next 20 ms and the echo of the packet `delay_frames` earlier, so nothing here keeps time itself
(and a stalled test thread delays both directions alike, as a real line's jitter does).
"""

from __future__ import annotations

import re
import socket
import struct
import threading
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from audio import g711

from .rawsip import Dialog, RawSip

FRAME = 160  # 20 ms at 8 kHz


@dataclass
class EchoLine:
    bridge_port: int
    echo_db: float  # echo return, dB relative to what the bridge sent (hybrids: -10 to -20)
    delay_frames: int  # echo delay in 20 ms frames
    caller: npt.NDArray[np.int16] = field(default_factory=lambda: np.zeros(0, np.int16))  # from the answer
    received: int = 0  # RTP packets from the bridge
    sent: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.rtp.bind(("127.0.0.1", 0))
        self.rtp.settimeout(0.2)
        self.sip = RawSip(self.bridge_port)
        self.dialog: Dialog | None = None
        self._thread = threading.Thread(target=self._media, daemon=True)

    def call(self) -> None:
        """INVITE with this line's RTP port; once answered, the media loop runs until `hang_up`."""
        dialog, answer = self.sip.call(media_port=self.rtp.getsockname()[1])
        assert answer.startswith("SIP/2.0 200"), answer
        self.dialog = dialog
        body = answer.split("\r\n\r\n", 1)[1]
        host = re.search(r"c=IN IP4 (\S+)", body)
        port = re.search(r"m=audio (\d+)", body)
        assert host and port, body
        self._peer = (host.group(1), int(port.group(1)))
        self._thread.start()

    def hang_up(self) -> None:
        self._stop.set()
        self._thread.join(5)
        if self.dialog is not None:
            self.dialog.cseq += 1
            self.sip.send(self.sip.request("BYE", self.dialog))
        self.sip.close()
        self.rtp.close()

    def _media(self) -> None:
        gain = 10 ** (self.echo_db / 20)
        line: deque[npt.NDArray[np.float64]] = deque([np.zeros(FRAME)] * self.delay_frames)
        seq, ts, ssrc = 1, 0, 0x5EC0
        while not self._stop.is_set():
            try:
                packet = self.rtp.recv(2048)
            except TimeoutError:
                continue
            except OSError:
                return
            if len(packet) < 12 + FRAME or packet[1] & 0x7F != 0:
                continue
            self.received += 1
            header = 12 + 4 * (packet[0] & 0x0F)
            line.append(g711.ulaw_decode(packet[header : header + FRAME]).astype(np.float64) * gain)
            out = line.popleft()
            i = self.sent * FRAME
            if i + FRAME <= len(self.caller):
                out = out + self.caller[i : i + FRAME]
            payload = g711.ulaw_encode(np.clip(out, -32768, 32767).astype(np.int16))
            self.rtp.sendto(struct.pack("!BBHII", 0x80, 0, seq, ts, ssrc) + payload, self._peer)
            seq, ts = (seq + 1) & 0xFFFF, ts + FRAME
            self.sent += 1
