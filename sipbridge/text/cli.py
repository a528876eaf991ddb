"""`sipbridge normalize "TEXT"`: what the engines would say for a text, for people tuning a deployment.

Prints the spoken form on one line, read with the config's locale and lexicon (`--config`, `--set`), so a
new lexicon entry can be checked before a call hears it. `-` reads lines from stdin (one answer per line);
`--segments` prints the script the configured engine receives instead, one segment per line.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from sipbridge.config import LoadedConfig


def add_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    add_config_args: Callable[[argparse.ArgumentParser], None],
) -> None:
    p = sub.add_parser("normalize", help="print the spoken form of a text (numbers, dates, IDs...), one line")
    p.add_argument("text", metavar="TEXT", help='text to read, e.g. "Call (415) 555-0132"; - reads stdin')
    add_config_args(p)
    p.add_argument(
        "--segments",
        action="store_true",
        help="print the script the configured engine gets (speaker tag, segments), one segment per line",
    )


def run(args: argparse.Namespace, loaded: LoadedConfig) -> int:
    from sipbridge.text.frontend import TextFrontend

    engine = loaded.config.engine
    frontend = TextFrontend.from_config(engine.text, dia2=engine.kind == "dia2")
    lines = sys.stdin.read().splitlines() if args.text == "-" else [args.text]
    for line in lines:
        if args.segments:
            for segment in frontend.shape(line):
                print(segment.strip())
        else:
            print(" ".join(frontend.normalizer.normalize(line).split()))
    return 0
