# Sourced by the device-side scripts (bench/gpu_checks.sh, gpu_session.sh, system_load_gpu.sh run): the
# carried wheels (.whl, from `bash bench/system_load_gpu.sh prepare`) installed into /tmp/site, and the
# environment the product and benches need there (no hub: HF_HUB_OFFLINE; the Whisper tokenizer carried in
# .caller). Expects ROOT (the tree's root) to be set.
wheels=$(cd "$ROOT/.whl" && ls -l ./*.whl | md5sum | cut -c1-32)
if [ "$(cat /tmp/site/.wheels 2>/dev/null)" != "$wheels" ]; then  # once per set of wheels (scripts nest)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        "$ROOT"/.whl/*.whl
    echo "$wheels" >/tmp/site/.wheels
fi
export PATH=/tmp/site/bin:$PATH PYTHONPATH=$ROOT:/tmp/site PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 \
    WHISPER_TOKENIZER_JSON=$ROOT/.caller/tokenizer.json
