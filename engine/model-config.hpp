// model_config: the shape of a GPT-2 family model (Hugging Face config.json names).
#pragma once
#include <cstdint>
#include <string>

namespace infer {

struct model_config {
  int32_t n_vocab = 50257;
  int32_t n_ctx = 1024;    // n_positions: learned position table rows
  int32_t n_embd = 768;
  int32_t n_layer = 12;
  int32_t n_head = 12;
  float ln_eps = 1e-5f;

  int32_t head_dim() const { return n_embd / n_head; }
  // Parameters, the tied LM head counted once.
  int64_t n_params() const {
    const int64_t C = n_embd;
    const int64_t per_layer = 2 * C + (C * 3 * C + 3 * C) + (C * C + C) + 2 * C +
                              (C * 4 * C + 4 * C) + (4 * C * C + C);
    return int64_t(n_vocab) * C + int64_t(n_ctx) * C + n_layer * per_layer + 2 * C;
  }
};

}  // namespace infer
