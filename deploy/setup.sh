#!/usr/bin/env bash
# Install everything sipbridge needs on Debian 12 (as root), into ./.venv next to this checkout.
#
#   bash deploy/setup.sh          runtime: system packages + venv + sipbridge with the sip and asr extras
#   bash deploy/setup.sh --dev    the same plus test tools (pytest, ruff, mypy) and test peers
#
# Environment knobs:
#   VENV=path            where the virtualenv goes (default: .venv in the checkout)
#   PYTHON=python3.11    interpreter for the venv (>= 3.11)
#   TORCH_SPEC=...       torch requirement (default torch==2.13.0, the CPU wheel served on these machines)
#   TORCH_INDEX_URL=...  extra index for a CUDA build on GPU hosts, e.g. https://download.pytorch.org/whl/cu128
#   SKIP_APT=1           do not touch system packages (they must already be there)
set -euo pipefail

cd "$(dirname "$0")/.."
DEV=0
for arg in "$@"; do
  case "$arg" in
    --dev) DEV=1 ;;
    *) echo "usage: $0 [--dev]" >&2; exit 2 ;;
  esac
done

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}

# System packages. espeak-ng speaks with the CPU engine; libsndfile reads/writes WAV; kamailio is the SIP front
# before the media workers (sip.front), and kamailio-tls-modules its SIP over TLS (sip.transports: [tls]); SIPp and baresip are the real SIP peers of the test suite; sox builds
# test audio; libportaudio2 backs `sipbridge call --interactive` (the tests check its answer on a box without
# audio devices); postgresql gives the store tests a real server (initdb/pg_ctl in a temporary
# directory; the packaged cluster service is not needed).
APT_PACKAGES=(espeak-ng libsndfile1 ca-certificates kamailio kamailio-tls-modules)
if [ "$DEV" = 1 ]; then
  # openssl makes the self-signed certificates of the TLS tests; systemd-analyze verifies deploy/systemd.
  APT_PACKAGES+=(sip-tester baresip-core sox libsox-fmt-all libportaudio2 openssl systemd postgresql)
fi
if ! "$PYTHON" -c 'import venv, ensurepip' >/dev/null 2>&1; then
  APT_PACKAGES+=(python3-venv python3-dev)
fi

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "${SKIP_APT:-0}" = 1 ]; then
    echo "setup: missing system packages ${missing[*]} and SKIP_APT=1" >&2; exit 1
  fi
  echo "setup: apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

"$PYTHON" - <<'PY'
import sys
if sys.version_info < (3, 11):
    sys.exit(f"setup: Python >= 3.11 is required, {sys.executable} is {sys.version.split()[0]}")
PY

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating virtualenv $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check -q)

# torch first, on its own: with it in place the package's torch range is already met and pip does not pull a
# second (CUDA, several GB) build through a dependency.
if ! "$VENV/bin/python" -c 'import torch' >/dev/null 2>&1; then
  echo "setup: installing $TORCH_SPEC"
  if [ -n "${TORCH_INDEX_URL:-}" ]; then
    "${PIP[@]}" "$TORCH_SPEC" --extra-index-url "$TORCH_INDEX_URL"
  else
    "${PIP[@]}" "$TORCH_SPEC"
  fi
fi

EXTRAS="sip,asr,postgres"
[ "$DEV" = 1 ] && EXTRAS="sip,asr,postgres,interactive,dev"
echo "setup: installing sipbridge[$EXTRAS]"
"${PIP[@]}" -e ".[$EXTRAS]"
# The end-of-turn model (Smart Turn v3.2, BSD-2) ships inside the pipecat-ai wheel. Only its ONNX file is used
# (audio/turn/smart_turn.py locates it without importing pipecat), so the wheel goes in without its dependencies:
# they would add numba, openai, Pillow ... and pin soxr below the range above.
echo "setup: installing the Smart Turn model (pipecat-ai wheel, --no-deps)"
"${PIP[@]}" --no-deps "pipecat-ai==1.14.0"
echo "setup: done ($("$VENV/bin/python" -c 'import torch, sys; print(f"python {sys.version.split()[0]}, torch {torch.__version__}")'))"
