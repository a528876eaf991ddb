"""Dead air after "hello": from AMD's human verdict to the bot's first audio, on real outbound calls.

`sipbridge dial` (espeak engine, tiny.en ASR for AMD's words, one worker) calls N SIPp callees on loopback,
one at a time; each answers "Hello?" (espeak-ng, 0.4 s pick-up) and waits. Per call, from the store: the
AMD event's `decided_at_ms` (ms of callee audio analysed when it said "human") and the `start_ms` of the
bot's first turn (the tick its first packet left), both on the call's media clock from the answer. Their
difference is the silence the callee hears after the verdict (the target is <= 200 ms). The test helpers
(tests/sipbridge/dialer) supply the callees and the campaign file.

    PYTHONPATH=. .venv/bin/python bench/dead_air.py --calls 6 --out docs/results/dead_air.json
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.sipbridge.dialer.callees import Callee, answer_scenario, greeting_audio  # noqa: E402
from tests.sipbridge.dialer.test_live import (  # noqa: E402
    WEDNESDAY_10_NY,
    dial,
    write_campaign,
    write_config,
)


def run(work: Path, calls: int) -> list[dict[str, Any]]:
    hello = greeting_audio(work, "Hello?")
    callees = [
        Callee.start(answer_scenario(hello, talk_ms=8000), work / f"c{i}", calls=1) for i in range(calls)
    ]
    contacts = [
        {"number": f"+1201555080{i}", "name": "x", "port": str(c.sip_port)} for i, c in enumerate(callees)
    ]
    campaign = write_campaign(work, contacts, limits={"concurrency": 1, "calls_per_second": 5})
    try:
        proc = dial(work, campaign, write_config(work, max_calls=4), WEDNESDAY_10_NY)
        if proc.finish(timeout=60 + 20 * calls) != 0:
            raise SystemExit("dial failed:\n" + "\n".join(proc.seen[-40:]))
    finally:
        for c in callees:
            c.stop()
    conn = sqlite3.connect(work / "db.sqlite3")
    out = []
    for (call_id,) in conn.execute("SELECT call_id FROM attempts ORDER BY started_at"):
        query = "SELECT kind, data FROM call_events WHERE call_id = ? AND kind = 'amd'"
        amd = {k: json.loads(d) for k, d in conn.execute(query, (call_id,))}.get("amd")
        # The bot's first utterance (the disclosure since issue 20; before it, the greeting).
        first = "SELECT MIN(start_ms) FROM turns WHERE call_id = ? AND who = 'bot'"
        start = conn.execute(first, (call_id,)).fetchone()[0]
        if amd is None or start is None or amd["kind"] == "machine":
            continue
        out.append({"verdict_ms": amd["decided_at_ms"], "first_audio_ms": start,
                    "dead_air_ms": start - amd["decided_at_ms"]})  # fmt: skip
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=6)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        rows = run(Path(tmp), args.calls)
    gaps = [r["dead_air_ms"] for r in rows]
    result = {
        "calls": len(rows),
        "dead_air_ms": {"p50": statistics.median(gaps) if gaps else None, "max": max(gaps, default=None)},
        "verdict_ms_p50": statistics.median([r["verdict_ms"] for r in rows]) if rows else None,
        "per_call": rows,
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
