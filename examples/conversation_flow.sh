#!/usr/bin/env bash
# Replays the earlier conversation server's flow against sipbridge with curl:
#   set_voice (the AI voice) -> [user_spoke -> generate] for each user turn -> state.
#
#   SIPBRIDGE_URL=http://127.0.0.1:8080 SIPBRIDGE_HTTP_TOKEN=secret \
#     examples/conversation_flow.sh voice.wav turn1.wav turn2.wav ...
#
# Replies are written as reply_1.wav, reply_2.wav, ... (24 kHz; FORMAT=ulaw gives 8 kHz µ-law .ulaw files).
# The reply text comes from REPLY (one line for every turn) or from a file given as REPLIES (one line per turn).
set -euo pipefail

URL="${SIPBRIDGE_URL:-http://127.0.0.1:8080}"
TOKEN="${SIPBRIDGE_HTTP_TOKEN:-}"
CONV="${CONVERSATION_ID:-default}"
FORMAT="${FORMAT:-wav}"
REPLY="${REPLY:-Thank you, I understand. Could you tell me a bit more?}"

if [ "$#" -lt 2 ]; then
  echo "usage: $0 VOICE_AUDIO USER_TURN_AUDIO [USER_TURN_AUDIO ...]" >&2
  exit 2
fi
auth=()
if [ -n "$TOKEN" ]; then auth=(-H "Authorization: Bearer $TOKEN"); fi
call() { curl --fail-with-body -sS "${auth[@]}" "$@"; }

voice="$1"; shift
echo "== health";    curl -sS "$URL/health"; echo
echo "== reset";     call -X POST "$URL/reset?conversation_id=$CONV"; echo
# No transcript: the server transcribes the voice (and caches it by content); add -F transcript=... to skip ASR.
echo "== set_voice"; call -F "audio=@$voice" -F "conversation_id=$CONV" "$URL/set_voice"; echo

turn=0
for user_audio in "$@"; do
  turn=$((turn + 1))
  text="$REPLY"
  if [ -n "${REPLIES:-}" ]; then text="$(sed -n "${turn}p" "$REPLIES")"; fi
  echo "== user_spoke $turn ($user_audio)"
  call -F "audio=@$user_audio" -F "conversation_id=$CONV" "$URL/user_spoke"; echo
  out="reply_${turn}.$([ "$FORMAT" = ulaw ] && echo ulaw || echo wav)"
  echo "== generate $turn -> $out"
  # -D - prints the timing headers (X-First-Audio-Ms, X-Total-Ms, X-Frames).
  call -D - -o "$out" -H "Content-Type: application/json" \
    -d "$(printf '{"text": %s, "format": "%s", "conversation_id": "%s"}' \
          "$(python3 -c 'import json,sys; print(json.dumps(sys.argv[1]))' "$text")" "$FORMAT" "$CONV")" \
    "$URL/generate" | grep -i '^x-'
done

echo "== state"; call "$URL/state?conversation_id=$CONV"; echo
