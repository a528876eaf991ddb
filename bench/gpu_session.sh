#!/usr/bin/env bash
# One device command (< 10 minutes) that checks the batched ASR on the card and then runs the whole system
# at 128 calls with the candidate settings together, for a lease too short for one run per setting:
#
#     OUT=out bash bench/gpu_session.sh            # carry .whl .deb .caller (bench/system_load_gpu.sh prepare)
#
# 1. tests/dia2/test_encode_graphs.py, tests/sipbridge/test_asr_greedy.py + test_asr_batch.py on CUDA (graphs
#    equal eager, own stream);
# 2. bench/asr_batch.py at large-v3-turbo shapes, 25 turns/s of 3 s, static decoder, encoder graphs, then
#    time per phase for batches of 1, 4 and 16; the same with the eager encoder (its random Whisper is built
#    once in /tmp, where system_load_gpu.sh finds it);
# 3. bench/system_load_gpu.sh at CALLS (default 128) with the settings in the environment (default: the
#    product's defaults; SPECULATIVE=1, GIL_SWITCH_MS=1 or NO_FIRST_CHUNK_FIRST=1 turn candidates on).
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
out=${OUT:-$ROOT/gpu-session-out}
mkdir -p "$out"
. "$ROOT/bench/gpu_env.sh"
echo "== GPU tests"
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/dia2/test_encode_graphs.py tests/sipbridge/test_asr_greedy.py \
    tests/sipbridge/test_asr_batch.py \
    --tb=short 2>&1 | grep -v "^\[transformers\]" | tail -n 20
for encoder in graphs eager; do
    echo "== asr_batch static decoder, $encoder encoder"
    flag=$([ "$encoder" = eager ] && echo --eager-encoder)
    timeout 150 python3 bench/asr_batch.py --shape large-v3-turbo --device cuda --rate 25 --turn-s 3 --seconds 15 \
        --phases 1,4,16 $flag --tokenizer-json .caller/tokenizer.json --model-dir /tmp \
        --json "$out/asr-batch-$encoder.json" 2>&1 | grep -E '"p50"|"p95"|"mean_batch"|peak_alloc|Error|error' | head -n 8
done
echo "== system"
export SKIP_ASR_TESTS=1 CALLS=${CALLS:-128} SPECULATIVE=${SPECULATIVE-} NO_FIRST_CHUNK_FIRST=${NO_FIRST_CHUNK_FIRST-} \
    GIL_SWITCH_MS=${GIL_SWITCH_MS-}
[ -n "$SPECULATIVE" ] || unset SPECULATIVE
[ -n "$NO_FIRST_CHUNK_FIRST" ] || unset NO_FIRST_CHUNK_FIRST
[ -n "$GIL_SWITCH_MS" ] || unset GIL_SWITCH_MS
bash bench/system_load_gpu.sh run "$out/sys"
