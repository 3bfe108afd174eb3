// bench-cuda: decode throughput of the CUDA backend, engine only.
//
// For each batch size: B random prompts of --prompt tokens, one ragged prefill step, then
// greedy decode until each sequence has --new tokens. A first pass warms up (captures
// the CUDA graphs of every bucket and attention split), the second is timed. Prints
// decode step time, decode tokens/s, end-to-end tokens/s and the fraction of the memory
// bandwidth floor: (weight bytes + KV bytes read per step) / step time, against a
// device-to-device copy measured here (bytes read + written per second).
//
//   bench-cuda [--model synthetic:gpt2-small] [--batches 1,8,32,64,128,256]
//              [--prompt 32] [--new 128] [--dtype auto|bf16|fp16] [--max-model-len N]
//              [--json results.jsonl] [--sampling greedy|full] [--sampler fused|sort]
//              [--counts device|host]
//   bench-cuda --prefix [--model M] [--requests 256] [--prompt 1000] [--shared 0.9]
//              [--max-tokens 16] [--concurrency 64] [--ttft-prefix 2000]
//              [--max-batch-tokens 2048] [--prefill-chunk 2048] [--json F]
// --prefix: prefix caching off versus on through the scheduler (bench/prefix-workload.hpp):
// throughput of a workload sharing --shared of every prompt, and the time to first token
// of a request whose --ttft-prefix context is cached against one whose is not.
// --sampling full: every sequence samples at temperature 1 with top_p 0.95, min_p 0.01,
// presence/frequency/repetition penalties over its tokens and 5 logprobs (issue 16): the
// step time against greedy's is the cost of the sampling controls. --sampler sort runs them
// through the sort path the fused kernel replaced (its fallback), for the before/after.
// The weights are streamed to the device (any architecture, synthetic or a directory);
// the context served is --max-model-len (default: prompt + new, rounded to a KV block).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <random>
#include <sstream>
#include <string>
#include <unordered_map>
#include <vector>

#include <cuda_runtime_api.h>

#include "bench/prefix-workload.hpp"
#include "model/weights.hpp"
#include "gpu/cuda-backend.hpp"

using namespace infer;
using clk = std::chrono::steady_clock;

namespace {

double seconds(clk::time_point a, clk::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// Device-to-device copy rate in bytes moved (read + write) per second.
double measure_copy_rate() {
  const size_t n = size_t(1) << 30;
  void *a = nullptr, *b = nullptr;
  if (cudaMalloc(&a, n) != cudaSuccess || cudaMalloc(&b, n) != cudaSuccess) return 0;
  cudaMemset(a, 1, n);
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0);
  cudaEventCreate(&e1);
  cudaMemcpy(b, a, n, cudaMemcpyDeviceToDevice);
  const int reps = 10;
  cudaEventRecord(e0);
  for (int i = 0; i < reps; ++i) cudaMemcpyAsync(b, a, n, cudaMemcpyDeviceToDevice);
  cudaEventRecord(e1);
  cudaEventSynchronize(e1);
  float ms = 0;
  cudaEventElapsedTime(&ms, e0, e1);
  cudaFree(a);
  cudaFree(b);
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  return 2.0 * double(n) * reps / (ms / 1e3);
}

struct run_result {
  double prefill_s = 0, decode_s = 0;
  int decode_steps = 0;
  double kv_bytes_read = 0;  // summed over the decode steps
  bool ok = true;
};

bool g_full_sampling = false;
bool g_sort_sampler = false;
bool g_host_counts = false;  // --counts host: the penalty lists uploaded every step (before issue 16's slots)

// A sequence's penalty entries as the scheduler keeps them: one per distinct token, updated
// as each token comes (the host cost of the controls is the scheduler's, not a rescan).
struct penalty_list {
  std::vector<logit_adjust> adj;
  std::unordered_map<int32_t, size_t> at;
  void count(int32_t tok, bool generated) {
    auto [it, fresh] = at.emplace(tok, adj.size());
    if (fresh) adj.push_back(logit_adjust{tok, 0, 0.0f, 1});
    if (generated) ++adj[it->second].count;
  }
};

run_result generate(backend& be, int B, int prompt, int n_new, uint64_t seed) {
  const model_config& cfg = be.config();
  const int bs = be.kv().block_size;
  const int max_blocks = (prompt + n_new + bs - 1) / bs;
  std::mt19937 rng{uint32_t(seed)};
  std::vector<std::vector<int32_t>> toks(B), blocks(B);
  for (int s = 0; s < B; ++s) {
    toks[s].resize(prompt);
    for (auto& t : toks[s]) t = int32_t(rng() % cfg.n_vocab);
    for (int i = 0; i < max_blocks; ++i) blocks[s].push_back(s * max_blocks + i);
  }
  sampling_params greedy;
  if (g_full_sampling) {
    greedy.temperature = 1.0f;
    greedy.top_p = 0.95f;
    greedy.min_p = 0.01f;
    greedy.presence_penalty = 0.5f;
    greedy.frequency_penalty = 0.5f;
    greedy.repetition_penalty = 1.1f;
    greedy.logprobs = 5;
    greedy.seed = seed;
  }
  std::vector<penalty_list> pen(g_full_sampling ? B : 0);
  for (int s = 0; s < int(pen.size()); ++s)
    for (int32_t t : toks[s]) pen[s].count(t, false);
  step_batch b;
  step_output out;
  run_result r;
  b.reset(max_blocks);
  // Device-held counts (as the scheduler on the CUDA backend): the list goes out with the
  // first sampled step (the load), later steps name the slot only.
  const bool slots = g_full_sampling && !g_host_counts && be.device_token_counts();
  for (int s = 0; s < B; ++s) b.add(0, toks[s], blocks[s], true, greedy, 0,
          g_full_sampling ? std::span<const logit_adjust>(pen[s].adj) : std::span<const logit_adjust>{},
          slots ? s : -1, slots);
  auto t0 = clk::now();
  if (auto st = be.step(b, out); !st) {
    std::fprintf(stderr, "prefill: %s\n", st.message.c_str());
    r.ok = false;
    return r;
  }
  auto t1 = clk::now();
  r.prefill_s = seconds(t0, t1);
  for (int s = 0; s < B; ++s) {
    toks[s].push_back(out.tokens[s]);
    if (g_full_sampling) pen[s].count(out.tokens[s], true);
  }
  const double kv_per_pos = double(cfg.kv_bytes_per_token(2));  // 16-bit K and V
  for (int k = 1; k < n_new; ++k) {
    b.reset(max_blocks);
    for (int s = 0; s < B; ++s) {
      const int32_t past = int32_t(toks[s].size() - 1);
      b.add(past, std::span<const int32_t>(&toks[s].back(), 1), blocks[s], true, greedy, uint64_t(k),
            g_full_sampling && !slots ? std::span<const logit_adjust>(pen[s].adj) : std::span<const logit_adjust>{},
            slots ? s : -1, false);
      r.kv_bytes_read += kv_per_pos * (past + 1);
    }
    if (auto st = be.step(b, out); !st) {
      std::fprintf(stderr, "decode: %s\n", st.message.c_str());
      r.ok = false;
      return r;
    }
    for (int s = 0; s < B; ++s) {
      toks[s].push_back(out.tokens[s]);
      if (g_full_sampling) pen[s].count(out.tokens[s], true);
    }
    ++r.decode_steps;
  }
  r.decode_s = seconds(t1, clk::now());
  return r;
}

// --prefix: prefix caching off versus on (bench/prefix-workload.hpp), with the
// scheduler's prefill in chunks of up to --prefill-chunk tokens within --max-batch-tokens.
int prefix_main(const std::string& model, const std::string& dtype, int max_len, const bench::prefix_opts& po,
                const std::string& json) {
  load_options lo;
  lo.max_model_len = max_len > 0 ? max_len : (std::max(po.prompt + po.max_tokens, po.ttft_prefix + 24) + 15) / 16 * 16;
  backend_options o;
  o.kind = "cuda";
  o.kv_block_size = 16;
  o.dtype = dtype;
  o.kv_blocks = bench::prefix_kv_blocks(po, lo.max_model_len, 16);
  auto be = make_cuda_backend(model, lo, o);
  if (!be) {
    std::fprintf(stderr, "backend: %s\n", be.error().message.c_str());
    return 1;
  }
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, 0);
  const char* dt = cuda_backend_dtype(*be.value());
  std::printf("device: %s, model %s (%s, %s), context %d, KV blocks %d\n", prop.name, model.c_str(),
              arch_name(be.value()->config().arch), dt, be.value()->config().n_ctx, be.value()->kv().n_blocks);
  std::printf("prefix caching: %d requests of %d tokens (%.0f%% shared), %d generated each, %d at a time; "
              "steps of up to %d tokens, prefill chunks of up to %d\n\n",
              po.requests, po.prompt, po.shared * 100, po.max_tokens, po.concurrency, po.max_batch_tokens,
              po.prefill_chunk);
  std::printf("| model | caching | requests/s | generated tokens/s | tokens computed | prompt tokens cached | "
              "TTFT context | TTFT cold ms | TTFT cached ms |\n");
  std::printf("|---|---|---:|---:|---:|---:|---:|---:|---:|\n");
  std::FILE* jf = json.empty() ? nullptr : std::fopen(json.c_str(), "a");
  // Unmeasured first: a short run of the same shapes (cuBLAS heuristics, buffers).
  bench::prefix_opts warm = po;
  warm.requests = std::min(po.requests, po.concurrency);
  warm.ttft_repeat = 1;
  warm.ttft_warmup = false;
  (void)bench::run_prefix_workload(*be.value(), warm, true);
  double base = 0;
  for (bool caching : {false, true}) {
    bench::prefix_row r = bench::run_prefix_workload(*be.value(), po, caching);
    const double rps = po.requests / r.seconds;
    if (!caching) base = rps;
    char gain[32] = "";
    if (caching && base > 0) std::snprintf(gain, sizeof gain, " (%.2fx)", rps / base);
    std::printf("| %s | %s | %.2f%s | %.0f | %lld | %lld | %d+16 | %.2f | %.2f |\n", model.c_str(),
                caching ? "on" : "off", rps, gain, double(po.requests) * po.max_tokens / r.seconds,
                (long long)r.computed, (long long)r.cached, r.ttft_prefix, r.ttft_cold_ms, r.ttft_warm_ms);
    std::fflush(stdout);
    if (jf)
      std::fprintf(jf,
                   "{\"bench\":\"cuda-prefix\",\"device\":\"%s\",\"model\":\"%s\",\"dtype\":\"%s\",\"caching\":%s,"
                   "\"requests\":%d,\"prompt\":%d,\"shared\":%.3f,\"max_tokens\":%d,\"concurrency\":%d,"
                   "\"requests_s\":%.3f,\"tokens_computed\":%lld,\"prompt_tokens_cached\":%lld,"
                   "\"ttft_context\":%d,\"ttft_cold_ms\":%.3f,\"ttft_cached_ms\":%.3f}\n",
                   prop.name, model.c_str(), dt, caching ? "true" : "false", po.requests, po.prompt, po.shared,
                   po.max_tokens, po.concurrency, rps, (long long)r.computed, (long long)r.cached, r.ttft_prefix,
                   r.ttft_cold_ms, r.ttft_warm_ms);
  }
  if (jf) std::fclose(jf);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::string model = "synthetic:gpt2-small", batches = "1,8,32,64,128,256", json, dtype = "auto";
  int prompt = 32, n_new = 128, max_len = 0;
  bool prefix = false;
  bench::prefix_opts po;
  po.requests = 256;
  po.prompt = 1000;
  po.concurrency = 64;
  po.max_batch_tokens = 2048;
  po.prefill_chunk = 2048;
  po.ttft_repeat = 3;
  po.ttft_warmup = true;
  for (int i = 1; i < argc; ++i) {
    auto val = [&]() -> const char* {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "%s needs a value\n", argv[i]);
        std::exit(2);
      }
      return argv[++i];
    };
    if (!std::strcmp(argv[i], "--prefix")) prefix = true;
    else if (!std::strcmp(argv[i], "--model")) model = val();
    else if (!std::strcmp(argv[i], "--batches")) batches = val();
    else if (!std::strcmp(argv[i], "--prompt")) prompt = po.prompt = std::atoi(val());
    else if (!std::strcmp(argv[i], "--new") || !std::strcmp(argv[i], "--max-tokens")) n_new = po.max_tokens = std::atoi(val());
    else if (!std::strcmp(argv[i], "--json")) json = val();
    else if (!std::strcmp(argv[i], "--dtype")) dtype = val();
    else if (!std::strcmp(argv[i], "--max-model-len")) max_len = std::atoi(val());
    else if (!std::strcmp(argv[i], "--sampling")) g_full_sampling = !std::strcmp(val(), "full");
    else if (!std::strcmp(argv[i], "--sampler")) g_sort_sampler = !std::strcmp(val(), "sort");
    else if (!std::strcmp(argv[i], "--counts")) g_host_counts = !std::strcmp(val(), "host");
    else if (!std::strcmp(argv[i], "--requests")) po.requests = std::max(1, std::atoi(val()));
    else if (!std::strcmp(argv[i], "--concurrency")) po.concurrency = std::max(1, std::atoi(val()));
    else if (!std::strcmp(argv[i], "--shared")) po.shared = std::clamp(std::atof(val()), 0.0, 1.0);
    else if (!std::strcmp(argv[i], "--ttft-prefix")) po.ttft_prefix = std::max(1, std::atoi(val()));
    else if (!std::strcmp(argv[i], "--max-batch-tokens")) po.max_batch_tokens = std::max(16, std::atoi(val()));
    else if (!std::strcmp(argv[i], "--prefill-chunk")) po.prefill_chunk = std::max(16, std::atoi(val()));
    else {
      std::fprintf(stderr, "unknown option %s\n", argv[i]);
      return 2;
    }
  }
  if (!cuda_device_available()) {
    std::printf("bench-cuda: no CUDA device\n");
    return 77;
  }
  if (prefix) return prefix_main(model, dtype, max_len, po, json);
  std::vector<int> Bs;
  {
    std::stringstream ss(batches);
    std::string x;
    while (std::getline(ss, x, ',')) Bs.push_back(std::atoi(x.c_str()));
  }
  int maxB = 1;
  for (int b : Bs) maxB = std::max(maxB, b);
  backend_options o;
  o.kind = "cuda";
  o.kv_block_size = 16;
  o.kv_blocks = maxB * ((prompt + n_new + 15) / 16);
  o.dtype = dtype;
  load_options lo;
  lo.max_model_len = max_len > 0 ? max_len : (prompt + n_new + 15) / 16 * 16;
  auto be = make_cuda_backend(model, lo, o);
  if (!be && model.rfind("synthetic:", 0) != 0) {
    // Same shape, our own seeded weights: the figures do not depend on the values.
    std::fprintf(stderr, "load %s: %s; using synthetic:gpt2-small\n", model.c_str(),
                 be.error().message.c_str());
    model = "synthetic:gpt2-small";
    be = make_cuda_backend(model, lo, o);
  }
  if (!be) {
    std::fprintf(stderr, "backend: %s\n", be.error().message.c_str());
    return 1;
  }
  if (g_sort_sampler) cuda_backend_set_fused_sampling(*be.value(), false);
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, 0);
  const double copy_rate = measure_copy_rate();
  const auto* st = cuda_backend_get_stats(*be.value());
  const double weight_bytes = double(st->weight_bytes);
  const char* dt = cuda_backend_dtype(*be.value());
  std::printf("device: %s, d2d copy %.0f GB/s (read+write), weights %.1f MB %s, model %s (%s)\n",
              prop.name, copy_rate / 1e9, weight_bytes / 1e6, dt, model.c_str(),
              arch_name(be.value()->config().arch));
  std::printf("%6s %12s %14s %14s %12s %10s %9s\n", "batch", "step_ms", "decode_tok/s",
              "e2e_tok/s", "prefill_ms", "bw_floor", "gpu_busy");
  std::FILE* jf = json.empty() ? nullptr : std::fopen(json.c_str(), "a");
  for (int B : Bs) {
    if (!generate(*be.value(), B, prompt, n_new, 1).ok) return 1;  // warm-up: graphs, plans
    const double gpu0 = st->gpu_ms;
    run_result r = generate(*be.value(), B, prompt, n_new, 2);
    if (!r.ok) return 1;
    // Share of the run's wall time the stream was busy: the rest is host work between
    // steps (building the batch, staging, launch) with the GPU idle.
    const double busy = (st->gpu_ms - gpu0) / 1e3 / (r.prefill_s + r.decode_s);
    const double step = r.decode_s / r.decode_steps;
    const double decode_tps = B / step;
    const double e2e_tps = double(B) * n_new / (r.prefill_s + r.decode_s);
    const double bytes_per_step = weight_bytes + r.kv_bytes_read / r.decode_steps;
    const double floor_frac = (bytes_per_step / copy_rate) / step;
    std::printf("%6d %12.3f %14.0f %14.0f %12.2f %9.1f%% %8.1f%%\n", B, step * 1e3, decode_tps,
                e2e_tps, r.prefill_s * 1e3, floor_frac * 100, busy * 100);
    if (jf)
      std::fprintf(jf,
                   "{\"bench\":\"cuda-engine%s\",\"device\":\"%s\",\"model\":\"%s\",\"dtype\":\"%s\",\"batch\":%d,"
                   "\"prompt\":%d,\"new\":%d,\"step_ms\":%.4f,\"decode_tok_s\":%.1f,"
                   "\"e2e_tok_s\":%.1f,\"prefill_ms\":%.3f,\"bytes_per_step\":%.0f,"
                   "\"copy_rate_gbs\":%.1f,\"bw_floor_fraction\":%.4f,\"gpu_busy\":%.4f}\n",
                   g_full_sampling ? (g_sort_sampler ? "-full-sampling-sort" : "-full-sampling") : "", prop.name, model.c_str(), dt, B, prompt, n_new, step * 1e3, decode_tps, e2e_tps,
                   r.prefill_s * 1e3, bytes_per_step, copy_rate / 1e9, floor_frac, busy);
  }
  std::printf("graph steps %lld of %lld, graphs captured %lld, sampling rows left to the sort path %lld\n",
              (long long)st->graph_steps, (long long)st->steps, (long long)st->graphs_captured,
              (long long)st->sampling_fallback_rows);
  if (jf) std::fclose(jf);
  return 0;
}
