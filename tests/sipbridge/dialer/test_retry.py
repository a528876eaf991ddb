"""Retry decisions per outcome: delay, attempt caps, final outcomes, and the calling window."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from sipbridge.dialer.outcomes import Outcome
from sipbridge.dialer.retry import RetryPolicy, RetryRule
from sipbridge.dialer.window import CallingWindow

NY = "America/New_York"
ALWAYS = CallingWindow(start="00:00", end="23:59:59", days=("mon", "tue", "wed", "thu", "fri", "sat", "sun"))
WED_10AM_NY = datetime(2024, 3, 6, 15, 0, tzinfo=UTC)
Oc = Outcome


@pytest.mark.parametrize(
    ("outcome", "attempts", "final", "minutes_later"),
    [
        (Oc.BUSY, 1, False, 10),
        (Oc.BUSY, 2, False, 10),
        (Oc.BUSY, 3, True, None),
        (Oc.NO_ANSWER, 1, False, 60),
        (Oc.NO_ANSWER, 3, True, None),
        (Oc.ANSWERED_MACHINE, 1, False, 120),
        (Oc.CONGESTION, 4, False, 5),
        (Oc.CONGESTION, 5, True, None),
        (Oc.FAILED, 1, False, 15),
        (Oc.FAILED, 2, True, None),
        (Oc.CANCELLED, 1, False, 0),
        (Oc.ANSWERED_HUMAN, 1, True, None),
        (Oc.VOICEMAIL_LEFT, 1, True, None),
        (Oc.REJECTED, 1, True, None),
        (Oc.INVALID_NUMBER, 1, True, None),
    ],
)
def test_default_policy(outcome: Outcome, attempts: int, final: bool, minutes_later: int | None) -> None:
    decision = RetryPolicy().decide(outcome, attempts, WED_10AM_NY, ALWAYS, NY)
    assert decision.final is final
    assert decision.outcome is outcome
    assert outcome.value in decision.reason
    if minutes_later is None:
        assert decision.next_attempt_at is None
    else:
        assert decision.next_attempt_at is not None
        assert (decision.next_attempt_at - WED_10AM_NY).total_seconds() == minutes_later * 60


def test_every_outcome_has_a_rule() -> None:
    policy = RetryPolicy()
    for outcome in Outcome:
        assert isinstance(policy.rule_for(outcome), RetryRule)


def test_retry_is_moved_into_the_window() -> None:
    # Busy at Friday 16:55 New York: +10 min is after 17:00, so Monday 09:00 EDT (after the DST change).
    friday_1655 = datetime(2024, 3, 8, 21, 55, tzinfo=UTC)
    decision = RetryPolicy().decide(Oc.BUSY, 1, friday_1655, CallingWindow(), NY)
    assert decision.next_attempt_at == datetime(2024, 3, 11, 13, 0, tzinfo=UTC)
    assert "moved into the calling window" in decision.reason


def test_policy_from_yaml_like_values() -> None:
    policy = RetryPolicy.model_validate(
        {"voicemail_message_left": {"action": "retry", "delay_minutes": 1440, "max_attempts": 2},
         "busy": {"action": "final"}}
    )  # fmt: skip
    assert policy.decide(Oc.BUSY, 1, WED_10AM_NY, ALWAYS, NY).final
    again = policy.decide(Oc.VOICEMAIL_LEFT, 1, WED_10AM_NY, ALWAYS, NY)
    assert not again.final and again.next_attempt_at == datetime(2024, 3, 7, 15, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("values", "error"),
    [
        ({"busy": {"action": "final", "delay_minutes": 5}}, "delay_minutes would never be used"),
        ({"busy": {"max_attempts": 0}}, "greater than or equal to 1"),
        ({"busy": {"delay_minutes": -1}}, "greater than or equal to 0"),
        ({"busy": {"action": "later"}}, "'retry' or 'final'"),
        ({"voicemail": {}}, "Extra inputs"),
    ],
)
def test_bad_policies(values: dict[str, object], error: str) -> None:
    with pytest.raises(ValidationError, match=error):
        RetryPolicy.model_validate(values)


def test_attempts_must_count_this_one() -> None:
    with pytest.raises(ValueError, match=">= 1"):
        RetryPolicy().decide(Oc.BUSY, 0, WED_10AM_NY, ALWAYS, NY)
