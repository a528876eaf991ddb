"""bench/pyspy_summary.py: a load run's py-spy samples per thread, each charged to its innermost project
frames (what bench/system_load.py puts in its JSON as "profile")."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.pyspy_summary import summarise

BOOT = "Thread._bootstrap (threading.py:1030);Thread.run (threading.py:1010)"
LINES = [
    f"thread (11): dia2-engine;{BOOT};EngineThread._run (dia2/engine_thread.py:134);"
    "BatchEngine.step (dia2/engine.py:464);FrameStepper.full_step (dia2/stepper.py:90);"
    "Stream.synchronize (torch/cuda/streams.py:254) 30",
    f"thread (11): dia2-engine;{BOOT};EngineThread._run (dia2/engine_thread.py:134);"
    "BatchEngine.step (dia2/engine.py:464);FrameStepper.lane_step (dia2/stepper.py:120) 10",
    f"thread (12): asr-batch;{BOOT};BatchedWhisper._serve (sipbridge/asr_batch.py:230);"
    "dtw_moves (sipbridge/word_times.py:117) 25",
    "thread (13): MainThread;<module> (cli.py:1);select (selectors.py:468) 5",
    "a line that is not a sample",
]


def test_samples_are_counted_per_thread_and_charged_to_their_innermost_project_frames() -> None:
    got = summarise(LINES, top=2)
    assert list(got) == ["dia2-engine", "asr-batch", "MainThread"]  # most samples first
    assert got["dia2-engine"] == {
        "samples": 40,
        "top": [
            ["FrameStepper.full_step < BatchEngine.step < EngineThread._run", 30],
            ["FrameStepper.lane_step < BatchEngine.step < EngineThread._run", 10],
        ],
    }
    assert got["asr-batch"]["top"] == [["dtw_moves < BatchedWhisper._serve", 25]]
    assert got["MainThread"]["top"] == [["select", 5]]  # no project frame: the innermost one
