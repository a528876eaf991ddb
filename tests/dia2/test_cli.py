"""`python -m dia2 generate` end to end in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import wave
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]


def _run(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "dia2", "generate", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_cli_greedy_writes_expected_wav(
    fixture_dir: Path,
    inputs: dict[str, Any],
    ref_json: dict[str, Any],
    ref_arrays: dict[str, np.ndarray],
    tmp_path: Path,
) -> None:
    out = tmp_path / "out.wav"
    grid = tmp_path / "grid.npz"
    case = inputs["cases"]["greedy"]
    proc = _run(
        [
            "--model",
            str(fixture_dir),
            "--mimi",
            str(fixture_dir / "mimi"),
            "--text",
            case["script"],
            "--greedy",
            "--cfg-scale",
            "1.0",
            "--out",
            str(out),
            "--dump-tokens",
            str(grid),
        ],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    with wave.open(str(out)) as handle:
        assert handle.getframerate() == 24000
        assert handle.getnchannels() == 1 and handle.getsampwidth() == 2
        assert handle.getnframes() == ref_json["cases"]["greedy"]["waveform_samples"]
        pcm = np.frombuffer(handle.readframes(handle.getnframes()), dtype="<i2")
    expected = (np.clip(ref_arrays["greedy_waveform"], -1, 1) * 32767.0).astype(np.int16)
    assert np.abs(pcm.astype(np.int32) - expected).max() <= 1
    with np.load(grid) as dump:
        np.testing.assert_array_equal(dump["audio_tokens"], ref_arrays["greedy_audio_tokens"])


def test_cli_prefix_and_sampling(
    fixture_dir: Path, inputs: dict[str, Any], ref_json: dict[str, Any], tmp_path: Path
) -> None:
    words = []
    for key in ("speaker_1", "speaker_2"):
        path = tmp_path / f"{key}.json"
        path.write_text(json.dumps(inputs["prefix"][key]["words"]))
        words.append(path)
    out = tmp_path / "prefix.wav"
    proc = _run(
        [
            "--model",
            str(fixture_dir),
            "--mimi",
            str(fixture_dir / "mimi"),
            "--text",
            inputs["cases"]["prefix"]["script"],
            "--greedy",
            "--cfg-scale",
            "1",
            "--prefix-s1",
            str(fixture_dir / "prefix_s1.wav"),
            "--prefix-s1-words",
            str(words[0]),
            "--prefix-s2",
            str(fixture_dir / "prefix_s2.wav"),
            "--prefix-s2-words",
            str(words[1]),
            "--out",
            str(out),
        ],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    with wave.open(str(out)) as handle:
        assert handle.getnframes() == ref_json["cases"]["prefix"]["waveform_samples"]
    # Sampling path with a seed: runs, and the length is a whole number of 1920-sample frames.
    out2 = tmp_path / "sampled.wav"
    proc = _run(
        [
            "--model",
            str(fixture_dir),
            "--mimi",
            str(fixture_dir / "mimi"),
            "--text",
            "[S1] Hello.",
            "--seed",
            "1",
            "--temperature",
            "0.8",
            "--top-k",
            "20",
            "--max-steps",
            "40",
            "--out",
            str(out2),
        ],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    with wave.open(str(out2)) as handle:
        assert handle.getnframes() % 1920 == 0 and handle.getnframes() > 0


def test_cli_rejects_missing_checkpoint(tmp_path: Path) -> None:
    proc = _run(
        ["--model", str(tmp_path / "nope"), "--text", "hi", "--out", str(tmp_path / "x.wav")], tmp_path
    )
    assert proc.returncode != 0
    assert "does not exist" in proc.stderr


def test_cli_on_a_generated_tiny_checkpoint(tmp_path: Path) -> None:
    """The tiny generator's output is a valid checkpoint for the CLI (its codec sits in mimi/)."""
    from dia2.tiny import write_tiny_checkpoint

    folder = write_tiny_checkpoint(tmp_path / "tiny", seed=0)
    out = tmp_path / "tiny.wav"
    proc = _run(
        ["--model", str(folder), "--text", "[S1] Hello.", "--greedy", "--max-steps", "30", "--out", str(out)],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    with wave.open(str(out)) as handle:
        frames = handle.getnframes()
    max_delay = max(json.loads((folder / "config.json").read_text())["data"]["delay_pattern"])
    # 30 steps leave at most 30 + 1 - max_delay aligned frames of 1920 samples.
    assert 0 < frames <= (30 + 1 - max_delay) * 1920 and frames % 1920 == 0
