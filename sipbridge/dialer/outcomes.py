"""How an outbound call ended: one table from SIP final responses (and local events) to campaign outcomes.

The table is data (``SIP_OUTCOMES``) so it can be read, documented and tested code by code. Codes not in it
fall back by class (``CLASS_OUTCOMES``): an unknown 5xx is congestion (the carrier or callee side is
overloaded, worth retrying), an unknown 6xx a global rejection, an unknown 4xx a failure of the request.
Answered calls (2xx) are not in the table: what happens after the answer (AMD, the voicemail message) decides
between answered-human, answered-machine and voicemail-message-left (``answered_outcome``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Literal

__all__ = [
    "CLASS_OUTCOMES",
    "EVENT_OUTCOMES",
    "SIP_OUTCOMES",
    "CallEvent",
    "CallResult",
    "Outcome",
    "answered_outcome",
    "classify",
    "outcome_for_event",
    "outcome_for_sip",
]


class Outcome(StrEnum):
    ANSWERED_HUMAN = "answered-human"
    ANSWERED_MACHINE = "answered-machine"  # a machine answered and no message was left
    VOICEMAIL_LEFT = "voicemail-message-left"
    BUSY = "busy"
    NO_ANSWER = "no-answer"
    REJECTED = "rejected"
    INVALID_NUMBER = "invalid-number"
    CONGESTION = "congestion"
    FAILED = "failed"
    CANCELLED = "cancelled"
    # Compliance (issue 20, docs/DIALER.md "Compliance"): never dialed / stopped by the callee.
    SUPPRESSED = "suppressed"  # the number is on the do-not-call list: not dialed, final
    CAPPED = "capped"  # the number's attempts today (all campaigns) reached the cap: not dialed, next day
    OPTED_OUT = "opted-out"  # the callee asked not to be called: on the DNC list now, final


# Final responses to our INVITE. RFC 3261 §21 (and RFC 6910 / 8197 for 607 / 608).
SIP_OUTCOMES: Mapping[int, Outcome] = MappingProxyType(
    {
        # 3xx: we do not follow redirects for campaign calls (the trunk should); the attempt failed.
        300: Outcome.FAILED,  # Multiple Choices
        301: Outcome.FAILED,  # Moved Permanently
        302: Outcome.FAILED,  # Moved Temporarily
        305: Outcome.FAILED,  # Use Proxy
        380: Outcome.FAILED,  # Alternative Service
        400: Outcome.FAILED,  # Bad Request: our INVITE is wrong, retrying will not help soon
        401: Outcome.FAILED,  # Unauthorized: trunk credentials
        402: Outcome.FAILED,  # Payment Required: trunk account
        403: Outcome.REJECTED,  # Forbidden: carrier or callee refuses the call
        404: Outcome.INVALID_NUMBER,  # Not Found
        405: Outcome.FAILED,  # Method Not Allowed
        407: Outcome.FAILED,  # Proxy Authentication Required: trunk credentials
        408: Outcome.NO_ANSWER,  # Request Timeout: nobody answered in time
        410: Outcome.INVALID_NUMBER,  # Gone: the number was disconnected
        413: Outcome.FAILED,  # Request Entity Too Large
        414: Outcome.FAILED,  # Request-URI Too Long
        415: Outcome.FAILED,  # Unsupported Media Type
        416: Outcome.INVALID_NUMBER,  # Unsupported URI Scheme
        420: Outcome.FAILED,  # Bad Extension
        421: Outcome.FAILED,  # Extension Required
        423: Outcome.FAILED,  # Interval Too Brief
        480: Outcome.NO_ANSWER,  # Temporarily Unavailable: phone off, out of coverage, did not pick up
        481: Outcome.FAILED,  # Call/Transaction Does Not Exist
        482: Outcome.FAILED,  # Loop Detected
        483: Outcome.FAILED,  # Too Many Hops
        484: Outcome.INVALID_NUMBER,  # Address Incomplete
        485: Outcome.INVALID_NUMBER,  # Ambiguous
        486: Outcome.BUSY,  # Busy Here
        487: Outcome.CANCELLED,  # Request Terminated: the answer to our CANCEL
        488: Outcome.FAILED,  # Not Acceptable Here: no common codec
        491: Outcome.FAILED,  # Request Pending
        493: Outcome.FAILED,  # Undecipherable
        500: Outcome.CONGESTION,  # Server Internal Error
        501: Outcome.CONGESTION,  # Not Implemented
        502: Outcome.CONGESTION,  # Bad Gateway
        503: Outcome.CONGESTION,  # Service Unavailable: overload or our CPS limit at the carrier
        504: Outcome.CONGESTION,  # Server Time-out
        505: Outcome.FAILED,  # Version Not Supported: retrying will not help
        513: Outcome.FAILED,  # Message Too Large
        600: Outcome.BUSY,  # Busy Everywhere
        603: Outcome.REJECTED,  # Decline: the callee refused the call
        604: Outcome.INVALID_NUMBER,  # Does Not Exist Anywhere
        606: Outcome.FAILED,  # Not Acceptable: no common media anywhere
        607: Outcome.REJECTED,  # Unwanted (RFC 8197): the callee marked us as unwanted
        608: Outcome.REJECTED,  # Rejected (RFC 8688): an intermediary (call analytics) blocked us
    }
)

# Fallback for codes not in SIP_OUTCOMES, by response class.
CLASS_OUTCOMES: Mapping[int, Outcome] = MappingProxyType(
    {3: Outcome.FAILED, 4: Outcome.FAILED, 5: Outcome.CONGESTION, 6: Outcome.REJECTED}
)

# Attempts that end without a final response from the far end.
CallEvent = Literal["ring_timeout", "transport_error", "cancelled", "no_media"]
EVENT_OUTCOMES: Mapping[str, Outcome] = MappingProxyType(
    {
        "ring_timeout": Outcome.NO_ANSWER,  # we CANCELled after dialer.ring_timeout_s of ringing
        "transport_error": Outcome.FAILED,  # no route, DNS, TCP/TLS failure, no response to INVITE at all
        "cancelled": Outcome.CANCELLED,  # campaign paused/stopped or supervisor shutdown while ringing
        "no_media": Outcome.FAILED,  # answered but no RTP ever arrived (media.dead_media_timeout_s)
    }
)


def outcome_for_sip(code: int) -> Outcome:
    """Outcome of a failed attempt from the final SIP response code (3xx-6xx)."""
    if isinstance(code, bool) or not isinstance(code, int):
        raise TypeError(f"SIP status code must be an int, got {code!r}")
    if not 100 <= code <= 699:
        raise ValueError(f"{code} is not a SIP status code (100-699)")
    if code < 200:
        raise ValueError(f"{code} is provisional, not a final response")
    if code < 300:
        raise ValueError(f"{code} means the call was answered: use answered_outcome() with the AMD result")
    return SIP_OUTCOMES.get(code, CLASS_OUTCOMES[code // 100])


def outcome_for_event(event: str) -> Outcome:
    try:
        return EVENT_OUTCOMES[event]
    except KeyError:
        raise ValueError(
            f"unknown call event {event!r}; expected one of {', '.join(EVENT_OUTCOMES)}"
        ) from None


def answered_outcome(amd: str | None, message_delivered: bool = False) -> Outcome:
    """After a 2xx: ``amd`` is the AMD decision kind (None = AMD off). not_sure is treated as a person: the
    flow talks and finds out, which is the polite error (a machine records a short conversation; a person
    hearing a voicemail message is the worse mistake)."""
    if amd in (None, "human", "not_sure"):
        return Outcome.ANSWERED_HUMAN
    if amd == "machine":
        return Outcome.VOICEMAIL_LEFT if message_delivered else Outcome.ANSWERED_MACHINE
    raise ValueError(f"unknown AMD decision {amd!r}; expected 'human', 'machine' or 'not_sure'")


@dataclass(frozen=True)
class CallResult:
    """What the call path knows when an attempt ends; exactly one of ``sip_code`` / ``event`` decides."""

    sip_code: int | None = None  # final response to our INVITE (2xx when answered)
    event: CallEvent | None = None  # set when we ended the attempt ourselves or the transport failed
    amd: str | None = None  # AMD decision kind for answered calls
    message_delivered: bool = False  # the voicemail message was played to the end
    opted_out: bool = False  # answered, and the callee asked not to be called again


def classify(result: CallResult) -> Outcome:
    """One entry point: a local event wins over the code (our ring-timeout CANCEL also gets a 487)."""
    if result.event is not None:
        return outcome_for_event(result.event)
    if result.sip_code is None:
        raise ValueError("a call result needs a SIP code or an event")
    if 200 <= result.sip_code < 300 and result.opted_out:
        return Outcome.OPTED_OUT
    if 200 <= result.sip_code < 300:
        return answered_outcome(result.amd, result.message_delivered)
    return outcome_for_sip(result.sip_code)
