// CUDA kernels of the forward pass: fp16 (GPT-2) or bf16 (the Llama family) weights and
// activations, fp32 accumulation, over the ragged batch of one step (all sequences' tokens back to back,
// no padding to the longest). Each launcher is named after the CPU reference function
// in kernels/cpu-kernels.hpp that computes the same thing (tests compare the two),
// takes the stream it runs on, and returns the launch's error; none synchronises,
// none allocates, so a decode step can be captured into a CUDA graph.
//
// Differences from the CPU layouts, chosen for the GPU:
//   - the residual stream is fp32, LayerNorm outputs and GEMM operands are fp16;
//   - the paged KV cache is fp16, per layer k/v [n_blocks, block_size, C] as on the CPU;
//   - per-token metadata (position, sequence, cache slot) lives in device arrays so
//     that the same captured launch serves every step of a batch-size bucket:
//     a position < 0 marks a padding token (no cache write, zero attention output).
#pragma once
#include <cstddef>
#include <cstdint>

#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include "base/sampling-params.hpp"

namespace infer::cuda {

using half = __half;
using bf16 = __nv_bfloat16;

// The 16-bit type of a model's weights, activations and KV cache on the device.
enum class dtype : uint8_t { f16, bf16 };
inline const char* dtype_name(dtype d) { return d == dtype::bf16 ? "bf16" : "fp16"; }

// out[t] = wte[tokens[t]] + wpe[max(pos[t], 0)]  (fp32 residual stream)
cudaError_t embed_forward(float* out, const int32_t* tokens, const int32_t* pos, const half* wte,
                          const half* wpe, int T, int C, cudaStream_t stream);

// out[t] = (in[t] - mean) / sqrt(var + eps) * w + b
cudaError_t layernorm_forward(half* out, const float* in, const float* w, const float* b, int T,
                              int C, float eps, cudaStream_t stream);

// residual += x, then out = layernorm(residual): one pass over the row.
cudaError_t residual_layernorm_forward(float* residual, half* out, const half* x, const float* w,
                                       const float* b, int T, int C, float eps,
                                       cudaStream_t stream);

// In place, tanh approximation (GPT-2's "gelu_new"); used where cuBLASLt offers no
// GELU epilogue for a shape.
cudaError_t gelu_forward(half* x, int64_t n, cudaStream_t stream);

// residual += x
cudaError_t residual_forward(float* residual, const half* x, int64_t n, cudaStream_t stream);

// out[i] = in[rows[i]] for i < N (rows of C halves): the tokens the LM head needs.
cudaError_t gather_rows_forward(half* out, const half* in, const int32_t* rows, int N, int C,
                                cudaStream_t stream);

// Writes K and V of each token (from qkv [T, 3C]: q | k | v) at cache slot[t]
// (block * block_size + row); slot < 0 is skipped.
cudaError_t kv_store_forward(half* k_cache, half* v_cache, const half* qkv, const int32_t* slot,
                             int T, int C, cudaStream_t stream);

// Causal attention over the paged cache, for prefill chunks and decode alike: token t
// of sequence tok_seq[t] at position tok_pos[t] attends to positions 0..tok_pos[t]
// of its sequence. The key range is cut into chunks of split_len keys (at most
// attention_max_split_len) processed by separate blocks, n_splits of them per token and
// head, and merged by a second kernel, so one long context still fills the GPU.
// n_splits must cover the longest context of the step (ceil((max_pos + 1) / split_len));
// scratch holds attention_scratch_floats(T, NH, n_splits, C / NH) floats (unused, may be
// null, when n_splits == 1).
// fused_kv_slot (may be null): decode steps, where each sequence has exactly one new
// token, store that token's K/V at fused_kv_slot[t] here instead of in kv_store_forward
// (one launch less per layer); the token's own K/V are then read from qkv.
inline constexpr int attention_max_split_len = 256;
inline size_t attention_scratch_floats(int T, int NH, int n_splits, int hd) {
  return n_splits > 1 ? size_t(T) * NH * n_splits * (hd + 2) : 0;
}

// Heads of the fused q|k|v rows: q [n_head * head_dim] | k [n_kv_head * head_dim] |
// v [n_kv_head * head_dim]; the KV cache rows are n_kv_head * head_dim wide. GPT-2 is
// n_kv_head == n_head, head_dim = C / n_head. window > 0: token at pos attends to
// positions pos - window + 1 .. pos only (Mistral's sliding window); 0: all of 0 .. pos.
struct attention_shape {
  int n_head = 1, n_kv_head = 1, head_dim = 64, window = 0;
  int q_ld() const { return (n_head + 2 * n_kv_head) * head_dim; }  // qkv row width
};
using qkv_shape = attention_shape;

// out [T, n_head * head_dim]. T is __half or bf16.
template <class T>
cudaError_t paged_attention_forward(T* out, const T* qkv, const T* k_cache, const T* v_cache,
                                    const int32_t* tok_seq, const int32_t* tok_pos,
                                    const int32_t* block_tables, int max_blocks, int block_size,
                                    int Tn, const attention_shape& sh, int n_splits,
                                    int split_len, float* scratch, const int32_t* fused_kv_slot,
                                    cudaStream_t stream);
// GPT-2's form: qkv [T, 3C], cache rows of C, NH heads of C / NH.
inline cudaError_t paged_attention_forward(half* out, const half* qkv, const half* k_cache,
                                           const half* v_cache, const int32_t* tok_seq,
                                           const int32_t* tok_pos, const int32_t* block_tables,
                                           int max_blocks, int block_size, int T, int C, int NH,
                                           int n_splits, int split_len, float* scratch,
                                           const int32_t* fused_kv_slot, cudaStream_t stream) {
  return paged_attention_forward<half>(out, qkv, k_cache, v_cache, tok_seq, tok_pos,
                                       block_tables, max_blocks, block_size, T,
                                       attention_shape{NH, NH, C / NH, 0}, n_splits, split_len,
                                       scratch, fused_kv_slot, stream);
}
bool attention_head_dim_supported(int hd);

// ---- Llama-family ops (T is __half or bf16; the residual stream stays fp32) ----

// out[t] = wte[tokens[t]] (no position table: positions enter through RoPE)
template <class T>
cudaError_t embed_tokens_forward(float* out, const int32_t* tokens, const T* wte, int Tn, int C,
                                 cudaStream_t stream);

// out[t] = in[t] / sqrt(mean(in[t]^2) + eps) * w   (C <= rmsnorm_max_width)
inline constexpr int rmsnorm_max_width = 8192;
template <class T>
cudaError_t rmsnorm_forward(T* out, const float* in, const float* w, int Tn, int C, float eps,
                            cudaStream_t stream);

// residual += x (x_norm_w null) or residual += rmsnorm(x) * x_norm_w (GLM-4's post-norms),
// then out = rmsnorm(residual) * w: the end of one block and the start of the next in
// one pass over the row.
template <class T>
cudaError_t residual_rmsnorm_forward(float* residual, T* out, const T* x, const float* x_norm_w,
                                     const float* w, int Tn, int C, float eps,
                                     cudaStream_t stream);

// In place on the q and k heads of qkv [T, sh.q_ld()] for tokens at pos[t] (< 0:
// padding, left alone), table[p * rot_dim / 2 + i] = (cos, sin) of position p,
// frequency i (model/rope.hpp's tables): first, where q_norm_w / k_norm_w are given, the per-head RMSNorm
// of q / k (Qwen3; weights [head_dim], eps), then the rotation of each head's first
// rot_dim values (rot_dim < head_dim: partial rotary; 0: none) in pairs (i, i + rot/2)
// (neox) or (2i, 2i + 1) (interleaved, GPT-J / GLM). Where k_cache is given, each
// token's rotated K and its V are also stored at cache slot[t] (rows of
// n_kv_head * head_dim; slot < 0 skipped). head_dim a multiple of 32, at most 256.
inline constexpr int rope_max_head_dim = 256;
bool rope_shape_supported(int head_dim, int rot_dim);
template <class T>
cudaError_t rope_forward(T* qkv, const int32_t* pos, const float2* table, int Tn,
                         const qkv_shape& sh, int rot_dim, bool interleaved,
                         const float* q_norm_w, const float* k_norm_w, float eps, T* k_cache,
                         T* v_cache, const int32_t* slot, cudaStream_t stream);

// out[t, i] = silu(gate_up[t, i]) * gate_up[t, I + i]   (gate_up [T, 2I], out [T, I])
template <class T>
cudaError_t silu_mul_forward(T* out, const T* gate_up, int Tn, int I, cudaStream_t stream);

// x[t, n] += bias[n]   (x [T, N])
template <class T>
cudaError_t bias_add_forward(T* x, const T* bias, int Tn, int N, cudaStream_t stream);

// GEMMs through cuBLASLt. A matmul_runner owns the handle's plan cache (layouts and the
// heuristic's algorithm per shape) so that a repeated shape costs no host-side search;
// it is used from one thread (its owner's stream), so it takes no lock.
class matmul_runner {
 public:
  matmul_runner() = default;
  ~matmul_runner();
  matmul_runner(const matmul_runner&) = delete;
  matmul_runner& operator=(const matmul_runner&) = delete;

  // handle and workspace belong to the caller and outlive this object.
  void bind(cublasLtHandle_t handle, void* workspace, size_t workspace_bytes);

  // out[T, OUT] = in[T, IN] @ w[IN, OUT] + bias, then GELU if gelu (all fp16, fp32 accumulate).
  cublasStatus_t matmul_forward(half* out, const half* in, const half* w, const half* bias, int T,
                                int IN, int OUT, bool gelu, cudaStream_t stream);

  // logits[N, ld] (fp32; columns V..ld-1 untouched or padding) = x[N, C] @ wte[V, C]^T
  cublasStatus_t lm_head_forward(float* logits, int ld, const half* x, const half* wte, int N,
                                 int C, int V, cudaStream_t stream) {
    return lm_head_forward(logits, ld, x, wte, N, C, V, dtype::f16, stream);
  }
  cublasStatus_t lm_head_forward(float* logits, int ld, const void* x, const void* w, int N,
                                 int C, int V, dtype dt, cudaStream_t stream);

  // nn.Linear layout (the Llama family): out[T, OUT] = in[T, IN] @ w[OUT, IN]^T + bias
  // (bias may be null), all of type dt, fp32 accumulate. The bias rides in cuBLASLt's
  // epilogue where the heuristic offers one for the shape, else bias_add_forward.
  cublasStatus_t linear_forward(void* out, const void* in, const void* w, const void* bias,
                                int T, int IN, int OUT, dtype dt, cudaStream_t stream);

 private:
  struct plan;
  plan* find_or_make(int kind, dtype dt, int M, int N, int K, int ldc, bool gelu, bool bias,
                     cublasStatus_t& st);
  cublasLtHandle_t handle_ = nullptr;
  void* workspace_ = nullptr;
  size_t workspace_bytes_ = 0;
  plan* plans_ = nullptr;  // singly linked, few entries (one per shape in use)
};

// Sampling on the device, the rule of cpu::sample_token. Sequence i's logits are row
// rows[i] of logits (stride ld); where do_sample[i] == 0 its token is -1.
// Greedy sequences are settled by sample_greedy_forward (one block a row, capturable).
// The others need the order (logit desc, id asc): sort_rows_forward gives it, then
// sample_sorted_forward walks the sorted rows and overwrites those sequences' tokens.
cudaError_t sample_greedy_forward(int32_t* tokens, const float* logits, int ld,
                                  const int32_t* rows, int N, int V, const sampling_params* sp,
                                  const uint8_t* do_sample, cudaStream_t stream);

// Sorts sequence i's logits row (as above) by (logit desc, id asc) into row i of
// sorted_logits / sorted_ids [N, V]; compact / ids are [N, V] scratch. Call with
// temp == nullptr to learn temp_bytes.
cudaError_t sort_rows_forward(void* temp, size_t& temp_bytes, float* sorted_logits,
                              int32_t* sorted_ids, const float* logits, int ld,
                              const int32_t* rows, int N, int V, float* compact, int32_t* ids,
                              cudaStream_t stream);

// prob_scratch: [N, V] floats.
cudaError_t sample_sorted_forward(int32_t* tokens, const float* sorted_logits,
                                  const int32_t* sorted_ids, int N, int V,
                                  const sampling_params* sp, const uint64_t* counters,
                                  const uint8_t* do_sample, float* prob_scratch,
                                  cudaStream_t stream);

}  // namespace infer::cuda
