"""Project-wide rules that a reviewer would otherwise have to check by eye."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_imports_go_one_way() -> None:
    """sipbridge -> dia2, audio. dia2 and audio never import sipbridge; dia2 never imports audio.

    bench/ may measure the service's own parts (the AMD bench runs sipbridge's ASR), except the GPU benches
    (bench/dia2*.py), which import only what the GPU image has (next test)."""
    forbidden = {"dia2": {"sipbridge", "audio"}, "audio": {"sipbridge", "dia2"}}
    offenders = []
    for package, banned in forbidden.items():
        for path in sorted((ROOT / package).rglob("*.py")):
            bad = imported_modules(path) & banned
            if bad:
                offenders.append(f"{path.relative_to(ROOT)} imports {sorted(bad)}")
    assert offenders == []


def test_dia2_imports_only_what_the_gpu_image_has() -> None:
    """dia2/ and the GPU benchmarks (bench/dia2*.py) import only what the GPU image has at module level.

    That image has torch, transformers, safetensors, numpy, tokenizers and huggingface_hub; no installs.
    It also has Triton (torch's CUDA wheels depend on it), which only the kernel modules (dia2/kernels.py,
    dia2/paged_attention.py: the paged KV cache's in-place attention) import at module level; every other
    module imports them lazily, so dia2 stays importable without Triton.
    """
    allowed = {"torch", "transformers", "safetensors", "numpy", "tokenizers", "huggingface_hub", "dia2"}
    kernel_modules = {"dia2/kernels.py", "dia2/paged_attention.py"}
    kernel_names = {"kernels", "paged_attention"}
    stdlib = set(sys.stdlib_module_names)
    offenders = []
    for pattern in ("dia2/**/*.py", "bench/dia2*.py"):
        for path in sorted(ROOT.glob(pattern)):
            rel = str(path.relative_to(ROOT))
            # Triton: the kernel modules import it; the rest of dia2 imports them where they are used.
            lazy = path.parts[len(ROOT.parts)] == "dia2" and rel not in kernel_modules
            # Only module-level imports matter for importability; lazy imports inside functions are allowed.
            tree = ast.parse(path.read_text(encoding="utf-8"))
            top = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
            for node in top:
                mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                if isinstance(node, ast.ImportFrom):
                    base = node.module or ""
                    names = {base} | {f"{base}.{a.name}".lstrip(".") for a in node.names}
                    if lazy and names & (kernel_names | {f"dia2.{k}" for k in kernel_names}):
                        offenders.append(f"{rel}: a kernel module at module level")
                    if node.level > 0:
                        continue
                for mod in mods:
                    head = mod.split(".")[0]
                    if head == "triton" and rel in kernel_modules:
                        continue
                    if mod.startswith("bench.dia2"):
                        continue  # another GPU bench (a shared timer): its own imports are checked here too
                    if mod in {f"dia2.{k}" for k in kernel_names} and lazy:
                        offenders.append(f"{rel}: a kernel module at module level")
                    if head not in stdlib and head not in allowed and head != "__future__":
                        offenders.append(f"{rel}: {mod}")
    assert offenders == []


def dev_tool(name: str) -> str:
    path = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    assert path is not None, f"{name} is a dev dependency: install with deploy/setup.sh --dev"
    return path


def test_ruff_clean() -> None:
    result = subprocess.run(
        [dev_tool("ruff"), "check", "."], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_formatted() -> None:
    result = subprocess.run(
        [dev_tool("ruff"), "format", "--check", "."], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_clean() -> None:
    """mypy with the pydantic plugin over sipbridge/, audio/ and dia2/ ([tool.mypy] in pyproject.toml says
    what is excluded and why). Its cache (.mypy_cache/) makes a re-run take seconds; a cold run ~50 s CPU."""
    result = subprocess.run([dev_tool("mypy")], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
