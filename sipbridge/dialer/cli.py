"""`sipbridge dial` helpers and `sipbridge campaign status|pause|resume|export`.

The campaign commands work on the SQLite database alone, so they act on a running `sipbridge dial` from
another shell: pause/resume flip `campaigns.status`, which the running dialer reads before each pass (on
pause it also CANCELs the calls still ringing; answered calls run to their end).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from sipbridge.config import LoadedConfig
from sipbridge.dialer.campaign import LoadedCampaign, load_campaign
from sipbridge.dialer.health import caller_id_health
from sipbridge.dialer.live import Clock
from sipbridge.dialer.state import CampaignState
from sipbridge.store import open_existing

EXIT_OK, EXIT_FAILURE = 0, 1

_EXPORT_COLUMNS = (
    "number",
    "name",
    "attempt",
    "call_id",
    "started_at",
    "ended_at",
    "ringing_ms",
    "sip_code",
    "event",
    "amd",
    "outcome",
    "detail",
)


def load_for_dial(path: str) -> LoadedCampaign:
    return load_campaign(path)


def dial_overrides(campaign: LoadedCampaign) -> list[str]:
    """The campaign's agent replaces the deployment's for this supervisor."""
    agent = campaign.campaign.agent
    out = [f"agent.kind={agent.kind}"]
    if agent.kind == "script" and campaign.flow_path is not None:
        out.append(f"agent.script.flow={campaign.flow_path}")
    return out


def clock_from(now: str | None) -> Clock:
    if not now:
        return Clock()
    start = datetime.fromisoformat(now.replace("Z", "+00:00"))
    if start.tzinfo is None:
        start = start.replace(tzinfo=UTC)
    return Clock.starting_at(start.astimezone(UTC))


def campaign_command(args: argparse.Namespace, loaded: LoadedConfig) -> int:
    store = open_existing(args.db or loaded.config.storage.database)
    path = store.where  # StoreError (no database there) is reported by sipbridge.cli.main
    try:
        state = CampaignState(store, args.name)
        status = state.status()
        if status is None:
            print(f"no campaign named {args.name!r} in {path}", file=sys.stderr)
            return EXIT_FAILURE
        action = args.campaign_command
        if action in ("pause", "resume"):
            if status == "done":
                print(f"campaign {args.name} is done", file=sys.stderr)
                return EXIT_FAILURE
            state.set_status("paused" if action == "pause" else "running", time.time())
            print(f"campaign {args.name}: {'paused' if action == 'pause' else 'running'}")
            return EXIT_OK
        if action == "status":
            report = {
                "campaign": args.name,
                "status": status,
                "contacts": state.counts(),
                "attempts": state.outcome_counts(),
                "contact_outcomes": state.contact_outcomes(),  # suppressed/capped have no attempt row
                "caller_ids": {
                    h.caller_id: h.report()
                    for h in caller_id_health(
                        store, short_call_s=loaded.config.dialer.short_call_s, campaign=args.name
                    )
                },
            }
            print(json.dumps(report, indent=2))
            return EXIT_OK
        rows = state.attempts()
        if args.format == "json":
            text = json.dumps([{k: r.get(k) for k in _EXPORT_COLUMNS} for r in rows], indent=2) + "\n"
        else:
            buf = io.StringIO()
            writer = csv.writer(buf)
            writer.writerow(_EXPORT_COLUMNS)
            for r in rows:
                writer.writerow([r.get(k) for k in _EXPORT_COLUMNS])
            text = buf.getvalue()
        if args.out:
            Path(args.out).write_text(text, encoding="utf-8")
        else:
            sys.stdout.write(text)
        return EXIT_OK
    finally:
        store.close()
