"""dia2/kernels_fused.py compiled for a Hopper GPU without one (Triton's PTX, assembled for sm_90 by its
bundled ptxas), at Dia2-2B shapes with PDL: the "last program" hand-over is checked where it is made of
instructions. Every store of a program's partial sums / logits comes before a CTA barrier, the barrier
before one single-thread acq_rel atomic at GPU scope (the ticket), the ticket's reset after it, and the
last program's reads of the other programs' results go to L2 (``ld.global.cg``) after the ticket. Whether
it is faster is measured on a GPU (bench/dia2_h200_i23.sh, case ``fusion``).

Runs in a subprocess: the kernel tests switch this process to Triton's interpreter.
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
from dia2 import kernels_fused as kf

def build(fn, args, types, consts, opts):
    names = args + list(consts)
    signature = dict(zip(args, types)) | {c: "constexpr" for c in consts}
    src = ASTSource(fn=fn, signature=signature, constexprs={(names.index(c),): v for c, v in consts.items()})
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=opts)

pdl = sys.argv[2] == "1"
if sys.argv[1] == "qkv":
    args = ("x_ptr w_ptr nw_ptr part_ptr cnt_ptr kc_ptr vc_ptr qn_ptr kn_ptr cos_ptr sin_ptr out_ptr stage M "
            "eps stride_xm stride_wn stride_ps stride_pm stride_out stride_cr stride_ch stride_cs").split()
    types = ["*bf16"] * 3 + ["*fp32", "*i32"] + ["*bf16"] * 7 + ["i32", "i32", "fp32"] + ["i32"] * 8
    consts = dict(K=1024, CHUNK=64, KSPLIT=16, HEADS=8, HALF=64, BLOCK_HALF=64, SLOTS=32, IEEE=False,
                  BLOCK_M=16, BLOCK_K=64, PDL=pdl, PREFETCH=pdl, LINE=64, BLOCK_L=1)
    out = build(kf._qkv_attention_kernel, args, types, consts,
                {"num_warps": 4, "num_stages": 3, "launch_pdl": pdl})
else:
    args = ("x_ptr w_ptr nw_ptr logits_ptr cnt_ptr M N stride_xm stride_wn eps scale_ptr temp_ptr topk_ptr "
            "noise_ptr ring_ptr step_ptr known_ptr active_ptr code_ptr din_ptr table_ptr xo_ptr stride_l "
            "stride_noise stride_ring_n ring_k_offset delay stride_din stride_x dim").split()
    types = (["*bf16"] * 3 + ["*fp32", "*i32"] + ["i32"] * 4 + ["fp32", "*fp32", "*fp32", "*i64", "*fp32"]
             + ["*i64"] * 3 + ["*i1", "*i64"] + ["*bf16"] * 3 + ["i32"] * 8)
    consts = dict(K=1024, IEEE=False, BLOCK_M=16, BLOCK_N=16, BLOCK_K=512, PDL=pdl, PREFETCH=pdl,
                  LINE=64, BLOCK_L=16, BRANCHES=2, VLIM=2048, BLOCK_V=2048, FILTER_K=50, TOPK=50, RING=32,
                  HAS_NEXT=True, BLOCK_D=1024)
    out = build(kf._head_sample_kernel, args, types, consts,
                {"num_warps": 4, "num_stages": 4, "launch_pdl": pdl})
print(json.dumps({"ptx": out.asm["ptx"], "cubin": len(out.asm["cubin"])}))
"""


def _ptx(kernel: str, pdl: bool) -> tuple[list[str], int]:
    got = compile_apart(COMPILE, kernel, "1" if pdl else "0", timeout=600)
    return [ln.strip() for ln in str(got["ptx"]).splitlines()], int(got["cubin"])


@pytest.mark.parametrize("kernel", ["qkv", "head"])
def test_fused_kernel_hands_over_to_its_last_program_in_order(kernel: str) -> None:
    lines, cubin = _ptx(kernel, pdl=True)
    assert cubin  # ptxas accepted it for sm_90

    def where(pred: str) -> list[int]:
        return [i for i, ln in enumerate(lines) if pred in ln]

    (ticket,) = where("atom.global.gpu.acq_rel.add")
    (reset,) = where("atom.global.gpu.relaxed.exch")
    assert lines[ticket].startswith("@%p")  # predicated: one thread draws the program's ticket
    barrier = max(i for i in where("bar.sync") if i < ticket)
    stores = [i for i in where("st.global") if i < ticket]
    assert stores and max(stores) < barrier < ticket < reset
    fresh = where("ld.global.cg")
    assert fresh and min(fresh) > ticket  # the others' results, read after the acquire, from L2
    # PDL: the previous kernel's writes are waited for before any global load or store.
    wait = where("griddepcontrol.wait")[0]
    assert wait < min(where("ld.global") + where("st.global"))
