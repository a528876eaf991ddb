"""The campaign file: one YAML document describing one outbound campaign.

Strict like the deployment config (``sipbridge/config.py``, whose loading helpers are reused): unknown keys,
wrong types and bad values are errors naming the dotted key path and the file line; ``${ENV_VAR}`` works in
strings; every problem is reported at once. Relative paths (``contacts``, ``agent.flow``) are relative to the
campaign file's folder, so a campaign folder can be moved as a whole. Example::

    name: verify-2025-q1
    caller_id: "+14155550100"
    agent: {kind: script, flow: flows/employment_verification.yaml}
    limits: {concurrency: 6, calls_per_second: 1}
    window:
      start: "09:00"
      end: "17:00"
      days: [mon, tue, wed, thu, fri]
      holidays: [2025-12-25, 2026-01-01]
    default_region: US
    default_timezone: America/New_York
    retry:
      busy: {delay_minutes: 10, max_attempts: 3}
      no_answer: {delay_minutes: 60, max_attempts: 4}
    voicemail: {action: leave_message, message: "Hello, this is Acme calling to verify ..."}
    amd: {greeting_ms: 2500}
    contacts: contacts.csv
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from audio.amd import AmdSettings
from sipbridge.config_loader import (
    ConfigError,
    ConfigIssue,
    StrictScalars,
    load_yaml_model,
    read_yaml_text,
)
from sipbridge.dialer.numbers import NumberError, normalize_e164
from sipbridge.dialer.retry import RetryPolicy
from sipbridge.dialer.window import CallingWindow, resolve_timezone

__all__ = [
    "AgentSection",
    "AmdSection",
    "Campaign",
    "LimitsSection",
    "LoadedCampaign",
    "VoicemailSection",
    "load_campaign",
]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class _CampaignSection(StrictScalars):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class AgentSection(_CampaignSection):
    kind: Literal["script", "webhook", "llm"] = Field("script", description="Who decides what the bot says.")
    flow: Path | None = Field(None, description="Flow YAML for kind script (relative to the campaign file).")

    @model_validator(mode="after")
    def _flow_for_script(self) -> AgentSection:
        if self.kind == "script" and self.flow is None:
            raise ValueError("kind is script but flow is not set")
        return self


class LimitsSection(_CampaignSection):
    concurrency: int = Field(4, ge=1, le=1024, description="Calls of this campaign at once.")
    calls_per_second: float = Field(1.0, gt=0, le=100, description="Call attempts started per second.")
    ring_timeout_s: float = Field(30.0, gt=0, le=300, description="Give up ringing (no-answer) after this.")


class VoicemailSection(_CampaignSection):
    action: Literal["leave_message", "hangup"] = Field(
        "leave_message", description="On a machine: play `message` after the beep, or hang up (and retry)."
    )
    message: str | None = Field(None, description="Text spoken after the beep.")

    @model_validator(mode="after")
    def _message_for_leave(self) -> VoicemailSection:
        if self.action == "leave_message" and not (self.message or "").strip():
            raise ValueError("action is leave_message but message is empty")
        return self


# One source of defaults: the detector's own (a campaign file only overrides what it names).
_AMD = AmdSettings()
# Except the provisional start, off in the detector and on for calls: the measured best (docs/DIALER.md).
PROVISIONAL_SILENCE_MS = 200


class AmdSection(_CampaignSection):
    """Answering-machine detection; keys are audio.amd.AmdSettings' (docs/DIALER.md explains them)."""

    enabled: bool = Field(True, description="Off: every answered call is treated as a person.")
    initial_silence_ms: int = _AMD.initial_silence_ms
    greeting_ms: int = _AMD.greeting_ms
    after_greeting_silence_ms: int = _AMD.after_greeting_silence_ms
    short_greeting_ms: int | None = Field(
        _AMD.short_greeting_ms,
        description="A greeting of at most this much speech is a person after after_short_greeting_silence_ms"
        " of silence. Null (default): every greeting waits after_greeting_silence_ms; a shorter wait costs"
        " machines whose greeting pauses between sentences (docs/DIALER.md).",
    )
    after_short_greeting_silence_ms: int = Field(
        _AMD.after_short_greeting_silence_ms,
        description="Silence that ends a short greeting (short_greeting_ms).",
    )
    provisional_silence_ms: int | None = Field(
        PROVISIONAL_SILENCE_MS,
        description="No dead air: after this much silence following the callee's first words, the"
        " disclosure and greeting start on a provisional 'human' while the rules above still decide; if the"
        " callee speaks again (or the verdict is machine) the bot stops at once and the disclosure plays"
        " whole from its beginning later. Must be below after_greeting_silence_ms. Null: speak only on the"
        " verdict (docs/DIALER.md).",
    )
    total_analysis_ms: int = _AMD.total_analysis_ms
    min_word_length_ms: int = _AMD.min_word_length_ms
    between_words_silence_ms: int = _AMD.between_words_silence_ms
    maximum_number_of_words: int = _AMD.maximum_number_of_words
    maximum_word_length_ms: int = _AMD.maximum_word_length_ms
    initial_silence_decision: Literal["human", "machine", "not_sure"] = _AMD.initial_silence_decision
    vad: Literal["silero", "webrtc", "energy"] = _AMD.vad
    beep_detection: bool = _AMD.beep_detection
    machine_phrases: tuple[str, ...] | None = Field(None, description="Null: audio.amd's built-in list.")
    asr: bool | None = Field(
        None,
        description="Words of the greeting from the deployment's ASR: a voicemail phrase makes it a machine,"
        " and a short greeting's 'human' waits for them (asr_wait_ms). Null: on when the deployment has an"
        " ASR (asr.backend is not none).",
    )
    asr_chunk_ms: int = Field(_AMD.asr_chunk_ms, description="Callee audio sent to the ASR every this often.")
    asr_wait_ms: int = Field(
        _AMD.asr_wait_ms, description="Longest a short greeting's 'human' waits for its words."
    )
    no_beep_timeout_ms: int = _AMD.no_beep_timeout_ms
    max_beep_wait_ms: int = _AMD.max_beep_wait_ms

    @model_validator(mode="after")
    def _valid_for_amd(self) -> AmdSection:
        self.to_settings()  # AmdSettings' own checks, reported at this key path
        return self

    def to_settings(self, asr_available: bool = False) -> AmdSettings:
        """``asr_available``: the deployment has an ASR (decides ``asr: null``; ``asr: true`` without one is
        turned off by the dialer, with a warning)."""
        known = {f.name for f in fields(AmdSettings)}
        values: dict[str, Any] = {
            k: v
            for k, v in self.model_dump().items()
            if k in known and not (k == "machine_phrases" and v is None)
        }
        values["asr"] = asr_available and self.asr is not False
        return AmdSettings(**values)


class Campaign(_CampaignSection):
    name: str = Field(description="Campaign id (letters, digits, . _ -): the key of its state in SQLite.")
    trunk: str = Field(
        "default",
        description="Which configured trunk places the calls. A deployment has one trunk (`sip.trunk`), "
        "named `default`; naming another is an error rather than a silent fallback to it.",
    )
    caller_id: str = Field(description="Caller ID with its country code (+...); stored as E.164.")
    agent: AgentSection = Field(description="What runs on a call answered by a person.")
    limits: LimitsSection = Field(default_factory=LimitsSection)
    window: CallingWindow = Field(
        default_factory=CallingWindow, description="Local calling hours per callee."
    )
    default_region: str | None = Field(None, description="ISO country for contacts written nationally.")
    default_timezone: str | None = Field(None, description="IANA zone for contacts without one.")
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    # No voicemail section: hang up on machines (and retry per retry.answered_machine) rather than guess a
    # message.
    voicemail: VoicemailSection = Field(default_factory=lambda: VoicemailSection(action="hangup"))
    amd: AmdSection = Field(default_factory=AmdSection)
    contacts: Path = Field(description="Contacts CSV (relative to the campaign file).")
    disclosure: str | None = Field(
        None,
        min_length=1,
        description="Opening sentence (AI and recording notice) said first and whole when a person answers;"
        " null: the deployment's dialer.disclosure.",
    )
    dial_uri: str | None = Field(
        None,
        description="Request URI template: `{number}` (E.164), `{user}` (without +) and contact columns;"
        " null: `sip:{number}@` the deployment's trunk registrar host.",
    )

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError("must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
        return value

    @field_validator("trunk")
    @classmethod
    def _trunk(cls, value: str) -> str:
        # Calls must not leave through a trunk the campaign did not name (carrier, caller-ID rules, cost).
        if value != "default":
            raise ValueError(
                f"unknown trunk {value!r}: this deployment has one trunk (config key sip.trunk), "
                "named 'default'"
            )
        return value

    @field_validator("caller_id")
    @classmethod
    def _caller_id(cls, value: str) -> str:
        try:
            return normalize_e164(value)
        except NumberError as exc:
            raise ValueError(f"not a dialable E.164 number: {exc.reason}") from None

    @field_validator("default_timezone")
    @classmethod
    def _zone(cls, value: str | None) -> str | None:
        if value is not None:
            resolve_timezone(value)
        return value

    @field_validator("default_region")
    @classmethod
    def _region(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            normalize_e164("+1 201 555 0123", value)  # validates the region code the same way rows use it
        except NumberError as exc:
            raise ValueError(exc.reason) from None
        return value.upper()


@dataclass(frozen=True)
class LoadedCampaign:
    campaign: Campaign
    source: str
    contacts_path: Path  # resolved against the campaign file's folder
    flow_path: Path | None


def load_campaign(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> LoadedCampaign:
    """Read and validate a campaign file. Raises ConfigError listing every problem (key path + line)."""
    origin = str(path)
    loaded = load_yaml_model(Campaign, read_yaml_text(path, "campaign file"), origin, env=env)
    campaign, origins = loaded.model, loaded.origins
    base = Path(path).resolve().parent
    contacts = campaign.contacts if campaign.contacts.is_absolute() else base / campaign.contacts
    if not contacts.is_file():
        raise ConfigError(
            [ConfigIssue("contacts", f"no such file: {contacts}", origins.source_of(("contacts",)))]
        )
    flow = campaign.agent.flow
    if flow is not None and not flow.is_absolute():
        flow = base / flow
    return LoadedCampaign(campaign=campaign, source=origin, contacts_path=contacts, flow_path=flow)
