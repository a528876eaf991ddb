"""Agents without calls: the scripted flows (both formats), flow validation, LLM chunking, results export."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest

from sipbridge.agents import Action, AgentCall, AgentError, Reply, Turn, make_agent
from sipbridge.agents.flow import Expect, parse_answer, parse_date
from sipbridge.agents.llm import _Chunker
from sipbridge.agents.script import FlowError, ScriptAgent, load_flow
from sipbridge.config import AgentConfig
from sipbridge.export import export_calls
from sipbridge.store import Store

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "config/flows/employment_verification.yaml"

FLOW = """
greeting: {say: Hello, interruptible: false}
turns:
  - say: Please confirm.
    when:
      - keywords: [no, wrong]
        say: Sorry to hear that.
        hangup: true
  - say: Goodbye.
    hangup: true
dtmf:
  "0": No operator.
"""


def run_turns(agent: ScriptAgent, *said: str | None, call: AgentCall | None = None) -> list[Reply | None]:
    """Greeting, then one reply per turn (None = a silence turn)."""
    call = call or AgentCall("c", "sip:x@y")

    async def go() -> list[Reply | None]:
        out = [await agent.greeting(call)]
        for s in said:
            out.append(await agent.on_turn(call, Turn("silence") if s is None else Turn("speech", s)))
        return out

    return asyncio.run(go())


def test_script_replies_in_order_by_keyword_and_hangs_up(tmp_path: Path) -> None:
    (tmp_path / "f.yaml").write_text(FLOW)
    agent = ScriptAgent(load_flow(tmp_path / "f.yaml"), "default greeting")
    greeting, first, second, third = run_turns(agent, "yes I know", "ok", "more")
    assert greeting == Reply("Hello", interruptible=False)
    assert first == Reply("Please confirm.")  # "know" does not match "no": whole words only
    assert second == Reply("Goodbye.", hangup=True)
    assert third == Reply("Thank you. Goodbye.", hangup=True)  # turns ran out
    _, branch = run_turns(agent, "No, that is wrong.")
    assert branch == Reply("Sorry to hear that.", hangup=True)
    assert asyncio.run(agent.on_turn(AgentCall("c", ""), Turn("dtmf", dtmf="0"))) == Reply("No operator.")
    assert asyncio.run(agent.on_turn(AgentCall("c", ""), Turn("dtmf", dtmf="5"))) is None


def test_bad_flows_fail_at_start_with_the_reason(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("turns:\n  - hangup: true\n")
    with pytest.raises(AgentError, match=r"turns\[0\]\.say"):
        load_flow(bad)
    with pytest.raises(AgentError, match="cannot read"):
        load_flow(tmp_path / "missing.yaml")
    bad.write_text("turns: [\n")
    with pytest.raises(AgentError, match="not valid YAML"):
        load_flow(bad)


def shipped_agent() -> ScriptAgent:
    agent = make_agent(AgentConfig(kind="script", script={"flow": SHIPPED}))
    assert isinstance(agent, ScriptAgent)
    return agent


def results_of(replies: list[Reply | None]) -> dict[str, object]:
    out: dict[str, object] = {}
    for r in replies:
        for a in r.actions if r else ():
            if a.kind == "set_result":
                out[a.arg] = a.value
            elif a.kind == "end":
                out["outcome"] = a.arg
    return out


def test_verification_flow_confirming_employer_with_a_hold() -> None:
    call = AgentCall("c", "", variables={"subject_name": "Jane Doe", "company": "Initech"})
    replies = run_turns(
        shipped_agent(), "Sure, go ahead.", "Yes, she does.", "Hold on please.", "Hi, thanks for holding.",
        "She started in March 2019.", "No, she left.", "She left in June of 2023.", "Software engineer.",
        call=call,
    )  # fmt: skip
    texts = [r.spoken_text for r in replies if r]
    assert "Jane Doe" in texts[0] and "recorded" in texts[0] and replies[0] and not replies[0].interruptible
    assert "Initech" in texts[1]
    assert texts[3] == "Sure, I will hold." and "start" in texts[4]  # resumed the question it was on
    results = results_of(replies)
    assert {k: v for k, v in results.items() if not k.endswith(("_heard", "_intent", "_evidence"))} == {
        "employment_confirmed": True,
        "start_date": "2019-03",
        "currently_employed": False,
        "end_date": "2023-06",
        "job_title": "Software Engineer",
        "outcome": "verified",
    }
    # The raw words beside each value, and for yes/no the intent and the words that decided it.
    assert results["start_date_heard"] == "She started in March 2019."
    assert results["job_title_heard"] == "Software engineer."
    assert (results["currently_employed_intent"], results["currently_employed_evidence"]) == (
        "no",
        "she left",
    )
    assert call.results["job_title"] == "Software Engineer"
    last = replies[-1]
    assert last is not None and last.ends_call() and last.silence_timeout_s is None


@pytest.mark.parametrize(
    ("said", "outcome", "last_words"),
    [
        (["Yes.", "I'm sorry, I can't share that information."], "refused", "written request"),
        (["Please leave a message after the tone."], "voicemail", "call us back"),
        ([None, None, None], "no_answer", "call back later"),
        (["Yes", "No, nobody by that name works here."], "not_employed", "letting me know"),
        (["No, you have the wrong number."], "no_verifier", "try again"),
        (["Yes.", "I'm sorry, we don't give out that information over the phone."], "refused", "written"),
        (["Yes.", "You'll need to go through The Work Number."], "refused", "written request"),
        (["Sure.", "Hmm, I really don't know."], "unknown", "written request"),
        (["Sure.", "She's at lunch, can you call back after two?"], "callback", "call back later"),
        (["Sure.", "No, she doesn't work here anymore."], "not_employed", "letting me know"),
    ],
)
def test_verification_flow_endings(said: list[str | None], outcome: str, last_words: str) -> None:
    replies = run_turns(shipped_agent(), *said)
    assert results_of(replies)["outcome"] == outcome
    final = replies[-1]
    assert final is not None and last_words in final.spoken_text and final.ends_call()


def test_verification_flow_transfers_on_request_and_dtmf_zero() -> None:
    call = AgentCall("c", "", variables={"operator_uri": "sip:desk@pbx"})
    agent = shipped_agent()
    _, reply = run_turns(agent, "Can I speak to a real person?", call=call)
    assert reply is not None and Action.transfer("sip:desk@pbx") in reply.actions
    assert Action.set_result("outcome", "transferred") in reply.actions
    zero = asyncio.run(agent.on_turn(AgentCall("d", ""), Turn("dtmf", dtmf="0")))
    assert zero is not None and any(a.kind == "transfer" for a in zero.actions)


def test_being_transferred_reintroduces_and_resumes() -> None:
    replies = run_turns(shipped_agent(), "Yes.", "Let me transfer you to payroll.", "Payroll, this is Bob.")
    assert replies[2] is not None and replies[2].spoken_text == "Thank you, I will hold."
    resumed = replies[3]
    assert resumed is not None and resumed.spoken_text.startswith("Hello, this is an automated call")
    assert "work, or did they work" in resumed.spoken_text  # back at the question it was on


BASE = """
variables: {name: x}
start: a
states:
  a: {say: "Hi {name}", expect: yes_no, on: {yes: b, no: c}}
  b: {say: Bye., end: done}
  c: {say: Bye., end: refused}
"""


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("start: a", "start: nowhere"), r"f\.yaml:2: start: unknown state 'nowhere'"),
        (("on: {yes: b, no: c}", "on: {yes: b, no: zz}"),
         r"f\.yaml:4: states\.a\.on\.no: unknown state 'zz'"),
        (("c: {say: Bye., end: refused}", "c: {say: Bye., end: refused}\n  d: {say: Lost.}"),
         r"f\.yaml:7: states\.d: state 'd' is unreachable from start 'a'"),
        (("b: {say: Bye., end: done}", "b: {end: done}"), r"f\.yaml:5: states\.b: state 'b' has no prompt"),
        (('"Hi {name}"', '"Hi {nom}"'), r"states\.a\.say: unknown variable \{nom\}"),
        (("expect: yes_no", "expect: regex"), r"states\.a\.expect: regex expects need a pattern"),
        (("on: {yes: b, no: c}", "on: {maybe: b, no: c}"), r"states\.a\.on\.maybe: 'maybe' is not an answer"),
        (("expect: yes_no", "expect: guess"), r"f\.yaml:4: states\.a\.expect\.type: Input should be"),
        (("end: done}", "end: done, bogus: 1}"), r"f\.yaml:5: states\.b\.bogus: unknown key"),
    ],
)  # fmt: skip
def test_flow_validation_errors_name_the_state_and_line(
    tmp_path: Path, change: tuple[str, str], expected: str
) -> None:
    assert change[0] in BASE
    path = tmp_path / "f.yaml"
    path.write_text(BASE.replace(change[0], change[1]).lstrip("\n"))
    with pytest.raises(FlowError) as err:
        load_flow(path)
    assert any(re.search(expected, str(i)) for i in err.value.issues), err.value.issues


def test_base_flow_is_valid_and_retries_then_gives_up(tmp_path: Path) -> None:
    path = tmp_path / "f.yaml"
    path.write_text(BASE.replace("start: a", "settings: {retries: 1}\nstart: a"))
    agent = ScriptAgent(load_flow(path), "")
    _, again, gave_up = run_turns(agent, "purple", "purple")
    assert again is not None and again.spoken_text == "Sorry, I did not understand. Hi x"
    assert gave_up is None  # no no_match target: the flow stays and waits


def test_a_decline_records_a_refusal_never_a_false_no() -> None:
    # The issue's scripted HR person: before the classifier this recorded not_employed / false.
    call = AgentCall("c", "", variables={"subject_name": "Jane Doe"})
    replies = run_turns(
        shipped_agent(), "Sure.", "I'm sorry, we don't give out that information over the phone.", call=call
    )
    results = results_of(replies)
    assert results["outcome"] == "refused" and results["refused"] is True
    assert "employment_confirmed" not in results and "employment_confirmed" not in call.results
    assert results["employment_confirmed_intent"] == "refuse"
    assert results["employment_confirmed_evidence"] == "we don't give out that information over the phone"


def test_a_guess_is_asked_again_once_then_recorded_as_unclear() -> None:
    call = AgentCall("c", "")
    agent = shipped_agent()
    # "No longer with the company" answers "does she work, or did she work, here?" both ways: a guess.
    _, _, confirm, gave_up = run_turns(
        agent, "Sure.", "She's no longer with the company.", "Well, she works here, she left last year.",
        call=call,
    )  # fmt: skip
    assert confirm is not None and confirm.spoken_text == "Sorry, was that a yes or a no?"
    assert not confirm.actions  # nothing recorded on a guess
    assert gave_up is not None and "could not understand" in gave_up.spoken_text
    assert call.results["employment_confirmed_intent"] == "unclear"
    assert "employment_confirmed" not in call.results
    # ... and a clear answer to the re-ask is taken.
    call = AgentCall("d", "")
    *_, taken = run_turns(agent, "Sure.", "She's no longer with the company.", "Yes.", call=call)
    assert taken is not None and "start" in taken.spoken_text and call.results["employment_confirmed"] is True
    assert call.results["employment_confirmed_heard"] == "She's no longer with the company. / Yes."


@pytest.mark.parametrize("said", ["No, she still works here.", "Yeah, she not."])
def test_a_particle_against_the_words_is_confirmed_before_anything_is_recorded(said: str) -> None:
    # The first is the issue's negation trap (a yes, said oddly); the second is tiny.en's "Yes, she does."
    # under load: recorded as a no, it would be a false statement about someone's employment.
    call = AgentCall("c", "")
    *_, confirm, taken = run_turns(shipped_agent(), "Sure.", said, "Yes, she does.", call=call)
    assert taken is not None and "start" in taken.spoken_text
    assert confirm is not None and confirm.spoken_text == "Sorry, was that a yes or a no?"
    assert call.results["employment_confirmed"] is True
    assert call.results["employment_confirmed_heard"] == f"{said} / Yes, she does."


def test_asked_to_repeat_the_flow_says_the_question_again_without_recording() -> None:
    call = AgentCall("c", "", variables={"company": "Initech"})
    *_, again = run_turns(shipped_agent(), "Sure.", "Sorry, could you say that again?", call=call)
    assert again is not None and again.spoken_text.startswith("Sure. Does the applicant work")
    assert "employment_confirmed_intent" not in call.results


def test_a_title_field_does_not_record_a_refusal_as_the_title() -> None:
    call = AgentCall("c", "")
    said = ["Sure.", "Yes.", "June 2020", "Yes.", "I'm not allowed to give out job titles."]
    replies = run_turns(shipped_agent(), *said, call=call)
    assert results_of(replies)["outcome"] == "refused" and "job_title" not in call.results
    assert call.results["job_title_intent"] == "refuse"


@pytest.mark.parametrize(
    ("said", "title"),
    [("Manager.", "Manager"), ("Receptionist", "Receptionist"), ("Warehouse shift supervisor.",
     "Warehouse Shift Supervisor"), ("Privacy officer", "Privacy Officer"), ("HR", "HR")],
)  # fmt: skip
def test_short_titles_that_sound_like_an_intent_are_titles(said: str, title: str) -> None:
    call = AgentCall("c", "")
    run_turns(shipped_agent(), "Sure.", "Yes.", "June 2020", "Yes.", said, call=call)
    assert call.results["job_title"] == title


@pytest.mark.parametrize(("said", "intent"), [("Not sure.", "unsure"), ("Pardon?", None)])
def test_a_title_question_answered_with_a_non_answer(said: str, intent: str | None) -> None:
    call = AgentCall("c", "")
    *_, last = run_turns(shipped_agent(), "Sure.", "Yes.", "June 2020", "Yes.", said, call=call)
    assert "job_title" not in call.results and last is not None
    assert call.results.get("job_title_intent") == intent
    if intent is None:  # asked again
        assert last.spoken_text.startswith("Sure. And what is, or was, their job title")
    else:  # recorded as not known, and the call goes on to its end
        assert last.spoken_text.startswith("Thank you, that is everything") and last.ends_call()


@pytest.mark.parametrize(
    ("kind", "text", "expected"),
    [
        ("date", "March twenty nineteen", ("matched", "2019-03")),
        ("date", "the fifteenth of March, twenty nineteen", ("matched", "2019-03-15")),
        ("date", "nineteen ninety-eight", ("matched", "1998")),
        ("date", "two thousand and nine", ("matched", "2009")),
        ("title", "She works as a senior software engineer.", ("matched", "Senior Software Engineer")),
        ("title", "His title is HR manager.", ("matched", "HR Manager")),
        ("title", "She works at an engineer.", ("matched", "Engineer")),  # tiny.en's "as" in a call
        ("date", "March 15th, 2019", ("matched", "2019-03-15")),
        ("date", "since 2020", ("matched", "2020")),
        ("date", "3/4/2021", ("matched", "2021-03-04")),
        ("number", "about twenty five people", ("matched", 25)),
        ("number", "42", ("matched", 42)),
        ("text", "  software engineer ", ("matched", "software engineer")),
    ],
)
def test_answer_parsing(kind: str, text: str, expected: tuple[object, object]) -> None:
    assert parse_answer(Expect(type=kind), text) == expected  # type: ignore[arg-type]
    assert parse_date("no date here") is None


def test_regex_and_keyword_answers() -> None:
    assert parse_answer(Expect(type="regex", pattern=r"id (\d+)"), "my id 1234 ok") == ("matched", "1234")
    kw = Expect(type="keywords", options={"full": ["full time"], "part": ["part time", "hourly"]})
    assert parse_answer(kw, "She is hourly.") == ("part", "part")


def test_llm_chunker_cuts_whole_words_at_clause_ends() -> None:
    chunker = _Chunker()
    pieces: list[str] = []
    for token in ["Thank", " you", " for", " call", "ing", ",", " one", " two", " three", " four", " five",
                  " six", " seven", " eight", " nine", " end."]:  # fmt: skip
        pieces += chunker.feed(token)
    pieces += chunker.flush()
    assert pieces == ["Thank you for calling, ", "one two three four five six seven eight ", "nine end. "]


def test_results_export_csv_and_json(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite3")
    assert store.schema_version >= 3  # results columns arrived in 3
    a = store.create_call("inbound", remote_uri="sip:a@x", now=1_700_000_000)
    store.set_agent_results(a, agent="script")
    store.set_agent_results(a, results={"job_title": "engineer", "dates": [1, 2]}, outcome="verified")
    store.end_call(a, "completed", now=1_700_000_030)
    b = store.create_call("inbound", remote_uri="sip:b@x", now=1_700_000_100)
    store.set_agent_results(b, results={"refused": True}, outcome="refused")
    csv_text = export_calls(store, "csv")
    data = json.loads(export_calls(store, "json"))
    store.close()
    header, row_a, row_b = csv_text.splitlines()
    assert header.endswith("agent,agent_outcome,results.dates,results.job_title,results.refused")
    assert row_a.endswith('script,verified,"[1, 2]",engineer,')
    assert row_b.endswith(",refused,,,True")
    assert [d["agent_outcome"] for d in data] == ["verified", "refused"]
    assert data[0]["results"] == {"job_title": "engineer", "dates": [1, 2]} and data[0]["duration_s"] == 30


def test_calls_export_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from sipbridge.cli import main

    store = Store(tmp_path / "db.sqlite3")
    call = store.create_call("inbound")
    store.set_agent_results(call, agent="script", results={"job_title": "clerk"}, outcome="verified")
    store.close()
    out = tmp_path / "calls.json"
    assert (
        main(["calls", "export", "--db", str(tmp_path / "db.sqlite3"), "--format", "json", "--out", str(out)])
        == 0
    )
    assert json.loads(out.read_text())[0]["results"] == {"job_title": "clerk"}
    assert main(["calls", "export", "--db", str(tmp_path / "db.sqlite3")]) == 0
    assert "results.job_title" in capsys.readouterr().out
    assert main(["calls", "export", "--db", str(tmp_path / "none.sqlite3")]) == 1
