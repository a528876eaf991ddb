"""`sipbridge calls export`: every call with its agent results, as CSV (one row per call) or JSON.

CSV has fixed columns, then one `results.<field>` column per captured field seen in any call (sorted), so a
spreadsheet gets one column per answer (employment confirmed, start date, title ...). Non-scalar values are
written as JSON. JSON output is a list of objects with `results` kept as a nested object.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from typing import Any, Literal

from sipbridge.store import CallRecord, Store

ExportFormat = Literal["csv", "json"]

_FIXED = (
    "id",
    "direction",
    "remote_uri",
    "created_at",
    "answered_at",
    "ended_at",
    "duration_s",
    "outcome",
    "reason",
    "agent",
    "agent_outcome",
)


def _iso(t: float | None) -> str | None:
    return None if t is None else dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="seconds")


def call_row(call: CallRecord) -> dict[str, Any]:
    start = call.answered_at or call.created_at
    return {
        "id": call.id,
        "direction": call.direction,
        "remote_uri": call.remote_uri,
        "created_at": _iso(call.created_at),
        "answered_at": _iso(call.answered_at),
        "ended_at": _iso(call.ended_at),
        "duration_s": None if call.ended_at is None else round(call.ended_at - start, 3),
        "outcome": call.outcome,
        "reason": call.reason,
        "agent": call.agent,
        "agent_outcome": call.agent_outcome,
        "variables": call.variables,
        "results": call.results,
    }


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str | int | float | bool):
        return str(value)
    return json.dumps(value, sort_keys=True)


def export_calls(store: Store, fmt: ExportFormat) -> str:
    rows = [call_row(call) for call in store.all_calls()]
    if fmt == "json":
        return json.dumps(rows, indent=2) + "\n"
    fields = sorted({name for row in rows for name in row["results"]})
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*_FIXED, *(f"results.{name}" for name in fields)])
    for row in rows:
        writer.writerow(
            [_cell(row[c]) for c in _FIXED] + [_cell(row["results"].get(name)) for name in fields]
        )
    return out.getvalue()
