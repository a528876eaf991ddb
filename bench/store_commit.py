"""Cost of the store's durability setting: SQLite commits per second in WAL mode, synchronous FULL (what
sipbridge uses: a commit is fsynced before it returns) against NORMAL (survives a killed process, may drop the
last commits on power loss) and OFF.

    python bench/store_commit.py [--dir var/bench] [--commits 2000] [--json out.json]

Each commit is one turn-sized row (one INSERT of ~200 bytes), like `Store.add_turn`. bench/ never imports
sipbridge, so the table is spelled out here. Results depend on the disk: run it on the database's own disk.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import tempfile
import time
from pathlib import Path


def measure(directory: Path, synchronous: str, commits: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        db = sqlite3.connect(Path(tmp) / "bench.sqlite3", isolation_level=None)
        db.execute("PRAGMA journal_mode = WAL")
        db.execute(f"PRAGMA synchronous = {synchronous}")
        db.execute("CREATE TABLE turns (call_id TEXT, idx INTEGER, text TEXT, created_at REAL)")
        latencies = []
        start = time.perf_counter()
        for i in range(commits):
            t = time.perf_counter()
            db.execute("BEGIN IMMEDIATE")
            db.execute("INSERT INTO turns VALUES (?, ?, ?, ?)", ("c" * 32, i, "x" * 160, time.time()))
            db.execute("COMMIT")
            latencies.append(time.perf_counter() - t)
        total = time.perf_counter() - start
        db.close()
    latencies.sort()
    return {
        "commits_per_s": round(commits / total, 1),
        "p50_ms": round(latencies[len(latencies) // 2] * 1000, 3),
        "p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default="var/bench", help="directory on the disk to measure (created)")
    parser.add_argument("--commits", type=int, default=2000)
    parser.add_argument("--json", metavar="FILE", help="also write the result here")
    args = parser.parse_args()
    directory = Path(args.dir)
    directory.mkdir(parents=True, exist_ok=True)
    result = {
        "dir": str(directory.resolve()),
        "commits": args.commits,
        "wal": {mode: measure(directory, mode, args.commits) for mode in ("FULL", "NORMAL", "OFF")},
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
