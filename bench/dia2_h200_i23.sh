#!/usr/bin/env bash
# Issue 23's GPU measurements (H200 lease, docs/PERFORMANCE.md "Issue 23").
#   OUT=results UPSTREAM=path/to/nari-labs-dia2 bash bench/dia2_h200_i23.sh [STEP ...]   (default: pdl load profile)
# Steps: pdl load profile profile256 hybrid load384 tiles fidelity enginegpu speed1 paged paged384 pagedattn pagedgather (case list below).
# Every step has its own time limit (T_LOAD, T_PAGED, T_TESTS override three; LOAD_CALLS/PAGED_CALLS the sizes) so that one hang leaves the others' JSON; logs go to $OUT/log.txt.
# Next lease (the engine split, paged KV and the depformer change; each line one device command, < 10 min):
#   OUT=out bash bench/dia2_h200_i23.sh enginegpu paged          # GPU tests incl. paged KV in graphs; paged 128-256
#   OUT=out bash bench/dia2_h200_i23.sh load speed1 profile256   # dense split engine 128-256; 1 call; per phase
#   OUT=out bash bench/dia2_h200_i23.sh paged384 load384         # 256/384 calls paged (600 steps) and dense (1000)
# Paged KV attention in place (dia2/paged_attention.py; `paged`/`paged384` now run it, the CUDA default):
#   OUT=out bash bench/dia2_h200_i23.sh pagedattn                 # one layer: dense vs gather vs kernel (warps x tile), < 3 min
#   OUT=out bash bench/dia2_h200_i23.sh paged pagedgather         # engine 128-256 paged: kernel, then the gather (A/B)
set -u
OUT=${OUT:-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PY:-python3}
steps=${*:-pdl load profile}
log() { echo "== $(date -u +%H:%M:%S) $*" | tee -a "$OUT/log.txt"; }
run() { local limit=$1; shift; log "$*"; timeout "$limit" "$@" 2>&1 | tail -n 40 | tee -a "$OUT/log.txt"; }
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee -a "$OUT/log.txt"
for s in $steps; do
  case $s in
    pdl)
      run 120 $PY -m pytest tests/dia2/test_kernels.py -q -x -k pdl
      run 170 $PY bench/dia2_speed.py --calls 1 --out "$OUT/speed1.json"
      run 170 $PY bench/dia2_speed.py --calls 1 --pdl --out "$OUT/speed1-pdl.json" ;;
    load) run ${T_LOAD:-240} $PY bench/dia2_speed.py --load-only --calls ${LOAD_CALLS:-128,192,256} --out "$OUT/load.json" ;;
    paged) run ${T_PAGED:-300} $PY bench/dia2_speed.py --load-only --calls ${PAGED_CALLS:-128,192,256} --paged-kv --kv-pool-steps 750 --out "$OUT/load-paged.json" ;;
    pagedgather) run ${T_PAGED:-300} $PY bench/dia2_speed.py --load-only --calls ${PAGED_CALLS:-128,192,256} --paged-kv --kv-pool-steps 750 --paged-gather --out "$OUT/load-paged-gather.json" ;;
    pagedattn) run 170 $PY bench/dia2_paged_attention.py --out "$OUT/paged-attention.json" ;;
    paged384) run 280 $PY bench/dia2_speed.py --load-only --calls 256,384 --paged-kv --kv-pool-steps 600 --out "$OUT/load384-paged.json" ;;
    profile) run 200 $PY bench/dia2_profile.py --variants kernels,kernels-pdl --calls 1 --out "$OUT/profile.json" ;;
    profile256) run 240 $PY bench/dia2_profile.py --variants fused,kernels-pdl --calls 1,256 --out "$OUT/profile256.json" ;;
    hybrid) run 200 $PY bench/dia2_speed.py --load-only --calls 192,256 --kernel-max-calls 64 --out "$OUT/load-hybrid.json" ;;
    load384) run 280 $PY bench/dia2_speed.py --load-only --calls 256,320,384 --max-context-steps 1000 --out "$OUT/load384.json" ;;
    speed1) run 170 $PY bench/dia2_speed.py --calls 1 --out "$OUT/speed1-final.json" ;;
    enginegpu) run ${T_TESTS:-280} $PY -m pytest tests/dia2/test_engine_gpu.py tests/dia2/test_kernels.py tests/dia2/test_failure_modes.py tests/dia2/test_paged_kv.py tests/dia2/test_paged_attention.py tests/dia2/test_memory.py tests/dia2/test_fused_ops.py -q -x -p no:cacheprovider ;;
    tiles) run 150 $PY bench/dia2_kernels.py --out "$OUT/tiles.json" ;;
    fidelity) run 400 $PY bench/dia2_gpu_fidelity.py --upstream "${UPSTREAM:-.up/dia2}" --out "$OUT/fidelity.json" ;;
  esac
done
log done
