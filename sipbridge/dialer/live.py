"""The live dialer: runs one campaign inside the supervisor, placing calls through the SIP workers.

`CampaignRunner.run()` is one asyncio task on the supervisor's loop. Each pass it
  1. reads the campaign's status (`sipbridge campaign pause|resume` write it to SQLite from another process),
  2. takes due contacts (`pending`/`retry` with `next_at <= now`) in order, defers those outside their
     callee's calling window (`CallingWindow.next_allowed`, no attempt counted), and claims the rest one at a
     time in a transaction (`CampaignState.claim`) while the concurrency limit, the free worker slots and
     the calls-per-second bucket allow,
  3. sends a `Dial` frame per claim to the least busy worker.
Results come back as frames: `DialEnded` (not answered) or, for answered calls, the end of the call's
`CallSession` (`OutboundCall.finish`). Both go through `classify` → `RetryPolicy.decide` → one transaction.
While the campaign is paused, calls still ringing get `CancelDial` (SIP CANCEL); such an attempt is recorded
as cancelled and the contact goes back to pending, to be called after the resume (`CampaignState.release`).

The clock is injected (`Clock`): wall time for windows and retry times, monotonic time for the CPS bucket.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sipbridge import frames as f
from sipbridge.dialer.campaign import LoadedCampaign
from sipbridge.dialer.contacts import load_contacts
from sipbridge.dialer.outcomes import CallResult, Outcome, classify
from sipbridge.dialer.ratelimit import TokenBucket
from sipbridge.dialer.state import CampaignState, Claim, ContactRow, ts, utc
from sipbridge.dialer.suppression import Block, next_local_day
from sipbridge.metrics import Metrics

log = logging.getLogger(__name__)

__all__ = ["CampaignRunner", "Clock", "OutboundCall"]

_IDLE_POLL_S = 0.25  # how often a paused or waiting campaign looks at its state again
# --exit-when-idle: waiting this long (campaign clock) for the next due contact is still "busy" (a window
# about to open, an immediate retry); further out is idle (busy/no-answer retries are minutes away).
_IDLE_HORIZON_S = 60.0
# A contact whose INVITE found no free PJSUA call slot (DialEnded event no_slot) is due again after this.
_NO_SLOT_RETRY_S = 1.0


@dataclass(frozen=True)
class Clock:
    """Wall clock for calling windows and retries, monotonic clock for rate limits.

    `Clock.starting_at(t)` runs from `t` at real speed: tests (and `sipbridge dial --now`) place the
    campaign at a chosen moment, e.g. ten seconds before a calling window opens."""

    now: Callable[[], datetime] = lambda: datetime.now(UTC)
    monotonic: Callable[[], float] = time.monotonic

    @classmethod
    def starting_at(cls, start: datetime) -> Clock:
        t0 = time.monotonic()
        return cls(now=lambda: start + timedelta(seconds=time.monotonic() - t0))


@dataclass
class OutboundCall:
    """Supervisor-side state of one call we placed, shared by the runner and the call's session."""

    claim: Claim
    dial: f.Dial
    amd_enabled: bool
    voicemail_message: str | None
    finish_cb: Callable[[OutboundCall, str | None], None]
    worker: int = -1
    ringing_ms: int | None = None
    answered: bool = False
    amd_kind: str | None = None
    amd_at_ms: int = 0
    message_delivered: bool = False
    cancelled_by_pause: bool = False  # CancelDial sent because the campaign was paused while it rang
    opted_out: bool = False  # the callee asked not to be called again (number now on the DNC list)
    disclosure: str | None = None  # the campaign's opening sentence; None: the deployment's

    @property
    def call_id(self) -> str:
        return self.dial.call_id

    @property
    def variables(self) -> dict[str, str]:
        return dict(self.dial.variables)

    def accepts_turn(self, frame: f.Frame) -> bool:
        """Callee turns reach the agent only after a human decision, and only those begun after it (the
        "Hello?" AMD listened to is answered by the greeting, not as a turn)."""
        turn_frames = f.TurnEnded | f.TurnPaused | f.SpeechStarted | f.TurnDropped
        if not self.amd_enabled or not isinstance(frame, turn_frames):
            return True
        if self.amd_kind is None or self.amd_kind == "machine":
            return False
        start = frame.t_ms if isinstance(frame, f.SpeechStarted) else frame.start_ms
        return start >= self.amd_at_ms

    def finish(self, failure: str | None) -> None:
        self.finish_cb(self, failure)


@dataclass
class CampaignRunner:
    loaded: LoadedCampaign
    state: CampaignState
    send_dial: Callable[[f.Dial], int | None]  # returns the worker index, None if no worker can take it
    free_slots: Callable[[], int]
    clock: Clock = field(default_factory=Clock)
    default_dial_uri: str = "sip:{number}@127.0.0.1"  # from the deployment's trunk (supervisor)
    exit_when_idle: bool = False  # stop once nothing is due now and nothing is in flight (tests, cron)
    # CancelDial to a worker (index, frame) -> sent; the supervisor's pool.
    send_to_worker: Callable[[int, f.Frame], bool] = lambda index, frame: False
    asr_available: bool = False  # the deployment has an ASR: `amd.asr: null` turns AMD's words on
    metrics: Metrics = field(default_factory=Metrics)  # the supervisor's: attempts by outcome
    daily_cap: int | None = None  # dialer.max_attempts_per_number_per_day (all campaigns)
    on_answer_route: dict[str, OutboundCall] = field(default_factory=dict)  # call id -> in flight
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _bucket: TokenBucket | None = None

    def __post_init__(self) -> None:
        limits = self.loaded.campaign.limits
        self._bucket = TokenBucket(limits.calls_per_second, 1.0, self.clock.monotonic)

    @property
    def name(self) -> str:
        return self.loaded.campaign.name

    # ------------------------------------------------------------------------------ start

    def prepare(self) -> None:
        """Import (or resume) the campaign and close attempts a previous run left open."""
        c = self.loaded.campaign
        result = load_contacts(self.loaded.contacts_path, c.default_region, c.default_timezone)
        for issue in result.issues:
            log.warning("campaign %s: contacts row skipped: %s", self.name, issue)
        if c.amd.enabled and c.amd.asr and not self.asr_available:
            log.warning(
                "campaign %s: amd.asr is on but the deployment has no ASR: AMD uses timing only", self.name
            )
        now = ts(self.clock.now())
        added, resumed = self.state.import_campaign(self.loaded.source, result.contacts, result.issues, now)
        if resumed and self.state.status() == "done":
            self.state.set_status("running", now)
        for contact, attempt_id, call_id in self.state.open_attempts():
            # The INVITE may or may not have left: count the attempt as cancelled and schedule the contact by
            # the retry policy (cancelled: at once by default), as a new attempt.
            decision = c.retry.decide(
                Outcome.CANCELLED,
                self.state.counted_attempts(contact.id, contact.attempts),
                utc(now),
                c.window,
                contact.timezone,
            )
            next_at = ts(decision.next_attempt_at) if decision.next_attempt_at else None
            self.metrics.dial_attempts.inc(campaign=self.name, outcome=Outcome.CANCELLED.value)
            self.state.finish_attempt(
                attempt_id,
                contact.id,
                outcome=Outcome.CANCELLED.value,
                final=decision.final,
                next_at=next_at,
                now=now,
                event="cancelled",
                detail={"reason": "supervisor stopped during the attempt", "call_id": call_id},
            )
            log.warning(
                "campaign %s: attempt %d of %s was in flight when the last run stopped: cancelled, %s",
                self.name,
                contact.attempts,
                contact.number,
                decision.reason,
            )
        log.info(
            "campaign %s %s: %d contact(s) added, %d row(s) skipped, states %s",
            self.name,
            "resumed" if resumed else "created",
            added,
            len(result.issues),
            self.state.counts(),
        )

    # ------------------------------------------------------------------------------ loop

    async def run(self, stop: asyncio.Event) -> None:
        c = self.loaded.campaign
        while not stop.is_set():
            self._wake.clear()
            status = self.state.status()
            if status == "running":
                self._dial_due()
                if not self.on_answer_route and self.state.counts().keys() <= {"final"}:
                    self.state.set_status("done", ts(self.clock.now()))
                    log.info("campaign %s done: %s", self.name, self.state.outcome_counts())
                    return
                if self.exit_when_idle and not self.on_answer_route:
                    due = self.state.next_due_at()
                    if due is None or due > ts(self.clock.now()) + _IDLE_HORIZON_S:
                        log.info("campaign %s idle: %s", self.name, self.state.counts())
                        return
            elif status == "paused":
                self._cancel_ringing()
            delay = _IDLE_POLL_S
            assert self._bucket is not None
            if len(self.on_answer_route) < c.limits.concurrency:
                delay = min(delay, max(0.01, self._bucket.wait_time()))
            try:
                await asyncio.wait_for(self._wake.wait(), delay)
            except TimeoutError:
                pass
        # Stopping: cancel what still rings; answered calls end with the supervisor's shutdown.
        for out in list(self.on_answer_route.values()):
            log.info("campaign %s: stopping, cancelling %s", self.name, out.call_id)

    def _dial_due(self) -> None:
        c = self.loaded.campaign
        assert self._bucket is not None
        room = min(c.limits.concurrency - len(self.on_answer_route), self.free_slots())
        if room <= 0:
            return
        now_dt = self.clock.now()
        now = ts(now_dt)
        for contact in self.state.due(now, limit=max(room * 4, 16)):
            if room <= 0:
                return
            if not c.window.allows(now_dt, contact.timezone):
                until = c.window.next_allowed(now_dt, contact.timezone)
                self.state.defer(contact.id, ts(until), now)
                log.info("campaign %s: %s outside its window, next at %s", self.name, contact.number, until)
                continue
            capped_until = ts(c.window.next_allowed(next_local_day(now, contact.timezone), contact.timezone))
            cap = self.daily_cap
            # Blocked numbers are found before the CPS token is spent; the claim checks again atomically.
            block = self.state.screen(contact, now, cap=cap, capped_until=capped_until)
            if block is None:
                if not self._bucket.try_acquire():
                    return  # CPS: the loop comes back when the bucket has a token
                claim = self.state.claim(
                    contact, now, cap=cap, capped_until=capped_until, caller_id=c.caller_id
                )
                if isinstance(claim, Claim):
                    self._place(claim)
                    room -= 1
                    continue
                block = claim
            if block is not None:
                self._blocked(contact, block, capped_until)

    def _blocked(self, contact: ContactRow, block: Block, capped_until: float) -> None:
        self.metrics.dial_skipped.inc(campaign=self.name, outcome=block.outcome.value)
        later = "" if block.outcome is Outcome.SUPPRESSED else f", next try from {utc(capped_until)}"
        log.info(
            "campaign %s: %s not dialed: %s: %s%s",
            self.name,
            contact.number,
            block.outcome.value,
            block.reason,
            later,
        )

    def _cancel_ringing(self) -> None:
        """Paused: nothing new is dialed (the pass above), and calls not yet answered are cancelled, so a
        callee does not pick up a campaign that its operator has stopped. Answered calls run to their end."""
        for out in self.on_answer_route.values():
            if out.answered or out.cancelled_by_pause or out.worker < 0:
                continue
            out.cancelled_by_pause = True
            sent = self.send_to_worker(out.worker, f.CancelDial(out.call_id))
            log.info(
                "campaign %s paused: cancelling the call to %s (attempt %d, %s)",
                self.name,
                out.claim.contact.number,
                out.claim.attempt,
                "CANCEL sent" if sent else "its worker is gone",
            )

    def _place(self, claim: Claim) -> None:
        c = self.loaded.campaign
        contact = claim.contact
        variables = {**contact.variables, "name": contact.name, "number": contact.number}
        dial = f.Dial(
            call_id=claim.call_id,
            target=self.target_uri(contact.number, variables),
            caller_id=c.caller_id,
            ring_timeout_s=c.limits.ring_timeout_s,
            amd=_amd_dict(self.loaded, self.asr_available) if c.amd.enabled else None,
            variables=variables,
            campaign=self.name,
            attempt_id=claim.attempt_id,
        )
        message = c.voicemail.message if c.voicemail.action == "leave_message" else None
        out = OutboundCall(claim, dial, c.amd.enabled, message, self._answered_call_ended)
        out.disclosure = c.disclosure
        self.on_answer_route[dial.call_id] = out
        # The calls row exists from the INVITE on (the session of an answered call adds to it).
        self.state.store.create_call(
            "outbound",
            remote_uri=dial.target,
            call_id=dial.call_id,
            variables={"campaign": self.name, **variables},
        )
        worker = self.send_dial(dial)
        log.info(
            "campaign %s: attempt %d of %s (row %d) -> %s on worker %s",
            self.name,
            claim.attempt,
            contact.number,
            contact.row,
            dial.target,
            worker,
        )
        if worker is None:
            self._record(out, CallResult(event="transport_error"), {"reason": "no SIP worker available"})
            self.state.store.end_call(dial.call_id, Outcome.FAILED.value, reason="no SIP worker available")
        else:
            out.worker = worker

    def target_uri(self, number: str, variables: dict[str, str]) -> str:
        template = self.loaded.campaign.dial_uri or self.default_dial_uri
        return template.format(**{**variables, "number": number, "user": number.lstrip("+")})

    # ------------------------------------------------------------------------------ results

    def on_frame(self, frame: f.Frame) -> bool:
        """Dialer frames from the workers; True when the frame was one of ours."""
        if isinstance(frame, f.CallProgress):
            out = self.on_answer_route.get(frame.call_id)
            if out is not None and out.ringing_ms is None:
                out.ringing_ms = frame.t_ms
                log.info(
                    "campaign %s: %s ringing (%d after %d ms)",
                    self.name,
                    out.claim.contact.number,
                    frame.code,
                    frame.t_ms,
                )
            return out is not None
        if isinstance(frame, f.CallStarted):
            out = self.on_answer_route.get(frame.call_id)
            if out is not None:
                out.answered = True  # from now on a pause lets the call run to its end
            return False  # the supervisor still opens the call's session
        if isinstance(frame, f.DialEnded):
            out = self.on_answer_route.get(frame.call_id)
            if out is None:
                return False
            out.ringing_ms = frame.ringing_ms if frame.ringing_ms is not None else out.ringing_ms
            if out.cancelled_by_pause and frame.event == "cancelled":
                self._release(out, frame)
                return True
            if frame.event == "no_slot":
                self._no_slot(out, frame)
                return True
            event = frame.event if frame.event in ("ring_timeout", "transport_error", "cancelled") else None
            code = frame.code if 300 <= frame.code <= 699 else None
            if event is None and code is None:
                event = "transport_error"  # no final response at all (PJSIP reports its own 408/503)
            result = CallResult(sip_code=code, event=event)  # type: ignore[arg-type]
            outcome = self._record(
                out, result, {"reason": frame.reason, "code": frame.code, "duration_ms": frame.duration_ms}
            )
            self.state.store.end_call(
                frame.call_id, outcome.value, reason=frame.event or frame.reason, sip_status=frame.code
            )
            return True
        return False

    def _release(self, out: OutboundCall, frame: f.DialEnded) -> None:
        self.on_answer_route.pop(out.call_id, None)
        self.metrics.dial_attempts.inc(campaign=self.name, outcome=Outcome.CANCELLED.value)
        contact = out.claim.contact
        self.state.release(
            out.claim.attempt_id,
            contact.id,
            next_at=contact.next_at,
            now=ts(self.clock.now()),
            ringing_ms=out.ringing_ms,
            detail={
                "reason": "campaign paused while ringing",
                "code": frame.code,
                "duration_ms": frame.duration_ms,
            },
        )
        self.state.store.end_call(
            frame.call_id, Outcome.CANCELLED.value, reason="campaign paused", sip_status=frame.code
        )
        # Logged after the transaction: tests and operators may read the store once they see this line.
        log.info(
            "campaign %s: %s attempt %d recorded: cancelled (paused while ringing; pending, not counted)",
            self.name,
            contact.number,
            out.claim.attempt,
        )
        self._wake.set()

    def _no_slot(self, out: OutboundCall, frame: f.DialEnded) -> None:
        """The worker's PJSUA refused the INVITE locally (PJ_ETOOMANY: its call slots are all held, e.g. by
        a call whose BYE went unanswered, which the supervisor no longer counts): nothing was sent, so it is
        neither a try of the contact nor `failed`. The contact goes back to the queue, due again after
        _NO_SLOT_RETRY_S (by then a slot may be free here, or another worker takes it)."""
        self.on_answer_route.pop(out.call_id, None)
        contact = out.claim.contact
        now = ts(self.clock.now())
        self.state.release(
            out.claim.attempt_id,
            contact.id,
            next_at=now + _NO_SLOT_RETRY_S,
            now=now,
            detail={"reason": frame.reason, "worker": out.worker},
            event="no_slot",
        )
        self.state.store.end_call(frame.call_id, Outcome.CANCELLED.value, reason=f"no_slot: {frame.reason}")
        log.warning(
            "campaign %s: %s attempt %d recorded: cancelled (no free call slot on worker %d, not counted;"
            " due again in %.0f s)",
            self.name,
            contact.number,
            out.claim.attempt,
            out.worker,
            _NO_SLOT_RETRY_S,
        )
        self._wake.set()

    def lost(self, call_id: str, reason: str) -> None:
        """The worker holding a ringing call died."""
        out = self.on_answer_route.get(call_id)
        if out is not None:
            self._record(out, CallResult(event="transport_error"), {"reason": reason})
            self.state.store.end_call(call_id, Outcome.FAILED.value, reason=reason)

    def outbound(self, call_id: str) -> OutboundCall | None:
        return self.on_answer_route.get(call_id)

    def _answered_call_ended(self, out: OutboundCall, failure: str | None) -> None:
        if failure is not None and out.amd_kind is None:
            result = CallResult(event="no_media")
        else:
            result = CallResult(
                sip_code=200,
                amd=out.amd_kind,
                message_delivered=out.message_delivered,
                opted_out=out.opted_out,
            )
        self._record(out, result, {"failure": failure} if failure else {})

    def _record(self, out: OutboundCall, result: CallResult, detail: dict[str, Any]) -> Outcome:
        self.on_answer_route.pop(out.call_id, None)
        c = self.loaded.campaign
        outcome = classify(result)
        now_dt = self.clock.now()
        contact = out.claim.contact
        attempts = self.state.counted_attempts(contact.id, out.claim.attempt)
        decision = c.retry.decide(outcome, attempts, now_dt, c.window, contact.timezone)
        next_at = ts(decision.next_attempt_at) if decision.next_attempt_at else None
        self.metrics.dial_attempts.inc(campaign=self.name, outcome=outcome.value)
        self.state.finish_attempt(
            out.claim.attempt_id,
            contact.id,
            outcome=outcome.value,
            final=decision.final,
            next_at=next_at,
            now=ts(now_dt),
            sip_code=result.sip_code,
            event=result.event,
            amd=out.amd_kind,
            ringing_ms=out.ringing_ms,
            detail={**detail, "decision": decision.reason},
        )
        # Logged after the transaction: tests and operators may read the store once they see this line.
        log.info(
            "campaign %s: %s attempt %d recorded: %s (%s)",
            self.name,
            contact.number,
            out.claim.attempt,
            outcome.value,
            decision.reason,
        )
        self._wake.set()
        return outcome


def _amd_dict(loaded: LoadedCampaign, asr_available: bool) -> dict[str, Any]:
    """AmdSettings as JSON for the Dial frame (the worker rebuilds it: sipbridge/sip/worker.py)."""
    return dataclasses.asdict(loaded.campaign.amd.to_settings(asr_available))
