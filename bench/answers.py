"""Answer understanding (sipbridge/agents/answers.py): accuracy on the labelled table and time per answer.

On tests/sipbridge/answer_table.py (228 answers written apart from the classifier's examples): accuracy with
and without the keyword safety net, the confusion counts, refusals / "don't know"s taken for a yes or no
(must be 0), correct answers below the confidence threshold (the flow re-asks those once), and the time to
classify one answer (p50 / p95 / max over every row, repeated) plus the load time. JSON to stdout or --out:

    .venv/bin/python bench/answers.py [--repeat 20] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from sipbridge.agents.answers import AnswerClassifier, load_wordllama  # noqa: E402
from tests.sipbridge.answer_table import TABLE  # noqa: E402


def score(classifier: AnswerClassifier) -> dict[str, Any]:
    found = [(text, label, classifier.classify(text)) for text, label in TABLE]
    wrong = [(t, label, a) for t, label, a in found if a.intent != label]
    return {
        "accuracy": round(1 - len(wrong) / len(TABLE), 4),
        "correct": len(TABLE) - len(wrong),
        "refusal_or_unsure_as_yes_no": sum(
            label in ("refuse", "unsure") and a.intent in ("yes", "no") for _, label, a in found
        ),
        "correct_but_low_confidence": sum(a.intent == label and a.low_confidence for _, label, a in found),
        "confusions": dict(Counter(f"{label}->{a.intent}" for _, label, a in wrong)),
        "wrong": [
            {"text": t, "label": label, "found": a.intent, "confidence": round(a.confidence, 3)}
            for t, label, a in wrong
        ],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=20, help="passes over the table for the timing")
    parser.add_argument("--out", help="write the JSON here instead of stdout")
    args = parser.parse_args()
    t0 = time.perf_counter()
    classifier = AnswerClassifier(load_wordllama())
    load_s = time.perf_counter() - t0
    bare = AnswerClassifier(classifier.embedder)
    bare.guards = False
    times = []
    for _ in range(args.repeat):
        for text, _ in TABLE:
            t = time.perf_counter()
            classifier.classify(text)
            times.append((time.perf_counter() - t) * 1000)
    ms = np.asarray(times)
    doc = {
        "bench": "answers",
        "rows": len(TABLE),
        "labels": dict(Counter(label for _, label in TABLE)),
        "load_s": round(load_s, 3),
        "ms_per_answer": {
            "p50": round(float(np.percentile(ms, 50)), 3),
            "p95": round(float(np.percentile(ms, 95)), 3),
            "max": round(float(ms.max()), 3),
        },
        "with_safety_net": score(classifier),
        "model_only": score(bare),
    }
    text = json.dumps(doc, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
