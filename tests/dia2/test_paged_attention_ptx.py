"""dia2/paged_attention.py compiled for a Hopper GPU without one: Triton lowers the kernel to PTX and its
bundled ptxas assembles it for sm_90, so the CPU-only CI knows the kernel builds for the GPU in both its
variants (bfloat16 on tensor cores, float32 in exact products) at Dia2-2B's shapes; its numbers are the
interpreter's tests (tests/dia2/test_paged_attention.py) and, on a GPU, tests/dia2/test_engine_gpu.py.

Runs in a subprocess: the interpreter tests switch this process to Triton's interpreter, under which
``@triton.jit`` gives no compilable kernel.
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
from dia2 import paged_attention as pa

ieee = sys.argv[1] == "1"
dt = "*fp32" if ieee else "*bf16"
args = ["q_ptr", "k_ptr", "v_ptr", "table_ptr", "index_ptr", "out_ptr", "width", "stride_qb", "stride_qh",
        "stride_kb", "stride_kh", "stride_ks", "stride_t", "stride_ob", "stride_oh"]
types = [dt, dt, dt, "*i64", "*i64", dt] + ["i32"] * 9
# Dia2-2B: 16 query heads on 8 KV heads of 128, blocks of 16 slots.
consts = dict(GROUP=2, DIM=128, BLOCK_SIZE=16, BLOCK_G=pa.MIN_DOT, BLOCK_D=128, TILE=pa.MIN_TILE, IEEE=ieee)
names = args + list(consts)
signature = dict(zip(args, types)) | {c: "constexpr" for c in consts}
src = ASTSource(fn=pa._paged_decode_kernel, signature=signature,
                constexprs={(names.index(c),): v for c, v in consts.items()})
out = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
ptx = out.asm["ptx"]
print(json.dumps({"cubin": len(out.asm["cubin"]), "mma": ptx.count("mma."), "local": ptx.count(".local")}))
"""


def _compile(ieee: bool) -> dict[str, int]:
    # Triton 3.9's default fp fusion, stated (silences its warning).
    out: dict[str, int] = compile_apart(COMPILE, "1" if ieee else "0", TRITON_DEFAULT_FP_FUSION="1")
    return out


@pytest.mark.parametrize("ieee", [False, True])
def test_paged_decode_kernel_assembles_for_hopper(ieee: bool) -> None:
    """ptxas accepts it for sm_90 and the PTX keeps no array in local memory (the tiles stay in registers;
    ptxas's own spills show only on a GPU); the bfloat16 variant multiplies on the tensor cores (mma), the
    float32 one does not (exact products, the tests' token-exact path)."""
    got = _compile(ieee)
    assert got["cubin"] > 0
    assert got["local"] == 0
    assert (got["mma"] > 0) != ieee
