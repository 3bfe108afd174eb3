#!/usr/bin/env bash
# The service path against the engine alone on the lent GPU (issue 18), from a bundle of
# scripts/gpu-bundle.sh (targets infer-bench-cuda infer-bench-actors inferd infer-bench):
#   bash BUNDLE/gpu-svc.sh [engine] [actors] [two] [server] [server-llama]   (default: all)
# engine:       infer-bench-cuda, GPT-2 small shape and Llama-3.2-1B shape, batch 64 and 256
# actors:       infer-bench-actors (no network) at 1, 64, 256 tasks, and the 100-task table
# two:          two workers on one GPU: two engines alone at once, then the service's two workers
# server:       inferd over WebSocket and over SSE (/v1/completions, /v1/chat/completions),
#               64 and 256 in flight, 100 simultaneous requests, the 100-task serial table
# server-llama: inferd on the Llama-3.2-1B shape, 64 and 256 in flight (WS and SSE)
# Logs and --save-result files go to $OUT; the device has no network, models are synthetic.
set -uo pipefail
B=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-/tmp/gpu-out}
WORK=${GPU_WORK:-/tmp/gpu-work}
mkdir -p "$OUT" "$WORK"
STAGES=("$@")
[ ${#STAGES[@]} -eq 0 ] && STAGES=(engine actors two server server-llama)
export LD_LIBRARY_PATH="$B/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
if ldd "$B/bin/inferd" 2>&1 | grep -q "version .* not found"; then export LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$B/lib-fallback"; fi
G2=${G2:-synthetic:gpt2-small}
L1=${L1:-synthetic:llama3.2-1b}
BACKEND=${BACKEND:-cuda}  # cpu: a dry run of the script here
G2TOK=(--tokenizer-dir "$B/vocab")
[ "${G2#synthetic:gpt2}" = "$G2" ] && G2TOK=()  # a dry run with synthetic:tiny (its own vocabulary)
SRV=(--max-running 256 --max-batch-tokens 4096 --kv-memory-mb 8192 --queue-capacity 2048 --log-level warn ${SERVER_ARGS:-})
run() {  # run NAME TIMEOUT CMD...
  local name=$1 t=$2; shift 2
  echo "== $*" >>"$OUT/$name.log"
  local s=$SECONDS
  timeout "$t" "$@" >>"$OUT/$name.log" 2>&1
  echo "== rc=$? in $((SECONDS - s)) s" >>"$OUT/$name.log"
}
start_inferd() {  # start_inferd LOG ARGS... : sets PORT and IPID
  local log=$1; shift
  rm -f "$WORK/port"
  "$B/bin/inferd" --backend $BACKEND --listen 127.0.0.1:0 --port-file "$WORK/port" "${SRV[@]}" "$@" >"$OUT/$log.log" 2>&1 &
  IPID=$!
  for i in $(seq 1 240); do [ -s "$WORK/port" ] && break; kill -0 $IPID 2>/dev/null || break; sleep 0.25; done
  PORT=$(cat "$WORK/port" 2>/dev/null)
  for i in $(seq 1 600); do curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null && break; kill -0 $IPID 2>/dev/null || break; sleep 0.1; done
}
bench_loads() {  # bench_loads LOG TAG: WS and SSE at 64 and 256 in flight, 32 + 128 tokens
  local log=$1 tag=$2
  for url in "ws://127.0.0.1:$PORT/v1/stream" "http://127.0.0.1:$PORT/v1/completions"; do
    local k=${url%%:*}
    run "$log" 60 "$B/bin/infer-bench" --url "$url" -n 256 -c 64 --prompt-tokens 32 --max-tokens 128 \
      --warmup 256 --save-result "$OUT/$tag-$k-c64.json"
    run "$log" 60 "$B/bin/infer-bench" --url "$url" -n 1024 -c 256 --prompt-tokens 32 --max-tokens 128 \
      --save-result "$OUT/$tag-$k-c256.json"
  done
}
for st in "${STAGES[@]}"; do
  case $st in
    engine)
      run engine 120 "$B/bin/infer-bench-cuda" --model $G2 --batches 1,64,256 --prompt 32 --new 128
      run engine 120 "$B/bin/infer-bench-cuda" --model $L1 --batches 64,256 --prompt 32 --new 128
      ;;
    actors)
      for n in 1 64 256; do
        run actors 60 "$B/bin/infer-bench-actors" --backend cuda --model $G2 "${G2TOK[@]}" \
          --tasks $n --prompt 32 --new 128 --max-running 256 --max-batch-tokens 4096 --kv-memory-mb 4096 --skip-serial --repeat 2
      done
      run actors 60 "$B/bin/infer-bench-actors" --backend cuda --model $G2 "${G2TOK[@]}" \
        --tasks 100 --prompt 32 --new 64 --max-running 256 --max-batch-tokens 4096 --kv-memory-mb 4096 --skip-serial --repeat 3
      for n in 64 256; do
        run actors 90 "$B/bin/infer-bench-actors" --backend cuda --model $L1 --tokenizer-dir "$B/tokenizers/llama3_1" \
          --tasks $n --prompt 32 --new 128 --max-running 256 --max-batch-tokens 4096 --kv-memory-mb 8192 --skip-serial --repeat 2
      done
      ;;
    actors-sharing)
      # The same at 64 and 256 on CAF's sharing scheduler (runtime.actor_scheduler), for the comparison.
      for n in 64 256; do
        run actors-sharing 60 "$B/bin/infer-bench-actors" --backend cuda --model $G2 "${G2TOK[@]}" --caf-policy sharing \
          --tasks $n --prompt 32 --new 128 --max-running 256 --max-batch-tokens 4096 --kv-memory-mb 4096 --skip-serial --repeat 2
      done
      ;;
    two)
      # Two engines alone on the one GPU at once, then the service with two workers there.
      ( "$B/bin/infer-bench-cuda" --model $G2 --batches 256 --prompt 32 --new 128 >"$OUT/two-e0.log" 2>&1 & a=$!
        "$B/bin/infer-bench-cuda" --model $G2 --batches 256 --prompt 32 --new 128 >"$OUT/two-e1.log" 2>&1 & b=$!
        wait $a $b )
      run two 90 "$B/bin/infer-bench-actors" --backend cuda --model $G2 "${G2TOK[@]}" --workers 2 \
        --tasks 512 --prompt 32 --new 128 --max-running 256 --max-batch-tokens 4096 --kv-memory-mb 4096 --skip-serial --repeat 2
      ;;
    server)
      start_inferd inferd-g2 --model $G2 "${G2TOK[@]}" --chat-template "$B/chatml.jinja"
      bench_loads server g2
      # 100 simultaneous 32-token prompts, 64 new tokens (TTFT at a burst), WS then SSE, twice each.
      for url in "ws://127.0.0.1:$PORT/v1/stream" "http://127.0.0.1:$PORT/v1/completions"; do
        k=${url%%:*}
        for r in 1 2; do
          run server 30 "$B/bin/infer-bench" --url "$url" -n 100 -c 100 --prompt-tokens 32 --max-tokens 64 \
            --save-result "$OUT/g2-$k-burst100-$r.json"
        done
      done
      run server 30 "$B/bin/infer-bench" --url "http://127.0.0.1:$PORT/v1/chat/completions" -n 256 -c 64 \
        --prompt-tokens 32 --max-tokens 128 --save-result "$OUT/g2-chat-c64.json"
      [ -n "${SERIAL:-}" ] && run server 60 "$B/bin/infer-bench" --url "ws://127.0.0.1:$PORT/v1/stream" -n 100 --serial \
        --prompt-tokens 32 --max-tokens 64
      curl -s "http://127.0.0.1:$PORT/metrics" | grep -E "^infer_(step|engine|batch)" | head -20 >>"$OUT/server.log"
      kill -TERM $IPID; wait $IPID; echo "inferd exit: $?" >>"$OUT/server.log"
      ;;
    server-llama)
      start_inferd inferd-l1 --model $L1 --tokenizer-dir "$B/tokenizers/llama3_1"
      bench_loads server-llama l1
      kill -TERM $IPID; wait $IPID; echo "inferd exit: $?" >>"$OUT/server-llama.log"
      ;;
    *) echo "unknown stage $st" ;;
  esac
done
# The summaries in one place (the --save-result files hold the rows).
for f in "$OUT"/*.log; do echo "#### $f"; grep -vE "^\[20|^$" "$f" | head -80; done
# The per-request rows in one archive (the device returns a limited number of files).
( cd "$OUT" && ls *.json >/dev/null 2>&1 && tar czf rows.tgz *.json && rm -f *.json )
