"""How a call's end maps to its recorded outcome: one table, tested as data."""

from __future__ import annotations

# Who ended the call (CallEnded.by) -> outcome, when nothing failed on our side.
OUTCOME_BY_ENDER: dict[str, str] = {
    "remote": "completed",  # the caller hung up
    "local": "completed",  # the agent (or the operator) hung up
    "watchdog": "no_media",  # no RTP for media.dead_media_timeout_s
    "shutdown": "interrupted",  # our own shutdown (SIGTERM, `sipbridge run` stopping) cut the call
    "error": "failed",
}


def call_outcome(by: str, failure: str | None) -> str:
    """`failed` whenever something on our side broke (engine, agent task, worker), else by who ended it."""
    if failure is not None:
        return "failed"
    return OUTCOME_BY_ENDER.get(by, "failed")
