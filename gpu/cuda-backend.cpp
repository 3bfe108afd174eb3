#include "gpu/cuda-backend.hpp"

#include <algorithm>
#include <cstring>
#include <string>

#include <fmt/format.h>

#include "gpu/cuda-device-weights.hpp"
#include "gpu/cuda-resources.hpp"
#include "kernels/cuda-kernels.hpp"

namespace infer {

bool cuda_device_available() { return gpu::cuda_device_count() > 0; }

namespace {

using gpu::cuda_device_weights;
using gpu::device_buffer;
using gpu::pinned_buffer;
using half = __half;

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

  status init(std::shared_ptr<const model_weights> host, const backend_options& opts) {
    device_ = opts.device;
    cfg_ = host->cfg;
    // The fused GPT-2 pass below knows nothing of RoPE, GQA or RMSNorm: refuse the other
    // architectures until this backend runs model/forward.hpp's ops.
    if (cfg_.arch != arch_id::gpt2)
      return make_status(errc::invalid_argument,
                         fmt::format("cuda backend: architecture {} is not supported yet (GPT-2 only; use "
                                     "--backend cpu)", arch_name(cfg_.arch)));
    const int hd = cfg_.head_dim();
    if (cfg_.n_embd % cfg_.n_head != 0 || !cuda::attention_head_dim_supported(hd) ||
        cfg_.n_embd % 8 != 0)
      return make_status(errc::invalid_argument,
                         fmt::format("cuda backend: head size {} (n_embd {}) not supported; "
                                     "heads of 32, 64 or 128 and n_embd a multiple of 8 are",
                                     hd, cfg_.n_embd));
    if (opts.kv_block_size < 1)
      return make_status(errc::invalid_argument, "kv_block_size must be >= 1");
    const int ndev = gpu::cuda_device_count();
    if (device_ < 0 || device_ >= ndev)
      return make_status(errc::device_error,
                         fmt::format("cuda backend: device {} not present ({} found)", device_, ndev));
    INFER_CUDA_TRY(cudaSetDevice(device_));
    cudaDeviceProp prop{};
    INFER_CUDA_TRY(cudaGetDeviceProperties(&prop, device_));
    n_sm_ = prop.multiProcessorCount;

    auto dw = gpu::acquire_cuda_device_weights(host, device_);
    if (!dw) return dw.error();
    w_ = dw.value();
    stats_.weight_bytes = int64_t(w_->storage.bytes());

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

    // KV cache: what the options ask for, never more than fits in free memory (keeping
    // room for activations of larger steps and other workers).
    const size_t block_bytes = size_t(cfg_.n_layer) * 2 * kv_.block_size * cfg_.n_embd * 2;
    size_t want = 0;
    if (opts.kv_blocks > 0)
      want = size_t(opts.kv_blocks);
    else if (opts.kv_memory_mb > 0)
      want = size_t(opts.kv_memory_mb) * (size_t(1) << 20) / block_bytes;
    size_t free_b = 0, total_b = 0;
    INFER_CUDA_TRY(cudaMemGetInfo(&free_b, &total_b));
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
    layer_stride_ = size_t(kv_.n_blocks) * kv_.block_size * cfg_.n_embd;
    stats_.kv_bytes = int64_t(kv_cache_.bytes());
    return status::ok();
  }

  const char* name() const override { return "cuda"; }
  const model_config& config() const override { return cfg_; }
  kv_geometry kv() const override { return kv_; }
  const cuda_backend_stats& stats() const { return stats_; }
  void set_graphs(bool on) {
    graphs_enabled_ = on;
    if (!on) graphs_.clear();
  }

  status step(const step_batch& b, step_output& out, logits_mode mode) override {
    INFER_STATUS_TRY(validate(b));
    INFER_CUDA_TRY(cudaSetDevice(device_));
    const int S = b.n_seqs(), T = b.n_tokens(), V = cfg_.n_vocab;
    const int bs = kv_.block_size;
    const bool decode = T == S;  // one new token per sequence
    const bool use_graph =
        graphs_enabled_ && decode && mode != logits_mode::all && S <= max_graph_bucket;
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
        if (mode == logits_mode::last || b.sample[s]) ++R;
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
      h.sample[s] = b.sample[s];
      h.counters[s] = b.sample_counter[s];
      h.params[s] = b.sampling[s];
      if (b.sample[s] && !b.sampling[s].greedy()) any_sorted = true;
      if (use_graph) {
        h.rows[s] = s;
      } else if (mode == logits_mode::all) {
        h.rows[s] = last;  // sampling reads the all-rows logits directly
      } else if (mode == logits_mode::last || b.sample[s]) {
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
    if (any_sorted && R > 0) INFER_STATUS_TRY(enqueue_sorted_sampling(d, nseq_launch));

    INFER_CUDA_TRY(cudaMemcpyAsync(host_tokens_.get(), tokens_out_.get(), size_t(S) * 4,
                                   cudaMemcpyDeviceToHost, st));
    const int out_rows = mode == logits_mode::all ? T : mode == logits_mode::last ? S : 0;
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
    out.tokens.resize(S);
    const int32_t* ht = host_tokens_.as<int32_t>();
    for (int s = 0; s < S; ++s) out.tokens[s] = b.sample[s] ? ht[s] : -1;
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

  // Kernel sequence of one step; captured as is into decode graphs.
  status enqueue_forward(const step_ptrs& d, const int32_t* d_gather, int T, int R, int nseq,
                         int n_splits, int split_len, bool decode) {
    cudaStream_t st = stream_.get();
    const int C = cfg_.n_embd, NH = cfg_.n_head;
    const float eps = cfg_.ln_eps;
    float* res = residual_.as<float>();
    half* ln = ln_.as<half>();
    half* qkv = qkv_.as<half>();
    half* att = att_.as<half>();
    half* proj = proj_.as<half>();
    half* fc = fc_.as<half>();
    float* scratch = attn_scratch_.as<float>();
    INFER_CUDA_TRY(cuda::embed_forward(res, d.tokens, d.pos, w_->wte, w_->wpe, T, C, st));
    INFER_CUDA_TRY(cuda::layernorm_forward(ln, res, w_->layers[0].ln1_w, w_->layers[0].ln1_b, T,
                                           C, eps, st));
    for (int l = 0; l < cfg_.n_layer; ++l) {
      const auto& L = w_->layers[l];
      half* kc = kv_cache_.as<half>() + (2 * size_t(l)) * layer_stride_;
      half* vc = kv_cache_.as<half>() + (2 * size_t(l) + 1) * layer_stride_;
      INFER_CUBLAS_TRY(mm_.matmul_forward(qkv, ln, L.qkv_w, L.qkv_b, T, C, 3 * C, false, st));
      // Decode (one token a sequence): attention stores the token's K/V itself.
      if (!decode) INFER_CUDA_TRY(cuda::kv_store_forward(kc, vc, qkv, d.slot, T, C, st));
      INFER_CUDA_TRY(cuda::paged_attention_forward(att, qkv, kc, vc, d.seq, d.pos, d.tables,
                                                   max_blocks_, kv_.block_size, T, C, NH,
                                                   n_splits, split_len, scratch,
                                                   decode ? d.slot : nullptr, st));
      INFER_CUBLAS_TRY(mm_.matmul_forward(proj, att, L.proj_w, L.proj_b, T, C, C, false, st));
      INFER_CUDA_TRY(cuda::residual_layernorm_forward(res, ln, proj, L.ln2_w, L.ln2_b, T, C, eps,
                                                      st));
      INFER_CUBLAS_TRY(mm_.matmul_forward(fc, ln, L.fc_w, L.fc_b, T, C, 4 * C, true, st));
      INFER_CUBLAS_TRY(mm_.matmul_forward(proj, fc, L.fcproj_w, L.fcproj_b, T, 4 * C, C, false, st));
      const bool last = l + 1 == cfg_.n_layer;
      const float* nw = last ? w_->lnf_w : w_->layers[l + 1].ln1_w;
      const float* nb = last ? w_->lnf_b : w_->layers[l + 1].ln1_b;
      INFER_CUDA_TRY(cuda::residual_layernorm_forward(res, ln, proj, nw, nb, T, C, eps, st));
    }
    if (R == 0) {
      INFER_CUDA_TRY(cudaMemsetAsync(tokens_out_.get(), 0xff, size_t(nseq) * 4, st));
      return status::ok();
    }
    INFER_CUDA_TRY(cuda::gather_rows_forward(gathered_.as<half>(), ln, d_gather, R, C, st));
    INFER_CUBLAS_TRY(mm_.lm_head_forward(logits_.as<float>(), ld_logits_, gathered_.as<half>(),
                                         w_->wte, R, C, w_->vocab_padded, st));
    INFER_CUDA_TRY(cuda::sample_greedy_forward(tokens_out_.as<int32_t>(), logits_.as<float>(),
                                               ld_logits_, d.rows, nseq, cfg_.n_vocab, d.params,
                                               d.sample, st));
    return status::ok();
  }

  status enqueue_sorted_sampling(const step_ptrs& d, int nseq) {
    cudaStream_t st = stream_.get();
    const int V = cfg_.n_vocab;
    if (sort_rows_cap_ < nseq) {
      const size_t n = size_t(nseq) * V;
      size_t temp = 0;
      INFER_CUDA_TRY(cuda::sort_rows_forward(nullptr, temp, nullptr, nullptr, nullptr, ld_logits_,
                                             nullptr, nseq, V, nullptr, nullptr, st));
      INFER_STATUS_TRY(sort_temp_.allocate(temp));
      INFER_STATUS_TRY(sorted_logits_.allocate(n * 4));
      INFER_STATUS_TRY(sorted_ids_.allocate(n * 4));
      INFER_STATUS_TRY(compact_.allocate(n * 4));
      INFER_STATUS_TRY(ids_.allocate(n * 4));
      INFER_STATUS_TRY(probs_.allocate(n * 4));
      sort_rows_cap_ = nseq;
    }
    size_t temp = sort_temp_.bytes();
    INFER_CUDA_TRY(cuda::sort_rows_forward(sort_temp_.get(), temp, sorted_logits_.as<float>(),
                                           sorted_ids_.as<int32_t>(), logits_.as<float>(),
                                           ld_logits_, d.rows, nseq, V, compact_.as<float>(),
                                           ids_.as<int32_t>(), st));
    INFER_CUDA_TRY(cuda::sample_sorted_forward(tokens_out_.as<int32_t>(), sorted_logits_.as<float>(),
                                               sorted_ids_.as<int32_t>(), nseq, V, d.params,
                                               d.counters, d.sample, probs_.as<float>(), st));
    return status::ok();
  }

  // Activation buffers for T tokens and R LM-head rows. Growing reallocates, which
  // invalidates every captured graph (they hold the old addresses).
  status ensure_capacity(int T, int R) {
    if (T <= cap_tokens_ && R <= cap_rows_) return status::ok();
    INFER_CUDA_TRY(cudaStreamSynchronize(stream_.get()));
    graphs_.clear();
    const size_t C = size_t(cfg_.n_embd);
    if (T > cap_tokens_) {
      const int nt = std::max(T, cap_tokens_ * 2);
      INFER_STATUS_TRY(residual_.allocate(size_t(nt) * C * 4));
      INFER_STATUS_TRY(ln_.allocate(size_t(nt) * C * 2));
      INFER_STATUS_TRY(qkv_.allocate(size_t(nt) * 3 * C * 2));
      INFER_STATUS_TRY(att_.allocate(size_t(nt) * C * 2));
      INFER_STATUS_TRY(proj_.allocate(size_t(nt) * C * 2));
      INFER_STATUS_TRY(fc_.allocate(size_t(nt) * 4 * C * 2));
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

  model_config cfg_;
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
  size_t layer_stride_ = 0;  // halves per layer per k or v
  device_buffer kv_cache_;   // [n_layer][k|v][n_blocks][block_size][C]

  int cap_tokens_ = 0, cap_rows_ = 0;
  device_buffer residual_, ln_, qkv_, att_, proj_, fc_, gathered_, logits_, tokens_out_;
  device_buffer attn_scratch_;
  size_t attn_cap_ = 0;
  pinned_buffer host_stage_, host_tokens_;
  device_buffer dev_stage_;
  std::vector<int32_t> gather_;

  int sort_rows_cap_ = 0;
  device_buffer sort_temp_, sorted_logits_, sorted_ids_, compact_, ids_, probs_;

  bool graphs_enabled_ = true;
  std::vector<graph_entry> graphs_;
  cuda_backend_stats stats_;
};

}  // namespace

result<std::unique_ptr<backend>> make_cuda_backend(std::shared_ptr<const model_weights> weights,
                                                   const backend_options& opts) {
  if (!weights) return make_status(errc::invalid_argument, "cuda backend: no weights");
  auto b = std::make_unique<cuda_backend>();
  if (auto s = b->init(std::move(weights), opts); !s) return s;
  return std::unique_ptr<backend>(std::move(b));
}

const cuda_backend_stats* cuda_backend_get_stats(const backend& b) {
  const auto* cb = dynamic_cast<const cuda_backend*>(&b);
  return cb ? &cb->stats() : nullptr;
}

void cuda_backend_set_graphs(backend& b, bool enabled) {
  if (auto* cb = dynamic_cast<cuda_backend*>(&b)) cb->set_graphs(enabled);
}

}  // namespace infer
