#!/usr/bin/env bash
# The GPU tests and the ASR's own speed in one device command (< 10 minutes), on a bare box with python3 + torch
# (carry .whl .deb .caller from `bash bench/system_load_gpu.sh prepare`):
#
#     OUT=out bash bench/gpu_checks.sh
#
# 1. The paged-attention kernel against gather + SDPA and float64, then the same with cuDNN's SDPA off (which
#    side is wrong where they disagree in bf16); 2. the engine's GPU tests, the prefill graphs, the batched
#    ASR and its static decoder on the card; 3. bench/asr_batch.py at large-v3-turbo shapes, 25 turns/s of 3 s,
#    static decoder then transformers' generate (JSON in OUT). The random Whisper is built in
#    /tmp/whisper-large-v3-turbo-random, where bench/system_load_gpu.sh finds it next.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
out=${OUT:-$ROOT/gpu-checks-out}
mkdir -p "$out"
. "$ROOT/bench/gpu_env.sh"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/card.txt"
pt() { python3 -m pytest -q -p no:cacheprovider "$@"; }
echo "== paged attention"; timeout 150 pt tests/dia2/test_paged_attention.py --tb=line 2>&1 | tail -n 15
echo "== paged attention, cuDNN SDPA off"
timeout 120 python3 -c "import torch, pytest; torch.backends.cuda.enable_cudnn_sdp(False); raise SystemExit(pytest.main(['tests/dia2/test_paged_attention.py','-q','-p','no:cacheprovider','-k','kernel_equals','--tb=line']))" 2>&1 | tail -n 8
echo "== engine, prefill graphs, ASR"
timeout 240 pt tests/dia2/test_engine_gpu.py tests/dia2/test_prefill_graphs.py tests/sipbridge/test_asr_greedy.py \
    tests/sipbridge/test_asr_batch.py --tb=short -x 2>&1 | grep -v "^\[transformers\]" | tail -n 30
for decoder in static generate; do
    echo "== asr_batch $decoder"
    flag=(); [ "$decoder" = generate ] && flag=(--generate)
    timeout 150 python3 bench/asr_batch.py --shape large-v3-turbo --device cuda --rate 25 --turn-s 3 --seconds 20 \
        --tokenizer-json .caller/tokenizer.json --model-dir /tmp "${flag[@]}" --json "$out/asr-batch-$decoder.json" \
        2>&1 | grep -E '"p50"|"p95"|"mean_batch"|peak_alloc|Error|error' | head -n 8
done
ls -la "$out"
