"""The `sipbridge` command: one entry point, one subcommand per job.

Exit codes: 0 success, 1 runtime failure (port in use, database unusable, ...), 2 bad config or usage.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

from sipbridge import __version__
from sipbridge.config import ConfigError, LoadedConfig, dump_masked_yaml, load_config, schema_markdown
from sipbridge.dialer import dnc_cli
from sipbridge.logs import setup_logging
from sipbridge.store import StoreError
from sipbridge.tools import call as call_tool
from sipbridge.tools import doctor as doctor_tool

log = logging.getLogger("sipbridge")

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2

# Subcommands that live in a module of their own: each has add_parser(subparsers) and run(args) -> exit code.
_TOOLS = {"call": call_tool, "doctor": doctor_tool, "dnc": dnc_cli}


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", "-c", metavar="FILE", help="YAML config file (default: the embedded config/default.yaml)"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="override one dotted key, e.g. --set http.port=9000 (repeatable; validated like the file)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sipbridge", description="Self-hosted voice for phone calls: SIP in, Dia2 speech out."
    )
    parser.add_argument("--version", action="version", version=f"sipbridge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the supervisor (SIP workers, engine, HTTP API, store)")
    _add_config_args(run)

    check = sub.add_parser(
        "check-config", help="validate a config; print it resolved with secrets masked, or the errors"
    )
    check.add_argument("file", nargs="?", metavar="FILE", help="config file (same as --config)")
    _add_config_args(check)

    sub.add_parser("config-reference", help="print the reference of every config key (Markdown)")

    dial = sub.add_parser(
        "dial", help="run an outbound campaign in a supervisor of its own (exits when the campaign is done)"
    )
    dial.add_argument("campaign_file", metavar="CAMPAIGN.yaml", help="campaign file (docs/DIALER.md)")
    _add_config_args(dial)
    dial.add_argument(
        "--now",
        metavar="ISO",
        help="pretend the wall clock starts at this UTC time (calling windows, retries): tests, drills",
    )
    dial.add_argument(
        "--exit-when-idle",
        action="store_true",
        help="exit once nothing is due now and no call is up (retries stay scheduled in the database)",
    )

    campaign = sub.add_parser("campaign", help="inspect and control campaigns stored in the database")
    campaign_sub = campaign.add_subparsers(dest="campaign_command", required=True, metavar="ACTION")
    for action, text in (
        ("status", "contacts per state, attempts per outcome"),
        ("pause", "stop placing new calls (calls up now finish)"),
        ("resume", "place calls again"),
        ("export", "one row per attempt (CSV or JSON)"),
    ):
        p = campaign_sub.add_parser(action, help=text)
        p.add_argument("name", help="campaign name")
        _add_config_args(p)
        p.add_argument(
            "--db",
            metavar="FILE|URL",
            help="SQLite file or postgresql:// URL (default: the config's storage.url or sqlite_path)",
        )
        if action == "export":
            p.add_argument("--format", choices=("csv", "json"), default="csv", help="output format (csv)")
            p.add_argument("--out", "-o", metavar="FILE", help="write here instead of stdout")

    calls = sub.add_parser("calls", help="recorded calls")
    calls_sub = calls.add_subparsers(dest="calls_command", required=True, metavar="ACTION")
    export = calls_sub.add_parser(
        "export", help="every call with its agent results (outcome, captured fields)"
    )
    _add_config_args(export)
    export.add_argument("--format", choices=("csv", "json"), default="csv", help="output format (csv)")
    export.add_argument("--out", "-o", metavar="FILE", help="write here instead of stdout")
    export.add_argument(
        "--db",
        metavar="FILE|URL",
        help="SQLite file or postgresql:// URL (default: the config's storage.url or sqlite_path)",
    )
    for tool in _TOOLS.values():
        tool.add_parser(sub)
    flow = sub.add_parser("flow", help="check a conversation flow without a call")
    flow_sub = flow.add_subparsers(dest="flow_command", required=True, metavar="ACTION")
    flow_test = flow_sub.add_parser(
        "test", help="run a flow on typed answers: each step, the intent found, the results as JSON"
    )
    flow_test.add_argument("flow_file", metavar="FLOW.yaml", help="state flow file (docs/AGENTS.md)")
    flow_test.add_argument(
        "--answers", default="", help='caller answers separated by "|"; "(silence)" and "(dtmf 0)" too'
    )
    flow_test.add_argument("--var", action="append", metavar="NAME=VALUE", help="call variable (repeatable)")
    flow_test.add_argument("--json", action="store_true", help="print the whole run as one JSON document")

    from sipbridge.text import cli as text_cli

    text_cli.add_parser(sub, _add_config_args)
    return parser


def _export_calls(args: argparse.Namespace, loaded: LoadedConfig) -> int:
    from pathlib import Path

    from sipbridge.export import export_calls
    from sipbridge.store import open_existing

    store = open_existing(args.db or loaded.config.storage.database)
    try:
        text = export_calls(store, args.format)
    finally:
        store.close()
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return EXIT_OK


def _load(args: argparse.Namespace) -> LoadedConfig:
    return load_config(getattr(args, "file", None) or args.config, args.overrides)


def _print_config_errors(error: ConfigError) -> None:
    print(
        f"config invalid ({len(error.issues)} problem{'s' if len(error.issues) != 1 else ''}):",
        file=sys.stderr,
    )
    for issue in error.issues:
        print(f"  {issue}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)

    if args.command in _TOOLS:  # they load their config themselves and choose their own exit codes
        return int(_TOOLS[args.command].run(args))

    if args.command == "config-reference":
        sys.stdout.write(schema_markdown())
        return EXIT_OK

    if args.command == "flow":
        from sipbridge.agents.flowtest import flow_test_command

        return flow_test_command(args)

    if args.command == "check-config" and args.file and args.config:
        parser.error("give the config file either as FILE or as --config, not both")

    campaign = None
    if args.command == "dial":
        from sipbridge.dialer.cli import dial_overrides, load_for_dial

        try:
            campaign = load_for_dial(args.campaign_file)
            args.overrides = [*dial_overrides(campaign), *args.overrides]
            loaded = _load(args)
            if loaded.config.sip.max_calls < campaign.campaign.limits.concurrency:
                # Enough workers for the campaign's concurrency (4 calls per worker process).
                args.overrides.append(f"sip.max_calls={campaign.campaign.limits.concurrency}")
        except ConfigError as error:
            _print_config_errors(error)
            return EXIT_CONFIG
    try:
        loaded = _load(args)
    except ConfigError as error:
        _print_config_errors(error)
        return EXIT_CONFIG

    if args.command in ("calls", "campaign"):
        from sipbridge.dialer.cli import campaign_command

        command = _export_calls if args.command == "calls" else campaign_command
        try:
            return command(args, loaded)
        except StoreError as exc:  # e.g. no database at the path: the commands never create one
            print(str(exc), file=sys.stderr)
            return EXIT_FAILURE

    if args.command == "normalize":
        from sipbridge.text import cli as text_cli

        return text_cli.run(args, loaded)

    if args.command == "check-config":
        sys.stdout.write(f"# {loaded.source}: valid\n")
        sys.stdout.write(dump_masked_yaml(loaded.config))
        return EXIT_OK

    setup_logging(loaded.config.logging.level, json_format=loaded.config.logging.json_format)
    # imported late: uvicorn/fastapi/pjsua2 are only needed to run
    from sipbridge.supervisor import Supervisor, SupervisorStartupError

    supervisor = Supervisor(loaded)
    if campaign is not None:
        from sipbridge.dialer.cli import clock_from

        supervisor.campaign = campaign
        supervisor.clock = clock_from(args.now)
        supervisor.exit_when_idle = args.exit_when_idle
    try:
        asyncio.run(supervisor.run())
    except (StoreError, SupervisorStartupError) as exc:
        log.error("%s", exc)
        return EXIT_FAILURE
    except OSError as exc:
        log.error("cannot start: %s", exc)
        return EXIT_FAILURE
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
