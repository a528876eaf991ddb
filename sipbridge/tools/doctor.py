"""`sipbridge doctor [--config FILE]`: one line per thing a deployment needs, and how to fix each miss.

    ok    sip port    udp 127.0.0.1:5060 free
    fail  http port   tcp 127.0.0.1:8080 in use (Address already in use) -> fix: is sipbridge already ...

Exit 0 when nothing failed (warnings allowed), 1 otherwise; a config that does not load is one failed line.
The checks themselves are in sipbridge/tools/checks.py and speech_checks.py.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable
from typing import Any

from sipbridge.config import ConfigError, load_config
from sipbridge.tools import checks as sys_checks
from sipbridge.tools import speech_checks
from sipbridge.tools.checks import Check, CheckFn

EXIT_OK, EXIT_PROBLEMS = 0, 1

# In the order a deployment needs them: the network, SIP, speech, storage, time.
CHECKS: tuple[CheckFn, ...] = (
    sys_checks.check_ports,
    sys_checks.check_pjsua2,
    sys_checks.check_front,
    speech_checks.check_espeak,
    speech_checks.check_gpu,
    speech_checks.check_dia2_models,
    speech_checks.check_asr,
    speech_checks.check_vad,
    sys_checks.check_store,
    sys_checks.check_recordings,
    sys_checks.check_clock,
)


def add_parser(sub: Any) -> None:
    p = sub.add_parser("doctor", help="check what this deployment needs (ports, pjsua2, models, store, ...)")
    p.add_argument("--config", "-c", metavar="FILE", help="YAML config file (default: the embedded one)")
    p.add_argument(
        "--set",
        dest="overrides",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="override one config key (repeatable)",
    )


def render(check: Check) -> str:
    line = f"{check.status:<5} {check.name:<11} {check.detail}"
    if check.fix and check.status in ("warn", "fail"):
        line += f" -> fix: {check.fix}"
    return line


def diagnose(config: Any, checks: Iterable[CheckFn], write: Callable[[str], None]) -> list[Check]:
    """Run every check, writing each line as soon as it is known (some take a second or two)."""
    results: list[Check] = []
    for fn in checks:
        try:
            found = fn(config)
        except Exception as exc:  # a bug in one check must not hide the others
            found = [Check(fn.__name__.removeprefix("check_"), "fail", f"the check itself failed: {exc!r}")]
        for check in found:
            write(render(check))
        results += found
    return results


def summary(results: list[Check]) -> str:
    fails = sum(c.status == "fail" for c in results)
    warns = sum(c.status == "warn" for c in results)
    if fails:
        return f"doctor: {fails} problem(s) to fix, {warns} warning(s)"
    return f"doctor: ready ({warns} warning(s))" if warns else "doctor: ready"


def run(args: argparse.Namespace) -> int:
    def write(line: str) -> None:
        print(line, flush=True)

    try:
        loaded = load_config(args.config, args.overrides)
    except ConfigError as error:
        for issue in error.issues:
            write(
                render(Check("config", "fail", str(issue), "correct the key named (sipbridge check-config)"))
            )
        write("doctor: the config does not load; fix it first")
        return EXIT_PROBLEMS
    write(render(Check("config", "ok", f"{loaded.source}")))
    results = diagnose(loaded.config, CHECKS, write)
    write(summary(results))
    return EXIT_PROBLEMS if any(c.status == "fail" for c in results) else EXIT_OK


if __name__ == "__main__":
    sys.exit(run(argparse.Namespace(config=None, overrides=[])))
