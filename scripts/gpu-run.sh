#!/usr/bin/env bash
# Runs on the lent GPU machine, from the bundle made by scripts/gpu-bundle.sh:
#   bash .gpu-bundle/gpu-run.sh [env] [tests] [check] [llama] [bench] [bench-llama] [actors]
#        [server] [profile] [sampling] [prefix] [routing] [tokenizer] [backend-test]
#        [service-llama]   (default: env tests check bench)
# Each stage logs to $OUT/<stage>.log; results.jsonl collects the machine-readable figures.
# Stages go on after a failing one; the exit status is the number of failed stages.
set -uo pipefail
B=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
WORK=${GPU_WORK:-/tmp/gpu-work}
mkdir -p "$WORK"
STAGES=("$@")
[ ${#STAGES[@]} -eq 0 ] && STAGES=(env tests check bench)
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1

# cuBLAS(Lt) 13 comes from the machine: the CUDA toolkit or the pip wheel next to PyTorch.
cublas_dir=""
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/lib/x86_64-linux-gnu; do
  [ -e "$d/libcublasLt.so.13" ] && { cublas_dir=$d; break; }
done
if [ -z "$cublas_dir" ]; then
  f=$(python3 - <<'EOF' 2>/dev/null
import glob, os, site
for s in site.getsitepackages():
    for p in glob.glob(os.path.join(s, "nvidia", "**", "libcublasLt.so.13*"), recursive=True):
        print(os.path.dirname(p)); raise SystemExit
EOF
)
  cublas_dir=$f
fi
export LD_LIBRARY_PATH="$B/lib${cublas_dir:+:$cublas_dir}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# Our libstdc++ only where the machine's lacks a symbol version the binaries need.
# (Any bundled binary tells: a GPU_TARGETS bundle may hold only some of them.)
if ldd "$(ls "$B"/bin/* | head -1)" 2>&1 | grep -q "version .* not found"; then
  export LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$B/lib-fallback"
  echo "gpu-run: using the bundled libstdc++"
fi
failed=0
stage() {  # stage NAME TIMEOUT CMD...
  local name=$1 t=$2; shift 2
  echo "== $name: $*" | tee -a "$OUT/$name.log"
  local s=$SECONDS
  timeout "$t" "$@" >>"$OUT/$name.log" 2>&1
  local rc=$?
  echo "== $name: rc=$rc in $((SECONDS - s)) s" | tee -a "$OUT/$name.log"
  [ $rc -eq 0 ] || failed=$((failed + 1))
  return $rc
}

for st in "${STAGES[@]}"; do
  case $st in
    env)
      {
        date -u; echo "commit: $(cat "$B/COMMIT")"; echo "needs: $(cat "$B/GLIBC")"; ldd --version | head -1
        nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
        echo "cublasLt from: ${cublas_dir:-NOT FOUND}"
        python3 -c 'import torch, transformers, safetensors; print("torch", torch.__version__, "cuda", torch.version.cuda, "transformers", transformers.__version__, "safetensors", safetensors.__version__)'
        for b in "$B"/bin/*; do echo "$b"; ldd "$b" | grep -E "not found|cublas|cudart" ; done
      } >"$OUT/env.log" 2>&1
      cat "$OUT/env.log"
      ;;
    tests)
      stage tests 240 "$B/bin/test_cuda_kernels"
      stage tests 240 "$B/bin/test_cuda_llama_kernels"
      stage tests 240 "$B/bin/test_cuda_backend"
      if [ -x "$B/bin/test_cuda_sampling" ]; then stage tests 240 "$B/bin/test_cuda_sampling"; fi
      ;;
    check)
      # Small config and the gpt2-small config, seeded random weights, exported by
      # transformers to safetensors, loaded by our loader, compared in fp32 by PyTorch.
      for preset in small gpt2-small; do
        stage check 120 python3 "$B/gpu-hf.py" export --preset $preset --seed 1 --out "$WORK/$preset" --prompts 16
        stage check 120 "$B/bin/cuda-logits-dump" "$WORK/$preset" "$WORK/$preset/prompts.txt" "$WORK/$preset/cuda.bin" --steps 64
        stage check 300 "$B/bin/cuda-logits-dump" "$WORK/$preset" "$WORK/$preset/prompts.txt" "$WORK/$preset/cpu.bin" --steps 64 --backend cpu
        stage check 180 python3 "$B/gpu-hf.py" check --model "$WORK/$preset" --dump "$WORK/$preset/cuda.bin" \
          --cpu-dump "$WORK/$preset/cpu.bin" --json "$OUT/results.jsonl" --name $preset
      done
      ;;
    llama)
      # The Llama family: real configs (Llama-3.2-1B, Qwen2.5-0.5B, Qwen3-0.6B, 2-layer cuts
      # of GLM-4-9B-0414 and Mistral-7B), seeded random weights saved bf16 by transformers
      # (sharded past 1 GB), streamed by our loader, compared with transformers in fp32 and
      # against transformers' own bf16 error. LLAMA_CPU=0 skips the CPU backend's dumps.
      for preset in ${LLAMA_PRESETS:-qwen2.5-0.5b qwen3-0.6b llama3.2-1b glm4-9b-2l mistral-7b-2l-sw32}; do
        d="$WORK/$preset"
        stage llama 180 python3 "$B/gpu-hf.py" export --preset $preset --seed 1 --out "$d" --prompts 16 || continue
        stage llama 180 "$B/bin/cuda-logits-dump" "$d" "$d/prompts.txt" "$d/cuda.bin" --steps 64 --dtype ${LLAMA_DTYPE:-bf16}
        cpu_arg=()
        if [ "${LLAMA_CPU:-1}" != 0 ] && stage llama 300 "$B/bin/cuda-logits-dump" "$d" "$d/prompts.txt" "$d/cpu.bin" --steps 64 --backend cpu; then
          cpu_arg=(--cpu-dump "$d/cpu.bin")
        fi
        stage llama 300 python3 "$B/gpu-hf.py" check --model "$d" --dump "$d/cuda.bin" "${cpu_arg[@]}" \
          --json "$OUT/results.jsonl" --name $preset --dtype ${LLAMA_DTYPE:-bf16}
        rm -rf "$d"  # the disk holds a few of these, not all
      done
      grep -h "\] prefill\|\] transformers low\|\] cuda vs cpu\|mismatch" "$OUT/llama.log" || true
      ;;
    sampling)
      # Issue 16: the sampling controls' device tests, then their cost at the Llama-3.2-1B
      # shape: greedy, the full controls through the fused kernel, and through the sort path.
      stage sampling 180 "$B/bin/test_cuda_sampling"
      # A mode is sampling:sampler[:counts] (counts: device, the slots; host, uploaded each step).
      for mode in ${SAMPLING_MODES:-greedy:fused full:fused:device full:fused:host full:sort}; do
        IFS=: read -r m_samp m_samp_k m_counts <<<"$mode"
        stage sampling 150 "$B/bin/infer-bench-cuda" --model synthetic:llama3.2-1b --batches ${SAMPLING_BATCHES:-1,64,256} \
          --prompt 32 --new 64 --sampling $m_samp --sampler $m_samp_k --counts ${m_counts:-device} --json "$OUT/results.jsonl"
      done
      [ "${SAMPLING_BACKEND_TEST:-1}" != 0 ] && stage sampling 240 "$B/bin/test_cuda_backend"
      grep -h "^ *[0-9]\|sort path\|== sampling\|\[doctest\]\|rows \|ERROR\|FAIL" "$OUT/sampling.log" || true
      ;;
    sampling-ncu)
      # The fused sampler under Nsight Compute (when the machine has it): its batch-256 x
      # 128k launch of test_cuda_sampling's kernel case, the sections that say what bounds it.
      if command -v ncu >/dev/null; then
        stage sampling-ncu 240 ncu --kernel-name regex:sample_fused --launch-skip ${NCU_SKIP:-0} --launch-count 1 \
          --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
          --section SchedulerStats --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis \
          "$B/bin/test_cuda_sampling" -tc="*batch 256*"
      else
        echo "no ncu on this machine" >>"$OUT/sampling-ncu.log"
      fi
      ;;
    bench-llama)
      # Engine throughput on the Llama family's real shapes (synthetic weights, bf16).
      for m in ${LLAMA_BENCH:-synthetic:llama3.2-1b synthetic:qwen3-0.6b}; do
        stage bench-llama 200 "$B/bin/infer-bench-cuda" --model $m --batches ${LLAMA_BATCHES:-1,64,256} \
          --prompt 32 --new 128 --json "$OUT/results.jsonl"
      done
      ;;
    bench-engine)
      # The engine table alone (no transformers generate()): the GPT-2 regression figures.
      [ -d "$WORK/gpt2-small" ] || python3 "$B/gpu-hf.py" export --preset gpt2-small --seed 1 --out "$WORK/gpt2-small" --prompts 16 >>"$OUT/bench-engine.log" 2>&1
      stage bench-engine 200 "$B/bin/infer-bench-cuda" --model "$WORK/gpt2-small" --batches 1,8,32,64,128,256 \
        --prompt 32 --new 128 --max-model-len 1024 --json "$OUT/results.jsonl"
      # A baseline binary carried beside ours (BASELINE_BENCH), same machine, same weights.
      # Alternated (baseline, ours) x BASELINE_REPEAT so that drift of the card hits both.
      if [ -n "${BASELINE_BENCH:-}" ] && [ -x "$BASELINE_BENCH" ]; then
        for i in $(seq 1 ${BASELINE_REPEAT:-1}); do
          stage bench-engine 200 "$BASELINE_BENCH" --model "$WORK/gpt2-small" --batches 1,8,32,64,128,256 \
            --prompt 32 --new 128
          stage bench-engine 200 "$B/bin/infer-bench-cuda" --model "$WORK/gpt2-small" --batches 1,8,32,64,128,256 \
            --prompt 32 --new 128 --max-model-len 1024
        done
      fi
      cat "$OUT/bench-engine.log"
      ;;
    bench)
      [ -d "$WORK/gpt2-small" ] || python3 "$B/gpu-hf.py" export --preset gpt2-small --seed 1 --out "$WORK/gpt2-small" --prompts 16 >>"$OUT/bench.log" 2>&1
      stage bench 300 "$B/bin/infer-bench-cuda" --model "$WORK/gpt2-small" --batches 1,8,32,64,128,256 \
        --prompt 32 --new 128 --json "$OUT/results.jsonl"
      stage bench 300 python3 "$B/gpu-hf.py" bench --model "$WORK/gpt2-small" --batches 1,64,256 \
        --prompt 32 --new 128 --json "$OUT/results.jsonl" --ours "$OUT/results.jsonl"
      ;;
    actors)
      # Through the actor pipeline (service -> batcher -> worker -> engine actor) on the GPU:
      # decode throughput at each batch size (N tasks submitted together), then the
      # 100-task serial-versus-together table.
      [ -d "$WORK/gpt2-small" ] || python3 "$B/gpu-hf.py" export --preset gpt2-small --seed 1 --out "$WORK/gpt2-small" --prompts 16 >>"$OUT/actors.log" 2>&1
      for n in ${ACTOR_BATCHES:-1 8 32 64 128 256}; do
        stage actors 120 "$B/bin/infer-bench-actors" --backend cuda --model "$WORK/gpt2-small" --tokenizer-dir "$B/vocab" \
          --tasks $n --prompt 32 --new 128 --max-running 256 --max-batch-tokens 2048 --kv-memory-mb 4096 --skip-serial
      done
      stage actors 180 "$B/bin/infer-bench-actors" --backend cuda --model "$WORK/gpt2-small" --tokenizer-dir "$B/vocab" \
        --tasks 100 --prompt 32 --new 64 --max-running 256 --max-batch-tokens 4096 --kv-memory-mb 4096 --repeat 3
      ;;
    server)
      # The same 100 tasks through inferd over WebSocket, measured by infer-bench.
      [ -d "$WORK/gpt2-small" ] || python3 "$B/gpu-hf.py" export --preset gpt2-small --seed 1 --out "$WORK/gpt2-small" --prompts 16 >>"$OUT/server.log" 2>&1
      rm -f "$WORK/port"
      "$B/bin/inferd" --model "$WORK/gpt2-small" --tokenizer-dir "$B/vocab" --backend cuda --listen 127.0.0.1:0 \
        --port-file "$WORK/port" --max-running 256 --max-batch-tokens 4096 --kv-memory-mb 4096 --queue-capacity 1024 \
        --log-level warn >"$OUT/inferd.log" 2>&1 &
      ipid=$!
      for i in $(seq 1 120); do [ -s "$WORK/port" ] && break; sleep 0.5; done
      # Measure from readiness: before it, the first run would time the model load too.
      for i in $(seq 1 600); do curl -sf "http://127.0.0.1:$(cat "$WORK/port")/readyz" >/dev/null && break; sleep 0.1; done
      url="ws://127.0.0.1:$(cat "$WORK/port" 2>/dev/null)/v1/stream"
      stage server 60 "$B/bin/infer-bench" --url "$url" --requests 100 --concurrency 100 --prompt-tokens 32 --max-tokens 64
      stage server 60 "$B/bin/infer-bench" --url "$url" --requests 100 --concurrency 100 --prompt-tokens 32 --max-tokens 64
      stage server 60 "$B/bin/infer-bench" --url "$url" --requests 100 --concurrency 100 --prompt-tokens 32 --max-tokens 64 --json
      stage server 120 "$B/bin/infer-bench" --url "$url" --requests 100 --serial --prompt-tokens 32 --max-tokens 64
      kill -TERM $ipid; wait $ipid; echo "inferd exit: $?" >>"$OUT/server.log"
      ;;
    server-llama)
      # inferd on the CUDA backend with a Llama-family model streamed to the device: a greedy
      # completion over HTTP, and the start-up line naming the type and context served.
      rm -f "$WORK/port"
      "$B/bin/inferd" --model ${SERVER_MODEL:-synthetic:llama-tiny} --backend cuda --listen 127.0.0.1:0 \
        --port-file "$WORK/port" --max-model-len 512 --kv-memory-mb 1024 >"$OUT/inferd-llama.log" 2>&1 &
      ipid=$!
      for i in $(seq 1 240); do [ -s "$WORK/port" ] && break; sleep 0.25; done
      for i in $(seq 1 600); do curl -sf "http://127.0.0.1:$(cat "$WORK/port" 2>/dev/null)/readyz" >/dev/null && break; sleep 0.1; done
      stage server-llama 30 curl -sf "http://127.0.0.1:$(cat "$WORK/port" 2>/dev/null)/v1/completions" \
        -d '{"prompt":"Hello","max_tokens":16,"temperature":0}'
      kill -TERM $ipid; wait $ipid; echo "inferd exit: $?" >>"$OUT/server-llama.log"
      grep -i "model \|dtype\|bf16\|error" "$OUT/inferd-llama.log" | head -5 >>"$OUT/server-llama.log"
      cat "$OUT/server-llama.log"
      ;;
    service-llama)
      # The service end to end on real shapes: inferd's greedy tokens over WebSocket and
      # /v1/completions against the CUDA engine alone (scripts/gpu-service-check.py).
      for m in ${SERVICE_MODELS:-synthetic:llama3.2-1b synthetic:qwen2.5-0.5b synthetic:qwen3-0.6b}; do
        case $m in *llama3*) tk=llama3_1 ;; *qwen*) tk=qwen3 ;; *) tk= ;; esac
        stage service-llama 240 python3 "$B/gpu-service-check.py" --bin "$B/bin" --model $m \
          --work "$WORK/service-${m#synthetic:}" --json "$OUT/results.jsonl" ${tk:+--tokenizer-dir "$B/tokenizers/$tk"}
      done
      grep -h "PASS\|FAIL\|!=" "$OUT/service-llama.log" || true
      ;;
    prefix)
      # Prefix caching (issue 19), engine + scheduler: throughput of a 90%-shared workload and
      # TTFT of a cached 2,000-token context (GPT-2: its 1,024 positions cap it) against a cold
      # one, caching off then on (infer-bench-cuda --prefix; PREFIX_ARGS adds options).
      for m in ${PREFIX_MODELS:-synthetic:gpt2-small synthetic:llama3.2-1b}; do
        stage prefix 200 "$B/bin/infer-bench-cuda" --prefix --model $m --json "$OUT/results.jsonl" ${PREFIX_ARGS:-}
      done
      cat "$OUT/prefix.log"
      ;;
    routing)
      # Cache-aware routing (issue 19) through the actors: 2 CUDA workers on the device, 64
      # system prompts (more than one worker keeps beside its 32 running sequences; at 24
      # both workers hold all of them and the hit rates match), all tasks submitted at once;
      # prefix_affinity_tokens 0 (load only) against the default (bench/RESULTS.md).
      for aff in ${ROUTING_AFFINITY:-0 64}; do
        stage routing 120 "$B/bin/infer-bench-actors" --backend cuda --model synthetic:gpt2-small --tokenizer-dir "$B/vocab" \
          --workers 2 --tasks ${ROUTING_TASKS:-2000} --prompt 256 --new 16 --shared 90 --prefixes ${ROUTING_PREFIXES:-64} \
          --skip-serial --max-running 32 --max-batch-tokens 2048 --kv-memory-mb ${ROUTING_KV_MB:-400} --prefix-affinity-tokens $aff
      done
      grep -h "together \|engine busy\|prefix cache" "$OUT/routing.log" || true
      ;;
    tokenizer)
      # Our tokenizers and chat templates against Python tokenizers / transformers (issue 15):
      # every tokenizer folder in the bundle (BUNDLE_TOKENIZERS at bundle time) and GPT-2's.
      dirs=(--dir "gpt2=$B/vocab")
      for d in "$B"/tokenizers/*/; do dirs+=(--dir "$(basename "$d")=$d"); done
      stage tokenizer 240 python3 "$B/gpu-tokenizer-check.py" --bin "$B/bin" "${dirs[@]}" --json "$OUT/results.jsonl"
      grep -h "PASS\|FAIL\|tokenizers " "$OUT/tokenizer.log" || true
      ;;
    backend-test)
      # test_cuda_backend alone (prefix caching on the device, gpu_memory_utilization sizing).
      stage backend-test 240 "$B/bin/test_cuda_backend" --success=false
      grep -h "MESSAGE\|gpu_memory_utilization 0.2\|greedy tokens\|test cases\|FAILED\|ERROR" "$OUT/backend-test.log" | head -40 || true
      ;;
    cluster)
      # Messaging overhead of a remote worker node: local worker vs worker node on loopback.
      [ -d "$WORK/gpt2-small" ] || python3 "$B/gpu-hf.py" export --preset gpt2-small --seed 1 --out "$WORK/gpt2-small" --prompts 16 >>"$OUT/cluster.log" 2>&1
      CONCURRENCY=${CLUSTER_CONCURRENCY:-128} REQUESTS=${CLUSTER_REQUESTS:-512} MAX_RUNNING=256 \
        stage cluster 300 bash "$B/bench-cluster.sh" "$B/bin" "$OUT/cluster" -- --backend cuda --model "$WORK/gpt2-small" \
        --tokenizer-dir "$B/vocab" --max-batch-tokens 4096 --kv-memory-mb 4096 --queue-capacity 1024 --log-level warn
      cat "$OUT/cluster.log"
      ;;
    profile)
      # Per-kernel GPU time of decode steps (ncu replays each kernel of a graph as a node):
      # PROFILE_BATCHES decode steps at each batch size, after the warm-up pass.
      for pb in ${PROFILE_BATCHES:-1 64 256}; do
        stage profile 200 ncu --launch-skip ${PROFILE_SKIP:-2900} --launch-count 140 --csv --page raw \
          --metrics gpu__time_duration.sum --log-file "$OUT/profile-b$pb.csv" \
          "$B/bin/infer-bench-cuda" --model synthetic:gpt2-small --batches $pb --prompt 32 --new 24
      done
      ;;
    *) echo "unknown stage $st"; failed=$((failed + 1)) ;;
  esac
done
echo "gpu-run: $failed failed stage(s)"
exit $failed
