"""Campaign files: a full example loads; bad keys and values are errors naming the key path and line."""

from __future__ import annotations

import textwrap
from datetime import date, time
from pathlib import Path

import pytest

from audio.amd import AmdSettings
from sipbridge.config import ConfigError
from sipbridge.dialer.campaign import load_campaign
from sipbridge.dialer.outcomes import Outcome

FULL = """
name: verify-2025-q1
caller_id: "+1 (415) 555-0100"
agent:
  kind: script
  flow: flows/employment_verification.yaml
limits:
  concurrency: 6
  calls_per_second: 2.5
window:
  start: "09:30"
  end: "16:00"
  days: [mon, tue, wed]
  holidays: [2025-12-25]
default_region: us
default_timezone: America/Chicago
retry:
  busy: {delay_minutes: 7, max_attempts: 2}
  answered_human: {action: final}
voicemail:
  action: leave_message
  message: "Hello, this is ${COMPANY} calling about an employment verification."
amd:
  greeting_ms: 2000
  vad: webrtc
contacts: contacts.csv
"""
CALLER_ID_ONLY = 'name: x\ncaller_id: "+14155550100"\nagent: {kind: llm}\ncontacts: contacts.csv\n'


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "contacts.csv").write_text("number\n+14155550100\n", encoding="utf-8")
    path = tmp_path / "campaign.yaml"
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def issues_of(path: Path, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_campaign(path, env=env or {})
    return [str(issue) for issue in info.value.issues]


def test_full_campaign(tmp_path: Path) -> None:
    path = write(tmp_path, FULL)
    loaded = load_campaign(path, env={"COMPANY": "Acme"})
    c = loaded.campaign
    assert c.name == "verify-2025-q1"
    assert c.caller_id == "+14155550100"
    assert (c.limits.concurrency, c.limits.calls_per_second) == (6, 2.5)
    assert (c.window.start, c.window.end, c.window.days) == (time(9, 30), time(16), ("mon", "tue", "wed"))
    assert c.window.holidays == (date(2025, 12, 25),)
    assert c.default_region == "US"
    assert c.retry.rule_for(Outcome.BUSY).delay_minutes == 7
    assert c.retry.rule_for(Outcome.NO_ANSWER).max_attempts == 3  # untouched rules keep their defaults
    assert c.voicemail.message is not None and "Acme calling" in c.voicemail.message
    settings = c.amd.to_settings()
    assert (settings.greeting_ms, settings.vad, settings.after_greeting_silence_ms) == (2000, "webrtc", 800)
    assert loaded.contacts_path == tmp_path.resolve() / "contacts.csv"
    assert loaded.flow_path == tmp_path.resolve() / "flows" / "employment_verification.yaml"


def test_minimal_campaign_defaults(tmp_path: Path) -> None:
    c = load_campaign(write(tmp_path, CALLER_ID_ONLY), env={}).campaign
    assert c.voicemail.action == "hangup"  # no message configured: never guess one
    assert c.amd.enabled and c.limits.concurrency == 4
    assert c.window.days == ("mon", "tue", "wed", "thu", "fri")


def test_amd_words_follow_the_deployments_asr_unless_set(tmp_path: Path) -> None:
    default = load_campaign(write(tmp_path, CALLER_ID_ONLY), env={}).campaign.amd
    assert default.asr is None
    assert default.to_settings(asr_available=True).asr and not default.to_settings(asr_available=False).asr
    assert (default.to_settings().asr_wait_ms, default.to_settings().asr_chunk_ms) == (1000, 500)
    off = CALLER_ID_ONLY + "amd: {asr: false, asr_wait_ms: 1500}\n"
    amd = load_campaign(write(tmp_path, off), env={}).campaign.amd
    assert not amd.to_settings(asr_available=True).asr and amd.to_settings().asr_wait_ms == 1500
    on = CALLER_ID_ONLY + "amd: {asr: true}\n"
    assert not load_campaign(write(tmp_path, on), env={}).campaign.amd.to_settings(asr_available=False).asr


def test_the_short_answer_rule_is_off_unless_a_campaign_sets_it(tmp_path: Path) -> None:
    default = load_campaign(write(tmp_path, CALLER_ID_ONLY), env={}).campaign.amd.to_settings()
    assert default.short_greeting_ms is None and default.after_greeting_silence_ms == 800
    text = CALLER_ID_ONLY + "amd: {short_greeting_ms: 1000, after_short_greeting_silence_ms: 600}\n"
    settings = load_campaign(write(tmp_path, text), env={}).campaign.amd.to_settings()
    assert (settings.short_greeting_ms, settings.after_short_greeting_silence_ms) == (1000, 600)


def test_calls_start_on_a_provisional_human_unless_a_campaign_turns_it_off(tmp_path: Path) -> None:
    # Off in the detector (audio.amd), on for calls at the measured value (docs/DIALER.md "No dead air").
    default = load_campaign(write(tmp_path, CALLER_ID_ONLY), env={}).campaign.amd.to_settings()
    assert default.provisional_silence_ms == 200 and AmdSettings().provisional_silence_ms is None
    off = CALLER_ID_ONLY + "amd: {provisional_silence_ms: null}\n"
    assert (
        load_campaign(write(tmp_path, off), env={}).campaign.amd.to_settings().provisional_silence_ms is None
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            CALLER_ID_ONLY + "amd: {provisional_silence_ms: 900}\n",
            "amd: amd.provisional_silence_ms (900) must be shorter than the silence that decides human",
        ),
        (CALLER_ID_ONLY + "colour: red\n", "campaign.yaml:5: colour: unknown key"),
        (
            CALLER_ID_ONLY + "limits:\n  concurrency: 0\n",
            "campaign.yaml:6: limits.concurrency: Input should be",
        ),
        (CALLER_ID_ONLY + "limits:\n  cps: 3\n", "campaign.yaml:6: limits.cps: unknown key"),
        (
            CALLER_ID_ONLY + "window:\n  start: '18:00'\n",
            "campaign.yaml:5: window: end (17:00) must be after",
        ),
        (
            CALLER_ID_ONLY + "window:\n  days: [mon, funday]\n",
            "campaign.yaml:6: window.days[1]: Input should be",
        ),
        (
            CALLER_ID_ONLY + "retry:\n  busy:\n    max_attempts: 0\n",
            "campaign.yaml:7: retry.busy.max_attempts",
        ),
        (CALLER_ID_ONLY + "retry:\n  voicemail: {}\n", "campaign.yaml:6: retry.voicemail: unknown key"),
        (CALLER_ID_ONLY + "voicemail:\n  action: leave_message\n", "voicemail: action is leave_message but"),
        (CALLER_ID_ONLY + "amd:\n  greeting_ms: 9000\n", "amd: amd.greeting_ms (9000) is longer than"),
        (CALLER_ID_ONLY + "amd: {asr_wait_ms: 0}\n", "amd: amd.asr_wait_ms must be a positive integer"),
        (
            CALLER_ID_ONLY + "amd: {short_greeting_ms: 3000}\n",
            "amd: amd.short_greeting_ms (3000) must be positive and below amd.greeting_ms (2500)",
        ),
        (CALLER_ID_ONLY + "trunk: carrier-b\n", "campaign.yaml:5: trunk: unknown trunk 'carrier-b'"),
        (CALLER_ID_ONLY + "default_timezone: Mars/Base\n", "default_timezone: unknown time zone 'Mars/Base'"),
        (CALLER_ID_ONLY + "default_region: XX\n", "default_region: unknown default region"),
        (CALLER_ID_ONLY.replace('"+14155550100"', "'12'"), "campaign.yaml:2: caller_id: not a dialable"),
        (CALLER_ID_ONLY.replace("name: x", "name: 'a b'"), "campaign.yaml:1: name: must be 1-64"),
        (
            CALLER_ID_ONLY.replace("{kind: llm}", "{kind: script}"),
            "agent: kind is script but flow is not set",
        ),
        (CALLER_ID_ONLY.replace("contacts: contacts.csv\n", ""), "contacts: required key is missing"),
        (CALLER_ID_ONLY.replace("contacts.csv", "missing.csv"), "contacts: no such file"),
        (CALLER_ID_ONLY + "name: y\n", "campaign.yaml:5: name: key given twice"),
        (CALLER_ID_ONLY + "voicemail: {action: leave_message, message: '${MSG}'}\n", "MSG is not set"),
        ("- a list\n", "the top level must be a mapping"),
    ],
)
def test_errors_name_key_and_line(tmp_path: Path, text: str, expected: str) -> None:
    problems = issues_of(write(tmp_path, text))
    assert any(expected in problem for problem in problems), problems


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    text = CALLER_ID_ONLY + "limits: {concurrency: 0, calls_per_second: 0}\ncolour: red\n"
    assert len(issues_of(write(tmp_path, text))) == 3


def test_unreadable_file(tmp_path: Path) -> None:
    assert "cannot read campaign file" in issues_of(tmp_path / "none.yaml")[0]
