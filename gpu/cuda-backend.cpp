#include "gpu/cuda-backend.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <type_traits>

#include <fmt/format.h>

#include "gpu/cuda-device-weights.hpp"
#include "gpu/cuda-resources.hpp"
#include "kernels/cuda-kernels.hpp"
#include "kernels/cuda-sampling.hpp"
#include "model/forward.hpp"
#include "model/rope.hpp"

namespace infer {

bool cuda_device_available() { return gpu::cuda_device_count() > 0; }

namespace {

using gpu::cuda_device_weights;
using gpu::device_buffer;
using gpu::pinned_buffer;
using half = __half;
using bf16 = cuda::bf16;

constexpr size_t lt_workspace_bytes = size_t(32) << 20;
constexpr int max_graph_bucket = 512;

size_t align16(size_t x) { return (x + 15) & ~size_t(15); }

// Where each per-step input lives inside the staging buffer (same offsets on the host
// and on the device). Offsets depend only on (T, S, MB), so a graph captured for a
// bucket keeps reading the right places.
struct step_layout {
  size_t tokens, pos, seq, slot, rows, tables, sample, counters, params, bytes;
  step_layout(int T, int S, int MB) {
    size_t o = 0;
    auto take = [&](size_t n) {
      const size_t r = o;
      o = align16(o + n);
      return r;
    };
    tokens = take(size_t(T) * 4);
    pos = take(size_t(T) * 4);
    seq = take(size_t(T) * 4);
    slot = take(size_t(T) * 4);
    rows = take(size_t(S) * 4);
    tables = take(size_t(S) * MB * 4);
    sample = take(size_t(S));
    counters = take(size_t(S) * 8);
    params = take(size_t(S) * sizeof(sampling_params));
    bytes = o;
  }
};

struct step_ptrs {
  int32_t *tokens, *pos, *seq, *slot, *rows, *tables;
  uint8_t* sample;
  uint64_t* counters;
  sampling_params* params;
  step_ptrs(void* base, const step_layout& L) {
    auto* b = static_cast<uint8_t*>(base);
    tokens = reinterpret_cast<int32_t*>(b + L.tokens);
    pos = reinterpret_cast<int32_t*>(b + L.pos);
    seq = reinterpret_cast<int32_t*>(b + L.seq);
    slot = reinterpret_cast<int32_t*>(b + L.slot);
    rows = reinterpret_cast<int32_t*>(b + L.rows);
    tables = reinterpret_cast<int32_t*>(b + L.tables);
    sample = b + L.sample;
    counters = reinterpret_cast<uint64_t*>(b + L.counters);
    params = reinterpret_cast<sampling_params*>(b + L.params);
  }
};

struct graph_key {
  int bucket, n_splits, split_len;
  bool operator==(const graph_key&) const = default;
};

class cuda_backend;
template <class E>
struct cuda_ops;

class cuda_backend final : public backend {
 public:
  cuda_backend() = default;
  ~cuda_backend() override {
    if (stream_.get()) {
      cudaSetDevice(device_);
      cudaStreamSynchronize(stream_.get());
    }
    graphs_.clear();
  }

  // weights already on the device (uploaded from host weights or streamed).
  status init(std::shared_ptr<const cuda_device_weights> dw, const backend_options& opts) {
    device_ = opts.device;
    w_ = std::move(dw);
    cfg_ = w_->cfg;
    dt_ = w_->dt;
    stats_.weight_bytes = int64_t(w_->storage.bytes());
    INFER_STATUS_TRY(check_shape());
    if (opts.kv_block_size < 1)
      return make_status(errc::invalid_argument, "kv_block_size must be >= 1");
    INFER_CUDA_TRY(cudaSetDevice(device_));
    cudaDeviceProp prop{};
    INFER_CUDA_TRY(cudaGetDeviceProperties(&prop, device_));
    n_sm_ = prop.multiProcessorCount;

    INFER_STATUS_TRY(stream_.create());
    INFER_STATUS_TRY(ev_start_.create(true));
    INFER_STATUS_TRY(ev_end_.create(true));
    INFER_STATUS_TRY(lt_.create());
    INFER_STATUS_TRY(lt_workspace_.allocate(lt_workspace_bytes));
    mm_.bind(lt_.get(), lt_workspace_.get(), lt_workspace_bytes);

    kv_.block_size = opts.kv_block_size;
    max_blocks_ = (cfg_.n_ctx + kv_.block_size - 1) / kv_.block_size;
    ld_logits_ = w_->vocab_padded;
    INFER_STATUS_TRY(ensure_capacity(256, 256));

    // RoPE: the model layer's cos/sin tables for every served position, once.
    if (cfg_.uses_rope()) {
      std::vector<float> cs, sn;
      rope_tables(cfg_, cfg_.n_ctx, cs, sn);
      const size_t nf = size_t(cfg_.rot_dim() / 2);
      std::vector<float> packed(size_t(cfg_.n_ctx) * nf * 2);
      for (size_t i = 0; i < size_t(cfg_.n_ctx) * nf; ++i) {
        packed[2 * i] = cs[i];
        packed[2 * i + 1] = sn[i];
      }
      INFER_STATUS_TRY(rope_table_.allocate(packed.size() * 4));
      INFER_CUDA_TRY(cudaMemcpy(rope_table_.get(), packed.data(), packed.size() * 4,
                                cudaMemcpyHostToDevice));
    }

    // KV cache: n_layer x (k, v) x [n_blocks, block_size, n_kv_head * head_dim] 16-bit
    // values; what the options ask for, never more than fits in free memory (keeping
    // room for activations of larger steps and other workers).
    const size_t block_bytes = size_t(cfg_.kv_bytes_per_token(2)) * kv_.block_size;
    size_t want = 0;
    if (opts.kv_blocks > 0)
      want = size_t(opts.kv_blocks);
    else if (opts.kv_memory_mb > 0)
      want = size_t(opts.kv_memory_mb) * (size_t(1) << 20) / block_bytes;
    size_t free_b = 0, total_b = 0;
    INFER_CUDA_TRY(cudaMemGetInfo(&free_b, &total_b));
    if (opts.kv_blocks == 0 && opts.gpu_memory_utilization > 0) {
      // vLLM's rule: the fraction covers the (shared) weights and every worker's KV cache;
      // each worker of the device takes an equal share of what the weights leave, so the
      // figure does not depend on which worker starts (or restarts) first.
      const double budget = opts.gpu_memory_utilization * double(total_b) - double(stats_.weight_bytes);
      if (budget < double(block_bytes) * opts.device_workers)
        return make_status(errc::out_of_memory,
                           fmt::format("backend.gpu_memory_utilization {}: {:.0f} MiB of the device's {:.0f} MiB "
                                       "leave no room for the KV cache after {:.0f} MiB of weights",
                                       opts.gpu_memory_utilization, opts.gpu_memory_utilization * double(total_b) / 1048576.0,
                                       double(total_b) / 1048576.0, double(stats_.weight_bytes) / 1048576.0));
      want = size_t(budget / opts.device_workers) / block_bytes;
    }
    const size_t reserve = std::min(free_b / 10, size_t(2) << 30);
    const size_t fit = free_b > reserve ? (free_b - reserve) / block_bytes : 0;
    if (want == 0) want = fit;  // kv_memory_mb = 0 and kv_blocks = 0: use the free memory
    want = std::min(want, fit);
    if (want < 1)
      return make_status(errc::out_of_memory,
                         fmt::format("cuda backend: no room for a KV block of {} bytes ({} free)",
                                     block_bytes, free_b));
    kv_.n_blocks = int32_t(want);
    INFER_STATUS_TRY(kv_cache_.allocate(want * block_bytes));
    // Zeroed so that a bug reading an unwritten slot shows up as zeros, not NaNs.
    INFER_CUDA_TRY(cudaMemsetAsync(kv_cache_.get(), 0, kv_cache_.bytes(), stream_.get()));
    INFER_CUDA_TRY(cudaStreamSynchronize(stream_.get()));
    layer_stride_ = size_t(kv_.n_blocks) * kv_.block_size * cfg_.kv_dim();
    stats_.kv_bytes = int64_t(kv_cache_.bytes());
    return status::ok();
  }

  // What the kernels cannot run is refused here, naming the value.
  status check_shape() const {
    const int hd = cfg_.head_dim();
    auto bad = [](std::string what) {
      return make_status(errc::invalid_argument, "cuda backend: " + what);
    };
    if (!cuda::attention_head_dim_supported(hd))
      return bad(fmt::format("head_dim {} not supported (32, 64 or 128 are)", hd));
    if (cfg_.n_head % cfg_.kv_heads() != 0)
      return bad(fmt::format("n_head {} is not a multiple of n_kv_head {}", cfg_.n_head,
                             cfg_.kv_heads()));
    if (cfg_.n_embd % 8 != 0 || cfg_.qkv_dim() % 8 != 0 || cfg_.ff_dim() % 8 != 0)
      return bad(fmt::format("hidden {}, qkv {} and intermediate {} sizes must be multiples of 8",
                             cfg_.n_embd, cfg_.qkv_dim(), cfg_.ff_dim()));
    if (cfg_.arch == arch_id::gpt2) {
      if (dt_ != cuda::dtype::f16) return bad("GPT-2 runs in fp16");
      if (cfg_.kv_heads() != cfg_.n_head || cfg_.n_embd % cfg_.n_head != 0 ||
          cfg_.head_dim() * cfg_.n_head != cfg_.n_embd)
        return bad("GPT-2 layout with n_kv_head != n_head or head_dim * n_head != n_embd");
      return status::ok();
    }
    if (cfg_.norm != norm_kind::rmsnorm || !cfg_.uses_rope() || !cfg_.glu ||
        cfg_.act != act_kind::silu || !cfg_.linear_out_in)
      return bad(fmt::format("architecture {}: only GPT-2 and the RMSNorm / RoPE / SwiGLU "
                             "family run here", arch_name(cfg_.arch)));
    if (cfg_.n_embd > cuda::rmsnorm_max_width)
      return bad(fmt::format("hidden size {} over {}", cfg_.n_embd, cuda::rmsnorm_max_width));
    if (!cuda::rope_shape_supported(hd, cfg_.rot_dim()))
      return bad(fmt::format("rotary dim {} of head_dim {}", cfg_.rot_dim(), hd));
    return status::ok();
  }

  const char* name() const override { return "cuda"; }
  const model_config& config() const override { return cfg_; }
  kv_geometry kv() const override { return kv_; }
  const cuda_backend_stats& stats() const { return stats_; }
  cuda::dtype dtype() const { return dt_; }
  void set_fused_sampling(bool on) { fused_sampling_ = on; }
  bool device_token_counts() const override { return true; }
  void set_graphs(bool on) {
    graphs_enabled_ = on;
    if (!on) graphs_.clear();
  }

  // One 2-D copy per block: its rows sit at the same offset in each of the 2 * n_layer
  // (layer, k|v) planes, layer_stride_ elements apart. Stream-ordered before the forward.
  status copy_blocks(std::span<const int32_t> src, std::span<const int32_t> dst) override {
    INFER_STATUS_TRY(validate_block_copies(src, dst, kv_));
    if (src.empty()) return status::ok();
    INFER_CUDA_TRY(cudaSetDevice(device_));
    const size_t elem = 2;  // the cache holds fp16 / bf16
    const size_t block_bytes = size_t(kv_.block_size) * cfg_.kv_dim() * elem;
    const size_t pitch = layer_stride_ * elem;
    uint8_t* base = kv_cache_.as<uint8_t>();
    for (size_t i = 0; i < src.size(); ++i)
      INFER_CUDA_TRY(cudaMemcpy2DAsync(base + size_t(dst[i]) * block_bytes, pitch, base + size_t(src[i]) * block_bytes,
                                       pitch, block_bytes, size_t(2) * cfg_.n_layer, cudaMemcpyDeviceToDevice,
                                       stream_.get()));
    return status::ok();
  }

  status step(const step_batch& b, step_output& out, logits_mode mode) override {
    INFER_STATUS_TRY(validate(b));
    INFER_CUDA_TRY(cudaSetDevice(device_));
    INFER_STATUS_TRY(copy_blocks(b.copy_src, b.copy_dst));
    const int S = b.n_seqs(), T = b.n_tokens(), V = cfg_.n_vocab;
    const int bs = kv_.block_size;
    const bool decode = T == S;  // one new token per sequence
    // Prompt logprobs (opt-in per sequence): every token of those sequences goes through the
    // LM head and its logits row comes back; the log-softmax is taken on the host.
    const bool prompt_lp = b.any_prompt_logprobs();
    const bool use_graph =
        graphs_enabled_ && decode && mode != logits_mode::all && S <= max_graph_bucket && !prompt_lp;
    const int bucket = use_graph ? bucket_for(S) : S;
    const int Tx = use_graph ? bucket : T;  // tokens in the launch (with padding)

    // Rows that go through the LM head.
    int R = 0;
    int max_ctx = 1;
    for (int s = 0; s < S; ++s) max_ctx = std::max(max_ctx, b.n_past[s] + b.seq_len(s));
    if (use_graph) {
      R = bucket;
    } else if (mode == logits_mode::all) {
      R = T;
    } else {
      for (int s = 0; s < S; ++s)
        if (b.prompt_next_of(s) >= -1) R += b.seq_len(s);
        else if (mode == logits_mode::last || b.sample[s]) ++R;
    }
    INFER_STATUS_TRY(ensure_capacity(Tx, std::max(R, 1)));

    // Attention split: short splits where few (token, head) pairs would leave SMs idle.
    const bool few = int64_t(Tx) * cfg_.n_head < int64_t(4) * n_sm_;
    const int split_len = few ? 64 : cuda::attention_max_split_len;
    const int ctx_for_splits = use_graph ? round_up(max_ctx, split_len) : max_ctx;
    const int n_splits = (ctx_for_splits + split_len - 1) / split_len;
    INFER_STATUS_TRY(ensure_attention_scratch(Tx, n_splits));

    // Fill the pinned staging area.
    const step_layout L(Tx, use_graph ? bucket : S, max_blocks_);
    step_ptrs h(host_stage_.get(), L);
    bool any_sorted = false;
    const bool slots = b.any_slot();
    int r = 0;
    for (int s = 0; s < S; ++s) {
      const int32_t* table = b.block_tables.data() + int64_t(s) * b.max_blocks_per_seq;
      const int ncopy = std::min(b.max_blocks_per_seq, max_blocks_);
      std::memcpy(h.tables + int64_t(s) * max_blocks_, table, size_t(ncopy) * 4);
      for (int i = ncopy; i < max_blocks_; ++i) h.tables[int64_t(s) * max_blocks_ + i] = -1;
      for (int t = b.seq_start[s]; t < b.seq_start[s + 1]; ++t) {
        const int p = b.n_past[s] + (t - b.seq_start[s]);
        h.tokens[t] = b.tokens[t];
        h.pos[t] = p;
        h.seq[t] = s;
        h.slot[t] = table[p / bs] * bs + p % bs;
      }
      const int last = b.seq_start[s + 1] - 1;
      const bool adjusted = b.sample[s] && (!b.adjustments(s).empty() || (slots && b.counts_slot[s] >= 0));
      h.sample[s] = adjusted ? cuda::sample_adjusted : b.sample[s];
      h.counters[s] = b.sample_counter[s];
      h.params[s] = b.sampling[s];
      if (b.sample[s] && (!b.sampling[s].greedy() || adjusted)) any_sorted = true;
      if (use_graph) {
        h.rows[s] = s;
      } else if (mode == logits_mode::all) {
        h.rows[s] = last;  // sampling reads the all-rows logits directly
      } else if (mode == logits_mode::last || b.sample[s] || b.prompt_next_of(s) >= -1) {
        if (b.prompt_next_of(s) >= -1)
          for (int t = b.seq_start[s]; t < last; ++t) gather_[r++] = t;
        gather_[r] = last;
        h.rows[s] = r++;
      } else {
        h.rows[s] = 0;  // not sampled: row never read
      }
    }
    if (use_graph) {
      for (int s = S; s < bucket; ++s) {  // padding: no cache write, no sample
        h.tokens[s] = 0;
        h.pos[s] = -1;
        h.seq[s] = s;
        h.slot[s] = -1;
        h.rows[s] = s;
        h.sample[s] = 0;
        h.counters[s] = 0;
        h.params[s] = sampling_params{};
        std::fill(h.tables + int64_t(s) * max_blocks_, h.tables + int64_t(s + 1) * max_blocks_, -1);
      }
    }
    // The gather list: rows of the final LayerNorm output fed to the LM head.
    int32_t* gather_host = reinterpret_cast<int32_t*>(host_stage_.as<uint8_t>() + L.bytes);
    if (use_graph) {
      for (int i = 0; i < bucket; ++i) gather_host[i] = i;
    } else if (mode == logits_mode::all) {
      for (int i = 0; i < T; ++i) gather_host[i] = i;
    } else {
      std::memcpy(gather_host, gather_.data(), size_t(R) * 4);
    }
    const size_t bytes = L.bytes + size_t(R) * 4;
    cudaStream_t st = stream_.get();
    INFER_CUDA_TRY(cudaEventRecord(ev_start_.get(), st));
    INFER_CUDA_TRY(cudaMemcpyAsync(dev_stage_.get(), host_stage_.get(), bytes,
                                   cudaMemcpyHostToDevice, st));
    step_ptrs d(dev_stage_.get(), L);
    const int32_t* d_gather = reinterpret_cast<const int32_t*>(dev_stage_.as<uint8_t>() + L.bytes);
    const int nseq_launch = use_graph ? bucket : S;

    if (use_graph) {
      const graph_key key{bucket, n_splits, split_len};
      auto* g = find_graph(key);
      if (!g) {
        cudaGraph_t graph = nullptr;
        INFER_CUDA_TRY(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
        status fs = enqueue_forward(d, d_gather, Tx, R, nseq_launch, n_splits, split_len, true);
        const cudaError_t ce = cudaStreamEndCapture(st, &graph);
        if (!fs) {
          if (graph) cudaGraphDestroy(graph);
          return fs;
        }
        if (ce != cudaSuccess) return gpu::cuda_status(ce, "cudaStreamEndCapture", __FILE__, __LINE__);
        graphs_.push_back({key, gpu::cuda_graph_exec{}});
        INFER_STATUS_TRY(graphs_.back().exec.instantiate(graph));
        g = &graphs_.back().exec;
        ++stats_.graphs_captured;
      }
      INFER_STATUS_TRY(g->launch(st));
      ++stats_.graph_steps;
    } else {
      INFER_STATUS_TRY(
          enqueue_forward(d, d_gather, Tx, R, nseq_launch, n_splits, split_len, decode));
    }
    // Controls beyond plain greedy (adjustments, sampling, logprobs): the fused kernel,
    // then the sort path for the rows it flags (rare: candidates overflowing its shared
    // memory), after one look at the flags.
    const bool any_lp = b.any_logprobs() && R > 0;
    const bool fused = fused_sampling_ && (any_sorted || any_lp) && R > 0;
    if (slots && R > 0) INFER_STATUS_TRY(prepare_slots(b, nseq_launch));
    if (fused) {
      INFER_STATUS_TRY(enqueue_fused_sampling(b, d, nseq_launch, any_lp));
    } else if ((any_sorted || any_lp) && R > 0) {  // the sort path alone (tests, benchmarks)
      if (any_lp) INFER_STATUS_TRY(enqueue_logprobs_top(d, nseq_launch, d.sample));
      if (b.any_adjust() && !slots) INFER_STATUS_TRY(upload_adjustments(b, nseq_launch));
      if (any_sorted) INFER_STATUS_TRY(enqueue_sorted_sampling(b, d, nseq_launch, d.sample));
      if (any_lp) INFER_STATUS_TRY(enqueue_logprobs_gather(d, S));
    }

    INFER_CUDA_TRY(cudaMemcpyAsync(host_tokens_.get(), tokens_out_.get(), size_t(S) * 4,
                                   cudaMemcpyDeviceToHost, st));
    // With prompt rows among them, the rows are not one per sequence: all come back, below.
    const int out_rows = prompt_lp ? 0 : mode == logits_mode::all ? T : mode == logits_mode::last ? S : 0;
    if (prompt_lp) {
      prompt_rows_.resize(size_t(R) * V);
      INFER_CUDA_TRY(cudaMemcpy2DAsync(prompt_rows_.data(), size_t(V) * 4, logits_.get(), size_t(ld_logits_) * 4,
                                       size_t(V) * 4, R, cudaMemcpyDeviceToHost, st));
    }
    if (out_rows > 0) {
      out.logits.resize(size_t(out_rows) * V);
      INFER_CUDA_TRY(cudaMemcpy2DAsync(out.logits.data(), size_t(V) * 4, logits_.get(),
                                       size_t(ld_logits_) * 4, size_t(V) * 4, out_rows,
                                       cudaMemcpyDeviceToHost, st));
    } else {
      out.logits.clear();
    }
    INFER_CUDA_TRY(cudaEventRecord(ev_end_.get(), st));
    INFER_CUDA_TRY(cudaStreamSynchronize(st));
    float ms = 0;
    if (cudaEventElapsedTime(&ms, ev_start_.get(), ev_end_.get()) == cudaSuccess) stats_.gpu_ms += ms;
    if (fused) INFER_STATUS_TRY(finish_fused_sampling(b, d, nseq_launch, any_lp));
    // The sampled tokens into their slots, behind the step on the stream: the next step's
    // sampling sees them, and nothing here waits.
    if (slots && R > 0)
      INFER_CUDA_TRY(cuda::slot_count_forward(slot_view(), tokens_out_.as<int32_t>(), nseq_launch, V, d.params,
                                              d.sample, st));
    if (prompt_lp) {
      row_at_.assign(size_t(T), 0);  // token -> its row
      if (mode == logits_mode::all)
        for (int t = 0; t < T; ++t) row_at_[size_t(t)] = t;
      else
        for (int i = 0; i < R; ++i) row_at_[size_t(gather_[size_t(i)])] = i;
      const float* rows = prompt_rows_.data();
      out.fill_prompt_logprobs(b, V, [&](int32_t t) { return rows + size_t(row_at_[size_t(t)]) * V; });
      if (mode == logits_mode::all) {
        out.logits.assign(prompt_rows_.begin(), prompt_rows_.end());
      } else if (mode == logits_mode::last) {
        out.logits.resize(size_t(S) * V);
        for (int s = 0; s < S; ++s)
          std::memcpy(out.logits.data() + size_t(s) * V, rows + size_t(row_at_[size_t(b.seq_start[s + 1] - 1)]) * V,
                      size_t(V) * 4);
      }
    } else {
      out.prompt_start.clear(); out.prompt_logprob.clear(); out.prompt_top_ids.clear(); out.prompt_top_logprobs.clear();
    }
    out.tokens.resize(S);
    const int32_t* ht = host_tokens_.as<int32_t>();
    for (int s = 0; s < S; ++s) out.tokens[s] = b.sample[s] ? ht[s] : -1;
    if (any_lp) {
      constexpr size_t K = size_t(sampling_params::max_logprobs);
      const float* hl = host_lp_.as<float>();
      out.logprob.assign(hl, hl + S);
      out.top_ids.assign(host_lp_.as<int32_t>() + lp_cap_, host_lp_.as<int32_t>() + lp_cap_ + size_t(S) * K);
      out.top_logprobs.assign(hl + lp_cap_ * (1 + K), hl + lp_cap_ * (1 + K) + size_t(S) * K);
    } else {
      out.logprob.clear();
      out.top_ids.clear();
      out.top_logprobs.clear();
    }
    ++stats_.steps;
    return status::ok();
  }

 private:
  static int round_up(int x, int m) { return (x + m - 1) / m * m; }
  static int bucket_for(int n) {
    int b = 1;
    while (b < n) b *= 2;
    return b;
  }

  struct graph_entry {
    graph_key key;
    gpu::cuda_graph_exec exec;
  };
  gpu::cuda_graph_exec* find_graph(const graph_key& k) {
    for (auto& g : graphs_)
      if (g.key == k) return &g.exec;
    return nullptr;
  }

  // Kernel sequence of one step (model/forward.hpp over cuda_ops); captured as is into
  // decode graphs.
  status enqueue_forward(const step_ptrs& d, const int32_t* d_gather, int T, int R, int nseq,
                         int n_splits, int split_len, bool decode);

  // The step's logit adjustments on the device: starts for every launched row (padding
  // rows: empty), then the entries; adj_raw_ is the fused kernel's scratch beside them.
  // Pinned, and outside any graph: growing it invalidates nothing.
  status upload_adjustments(const step_batch& b, int nseq) {
    cudaStream_t st = stream_.get();
    const int S = b.n_seqs();
    const size_t starts = align16(size_t(nseq + 1) * 4);
    const size_t bytes = starts + b.adjust.size() * sizeof(logit_adjust);
    if (host_adj_.bytes() < bytes) {
      INFER_CUDA_TRY(cudaStreamSynchronize(st));  // an earlier step may still read them
      INFER_STATUS_TRY(host_adj_.allocate(bytes * 2));
      INFER_STATUS_TRY(dev_adj_.allocate(bytes * 2));
    }
    if (adj_raw_.bytes() < b.adjust.size() * 4) INFER_STATUS_TRY(adj_raw_.allocate(b.adjust.size() * 8));
    int32_t* hs = host_adj_.as<int32_t>();
    for (int s = 0; s <= nseq; ++s) hs[s] = s <= S ? b.adjust_start[size_t(s)] : b.adjust_start[size_t(S)];
    std::memcpy(host_adj_.as<uint8_t>() + starts, b.adjust.data(), b.adjust.size() * sizeof(logit_adjust));
    INFER_CUDA_TRY(cudaMemcpyAsync(dev_adj_.get(), host_adj_.get(), bytes, cudaMemcpyHostToDevice, st));
    return status::ok();
  }
  const logit_adjust* dev_adjust(int nseq) const {
    return reinterpret_cast<const logit_adjust*>(dev_adj_.as<uint8_t>() + align16(size_t(nseq + 1) * 4));
  }

  // Device-held token counts (step_batch::counts_slot): a list per slot of slot_cap_
  // entries (logit_adjust), as the scheduler would upload each step. Sparse, not a dense
  // count row per slot: a 128k vocabulary makes that 512 KB a slot (256 MB at 512 slots),
  // and the sampling kernel would stream it beside each 512 KB logit row (twice the
  // reads); the list is what the kernel reads today, and a context holds at most n_ctx
  // distinct tokens (the 1,024 more: logit_bias's 300 and the stop ids).
  cuda::count_slots slot_view() const {
    cuda::count_slots v;
    v.slot = dev_slot_ids_.as<int32_t>();
    v.adj = slot_adj_.as<logit_adjust>();
    v.len = slot_len_.as<int32_t>();
    v.raw = slot_raw_.as<float>();
    v.cap = slot_cap_;
    return v;
  }
  // Before the step's sampling: the rows' slot ids on the device (padding rows -1), the
  // slots grown to the largest id (their contents kept), the loads of this step applied.
  status prepare_slots(const step_batch& b, int nseq) {
    cudaStream_t st = stream_.get();
    const int S = b.n_seqs();
    int max_slot = -1;
    bool any_load = false;
    for (int s = 0; s < S; ++s) {
      max_slot = std::max(max_slot, b.counts_slot[size_t(s)]);
      if (b.counts_slot[size_t(s)] >= 0 && b.counts_load[size_t(s)]) any_load = true;
    }
    if (slot_cap_ == 0) slot_cap_ = std::min(cfg_.n_vocab, cfg_.n_ctx + 1024);
    for (int s = 0; s < S; ++s)
      if (b.counts_load[size_t(s)] && int(b.adjustments(s).size()) > slot_cap_)
        return make_status(errc::invalid_argument, "step: sequence " + std::to_string(s) +
                                                       " has more logit adjustments than a count slot holds (" +
                                                       std::to_string(slot_cap_) + ")");
    if (max_slot >= n_slots_) {
      const int n = std::max({max_slot + 1, n_slots_ * 2, 16});
      INFER_CUDA_TRY(cudaStreamSynchronize(st));
      device_buffer adj, len, raw;
      INFER_STATUS_TRY(adj.allocate(size_t(n) * size_t(slot_cap_) * sizeof(logit_adjust)));
      INFER_STATUS_TRY(len.allocate(size_t(n) * 4));
      INFER_STATUS_TRY(raw.allocate(size_t(n) * size_t(slot_cap_) * 4));
      INFER_CUDA_TRY(cudaMemsetAsync(len.get(), 0, size_t(n) * 4, st));
      if (n_slots_ > 0) {
        INFER_CUDA_TRY(cudaMemcpyAsync(adj.get(), slot_adj_.get(), slot_adj_.bytes(), cudaMemcpyDeviceToDevice, st));
        INFER_CUDA_TRY(cudaMemcpyAsync(len.get(), slot_len_.get(), slot_len_.bytes(), cudaMemcpyDeviceToDevice, st));
      }
      INFER_CUDA_TRY(cudaStreamSynchronize(st));
      slot_adj_ = std::move(adj);
      slot_len_ = std::move(len);
      slot_raw_ = std::move(raw);
      n_slots_ = n;
    }
    if (slot_ids_cap_ < nseq) {
      const int n = std::max(nseq, slot_ids_cap_ * 2);
      INFER_CUDA_TRY(cudaStreamSynchronize(st));  // an earlier step may still read them
      INFER_STATUS_TRY(host_slot_ids_.allocate(size_t(n) * 5));
      INFER_STATUS_TRY(dev_slot_ids_.allocate(size_t(n) * 5));
      slot_ids_cap_ = n;
    }
    int32_t* hs = host_slot_ids_.as<int32_t>();
    uint8_t* hl = host_slot_ids_.as<uint8_t>() + size_t(slot_ids_cap_) * 4;
    for (int s = 0; s < nseq; ++s) {
      hs[s] = s < S && b.sample[size_t(s)] ? b.counts_slot[size_t(s)] : -1;
      hl[s] = s < S ? b.counts_load[size_t(s)] : 0;
    }
    INFER_CUDA_TRY(cudaMemcpyAsync(dev_slot_ids_.get(), host_slot_ids_.get(), size_t(nseq) * 4,
                                   cudaMemcpyHostToDevice, st));
    INFER_CUDA_TRY(cudaMemcpyAsync(dev_slot_ids_.as<uint8_t>() + size_t(slot_ids_cap_) * 4, hl, size_t(nseq),
                                   cudaMemcpyHostToDevice, st));
    if (b.any_adjust() || any_load) INFER_STATUS_TRY(upload_adjustments(b, nseq));
    if (any_load) {
      INFER_CUDA_TRY(cuda::slot_load_forward(slot_view(), dev_adj_.as<int32_t>(), dev_adjust(nseq),
                                             dev_slot_ids_.as<uint8_t>() + size_t(slot_ids_cap_) * 4, nseq, st));
    }
    return status::ok();
  }

  status enqueue_fused_sampling(const step_batch& b, const step_ptrs& d, int nseq, bool any_lp) {
    cudaStream_t st = stream_.get();
    if (redo_cap_ < nseq) {
      const int n = std::max(nseq, redo_cap_ * 2);
      INFER_CUDA_TRY(cudaStreamSynchronize(st));
      INFER_STATUS_TRY(redo_.allocate(size_t(n) * 2));
      INFER_STATUS_TRY(host_redo_.allocate(size_t(n) * 2));
      redo_cap_ = n;
    }
    if (b.any_adjust() && !b.any_slot()) INFER_STATUS_TRY(upload_adjustments(b, nseq));
    if (any_lp) INFER_STATUS_TRY(ensure_logprobs(nseq));
    const size_t K = size_t(sampling_params::max_logprobs);
    float* lp = dev_lp_.as<float>();
    cuda::fused_sampling_args a{};
    a.tokens = tokens_out_.as<int32_t>();
    a.logits = logits_.as<float>();
    a.ld = ld_logits_;
    a.N = nseq;
    a.V = cfg_.n_vocab;
    a.rows = d.rows;
    a.sp = d.params;
    a.counters = d.counters;
    a.do_sample = d.sample;
    a.adj_start = b.any_adjust() ? dev_adj_.as<int32_t>() : nullptr;
    a.adj = b.any_adjust() ? dev_adjust(nseq) : nullptr;
    a.adj_raw = b.any_adjust() ? adj_raw_.as<float>() : nullptr;
    if (b.any_slot()) a.slots = slot_view();
    if (any_lp) {
      a.logprob = lp;
      a.top_ids = reinterpret_cast<int32_t*>(lp + lp_cap_);
      a.top_lp = lp + lp_cap_ * (1 + K);
      a.lse = lp + lp_cap_ * (1 + 2 * K);
    }
    a.redo = redo_.as<uint8_t>();
    INFER_CUDA_TRY(cuda::sample_fused_forward(a, st));
    INFER_CUDA_TRY(cudaMemcpyAsync(host_redo_.get(), redo_.get(), size_t(nseq) * 2, cudaMemcpyDeviceToHost, st));
    if (any_lp)
      INFER_CUDA_TRY(cudaMemcpyAsync(host_lp_.get(), dev_lp_.get(), lp_cap_ * (1 + 2 * K) * 4,
                                     cudaMemcpyDeviceToHost, st));
    return status::ok();
  }

  // After the step's sync: the rows the fused kernel flagged go through the sort path
  // (sampling) and the k-pass logprobs kernel, exactly as before it existed.
  status finish_fused_sampling(const step_batch& b, const step_ptrs& d, int nseq, bool any_lp) {
    const uint8_t* h = host_redo_.as<uint8_t>();
    int redo_s = 0, redo_l = 0;
    for (int i = 0; i < nseq; ++i) {
      redo_s += h[i] != 0;
      redo_l += h[nseq + i] != 0;
    }
    if (redo_s == 0 && redo_l == 0) return status::ok();
    stats_.sampling_fallback_rows += redo_s + redo_l;
    cudaStream_t st = stream_.get();
    const int S = b.n_seqs();
    const uint8_t* redo = redo_.as<uint8_t>();
    if (redo_l > 0) INFER_STATUS_TRY(enqueue_logprobs_top(d, nseq, redo + nseq));
    if (redo_s > 0) INFER_STATUS_TRY(enqueue_sorted_sampling(b, d, nseq, redo));
    if (any_lp) INFER_STATUS_TRY(enqueue_logprobs_gather(d, S));
    INFER_CUDA_TRY(cudaMemcpyAsync(host_tokens_.get(), tokens_out_.get(), size_t(S) * 4,
                                   cudaMemcpyDeviceToHost, st));
    INFER_CUDA_TRY(cudaStreamSynchronize(st));
    return status::ok();
  }

  // The sort path over every launched row; only the rows with do_sample[i] set take its
  // token (the adjustments are already on the device).
  status enqueue_sorted_sampling(const step_batch& b, const step_ptrs& d, int nseq, const uint8_t* do_sample) {
    cudaStream_t st = stream_.get();
    const int V = cfg_.n_vocab;
    if (sort_rows_cap_ < nseq) {
      const size_t n = size_t(nseq) * V;
      size_t temp = 0;
      INFER_CUDA_TRY(cuda::sort_compact_forward(nullptr, temp, nullptr, nullptr, nullptr, nullptr, nseq, V, st));
      INFER_CUDA_TRY(cudaStreamSynchronize(st));
      INFER_STATUS_TRY(sort_temp_.allocate(temp));
      INFER_STATUS_TRY(sorted_logits_.allocate(n * 4));
      INFER_STATUS_TRY(sorted_ids_.allocate(n * 4));
      INFER_STATUS_TRY(compact_.allocate(n * 4));
      INFER_STATUS_TRY(ids_.allocate(n * 4));
      INFER_STATUS_TRY(probs_.allocate(n * 4));
      sort_rows_cap_ = nseq;
    }
    INFER_CUDA_TRY(cuda::compact_rows_forward(compact_.as<float>(), ids_.as<int32_t>(), logits_.as<float>(),
                                              ld_logits_, d.rows, nseq, V, st));
    if (b.any_adjust() || b.any_slot())
      INFER_CUDA_TRY(cuda::adjust_rows_forward(compact_.as<float>(), V, nseq,
                                               b.any_adjust() ? dev_adj_.as<int32_t>() : nullptr,
                                               dev_adjust(nseq), d.params, d.counters,
                                               b.any_slot() ? slot_view() : cuda::count_slots{}, st));
    size_t temp = sort_temp_.bytes();
    INFER_CUDA_TRY(cuda::sort_compact_forward(sort_temp_.get(), temp, sorted_logits_.as<float>(),
                                              sorted_ids_.as<int32_t>(), compact_.as<float>(),
                                              ids_.as<int32_t>(), nseq, V, st));
    INFER_CUDA_TRY(cuda::sample_sorted_forward(tokens_out_.as<int32_t>(), sorted_logits_.as<float>(),
                                               sorted_ids_.as<int32_t>(), nseq, V, d.params,
                                               d.counters, do_sample, probs_.as<float>(), st));
    return status::ok();
  }

  // Logprobs buffers: [lp_cap_] sampled logprobs, [lp_cap_ * K] top ids, [lp_cap_ * K] top
  // logprobs on host and device, then [lp_cap_] lse on the device.
  status ensure_logprobs(int nseq) {
    if (lp_cap_ >= size_t(nseq)) return status::ok();
    const size_t n = std::max<size_t>(size_t(nseq), lp_cap_ * 2);
    const size_t K = size_t(sampling_params::max_logprobs);
    INFER_CUDA_TRY(cudaStreamSynchronize(stream_.get()));
    INFER_STATUS_TRY(host_lp_.allocate(n * (1 + 2 * K) * 4));
    INFER_STATUS_TRY(dev_lp_.allocate(n * (2 + 2 * K) * 4));
    lp_cap_ = n;
    return status::ok();
  }
  // k passes over each row with do_sample[i] set that asks for logprobs.
  status enqueue_logprobs_top(const step_ptrs& d, int nseq, const uint8_t* do_sample) {
    INFER_STATUS_TRY(ensure_logprobs(nseq));
    const size_t K = size_t(sampling_params::max_logprobs);
    float* base = dev_lp_.as<float>();
    INFER_CUDA_TRY(cuda::logprobs_top_forward(base + lp_cap_ * (1 + 2 * K), reinterpret_cast<int32_t*>(base + lp_cap_),
                                              base + lp_cap_ * (1 + K), logits_.as<float>(), ld_logits_, d.rows,
                                              nseq, cfg_.n_vocab, d.params, do_sample, stream_.get()));
    return status::ok();
  }
  status enqueue_logprobs_gather(const step_ptrs& d, int S) {
    const size_t K = size_t(sampling_params::max_logprobs);
    float* base = dev_lp_.as<float>();
    cudaStream_t st = stream_.get();
    INFER_CUDA_TRY(cuda::logprobs_gather_forward(base, tokens_out_.as<int32_t>(), base + lp_cap_ * (1 + 2 * K),
                                                 logits_.as<float>(), ld_logits_, d.rows, S, d.params, d.sample,
                                                 st));
    INFER_CUDA_TRY(cudaMemcpyAsync(host_lp_.get(), dev_lp_.get(), lp_cap_ * (1 + 2 * K) * 4,
                                   cudaMemcpyDeviceToHost, st));
    return status::ok();
  }

  // Activation buffers for T tokens and R LM-head rows. Growing reallocates, which
  // invalidates every captured graph (they hold the old addresses).
  status ensure_capacity(int T, int R) {
    if (T <= cap_tokens_ && R <= cap_rows_) return status::ok();
    INFER_CUDA_TRY(cudaStreamSynchronize(stream_.get()));
    graphs_.clear();
    const size_t C = size_t(cfg_.n_embd), F = size_t(cfg_.ff_dim());
    if (T > cap_tokens_) {
      const int nt = std::max(T, cap_tokens_ * 2);
      INFER_STATUS_TRY(residual_.allocate(size_t(nt) * C * 4));
      INFER_STATUS_TRY(ln_.allocate(size_t(nt) * C * 2));
      INFER_STATUS_TRY(qkv_.allocate(size_t(nt) * cfg_.qkv_dim() * 2));
      INFER_STATUS_TRY(att_.allocate(size_t(nt) * cfg_.q_dim() * 2));
      INFER_STATUS_TRY(proj_.allocate(size_t(nt) * C * 2));
      INFER_STATUS_TRY(fc_.allocate(size_t(nt) * (cfg_.glu ? 2 * F : F) * 2));
      if (cfg_.glu) INFER_STATUS_TRY(fc_act_.allocate(size_t(nt) * F * 2));
      // Staging: the step's layout for nt tokens and nt sequences, plus the gather list.
      const size_t stage = step_layout(nt, nt, max_blocks_).bytes + size_t(nt) * 4;
      INFER_STATUS_TRY(host_stage_.allocate(stage));
      INFER_STATUS_TRY(dev_stage_.allocate(stage));
      INFER_STATUS_TRY(tokens_out_.allocate(size_t(nt) * 4));
      INFER_STATUS_TRY(host_tokens_.allocate(size_t(nt) * 4));
      gather_.assign(size_t(nt), 0);
      cap_tokens_ = nt;
      attn_scratch_.reset();
      attn_cap_ = 0;
    }
    if (R > cap_rows_) {
      const int nr = std::max(R, cap_rows_ * 2);
      INFER_STATUS_TRY(gathered_.allocate(size_t(nr) * C * 2));
      INFER_STATUS_TRY(logits_.allocate(size_t(nr) * ld_logits_ * 4));
      cap_rows_ = nr;
    }
    return status::ok();
  }

  status ensure_attention_scratch(int T, int n_splits) {
    const size_t need = cuda::attention_scratch_floats(T, cfg_.n_head, n_splits, cfg_.head_dim());
    if (need <= attn_cap_) return status::ok();
    INFER_CUDA_TRY(cudaStreamSynchronize(stream_.get()));
    graphs_.clear();
    const size_t n = std::max(need, attn_cap_ * 2);
    INFER_STATUS_TRY(attn_scratch_.allocate(n * 4));
    attn_cap_ = n;
    return status::ok();
  }

  status validate(const step_batch& b) const { return validate_step_batch(b, cfg_, kv_); }

  template <class E>
  friend struct cuda_ops;

  model_config cfg_;
  cuda::dtype dt_ = cuda::dtype::f16;
  int device_ = 0;
  int n_sm_ = 1;
  std::shared_ptr<const cuda_device_weights> w_;
  gpu::cuda_stream stream_;
  gpu::cuda_event ev_start_, ev_end_;  // GPU time of each step (stats)
  gpu::cublaslt_handle lt_;
  device_buffer lt_workspace_;
  cuda::matmul_runner mm_;
  kv_geometry kv_;
  int max_blocks_ = 0;
  int ld_logits_ = 0;
  size_t layer_stride_ = 0;  // 16-bit values per layer per k or v
  device_buffer kv_cache_;   // [n_layer][k|v][n_blocks][block_size][kv_dim]
  device_buffer rope_table_;  // float2 [n_ctx, rot_dim / 2]: (cos, sin)

  int cap_tokens_ = 0, cap_rows_ = 0;
  device_buffer residual_, ln_, qkv_, att_, proj_, fc_, fc_act_, gathered_, logits_, tokens_out_;
  device_buffer attn_scratch_;
  size_t attn_cap_ = 0;
  pinned_buffer host_stage_, host_tokens_;
  pinned_buffer host_adj_, host_lp_;  // logit adjustments in, logprobs out
  device_buffer dev_adj_, dev_lp_, adj_raw_;
  device_buffer slot_adj_, slot_len_, slot_raw_;  // count slots (slot_view)
  int n_slots_ = 0, slot_cap_ = 0;
  pinned_buffer host_slot_ids_;  // [cap] slot of each launched row, then [cap] load flags
  device_buffer dev_slot_ids_;
  int slot_ids_cap_ = 0;
  size_t lp_cap_ = 0;
  device_buffer redo_;        // the fused kernel's fallback flags [2 * rows]
  pinned_buffer host_redo_;
  int redo_cap_ = 0;
  device_buffer dev_stage_;
  std::vector<int32_t> gather_;
  std::vector<float> prompt_rows_;  // logits rows back on the host (prompt logprobs only)
  std::vector<int32_t> row_at_;

  int sort_rows_cap_ = 0;
  device_buffer sort_temp_, sorted_logits_, sorted_ids_, compact_, ids_, probs_;

  bool graphs_enabled_ = true;
  bool fused_sampling_ = true;
  std::vector<graph_entry> graphs_;
  cuda_backend_stats stats_;
};


// model/forward.hpp's op vocabulary on the device. Some ops only note what they ask
// for and a later op launches it fused: the per-head q/k norm and RoPE ride in the KV
// store (one pass over q|k|v that also writes the cache), a post-norm (GLM-4) rides in
// the next residual add + norm, GPT-2's GELU in its up-projection's epilogue, GPT-2's
// decode-step KV store in the attention kernel, and the last residual add in the final
// norm before the LM head. The first failing launch is kept and the rest are skipped.
template <class E>
struct cuda_ops {
  cuda_backend& b;
  const step_ptrs& d;
  const int32_t* gather;
  int T, R, nseq, n_splits, split_len;
  bool decode;
  cudaStream_t st;
  status err = status::ok();

  const float* post_norm = nullptr;  // GLM-4: norm of proj pending before the next add
  float post_eps = 0.f;
  const float *q_norm = nullptr, *k_norm = nullptr;
  float head_eps = 0.f;
  const rope_op* rope_pending = nullptr;
  rope_op rope_{};
  bool kv_in_attention = false;  // GPT-2 decode: the attention kernel stores K/V
  bool gelu_fused = false;
  bool residual_pending = false;

  static constexpr bool is_half = std::is_same_v<E, half>;
  const model_config& cfg() const { return b.cfg_; }
  const cuda_device_weights& w() const { return *b.w_; }

  bool ok() const { return bool(err); }
  void fail(status s) {
    if (err) err = std::move(s);
  }
  void cu(cudaError_t e, const char* what) {
    if (e != cudaSuccess && err) err = gpu::cuda_status(e, what, __FILE__, __LINE__);
  }
  void lt(cublasStatus_t s, const char* what) {
    if (s != CUBLAS_STATUS_SUCCESS && err) err = gpu::cublas_status(s, what, __FILE__, __LINE__);
  }
  void unsupported(const char* what) {
    fail(make_status(errc::invalid_argument, fmt::format("cuda backend: {} for {} in {}", what,
                                                         arch_name(cfg().arch),
                                                         cuda::dtype_name(b.dt_))));
  }

  E* buf(act_buf a) const {
    switch (a) {
      case act_buf::x: return b.ln_.as<E>();
      case act_buf::qkv: return b.qkv_.as<E>();
      case act_buf::att: return b.att_.as<E>();
      case act_buf::proj: return b.proj_.as<E>();
      case act_buf::ffn: return b.fc_.as<E>();
      case act_buf::ffn_act: return b.fc_act_.as<E>();
      default: return nullptr;  // res is fp32: res()
    }
  }
  float* res() const { return b.residual_.as<float>(); }
  const E* wt(tensor_role r, int layer) const { return static_cast<const E*>(w().get(r, layer)); }
  const float* wf(tensor_role r, int layer) const { return w().f32(r, layer); }
  E* kc(int l) const { return b.kv_cache_.as<E>() + (2 * size_t(l)) * b.layer_stride_; }
  E* vc(int l) const { return b.kv_cache_.as<E>() + (2 * size_t(l) + 1) * b.layer_stride_; }

  void embed() {
    if (!ok()) return;
    if (cfg().pos == pos_kind::learned) {
      if constexpr (is_half)
        cu(cuda::embed_forward(res(), d.tokens, d.pos, wt(tensor_role::tok_embd, -1),
                               wt(tensor_role::pos_embd, -1), T, cfg().n_embd, st),
           "embed_forward");
      else
        unsupported("learned positions");
    } else {
      cu(cuda::embed_tokens_forward<E>(res(), d.tokens, wt(tensor_role::tok_embd, -1), T,
                                       cfg().n_embd, st),
         "embed_tokens_forward");
    }
  }

  void norm(const norm_op& n, act_buf in, act_buf out) {
    if (!ok()) return;
    if (in == act_buf::proj && out == act_buf::proj) {  // a post-norm: fused into the next add
      if (n.kind != norm_kind::rmsnorm || post_norm) return unsupported("this post-norm");
      post_norm = wf(n.w, n.layer);
      post_eps = n.eps;
      return;
    }
    if (in != act_buf::res || out != act_buf::x) return unsupported("this norm");
    if (n.kind == norm_kind::layernorm) {
      if constexpr (is_half)
        cu(cuda::layernorm_forward(buf(out), res(), wf(n.w, n.layer), wf(n.b, n.layer), T, n.dim,
                                   n.eps, st),
           "layernorm_forward");
      else
        unsupported("LayerNorm");
    } else {
      cu(cuda::rmsnorm_forward<E>(buf(out), res(), wf(n.w, n.layer), T, n.dim, n.eps, st),
         "rmsnorm_forward");
    }
  }

  void add_norm(const norm_op& n, act_buf x, act_buf out, int rows_T) {
    if (!ok()) return;
    if (n.kind == norm_kind::layernorm) {
      if (post_norm) return unsupported("a post-norm before LayerNorm");
      if constexpr (is_half)
        cu(cuda::residual_layernorm_forward(res(), buf(out), buf(x), wf(n.w, n.layer),
                                            wf(n.b, n.layer), rows_T, n.dim, n.eps, st),
           "residual_layernorm_forward");
      else
        unsupported("LayerNorm");
    } else {
      // One eps per model: the post-norm's equals the block norm's.
      if (post_norm && post_eps != n.eps) return unsupported("post-norm eps differing");
      cu(cuda::residual_rmsnorm_forward<E>(res(), buf(out), buf(x), post_norm, wf(n.w, n.layer),
                                           rows_T, n.dim, n.eps, st),
         "residual_rmsnorm_forward");
      post_norm = nullptr;
    }
  }
  void add_norm(const norm_op& n, act_buf x, act_buf out) { add_norm(n, x, out, T); }

  void linear(const linear_op& o) {
    if (!ok()) return;
    const void* wp = w().get(o.w, o.layer);
    const void* bp = o.b == no_tensor ? nullptr : w().get(o.b, o.layer);
    if (!wp || (o.b != no_tensor && !bp)) return unsupported("a missing weight");
    if (o.out_in) {
      lt(b.mm_.linear_forward(buf(o.out), buf(o.in), wp, bp, T, o.in_dim, o.out_dim, b.dt_, st),
         "linear_forward");
      return;
    }
    if constexpr (is_half) {
      // GPT-2's up-projection carries its GELU in the epilogue (activation() is then done).
      const bool gelu = o.w == tensor_role::ffn_up_w && !cfg().glu;
      if (!bp) return unsupported("a Conv1D linear without bias");
      lt(b.mm_.matmul_forward(buf(o.out), buf(o.in), static_cast<const half*>(wp),
                              static_cast<const half*>(bp), T, o.in_dim, o.out_dim, gelu, st),
         "matmul_forward");
      gelu_fused = gelu;
    } else {
      unsupported("Conv1D layout");
    }
  }

  void head_norm(const head_norm_op& h) {
    q_norm = wf(tensor_role::q_norm_w, h.layer);
    k_norm = wf(tensor_role::k_norm_w, h.layer);
    head_eps = h.eps;
  }
  void rope(const rope_op& r) {
    rope_ = r;
    rope_pending = &rope_;
  }

  void kv_store(int l) {
    if (!ok()) return;
    const model_config& c = cfg();
    const cuda::qkv_shape sh{c.n_head, c.kv_heads(), c.head_dim(), 0};
    if (rope_pending || q_norm) {
      const int rot = rope_pending ? rope_pending->rot_dim : 0;
      const bool inter = rope_pending && rope_pending->kind == pos_kind::rope_interleaved;
      cu(cuda::rope_forward<E>(buf(act_buf::qkv), d.pos, b.rope_table_.as<float2>(), T, sh, rot,
                               inter, q_norm, k_norm, head_eps, kc(l), vc(l), d.slot, st),
         "rope_forward");
      rope_pending = nullptr;
      q_norm = k_norm = nullptr;
      return;
    }
    if constexpr (is_half) {
      if (c.kv_heads() != c.n_head) return unsupported("grouped heads without RoPE");
      if (decode) {
        kv_in_attention = true;
      } else {
        cu(cuda::kv_store_forward(kc(l), vc(l), buf(act_buf::qkv), d.slot, T, c.n_embd, st),
           "kv_store_forward");
      }
    } else {
      unsupported("a model without RoPE");
    }
  }

  void attention(const attention_op& a) {
    if (!ok()) return;
    if (std::fabs(a.scale * std::sqrt(float(a.head_dim)) - 1.f) > 1e-6f)
      return unsupported("an attention scale other than 1/sqrt(head_dim)");
    cu(cuda::paged_attention_forward<E>(
           buf(act_buf::att), buf(act_buf::qkv), kc(a.layer), vc(a.layer), d.seq, d.pos, d.tables,
           b.max_blocks_, b.kv_.block_size, T,
           cuda::attention_shape{a.n_head, a.n_kv_head, a.head_dim, a.window}, n_splits,
           split_len, b.attn_scratch_.template as<float>(), kv_in_attention ? d.slot : nullptr,
           st),
       "paged_attention_forward");
    kv_in_attention = false;
  }

  void glu(act_kind k, int F) {
    if (!ok()) return;
    if (k != act_kind::silu) return unsupported("this GLU activation");
    cu(cuda::silu_mul_forward<E>(buf(act_buf::ffn_act), buf(act_buf::ffn), T, F, st),
       "silu_mul_forward");
  }
  void activation(act_kind k, int) {
    if (!ok()) return;
    if (!(gelu_fused && k == act_kind::gelu_tanh)) return unsupported("this activation");
    gelu_fused = false;
  }
  void residual(act_buf x) {
    if (x != act_buf::proj) return unsupported("a residual of this buffer");
    residual_pending = true;
  }

  void lm_head(const norm_op& n, tensor_role head) {
    if (!ok()) return;
    if (!residual_pending) return unsupported("an LM head without the last residual");
    add_norm(n, act_buf::proj, act_buf::x);
    residual_pending = false;
    if (!ok()) return;
    if (R == 0) {
      cu(cudaMemsetAsync(b.tokens_out_.get(), 0xff, size_t(nseq) * 4, st), "memset");
      return;
    }
    const int C = cfg().n_embd;
    // tok_embd (tied) or lm_head, both padded to vocab_padded rows on the device.
    const void* hw = w().get(head);
    if (!hw) return unsupported("a missing LM head");
    cu(cuda::gather_rows_forward(b.gathered_.template as<half>(),
                                 reinterpret_cast<const half*>(buf(act_buf::x)), gather, R, C, st),
       "gather_rows_forward");
    if (!ok()) return;
    lt(b.mm_.lm_head_forward(b.logits_.template as<float>(), b.ld_logits_,
                             b.gathered_.get(), hw, R, C, w().vocab_padded, b.dt_, st),
       "lm_head_forward");
    if (!ok()) return;
    cu(cuda::sample_greedy_forward(b.tokens_out_.template as<int32_t>(),
                                   b.logits_.template as<float>(), b.ld_logits_, d.rows, nseq,
                                   cfg().n_vocab, d.params, d.sample, st),
       "sample_greedy_forward");
  }
};

status cuda_backend::enqueue_forward(const step_ptrs& d, const int32_t* d_gather, int T, int R,
                                     int nseq, int n_splits, int split_len, bool decode) {
  if (dt_ == cuda::dtype::bf16) {
    cuda_ops<bf16> ops{*this, d, d_gather, T, R, nseq, n_splits, split_len, decode, stream_.get(), status::ok()};
    forward(ops, cfg_);
    return ops.err;
  }
  cuda_ops<half> ops{*this, d, d_gather, T, R, nseq, n_splits, split_len, decode, stream_.get(), status::ok()};
  forward(ops, cfg_);
  return ops.err;
}

}  // namespace

result<std::unique_ptr<backend>> make_cuda_backend(std::shared_ptr<const model_weights> weights,
                                                   const backend_options& opts) {
  if (!weights) return make_status(errc::invalid_argument, "cuda backend: no weights");
  const int ndev = gpu::cuda_device_count();
  if (opts.device < 0 || opts.device >= ndev)
    return make_status(errc::device_error,
                       fmt::format("cuda backend: device {} not present ({} found)", opts.device, ndev));
  auto dt = gpu::resolve_device_dtype(weights->cfg, opts.dtype);
  if (!dt) return dt.error();
  auto dw = gpu::acquire_cuda_device_weights(weights, opts.device, dt.value());
  if (!dw) return dw.error();
  auto b = std::make_unique<cuda_backend>();
  if (auto s = b->init(dw.value(), opts); !s) return s;
  return std::unique_ptr<backend>(std::move(b));
}

result<std::unique_ptr<backend>> make_cuda_backend(const std::string& spec,
                                                   const load_options& load,
                                                   const backend_options& opts) {
  const int ndev = gpu::cuda_device_count();
  if (opts.device < 0 || opts.device >= ndev)
    return make_status(errc::device_error,
                       fmt::format("cuda backend: device {} not present ({} found)", opts.device, ndev));
  auto dw = gpu::acquire_cuda_device_weights(spec, load, opts.device, opts.dtype);
  if (!dw) return dw.error();
  auto b = std::make_unique<cuda_backend>();
  if (auto s = b->init(dw.value(), opts); !s) return s;
  return std::unique_ptr<backend>(std::move(b));
}

const char* cuda_backend_dtype(const backend& b) {
  const auto* cb = dynamic_cast<const cuda_backend*>(&b);
  return cb ? cuda::dtype_name(cb->dtype()) : nullptr;
}

const cuda_backend_stats* cuda_backend_get_stats(const backend& b) {
  const auto* cb = dynamic_cast<const cuda_backend*>(&b);
  return cb ? &cb->stats() : nullptr;
}

void cuda_backend_set_graphs(backend& b, bool enabled) {
  if (auto* cb = dynamic_cast<cuda_backend*>(&b)) cb->set_graphs(enabled);
}

void cuda_backend_set_fused_sampling(backend& b, bool enabled) {
  if (auto* cb = dynamic_cast<cuda_backend*>(&b)) cb->set_fused_sampling(enabled);
}

}  // namespace infer
