"""The CI version of the soak bench (bench/soak.py): about two minutes of calls held at a fixed concurrency
on a real `sipbridge run` (3 workers behind the Kamailio front, one SIPp caller at the front), with the
bench's own pass line: no failed call, every call recorded, private memory and open fds flat after the
warm-up. The long run and its figures: docs/RELIABILITY.md."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_two_minute_soak_passes(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    args = [
        "--concurrency",
        "8",
        "--duration",
        "90",
        "--call-s",
        "6",
        "--sample-every",
        "10",
        "--warmup",
        "30",
    ]
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "soak.py"),
            *args,
            "--work",
            str(tmp_path / "w"),
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=170,
    )
    result = json.loads(out.read_text())
    verdict = {k: v for k, v in result.items() if k != "samples"}
    assert proc.returncode == 0 and result["pass"], json.dumps(verdict, indent=2)
    # 3 workers (8 calls + 2 slots of headroom) behind the Kamailio front, one SIPp caller at its address
    assert result["workers"] == 3 and result["front"], verdict
    assert len(result["growth_pct_after_warmup"]) >= 5, verdict  # supervisor, 3 workers, the front
    assert result["calls"]["successful"] >= 40, verdict  # 8 up at once for 90 s of 6 s calls: ~110
    assert len([s for s in result["samples"] if s["t"] >= 30]) >= 4
