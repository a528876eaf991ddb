"""Where each thread's py-spy samples went: a load run's profile in a few lines of JSON.

    python bench/pyspy_summary.py supervisor-128.pyspy [--top 8]

Reads py-spy's raw (collapsed) output as `bench/system_load.py` records it (`--threads`: each stack starts
with `thread (tid): name`, the sample count last) and gives, per thread, its samples and the places that took
the most: each sample charged to its innermost three project frames (sipbridge/, dia2/, audio/ or asyncio; the
innermost frame where none is), innermost first. With `PYSPY_GIL=1` the samples are only those of the thread
holding the GIL, so the totals say who kept the others waiting for it; without it a thread waiting on the GPU
counts as busy.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

_OWN = ("sipbridge/", "dia2/", "audio/", "asyncio")


def _place(frames: list[str]) -> str:
    """The innermost three project frames of a stack (function names only), innermost first."""
    own = [f for f in frames if any(mark in f for mark in _OWN)] or frames[-1:]
    return " < ".join(f.split(" (")[0] for f in reversed(own[-3:]))


def summarise(lines: list[str], top: int = 8) -> dict[str, Any]:
    """{thread name: {"samples": n, "top": [[place, n], ...]}}, threads with the most samples first."""
    totals: Counter[str] = Counter()
    places: defaultdict[str, Counter[str]] = defaultdict(Counter)
    for line in lines:
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        thread = re.sub(r"^thread \(\w+\):?\s*", "", frames[0]).strip() or frames[0]
        totals[thread] += int(count)
        places[thread][_place(frames[1:])] += int(count)
    return {
        name: {"samples": n, "top": [[p, c] for p, c in places[name].most_common(top)]}
        for name, n in totals.most_common()
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("path", type=Path)
    ap.add_argument("--top", type=int, default=8)
    args = ap.parse_args()
    lines = args.path.read_text(encoding="utf-8", errors="replace").splitlines()
    print(json.dumps(summarise(lines, args.top), indent=2))


if __name__ == "__main__":
    main()
