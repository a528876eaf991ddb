"""Cost of the text path (sipbridge/text) per reply: normalise + shape, whole and streamed token by token.

    python bench/text_normalize.py [--rounds 2000] [--json docs/results/text-normalize.json]

The replies are 30-word employment-verification answers dense with what the normaliser rewrites (money,
dates, phone numbers, IDs, emails, times) plus one of plain words only; "streamed" feeds each reply in
LLM-sized pieces (~4 characters) through `StreamNormalizer` and `ReplyShaper`, the path of an LLM agent's
reply. Target (issue 21): under 1 ms per 30-word reply. Times are per reply, p50/p99/max in microseconds,
one core, after a warm-up (the rules compile and num2words' cache fills on the first reply of a process).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sipbridge.text.frontend import TextFrontend  # noqa: E402
from sipbridge.text.normalizer import Normalizer  # noqa: E402
from sipbridge.text.shape import ReplyShaper, ShapePolicy  # noqa: E402
from sipbridge.text.stream import StreamNormalizer  # noqa: E402

REPLIES = [
    "Thanks for holding. I can confirm that Jane Doe, employee ID EMP-40213, started on 03/15/2019 "
    "and earns $52,300.50 a year. Please call (415) 555-0132 with any questions.",
    "Her title is Senior Analyst at Acme Inc. since Jan. 5th, 2020, working 9-5, Mon-Fri, about 40 hours "
    "a week at 3.5% above band. Email hr@acme.com or visit www.acme.com/verify today.",
    "Dr. Smith left on 2021-06-30 after 1,247 days; his last review was 4.5 out of 5. Our office at 12 Main "
    "St. is open until 5:30 p.m. and reachable at 1-800-555-0199 ext. 12.",
    "Yes, I can help with that today. She has worked here for several years, and her manager was very "
    "happy with her work on the team. Is there anything else I can confirm for you?",
]


def _stats(values: list[float]) -> dict[str, float]:
    us = np.asarray(values) * 1e6
    return {
        "p50_us": round(float(np.percentile(us, 50)), 1),
        "p99_us": round(float(np.percentile(us, 99)), 1),
        "max_us": round(float(us.max()), 1),
        "mean_us": round(float(us.mean()), 1),
    }


def _pieces(text: str, size: int = 4) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


def _whole(frontend: TextFrontend, text: str) -> tuple[float, float]:
    t0, c0 = time.perf_counter(), time.thread_time()
    frontend.shape(text)
    return time.perf_counter() - t0, time.thread_time() - c0


def _streamed(normalizer: Normalizer, policy: ShapePolicy, pieces: list[str]) -> tuple[float, float]:
    t0, c0 = time.perf_counter(), time.thread_time()
    stream, shaper = StreamNormalizer(normalizer), ReplyShaper(policy)
    for piece in pieces:
        shaper.feed(stream.feed(piece))
    shaper.feed(stream.finish())
    shaper.finish()
    return time.perf_counter() - t0, time.thread_time() - c0


def run(rounds: int) -> dict[str, Any]:
    policy = ShapePolicy(speaker_tag="[S1]", breaks=True)
    frontend = TextFrontend(policy=policy)
    normalizer = frontend.normalizer
    t0 = time.perf_counter()
    frontend.shape(REPLIES[0])
    first_ms = (time.perf_counter() - t0) * 1000
    replies: list[dict[str, Any]] = []
    for text in REPLIES:
        pieces = _pieces(text)
        for _ in range(20):  # warm-up
            _whole(frontend, text)
        whole = [_whole(frontend, text) for _ in range(rounds)]
        streamed = [_streamed(normalizer, policy, pieces) for _ in range(rounds)]
        replies.append({
            "words": len(text.split()),
            "pieces": len(pieces),
            "spoken": normalizer.normalize(text),
            "whole": _stats([w for w, _ in whole]),
            "streamed": _stats([w for w, _ in streamed]),
            # CPU time of the thread: what the reply costs, without the waits of a busy (shared) host
            "whole_cpu": _stats([c for _, c in whole]),
            "streamed_cpu": _stats([c for _, c in streamed]),
            "streamed_per_piece_us": round(float(np.median([w for w, _ in streamed])) * 1e6 / len(pieces), 2),
        })  # fmt: skip
    worst_p50 = max(max(r["whole"]["p50_us"], r["streamed"]["p50_us"]) for r in replies)
    worst_p99 = max(max(r["whole"]["p99_us"], r["streamed"]["p99_us"]) for r in replies)
    return {
        "bench": "text_normalize",
        "host": platform.node(),
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "rounds": rounds,
        "first_reply_of_process_ms": round(first_ms, 2),
        "target_us_per_30_words": 1000,
        "worst_p50_us": worst_p50,
        "worst_p99_us": worst_p99,
        "meets_target_p50": worst_p50 < 1000,
        "worst_cpu_p99_us": max(max(r["whole_cpu"]["p99_us"], r["streamed_cpu"]["p99_us"]) for r in replies),
        "load_average": list(os.getloadavg()),
        "cpus": os.cpu_count(),
        "replies": replies,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args()
    result = run(args.rounds)
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
