"""Locales: each module holds one language's rules (`RULE_SET`) and streaming hint (`sticky`).

Adding a language is adding a module here with the same two names and listing it in `LOCALES`; the rule
engine (sipbridge/text/rules.py), lexicon, streaming and script shaping are shared.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from sipbridge.text.rules import RuleSet

LOCALES = {"en-US": "sipbridge.text.locales.en_us"}


@dataclass(frozen=True)
class Locale:
    name: str
    rules: RuleSet
    sticky: Callable[[str], bool]  # may this complete word join the next one into one reading?


def get_locale(name: str) -> Locale:
    module = LOCALES.get(name)
    if module is None:
        raise ValueError(f"unknown locale {name!r}; known: {', '.join(sorted(LOCALES))}")
    mod = importlib.import_module(module)
    return Locale(name, mod.RULE_SET, mod.sticky)
