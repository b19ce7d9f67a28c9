#!/usr/bin/env bash
# Fuzz the running server's OpenAPI schema with schemathesis (in its own venv: its
# dependencies stay out of the server's) and fail on any 5xx. Bounded, loopback only.
#   bash loadtests/fuzz.sh [SECONDS]     # default 420
# Starts its own server: eager, 1k window, 16-token default cap (valid fuzzed requests
# decode briefly), API key on; results in loadtests/results/fuzz/.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_BUDGET=${1:-420}
ST_VENV=${ST_VENV:-.venv-schemathesis}
OUT=loadtests/results/fuzz
PORT=${PORT:-8040}
KEY=fuzz-key

[[ -x "$ST_VENV/bin/st" ]] || { python3 -m venv "$ST_VENV" &&
    "$ST_VENV/bin/pip" install --quiet --disable-pip-version-check schemathesis==4.32.5; }
mkdir -p "$OUT"
.venv/bin/longserve serve --host 127.0.0.1 --port "$PORT" --enforce-eager --max-model-len 1024 \
    --kv-cache-memory 512MiB --default-max-tokens 16 --api-key "$KEY" > "$OUT/server.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null' EXIT
until curl -sf "http://127.0.0.1:$PORT/ready" >/dev/null; do
    kill -0 $SERVER 2>/dev/null || { tail -30 "$OUT/server.log"; exit 1; }
    sleep 2
done
"$ST_VENV/bin/st" run "http://127.0.0.1:$PORT/openapi.json" -H "Authorization: Bearer $KEY" \
    --checks not_a_server_error --phases examples,coverage,fuzzing --max-time "$SECONDS_BUDGET" \
    --workers 2 --request-timeout 120 --continue-on-failure --report junit,ndjson \
    --report-dir "$OUT" ${ST_ARGS:-} | tee "$OUT/summary.txt"
status=${PIPESTATUS[0]}
curl -sf "http://127.0.0.1:$PORT/ready" && echo " (server still ready)"
grep -c '"status_code": 5' "$OUT"/*.ndjson 2>/dev/null || true
exit "$status"
