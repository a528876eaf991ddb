"""`sipbridge flow test FLOW.yaml --answers "a|b|c"`: the shipped flow run from the command line, no call."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from .procs import SIPBRIDGE

ROOT = Path(__file__).resolve().parents[2]
FLOW = ROOT / "config/flows/employment_verification.yaml"


def flow_test(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SIPBRIDGE, "flow", "test", *args], cwd=ROOT, capture_output=True, text=True, timeout=60
    )


def test_flow_test_prints_steps_intents_and_results_json() -> None:
    answers = "Sure.|I'm sorry, we don't give out that information over the phone."
    run = flow_test(str(FLOW), "--answers", answers, "--var", "subject_name=Jane Doe")
    assert run.returncode == 0, run.stderr
    out = run.stdout
    assert "Jane Doe" in out.splitlines()[0]  # the greeting, templated with the variable
    assert "caller: Sure." in out and "state intro: yes" in out
    assert "state confirm_employment: refuse" in out
    assert 'evidence "we don\'t give out that information over the phone"' in out
    doc = json.loads(out[out.index("\n{") + 1 :])
    assert doc["outcome"] == "refused"
    assert doc["results"]["refused"] is True and "employment_confirmed" not in doc["results"]


def test_flow_test_json_has_every_step_and_handles_silence_and_dtmf() -> None:
    answers = "Yes.|Yes, she does.|March twenty nineteen|(silence)|(dtmf 0)"
    run = flow_test(str(FLOW), "--answers", answers, "--json")
    assert run.returncode == 0, run.stderr
    doc = json.loads(run.stdout)
    steps = doc["steps"]
    assert [s.get("caller") for s in steps[1:]] == [
        "Yes.", "Yes, she does.", "March twenty nineteen", "(silence)", "(dtmf 0)"
    ]  # fmt: skip
    assert steps[2]["intent"] == "yes" and steps[2]["recorded"]["employment_confirmed"] is True
    assert steps[3]["recorded"] == {"start_date": "2019-03", "start_date_heard": "March twenty nineteen"}
    assert steps[4]["bot"].startswith("Sorry, I did not hear you.")
    assert steps[5]["then"] == ["transfer sip:verifier@127.0.0.1"]
    assert doc["outcome"] == "transferred" and doc["results"]["start_date"] == "2019-03"


def test_flow_test_names_the_problem_of_a_bad_flow(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("start: a\nstates:\n  a: {say: Hi, expect: yes_no, on: {maybe: a}}\n")
    run = flow_test(str(bad), "--answers", "yes")
    assert run.returncode == 2
    assert "states.a.on.maybe" in run.stderr and "bad.yaml:3" in run.stderr
