"""Media-port churn: does dropping a pjsua2 `AudioMediaPort` crash the conference's clock thread?

Soak defect C (docs/RELIABILITY.md): workers died with SIGSEGV about once per 1 000 calls, preceded by
`AttributeError: 'CallPort' object has no attribute 'inbox'` raised inside the port's frame callback.
pjsua2's `~AudioMediaPort` frees the C port at once, while PJSIP 2.14+ removes a port from the conference
asynchronously on its clock thread, which may call the freed port in between. This bench churns ports on a
null-device endpoint (no SIP, no calls) with a tone generator feeding each port, in one child process per
mode, and reports whether the child survived:

- `drop`: each port is connected, then dropped (what the worker did before, at call end or after a grace);
- `pool`: each port is disconnected and reused for the next "call" (what the worker does now: `PortPool`).

    python bench/port_churn.py --seconds 20 [--json out.json]

On this dev VM `drop` dies within seconds (AttributeError on a half-freed object, then SIGSEGV); `pool`
churns thousands of times without a crash.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

CHILD = r"""
import faulthandler, sys, time
import pjsua2 as pj

faulthandler.enable(all_threads=True)
mode, seconds = sys.argv[1], float(sys.argv[2])


class Port(pj.AudioMediaPort):
    def __init__(self):
        super().__init__()
        self.frames = 0

    def onFrameReceived(self, frame):
        self.frames += 1

    def onFrameRequested(self, frame):
        frame.type = pj.PJMEDIA_FRAME_TYPE_AUDIO
        frame.buf = pj.ByteVector(bytes(320))
        frame.size = 320


ep = pj.Endpoint()
ep.libCreate()
cfg = pj.EpConfig()
cfg.uaConfig.threadCnt = 0
cfg.uaConfig.mainThreadOnly = True
cfg.logConfig.level = 0
cfg.logConfig.consoleLevel = 0
cfg.medConfig.clockRate = 8000
cfg.medConfig.sndClockRate = 8000
ep.libInit(cfg)
ep.libStart()
ep.audDevManager().setNullDev()
sink = ep.audDevManager().getPlaybackDevMedia()
tone = pj.ToneGenerator()
tone.createToneGenerator(8000, 1)
desc = pj.ToneDesc()
desc.freq1, desc.freq2, desc.on_msec, desc.off_msec = 440, 0, 1000, 0
tones = pj.ToneDescVector()
tones.append(desc)
tone.play(tones, True)
fmt = pj.MediaFormatAudio()
fmt.type = pj.PJMEDIA_TYPE_AUDIO
fmt.clockRate, fmt.channelCount, fmt.bitsPerSample, fmt.frameTimeUsec = 8000, 1, 16, 20000

live, free, created, churned = [], [], 0, 0
t0 = time.monotonic()
while time.monotonic() - t0 < seconds:
    if mode == "pool" and free:
        port = free.pop()
    else:
        port = Port()
        port.createPort(f"p{created}", fmt)
        created += 1
    tone.startTransmit(port)
    port.startTransmit(sink)
    live.append(port)
    ep.libHandleEvents(1)
    if len(live) > 4:
        old = live.pop(0)
        churned += 1
        if mode == "drop":
            del old
        else:
            tone.stopTransmit(old)
            old.stopTransmit(sink)
            free.insert(0, old)
print(f"CHURNED {churned} CREATED {created}", flush=True)
import os
os._exit(0)  # skip teardown: the question is the churn, not libDestroy's order
"""


def run_mode(mode: str, seconds: float) -> dict[str, object]:
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, mode, str(seconds)],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    )
    out = proc.stdout + proc.stderr
    churned = next((int(w.split()[1]) for w in out.splitlines() if w.startswith("CHURNED")), None)
    return {
        "mode": mode,
        "exit_code": proc.returncode,
        "survived": proc.returncode == 0,
        "churned": churned,
        "seconds": round(time.monotonic() - t0, 1),
        "attribute_errors": out.count("AttributeError"),
        "segfault": "Segmentation fault" in out,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--modes", default="drop,pool")
    parser.add_argument("--json", help="write the result here too")
    args = parser.parse_args()
    result = {"seconds": args.seconds, "runs": [run_mode(m, args.seconds) for m in args.modes.split(",")]}
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
