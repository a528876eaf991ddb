"""How a call's end maps to its recorded outcome: one table, tested as data."""

from __future__ import annotations

# Who ended the call (CallEnded.by) -> outcome, when nothing failed on our side.
OUTCOME_BY_ENDER: dict[str, str] = {
    "remote": "completed",  # the caller hung up
    "local": "completed",  # the agent (or the operator) hung up
    "watchdog": "no_media",  # no RTP for media.dead_media_timeout_s
    "shutdown": "interrupted",  # our own shutdown (SIGTERM, `sipbridge run` stopping) cut the call
    "error": "failed",
    "no_ack": "failed",  # our 200 was never ACKed (the caller cannot hear us, or never existed)
}

# INVITEs refused before a call existed (CallRejected.code) -> outcome. The guard's stateless refusals are
# not calls at all: they are counted (sipbridge_sip_requests_refused_total) and stored aggregated.
OUTCOME_BY_REFUSAL: dict[int, str] = {
    403: "rejected",  # source outside sip.allowed_sources
    488: "not_acceptable",  # no usable media in the offer (no common codec, unusable address)
    486: "busy",  # the worker had no free call
    503: "busy",
    487: "cancelled",  # the caller gave up before the answer
}


def refusal_outcome(code: int) -> str:
    return OUTCOME_BY_REFUSAL.get(code, "rejected")


def call_outcome(by: str, failure: str | None) -> str:
    """`failed` whenever something on our side broke (engine, agent task, worker), else by who ended it."""
    if failure is not None:
        return "failed"
    return OUTCOME_BY_ENDER.get(by, "failed")
