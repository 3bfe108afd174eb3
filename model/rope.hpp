// RoPE frequencies (HF modeling_rope_utils semantics) and the per-position cos/sin tables
// both backends precompute once at start-up.
#pragma once
#include <cstdint>
#include <vector>

#include "model/model-config.hpp"

namespace infer {

// rot_dim / 2 inverse frequencies: theta^(-2i / rot_dim), then scaled by the rope type
// (linear: / factor; llama3: Meta's smooth low/high-frequency split).
std::vector<double> rope_inv_freq(const model_config& cfg);

// cos and sin tables [n_pos, rot_dim / 2], row p for position p, entry i = f(p * inv_freq[i]),
// computed in double and rounded once.
void rope_tables(const model_config& cfg, int32_t n_pos, std::vector<float>& cos_out,
                 std::vector<float>& sin_out);

}  // namespace infer
