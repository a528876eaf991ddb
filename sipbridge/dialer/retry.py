"""Retry policy: after an attempt ends with some outcome, call again (when) or stop (why).

One rule per outcome: ``retry`` with a delay and a cap on attempts, or ``final``. The next attempt time is
the delay added to the end of this attempt, moved forward into the callee's calling window. Attempts are
counted per contact over the whole campaign (a busy and then a no-answer are two attempts), and
``max_attempts`` of the rule for the latest outcome decides.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, model_validator

from sipbridge.dialer.outcomes import Outcome
from sipbridge.dialer.window import CallingWindow

__all__ = ["RetryDecision", "RetryPolicy", "RetryRule"]


class RetryRule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    action: Literal["retry", "final"] = Field("retry", description="Call again, or stop with this outcome.")
    delay_minutes: float = Field(30.0, ge=0, le=60 * 24 * 30, description="Wait after the attempt ends.")
    max_attempts: int = Field(
        3, ge=1, le=100, description="Attempts in all (this one included) before giving up."
    )

    @model_validator(mode="after")
    def _final_has_no_timing(self) -> RetryRule:
        given = self.model_fields_set & {"delay_minutes", "max_attempts"}
        if self.action == "final" and given:
            raise ValueError(f"action is final, so {', '.join(sorted(given))} would never be used")
        return self


def _retry(delay: float, attempts: int) -> RetryRule:
    return RetryRule(action="retry", delay_minutes=delay, max_attempts=attempts)


_FINAL = RetryRule(action="final")

# Not configurable: a campaign file cannot retry a number on the do-not-call list or one that opted out.
# A capped contact is not decided here: it waits for the callee's next local day (dialer/suppression.py).
_COMPLIANCE_RULES = {
    Outcome.SUPPRESSED: _FINAL,
    Outcome.OPTED_OUT: _FINAL,
    Outcome.CAPPED: RetryRule(action="retry", delay_minutes=0, max_attempts=100),
}


class RetryPolicy(BaseModel):
    """YAML keys are the outcome names with ``_`` for ``-`` (``no_answer``, ``answered_machine``, ...)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    answered_human: RetryRule = Field(_FINAL, description="The flow ran with a person.")
    answered_machine: RetryRule = Field(
        _retry(120, 3), description="A machine answered and no message was left (voicemail.action: hangup)."
    )
    voicemail_message_left: RetryRule = Field(_FINAL, description="The message was played after the beep.")
    busy: RetryRule = Field(_retry(10, 3), description="486/600.")
    no_answer: RetryRule = Field(_retry(60, 3), description="Ring timeout, 480, 408.")
    rejected: RetryRule = Field(_FINAL, description="603/403/607/608: the callee or carrier refused us.")
    invalid_number: RetryRule = Field(_FINAL, description="404/484/410/604.")
    congestion: RetryRule = Field(_retry(5, 5), description="503 and other 5xx: carrier overload or CPS.")
    failed: RetryRule = Field(_retry(15, 2), description="Transport errors, 4xx we sent wrong, no media.")
    cancelled: RetryRule = Field(
        _retry(0, 10), description="We cancelled (pause, shutdown): call again once resumed."
    )

    def rule_for(self, outcome: Outcome) -> RetryRule:
        fixed = _COMPLIANCE_RULES.get(outcome)
        if fixed is not None:
            return fixed
        rule: RetryRule = getattr(self, outcome.value.replace("-", "_"))
        return rule

    def decide(
        self,
        outcome: Outcome,
        attempts: int,
        ended_at: datetime,
        window: CallingWindow,
        tz: ZoneInfo | str,
    ) -> RetryDecision:
        """``attempts``: attempts made so far, the one that just ended included."""
        if attempts < 1:
            raise ValueError(f"attempts counts the attempt that just ended, so it is >= 1, got {attempts}")
        rule = self.rule_for(outcome)
        if rule.action == "final":
            return RetryDecision(outcome, final=True, reason=f"{outcome.value} is final")
        if attempts >= rule.max_attempts:
            return RetryDecision(
                outcome,
                final=True,
                reason=f"{outcome.value}: {attempts} attempt(s) made, max_attempts is {rule.max_attempts}",
            )
        earliest = ended_at + timedelta(minutes=rule.delay_minutes)
        at = window.next_allowed(earliest, tz)
        why = f"{outcome.value}: retry {attempts + 1}/{rule.max_attempts} after {rule.delay_minutes:g} min"
        if at != earliest:
            why += " (moved into the calling window)"
        return RetryDecision(outcome, final=False, next_attempt_at=at, reason=why)


@dataclass(frozen=True)
class RetryDecision:
    outcome: Outcome
    final: bool
    next_attempt_at: datetime | None = None  # UTC; set when not final
    reason: str = ""
