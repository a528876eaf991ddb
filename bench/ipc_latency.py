"""IPC latency between a SIP media worker and the supervisor (the channel of sipbridge/sip/ipc.py).

    python bench/ipc_latency.py [--frames 3000] [--json docs/results/ipc-latency.json]

bench/ never imports sipbridge (tests/test_project.py), so this runs the measurement module as its own
process, exactly as the service runs its workers; its JSON goes to stdout (and --json). The numbers are the
one-way delay of a 320-byte frame (20 ms of 8 kHz PCM) each way, p50/p99/max, in microseconds.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

if __name__ == "__main__":
    raise SystemExit(
        subprocess.call([sys.executable, "-m", "sipbridge.sip.ipc_bench", *sys.argv[1:]], cwd=ROOT)
    )
