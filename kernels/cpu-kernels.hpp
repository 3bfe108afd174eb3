// CPU reference kernels of the GPT-2 forward pass (llm.c style: one function per
// computation, plain loops or a BLAS call). The CPU backend runs on these; every
// CUDA kernel in kernels/*.cu is tested against the function of the same name here.
//
// Shapes: T = tokens in the step (all sequences back to back), C = n_embd,
// NH = heads, hd = C / NH, V = vocabulary. Row-major everywhere.
// Paged KV cache, per layer: k_cache and v_cache are [n_blocks, block_size, C];
// the K/V of a sequence's position p live in block block_table[p / block_size],
// row p % block_size.
#pragma once
#include <cstdint>
#include <span>

#include "base/sampling-params.hpp"

namespace infer::cpu {

// out[t] = wte[tokens[t]] + wpe[pos[t]]; wpe may be null (RoPE models: token embedding only).
void embed_forward(float* out, const int32_t* tokens, const int32_t* pos, const float* wte,
                   const float* wpe, int T, int C);

// out[t] = (in[t] - mean) / sqrt(var + eps) * w + b
void layernorm_forward(float* out, const float* in, const float* w, const float* b, int T, int C,
                       float eps);

// residual += x, then out = layernorm(residual): the two are fused on the GPU.
void residual_layernorm_forward(float* residual, float* out, const float* x, const float* w,
                                const float* b, int T, int C, float eps);

// out[T, OUT] = in[T, IN] @ w[IN, OUT] + bias (bias may be null). OpenBLAS sgemm.
void matmul_forward(float* out, const float* in, const float* w, const float* bias, int T, int IN,
                    int OUT);

// In place, tanh approximation (GPT-2's "gelu_new").
void gelu_forward(float* x, int64_t n);

// residual += x
void residual_forward(float* residual, const float* x, int64_t n);

// Writes each token's K and V (from qkv [T, 3C]: q | k | v) into the cache at slot[t]
// (slot = block * block_size + row).
void kv_store_forward(float* k_cache, float* v_cache, const float* qkv, const int32_t* slot, int T,
                      int C);

// Causal attention over the paged cache. Token t belongs to sequence tok_seq[t] at
// position tok_pos[t] and attends to positions 0..tok_pos[t] of its sequence (its own
// K/V must already be stored). out [T, C]. scratch holds at least tok_pos[t] + 1 floats.
void paged_attention_forward(float* out, const float* qkv, const float* k_cache,
                             const float* v_cache, const int32_t* tok_seq, const int32_t* tok_pos,
                             const int32_t* block_tables, int max_blocks, int block_size, int T,
                             int C, int NH, float* scratch);

// logits[N, V] = x[N, C] @ wte^T (wte: the tied embedding or an untied lm_head, both [V, C])
void lm_head_forward(float* logits, const float* x, const float* wte, int N, int C, int V);

// ---- Llama family (model/forward.hpp's ops). Linear layers are nn.Linear [out, in]. ----
// GQA geometry: NH query heads, NKV key/value heads (NH % NKV == 0), hd = head_dim;
// q_dim = NH * hd, kv_dim = NKV * hd; a fused qkv row is [q (q_dim) | k (kv_dim) | v (kv_dim)].
// Paged KV cache for these, per layer: [n_blocks, block_size, kv_dim].

// out[t] = in[t] / sqrt(mean(in[t]^2) + eps) * w   (sum in fp32, HF Llama/Qwen/GLM semantics)
void rmsnorm_forward(float* out, const float* in, const float* w, int T, int C, float eps);

// residual += x, then out = rmsnorm(residual): one op on the GPU.
void residual_rmsnorm_forward(float* residual, float* out, const float* x, const float* w, int T,
                              int C, float eps);

// out[T, OUT] = in[T, IN] @ w^T + bias, w stored [OUT, IN] (nn.Linear). bias may be null.
void matmul_nt_forward(float* out, const float* in, const float* w, const float* bias, int T,
                       int IN, int OUT);

// out[t, i] += bias[i] for T rows of N (where a GEMM epilogue cannot add it).
void bias_add_forward(float* out, const float* bias, int T, int N);

// RMSNorm of each head vector in place: for each row t (stride row_stride floats) the
// n_heads consecutive vectors of hd floats starting at x + t * row_stride are normed with
// the shared weight w[hd] (Qwen3 q_norm / k_norm: call once for q, once for k).
void head_rmsnorm_forward(float* x, const float* w, int T, int row_stride, int n_heads, int hd,
                          float eps);

// Rotary position embedding in place on the first n_heads heads of each row (q and k are
// adjacent in a qkv row: n_heads = NH + NKV). Row t (stride row_stride) is at position
// pos[t]; cos/sin are [n_pos, rot_dim / 2] tables (model/rope.hpp), entry i the angle of
// frequency i. Dims [0, rot_dim) of each head rotate, [rot_dim, hd) pass unchanged.
//   neox (interleaved = false): pair (i, i + rot_dim/2), frequency i  (HF rotate_half)
//   interleaved (true):         pair (2i, 2i + 1),       frequency i  (GLM-4, GPT-J)
// (x_a, x_b) -> (x_a cos - x_b sin, x_b cos + x_a sin).
void rope_forward(float* x, const int32_t* pos, const float* cos, const float* sin, int T,
                  int row_stride, int n_heads, int hd, int rot_dim, bool interleaved);

// out[t, i] = silu(in[t, i]) * in[t, F + i], in [T, 2F] (gate | up), out [T, F].
void silu_mul_forward(float* out, const float* in, int T, int F);

// In place: x = x * sigmoid(x).
void silu_forward(float* x, int64_t n);

// k and v of each qkv row (stride q_dim + 2 kv_dim) into the cache at slot[t].
void kv_store_gqa_forward(float* k_cache, float* v_cache, const float* qkv, const int32_t* slot,
                          int T, int q_dim, int kv_dim);

// Causal attention with grouped-query heads over the paged cache. Query head h of token t
// (sequence tok_seq[t], position tok_pos[t]) reads KV head h / (NH / NKV) at positions
// max(0, pos - window + 1) .. pos (window <= 0: from 0). q is read from the qkv rows
// (stride q_dim + 2 kv_dim; RoPE already applied); out [T, q_dim]. scale multiplies q.k.
// scratch holds at least tok_pos[t] + 1 floats.
void paged_attention_gqa_forward(float* out, const float* qkv, const float* k_cache,
                                 const float* v_cache, const int32_t* tok_seq,
                                 const int32_t* tok_pos, const int32_t* block_tables,
                                 int max_blocks, int block_size, int T, int NH, int NKV, int hd,
                                 int window, float scale, float* scratch);

// The sampling rule shared by every backend (so the same seed gives the same tokens):
//   greedy (temperature < sampling_params::greedy_below, 1e-5, or top_k == 1): argmax, lowest id on ties;
//   otherwise rank ids by (logit desc, id asc), keep top_k (if > 0), softmax of
//   logit / temperature over them, keep the shortest prefix whose mass reaches top_p,
//   draw u = sampling_uniform(seed, counter) and take the first id whose cumulative
//   mass exceeds u * kept_mass.
// scratch: at least 2 * V floats (as ints and floats).
//   min_p > 0 keeps, after top_k, the ids whose exp((logit - max) / temperature) >= min_p.
int32_t sample_token(const float* logits, int V, const sampling_params& sp, uint64_t counter,
                     float* scratch);

// Applies a sequence's logit adjustments (penalties, bias: adjusted_logit) in place.
void apply_logit_adjust(float* logits, std::span<const logit_adjust> adj, const sampling_params& sp);
// Constrained decoding: logits[i] := -inf where bit i of `mask` (V bits, 32 per word) is 0.
// The CPU twin of cuda::token_mask_rows_forward; applied after the adjustments, so no bias
// can bring a masked token back.
void apply_token_mask(float* logits, const uint32_t* mask, int V);

// Log-softmax of one row: returns log(sum exp(logits)) so that logprob(i) = logits[i] - lse,
// and writes the k best ids (logit desc, id asc) with their logprobs.
float log_softmax_top(const float* logits, int V, int k, int32_t* top_ids, float* top_lp);

}  // namespace infer::cpu
