#!/usr/bin/env bash
# Messaging overhead of a remote worker node: the same model, backend and load through
#   local:  inferd --workers 1                      (worker in the front's process)
#   remote: inferd --role worker  +  inferd --workers 0 --worker-node 127.0.0.1:PORT  (loopback)
# driven by infer-bench over WebSocket, serial (inter-token latency of one stream) and with
# N requests in flight (throughput). Prints one line per run and a JSON file per run in OUT.
#
#   bench/bench-cluster.sh [BIN_DIR] [OUT_DIR] -- [extra inferd flags, e.g. --backend cuda --model synthetic:gpt2-small]
# Environment: REQUESTS (200), CONCURRENCY (64), MAX_TOKENS (64), PROMPT_TOKENS (32), SERIAL_REQUESTS (20)
set -euo pipefail
BIN=${1:-build/bin}
OUT=${2:-build/bench-cluster}
shift 2 2>/dev/null || shift $#
[[ "${1:-}" == "--" ]] && shift
EXTRA=("$@")
[[ ${#EXTRA[@]} -eq 0 ]] && EXTRA=(--backend cpu --model synthetic:tiny)
REQUESTS=${REQUESTS:-200}
CONCURRENCY=${CONCURRENCY:-64}
MAX_TOKENS=${MAX_TOKENS:-64}
PROMPT_TOKENS=${PROMPT_TOKENS:-32}
SERIAL_REQUESTS=${SERIAL_REQUESTS:-20}
MAX_RUNNING=${MAX_RUNNING:-128}
mkdir -p "$OUT"
TMP=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$TMP"; }
trap cleanup EXIT

wait_file() { for _ in $(seq 1 600); do [[ -s "$1" ]] && return 0; sleep 0.1; done; echo "no $1" >&2; return 1; }
wait_ready() {
  for _ in $(seq 1 1200); do
    curl -sf "http://127.0.0.1:$1/readyz" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "inferd on $1 never became ready" >&2; return 1
}

run_bench() {  # name port
  local name=$1 port=$2
  # Warm-up (first-step allocations, CUDA graphs), not recorded.
  "$BIN/infer-bench" --url "ws://127.0.0.1:$port/v1/stream" -n 16 -c 16 --max-tokens 8 >/dev/null
  "$BIN/infer-bench" --url "ws://127.0.0.1:$port/v1/stream" -n "$SERIAL_REQUESTS" --serial \
    --prompt-tokens "$PROMPT_TOKENS" --max-tokens "$MAX_TOKENS" --json > "$OUT/$name-serial.json"
  "$BIN/infer-bench" --url "ws://127.0.0.1:$port/v1/stream" -n "$REQUESTS" -c "$CONCURRENCY" --connections 4 \
    --prompt-tokens "$PROMPT_TOKENS" --max-tokens "$MAX_TOKENS" --json > "$OUT/$name-c$CONCURRENCY.json"
  python3 - "$name" "$OUT/$name-serial.json" "$OUT/$name-c$CONCURRENCY.json" <<'EOF'
import json, sys
name, s, c = sys.argv[1], json.load(open(sys.argv[2])), json.load(open(sys.argv[3]))
for label, r in (("serial", s), (f"c{c['concurrency']}", c)):
    assert r["errors"] == 0 and r["unfinished"] == 0, r
    print(f"{name:7s} {label:6s} {r['tokens_per_s']:10.1f} tok/s  ITL p50 {r['itl_ms']['p50']:.3f} ms "
          f"p90 {r['itl_ms']['p90']:.3f} ms  TTFT p50 {r['ttft_ms']['p50']:.2f} ms  wall {r['wall_s']:.2f} s")
EOF
}

# local
"$BIN/inferd" --listen 127.0.0.1:0 --port-file "$TMP/local.port" --workers 1 --max-running "$MAX_RUNNING" "${EXTRA[@]}" \
  >"$OUT/local.log" 2>&1 & PIDS+=($!)
wait_file "$TMP/local.port"; LP=$(cat "$TMP/local.port"); wait_ready "$LP"
run_bench local "$LP"
kill "${PIDS[-1]}"; wait "${PIDS[-1]}" 2>/dev/null || true

# remote (loopback)
"$BIN/inferd" --role worker --listen 127.0.0.1:0 --port-file "$TMP/worker.port" --workers 1 --max-running "$MAX_RUNNING" \
  "${EXTRA[@]}" >"$OUT/worker.log" 2>&1 & PIDS+=($!)
wait_file "$TMP/worker.port"; WP=$(cat "$TMP/worker.port")
"$BIN/inferd" --listen 127.0.0.1:0 --port-file "$TMP/front.port" --workers 0 --worker-node "127.0.0.1:$WP" \
  --max-running "$MAX_RUNNING" "${EXTRA[@]}" >"$OUT/front.log" 2>&1 & PIDS+=($!)
wait_file "$TMP/front.port"; FP=$(cat "$TMP/front.port"); wait_ready "$FP"
run_bench remote "$FP"
