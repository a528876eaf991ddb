"""Every SIP final code we name maps to its outcome; unknown codes fall back by class; events and AMD."""

from __future__ import annotations

import pytest

from sipbridge.dialer.outcomes import (
    SIP_OUTCOMES,
    CallResult,
    Outcome,
    answered_outcome,
    classify,
    outcome_for_event,
    outcome_for_sip,
)

Oc = Outcome
# (code, outcome): the list first, then the rest of the table. Every entry of SIP_OUTCOMES must be
# here (checked below), so a table edit needs a test edit.
CASES = [
    (486, Oc.BUSY),
    (600, Oc.BUSY),
    (480, Oc.NO_ANSWER),
    (408, Oc.NO_ANSWER),
    (603, Oc.REJECTED),
    (403, Oc.REJECTED),
    (607, Oc.REJECTED),
    (608, Oc.REJECTED),
    (404, Oc.INVALID_NUMBER),
    (484, Oc.INVALID_NUMBER),
    (410, Oc.INVALID_NUMBER),
    (416, Oc.INVALID_NUMBER),
    (485, Oc.INVALID_NUMBER),
    (604, Oc.INVALID_NUMBER),
    (503, Oc.CONGESTION),
    (500, Oc.CONGESTION),
    (501, Oc.CONGESTION),
    (502, Oc.CONGESTION),
    (504, Oc.CONGESTION),
    (487, Oc.CANCELLED),
    (300, Oc.FAILED),
    (301, Oc.FAILED),
    (302, Oc.FAILED),
    (305, Oc.FAILED),
    (380, Oc.FAILED),
    (400, Oc.FAILED),
    (401, Oc.FAILED),
    (402, Oc.FAILED),
    (405, Oc.FAILED),
    (407, Oc.FAILED),
    (413, Oc.FAILED),
    (414, Oc.FAILED),
    (415, Oc.FAILED),
    (420, Oc.FAILED),
    (421, Oc.FAILED),
    (423, Oc.FAILED),
    (481, Oc.FAILED),
    (482, Oc.FAILED),
    (483, Oc.FAILED),
    (488, Oc.FAILED),
    (491, Oc.FAILED),
    (493, Oc.FAILED),
    (505, Oc.FAILED),
    (513, Oc.FAILED),
    (606, Oc.FAILED),
]
# Codes not in the table: the class decides.
UNKNOWN = [
    (399, Oc.FAILED),
    (409, Oc.FAILED),
    (429, Oc.FAILED),
    (499, Oc.FAILED),
    (508, Oc.CONGESTION),
    (555, Oc.CONGESTION),
    (580, Oc.CONGESTION),
    (599, Oc.CONGESTION),
    (605, Oc.REJECTED),
    (699, Oc.REJECTED),
]


@pytest.mark.parametrize(("code", "outcome"), CASES + UNKNOWN)
def test_sip_code_outcome(code: int, outcome: Outcome) -> None:
    assert outcome_for_sip(code) is outcome
    assert classify(CallResult(sip_code=code)) is outcome


def test_table_and_tests_cover_the_same_codes() -> None:
    assert {code for code, _ in CASES} == set(SIP_OUTCOMES)
    assert not {code for code, _ in UNKNOWN} & set(SIP_OUTCOMES)


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (100, "provisional"),
        (180, "provisional"),
        (183, "provisional"),
        (200, "answered"),
        (202, "answered"),
        (99, "not a SIP status"),
        (700, "not a SIP status"),
        (0, "not a SIP status"),
    ],
)
def test_codes_that_are_not_failures_are_refused(code: int, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        outcome_for_sip(code)


@pytest.mark.parametrize("code", ["486", 486.0, True, None])
def test_code_must_be_int(code: object) -> None:
    with pytest.raises(TypeError, match="must be an int"):
        outcome_for_sip(code)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("event", "outcome"),
    [
        ("ring_timeout", Oc.NO_ANSWER),
        ("transport_error", Oc.FAILED),
        ("cancelled", Oc.CANCELLED),
        ("no_media", Oc.FAILED),
    ],
)
def test_events(event: str, outcome: Outcome) -> None:
    assert outcome_for_event(event) is outcome
    # Our own ring-timeout CANCEL is answered 487: the event wins, it is a no-answer, not a cancel.
    assert classify(CallResult(sip_code=487, event=event)) is outcome  # type: ignore[arg-type]


def test_unknown_event() -> None:
    with pytest.raises(ValueError, match="unknown call event 'hangup'"):
        outcome_for_event("hangup")


@pytest.mark.parametrize(
    ("amd", "delivered", "outcome"),
    [
        (None, False, Oc.ANSWERED_HUMAN),
        ("human", False, Oc.ANSWERED_HUMAN),
        ("not_sure", False, Oc.ANSWERED_HUMAN),
        ("machine", False, Oc.ANSWERED_MACHINE),
        ("machine", True, Oc.VOICEMAIL_LEFT),
    ],
)
def test_answered(amd: str | None, delivered: bool, outcome: Outcome) -> None:
    assert answered_outcome(amd, delivered) is outcome
    assert classify(CallResult(sip_code=200, amd=amd, message_delivered=delivered)) is outcome


def test_bad_answered_and_empty_results() -> None:
    with pytest.raises(ValueError, match="unknown AMD decision 'fax'"):
        answered_outcome("fax")
    with pytest.raises(ValueError, match="needs a SIP code or an event"):
        classify(CallResult())


def test_outcome_values_are_the_documented_names() -> None:
    assert [o.value for o in Outcome] == [
        "answered-human", "answered-machine", "voicemail-message-left", "busy", "no-answer", "rejected",
        "invalid-number", "congestion", "failed", "cancelled", "suppressed", "capped", "opted-out",
    ]  # fmt: skip
