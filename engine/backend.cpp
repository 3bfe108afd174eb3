#include "engine/backend.hpp"

#include "kernels/cpu-kernels.hpp"

namespace infer {

status validate_step_batch(const step_batch& b, const model_config& cfg, const kv_geometry& kv) {
  const int S = b.n_seqs();
  auto bad = [](std::string m) { return make_status(errc::invalid_argument, std::move(m)); };
  if (S == 0) return bad("step: empty batch");
  if (int(b.seq_start.size()) != S + 1 || int(b.sample.size()) != S ||
      int(b.sampling.size()) != S || int(b.sample_counter.size()) != S ||
      int64_t(b.block_tables.size()) != int64_t(S) * b.max_blocks_per_seq ||
      b.seq_start[0] != 0 || b.seq_start[S] != b.n_tokens())
    return bad("step: inconsistent batch arrays");
  if (!b.adjust.empty() && (int(b.adjust_start.size()) != S + 1 || b.adjust_start[0] != 0 ||
                            b.adjust_start[S] != int32_t(b.adjust.size())))
    return bad("step: inconsistent logit adjustments");
  if (!b.counts_slot.empty() && (int(b.counts_slot.size()) != S || int(b.counts_load.size()) != S))
    return bad("step: inconsistent count slots");
  for (int32_t s : b.counts_slot)
    if (s >= 0x100000) return bad("step: count slot " + std::to_string(s) + " out of range");
  for (const logit_adjust& a : b.adjust)
    if (a.token < 0 || a.token >= cfg.n_vocab)
      return bad("step: adjusted token id " + std::to_string(a.token) + " outside the vocabulary");
  for (const sampling_params& p : b.sampling)
    if (p.logprobs > sampling_params::max_logprobs)
      return bad("step: more than " + std::to_string(sampling_params::max_logprobs) + " logprobs");
  if (auto s = validate_block_copies(b.copy_src, b.copy_dst, kv); !s) return s;
  for (int32_t tok : b.tokens)
    if (tok < 0 || tok >= cfg.n_vocab)
      return bad("step: token id " + std::to_string(tok) + " outside the vocabulary");
  for (int s = 0; s < S; ++s) {
    const int len = b.seq_len(s);
    if (len < 1) return bad("step: sequence " + std::to_string(s) + " has no new tokens");
    const int end = b.n_past[s] + len;
    if (b.n_past[s] < 0 || end > cfg.n_ctx)
      return bad("step: sequence " + std::to_string(s) + " reaches position " +
                 std::to_string(end) + " beyond the context of " + std::to_string(cfg.n_ctx));
    const int need = (end + kv.block_size - 1) / kv.block_size;
    if (need > b.max_blocks_per_seq)
      return bad("step: sequence " + std::to_string(s) + " needs more blocks than its table");
    const int32_t* table = b.block_tables.data() + int64_t(s) * b.max_blocks_per_seq;
    for (int i = 0; i < need; ++i)
      if (table[i] < 0 || table[i] >= kv.n_blocks)
        return bad("step: sequence " + std::to_string(s) + " has block " +
                   std::to_string(table[i]) + " outside the pool");
  }
  return status::ok();
}

float log_softmax_top_row(const float* logits, int V, int k, int32_t* top_ids, float* top_lp) {
  return cpu::log_softmax_top(logits, V, k, top_ids, top_lp);
}

status validate_block_copies(std::span<const int32_t> src, std::span<const int32_t> dst, const kv_geometry& kv) {
  auto bad = [](std::string m) { return make_status(errc::invalid_argument, "block copy: " + std::move(m)); };
  if (src.size() != dst.size()) return bad("as many sources as destinations");
  for (size_t i = 0; i < src.size(); ++i) {
    if (src[i] < 0 || src[i] >= kv.n_blocks || dst[i] < 0 || dst[i] >= kv.n_blocks)
      return bad("block " + std::to_string(src[i] < 0 || src[i] >= kv.n_blocks ? src[i] : dst[i]) +
                 " outside the pool");
    // Copies may run in any order (or at once on a device): no destination may be read or
    // written by another copy.
    for (size_t j = 0; j < src.size(); ++j)
      if ((j != i && dst[j] == dst[i]) || src[j] == dst[i])
        return bad("block " + std::to_string(dst[i]) + " is a destination and also read or written by another copy");
  }
  return status::ok();
}

}  // namespace infer
