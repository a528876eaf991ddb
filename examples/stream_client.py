#!/usr/bin/env python3
"""Stream a reply from sipbridge's WebSocket API and save it (or play it).

    python examples/stream_client.py --url ws://127.0.0.1:8080 --token "$SIPBRIDGE_HTTP_TOKEN" \
        --text "Hello, thanks for calling." --out reply.wav [--format ulaw] [--play] [--deltas]

Protocol (docs/HTTP_API.md): connect to /generate_stream?format=pcm16|ulaw[&conversation_id=...]; the server
sends {"event": "ready"}; send {"text": ...} (or several text deltas) and {"end": true}; binary messages are
20 ms audio frames (pcm16: 24 kHz s16le, ulaw: 8 kHz G.711 µ-law), then {"event": "done", ...timings}. Send
{"cancel": true} at any time to stop (barge-in). Needs the `websockets` package (a sipbridge dependency).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
import wave

from websockets.sync.client import connect

ULAW_BIAS = 0x84


def ulaw_to_pcm16(data: bytes) -> bytes:
    """G.711 µ-law -> s16le, standard library only (so the client runs anywhere)."""
    out = bytearray()
    for code in data:
        u = ~code & 0xFF
        t = (((u & 0x0F) << 3) + ULAW_BIAS) << ((u & 0x70) >> 4)
        value = ULAW_BIAS - t if u & 0x80 else t - ULAW_BIAS
        out += value.to_bytes(2, "little", signed=True)
    return bytes(out)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default="ws://127.0.0.1:8080")
    parser.add_argument("--token", default=None, help="http.bearer_token of the server")
    parser.add_argument("--text", required=True)
    parser.add_argument("--format", choices=("pcm16", "ulaw"), default="pcm16")
    parser.add_argument("--conversation-id", default=None)
    parser.add_argument("--deltas", action="store_true", help="send the text word by word (as an LLM would)")
    parser.add_argument("--temperature", type=float, default=None)
    parser.add_argument("--out", default="reply.wav", help="WAV file to write (16-bit, the stream's rate)")
    parser.add_argument("--play", action="store_true", help="also play it live with aplay/ffplay if present")
    args = parser.parse_args()

    query = f"format={args.format}"
    if args.conversation_id:
        query += f"&conversation_id={args.conversation_id}"
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    rate = 8000 if args.format == "ulaw" else 24000
    player = None
    if args.play:
        if shutil.which("aplay"):
            cmd = ["aplay", "-q", "-f", "S16_LE", "-r", str(rate), "-c", "1"]
        elif shutil.which("ffplay"):
            cmd = [
                "ffplay",
                "-nodisp",
                "-autoexit",
                "-loglevel",
                "quiet",
                "-f",
                "s16le",
                "-ar",
                str(rate),
                "-",
            ]
        else:
            cmd = []
            print("no aplay/ffplay found: saving only", file=sys.stderr)
        player = subprocess.Popen(cmd, stdin=subprocess.PIPE) if cmd else None

    pcm = bytearray()
    with connect(f"{args.url}/generate_stream?{query}", additional_headers=headers) as ws:
        print(ws.recv())  # {"event": "ready", ...}
        started = time.monotonic()
        extra = {} if args.temperature is None else {"temperature": args.temperature}
        if args.deltas:
            words = args.text.split(" ")
            ws.send(json.dumps({"text": words[0], **extra}))
            for word in words[1:]:
                ws.send(json.dumps({"text": " " + word}))
            ws.send(json.dumps({"end": True}))
        else:
            ws.send(json.dumps({"text": args.text, "end": True, **extra}))
        while True:
            message = ws.recv()
            if isinstance(message, bytes):
                frame = ulaw_to_pcm16(message) if args.format == "ulaw" else message
                pcm += frame
                if player is not None and player.stdin is not None:
                    player.stdin.write(frame)
                continue
            event = json.loads(message)
            print(f"{(time.monotonic() - started) * 1000:7.1f} ms  {event}")
            if event["event"] in ("done", "error"):
                break
    if player is not None and player.stdin is not None:
        player.stdin.close()
        player.wait()
    with wave.open(args.out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(bytes(pcm))
    print(f"wrote {args.out}: {len(pcm) / 2 / rate:.2f} s at {rate} Hz")
    return 0


if __name__ == "__main__":
    sys.exit(main())
