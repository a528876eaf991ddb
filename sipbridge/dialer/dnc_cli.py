"""`sipbridge dnc add NUMBER [--reason R] | remove NUMBER | list | import FILE.csv`: the do-not-call list.

Works on the database alone (the config's `storage.url` or `storage.sqlite_path`, or `--db`), like
`campaign`: a running `sipbridge dial` sees a change at its next claim. `add` and `import` create the
database if there is none yet (a list is often loaded before the first campaign);
`remove` and `list` never do.
Exit codes: 0 done, 1 a number or a row was refused (the valid rows of an import are kept), 2 bad config.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from sipbridge.config import ConfigError, load_config
from sipbridge.dialer.numbers import NumberError
from sipbridge.dialer.suppression import DncList, parse_number
from sipbridge.store import Store, StoreError, open_existing
from sipbridge.store_dialect import is_url

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2


def add_parser(sub: Any) -> None:
    p = sub.add_parser("dnc", help="the do-not-call list: numbers never dialed by any campaign")
    actions = p.add_subparsers(dest="dnc_command", required=True, metavar="ACTION")
    add = actions.add_parser("add", help="put a number on the list")
    add.add_argument("number", help="E.164 (+14155550100), or national with --region")
    add.add_argument("--reason", "-r", default="", help="why (kept with the entry, at most 200 characters)")
    remove = actions.add_parser("remove", help="take a number off the list")
    remove.add_argument("number")
    listing = actions.add_parser("list", help="every number on the list")
    listing.add_argument("--format", choices=("text", "json"), default="text")
    imp = actions.add_parser("import", help="numbers from a CSV (first column, or the 'number' column)")
    imp.add_argument("file", metavar="FILE.csv")
    for action in (add, remove, listing, imp):
        action.add_argument("--config", "-c", metavar="FILE", help="YAML config file (default: embedded)")
        action.add_argument("--set", dest="overrides", metavar="KEY=VALUE", action="append", default=[])
        action.add_argument(
            "--db", metavar="FILE", help="SQLite file or postgresql:// URL (default: storage.url/sqlite_path)"
        )
        if action is not listing:
            action.add_argument("--region", metavar="CC", help="ISO country for numbers written nationally")


def run(args: argparse.Namespace) -> int:
    path: Path | str
    if args.db:
        path = args.db if is_url(args.db) else Path(args.db)
    else:
        try:
            path = load_config(args.config, args.overrides).config.storage.database
        except ConfigError as error:
            for issue in error.issues:
                print(f"config invalid: {issue}", file=sys.stderr)
            return EXIT_CONFIG
    try:
        store = Store(path) if args.dnc_command in ("add", "import") else open_existing(path)
    except StoreError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_FAILURE
    try:
        return _ACTIONS[args.dnc_command](DncList(store), args)
    finally:
        store.close()


def _number(args: argparse.Namespace) -> str | None:
    try:
        return parse_number(args.number, getattr(args, "region", None))
    except NumberError as exc:
        print(f"not a dialable number: {exc}", file=sys.stderr)
        return None


def _add(dnc: DncList, args: argparse.Namespace) -> int:
    number = _number(args)
    if number is None:
        return EXIT_FAILURE
    try:
        added = dnc.add(number, args.reason, "cli", now=time.time())
    except ValueError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_FAILURE
    print(f"{number}: {'added to' if added else 'already on'} the do-not-call list")
    return EXIT_OK


def _remove(dnc: DncList, args: argparse.Namespace) -> int:
    number = _number(args)
    if number is None:
        return EXIT_FAILURE
    if not dnc.remove(number):
        print(f"{number} is not on the do-not-call list", file=sys.stderr)
        return EXIT_FAILURE
    print(f"{number}: removed from the do-not-call list")
    return EXIT_OK


def _list(dnc: DncList, args: argparse.Namespace) -> int:
    entries = dnc.entries()
    if args.format == "json":
        print(json.dumps([e.__dict__ for e in entries], indent=2))
        return EXIT_OK
    for e in entries:
        added = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(e.added_at))
        print(f"{e.number}\t{e.source}\t{added}\t{e.reason}")
    return EXIT_OK


def _import(dnc: DncList, args: argparse.Namespace) -> int:
    try:
        result = dnc.import_csv(Path(args.file), region=args.region, now=time.time())
    except (OSError, UnicodeDecodeError) as exc:
        print(f"cannot read {args.file}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    for issue in result.issues:
        print(f"{args.file}: {issue} (skipped)", file=sys.stderr)
    print(
        f"{args.file}: {result.added} number(s) added, {result.already} already on the list,"
        f" {len(result.issues)} row(s) refused"
    )
    return EXIT_FAILURE if result.issues else EXIT_OK


_ACTIONS = {"add": _add, "remove": _remove, "list": _list, "import": _import}
