"""Caller-ID health: how often calls from each caller ID are answered, and how often answered ones are short.

Carriers' call analytics label a number "spam likely" from exactly these signals: people stop picking up
(answer rate falls) and those who do hang up at once (short calls rise). A campaign that sees either move
should rest or replace the number before the label lands. Read from the attempts (each keeps the caller ID
it was placed with, schema 5) and their `calls` rows: `/metrics` shows the last `dialer.caller_id_window_h`
hours over all campaigns, `campaign status` the campaign's whole history.

* attempts: ended attempts, less those we cancelled ourselves (pause, shutdown): they say nothing about
  the callee;
* answered: attempts with a 2xx (a person or a machine picked up);
* short: answered calls that lasted under `dialer.short_call_s` from answer to hang-up.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sipbridge.config import DialerConfig
from sipbridge.metrics import Metrics
from sipbridge.store import Store

__all__ = ["CallerIdHealth", "add_caller_id_gauges", "caller_id_health"]


@dataclass(frozen=True)
class CallerIdHealth:
    caller_id: str
    attempts: int
    answered: int
    short: int

    @property
    def answer_rate(self) -> float:
        return self.answered / self.attempts if self.attempts else 0.0

    @property
    def short_call_rate(self) -> float:
        return self.short / self.answered if self.answered else 0.0

    def report(self) -> dict[str, Any]:
        return {
            "attempts": self.attempts,
            "answered": self.answered,
            "answer_rate": round(self.answer_rate, 4),
            "short_calls": self.short,
            "short_call_rate": round(self.short_call_rate, 4),
        }


def caller_id_health(
    store: Store, *, short_call_s: float, since: float | None = None, campaign: str | None = None
) -> list[CallerIdHealth]:
    """One entry per caller ID with attempts that ended since `since` (None: ever), of `campaign` (None:
    all), ordered by caller ID."""
    # CASE rather than SUM(condition): PostgreSQL does not add booleans. The campaign filter is left out
    # rather than bound as NULL (PostgreSQL cannot type a bare `? IS NULL`).
    where_campaign, params = (" AND a.campaign = ?", (campaign,)) if campaign is not None else ("", ())
    rows = store.query(
        "SELECT a.caller_id AS caller_id, COUNT(*) AS attempts,"
        " SUM(CASE WHEN a.sip_code BETWEEN 200 AND 299 THEN 1 ELSE 0 END) AS answered,"
        " SUM(CASE WHEN a.sip_code BETWEEN 200 AND 299 AND c.answered_at IS NOT NULL"
        "     AND c.ended_at IS NOT NULL AND c.ended_at - c.answered_at < ? THEN 1 ELSE 0 END) AS short"
        " FROM attempts a LEFT JOIN calls c ON c.id = a.call_id"
        " WHERE a.caller_id IS NOT NULL AND a.ended_at IS NOT NULL AND a.outcome != 'cancelled'"
        " AND a.started_at >= ?" + where_campaign + " GROUP BY a.caller_id ORDER BY a.caller_id",
        (short_call_s, since if since is not None else float("-inf"), *params),
    )
    return [
        CallerIdHealth(r["caller_id"], int(r["attempts"]), int(r["answered"] or 0), int(r["short"] or 0))
        for r in rows
    ]


def add_caller_id_gauges(
    metrics: Metrics, store: Callable[[], Store | None], config: DialerConfig, clock: Callable[[], float]
) -> None:
    """`sipbridge_caller_id_{attempts,answer_rate,short_call_rate}{caller_id}` over the last
    `dialer.caller_id_window_h` hours, read from the store at each scrape."""

    def read(value: Callable[[CallerIdHealth], float]) -> Callable[[], dict[tuple[str, ...], float]]:
        def sample() -> dict[tuple[str, ...], float]:
            db = store()
            if db is None:
                return {}
            since = clock() - config.caller_id_window_h * 3600
            rows = caller_id_health(db, short_call_s=config.short_call_s, since=since)
            return {(h.caller_id,): value(h) for h in rows}

        return sample

    window = f"last {config.caller_id_window_h:g} h (dialer.caller_id_window_h)"
    for name, what, value in (
        ("attempts", "Ended outbound attempts", lambda h: h.attempts),
        ("answer_rate", "Share of attempts answered (2xx)", lambda h: h.answer_rate),
        (
            "short_call_rate",
            "Share of answered calls shorter than dialer.short_call_s",
            lambda h: h.short_call_rate,
        ),
    ):
        metrics.labelled_gauge(
            f"sipbridge_caller_id_{name}", f"{what}, per caller ID, {window}.", ("caller_id",), read(value)
        )
