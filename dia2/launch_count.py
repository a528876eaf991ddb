"""Count Triton kernel launches by kernel name (CPU interpreter or CUDA, eager runs only).

Why: at one call the depformer is bound by its number of launches (docs/PERFORMANCE.md, issue 23), and
the interpreter cannot time kernels; counting them can be done anywhere. Every ``@triton.jit`` function
of the given modules gets a pre-run hook for the duration of the ``with`` block (the interpreter and the
compiled launcher both run those hooks once per launch). Launches replayed from a CUDA graph are not
seen: count an eager run.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any

__all__ = ["count_launches"]


def _jit_functions(modules: tuple[ModuleType, ...]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for module in modules:
        for name, value in vars(module).items():
            # Only launchable kernels: helpers (called from kernels) are never launched themselves.
            if name.endswith("_kernel") and isinstance(getattr(value, "pre_run_hooks", None), list):
                found[f"{module.__name__.rsplit('.', 1)[-1]}.{name}"] = value
    return found


@contextmanager
def count_launches(*modules: ModuleType) -> Iterator[Counter[str]]:
    """``with count_launches(dia2.kernels) as n: ...`` → ``n[kernel name]`` launches inside the block."""
    counts: Counter[str] = Counter()
    hooks: list[tuple[Any, Any]] = []
    for name, fn in _jit_functions(modules).items():

        def hook(*args: Any, _name: str = name, **kwargs: Any) -> None:
            counts[_name] += 1

        fn.pre_run_hooks.append(hook)
        hooks.append((fn, hook))
    try:
        yield counts
    finally:
        for fn, hook in hooks:
            fn.pre_run_hooks.remove(hook)
