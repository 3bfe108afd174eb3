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

#include "engine/sampling-params.hpp"

namespace infer::cpu {

// out[t] = wte[tokens[t]] + wpe[pos[t]]
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

// logits[N, V] = x[N, C] @ wte^T (tied head)
void lm_head_forward(float* logits, const float* x, const float* wte, int N, int C, int V);

// The sampling rule shared by every backend (so the same seed gives the same tokens):
//   greedy (temperature < sampling_params::greedy_below, 1e-5, or top_k == 1): argmax, lowest id on ties;
//   otherwise rank ids by (logit desc, id asc), keep top_k (if > 0), softmax of
//   logit / temperature over them, keep the shortest prefix whose mass reaches top_p,
//   draw u = sampling_uniform(seed, counter) and take the first id whose cumulative
//   mass exceeds u * kept_mass.
// scratch: at least 2 * V floats (as ints and floats).
int32_t sample_token(const float* logits, int V, const sampling_params& sp, uint64_t counter,
                     float* scratch);

}  // namespace infer::cpu
