"""dia2/kernels.py compiled for a Hopper GPU without one: Triton lowers the kernels to PTX and its bundled
ptxas assembles them for sm_90, so the programmatic-dependent-launch instructions are checked for what
they are and where they sit even on the CPU-only CI (their effect is measured on a GPU:
bench/dia2_speed.py --pdl, tests/dia2/test_kernels.py runs them there).

Runs in a subprocess: tests/dia2/test_kernels.py switches this process to Triton's interpreter, under
which ``@triton.jit`` gives no compilable kernel.
"""

from __future__ import annotations

import pytest

from .kernel_kit import compile_apart

pytest.importorskip("triton")

COMPILE = r"""
import json, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from dia2 import kernels

args = ["x_ptr", "w_ptr", "y_ptr", "nw_ptr", "res_ptr", "M", "N", "stride_xm", "stride_wn", "stride_ym",
        "stride_rm", "up_offset", "eps"]
types = ["*bf16"] * 5 + ["i32"] * 7 + ["fp32"]
consts = dict(K=1024, HAS_NORM=True, SWIGLU=True, HAS_RES=False, IEEE=False, BLOCK_M=16, BLOCK_N=32,
              BLOCK_K=256, PDL=sys.argv[1] == "1", PREFETCH=sys.argv[1] == "1", LINE=64, BLOCK_L=16)
names = args + list(consts)
signature = dict(zip(args, types)) | {c: "constexpr" for c in consts}
src = ASTSource(fn=kernels._linear_kernel, signature=signature,
                constexprs={(names.index(c),): v for c, v in consts.items()})
out = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                     options={"num_warps": 4, "num_stages": 3, "launch_pdl": sys.argv[1] == "1"})
print(json.dumps({"ptx": out.asm["ptx"], "cubin": len(out.asm["cubin"])}))
"""


def _compile(pdl: bool) -> dict[str, object]:
    out: dict[str, object] = compile_apart(COMPILE, "1" if pdl else "0")
    return out


def test_linear_kernel_assembles_for_hopper_with_pdl_in_order() -> None:
    """With PDL: the weight rows are prefetched into L2 first, then ``griddepcontrol.wait`` (the previous
    kernel's writes), then ``launch_dependents``; no global load or store comes before the wait, so the
    kernel neither reads an input early nor overwrites one the previous kernel still reads. Without PDL
    none of these instructions is emitted."""
    got = _compile(True)
    assert got["cubin"]  # ptxas accepted it for sm_90
    lines = [ln.strip() for ln in str(got["ptx"]).splitlines()]

    def first(op: str) -> int:
        return next(i for i, ln in enumerate(lines) if ln.startswith(op))

    prefetches = [i for i, ln in enumerate(lines) if ln.startswith("prefetch.global.L2")]
    wait, launch = first("griddepcontrol.wait"), first("griddepcontrol.launch_dependents")
    memory = [i for i, ln in enumerate(lines) if "ld.global" in ln or "st.global" in ln or "cp.async" in ln]
    # 32 gate rows + 32 up rows x 16 lines of 128 bytes, over 128 threads: 8 prefetches each.
    assert len(prefetches) == 8
    assert max(prefetches) < wait < launch < min(memory)
    plain = str(_compile(False)["ptx"])
    assert "griddepcontrol" not in plain and "prefetch" not in plain
