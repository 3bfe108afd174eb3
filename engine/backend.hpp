// backend: one engine instance that runs a step over a ragged batch of sequences.
//
// A step takes, for each sequence, its new tokens (a prefill chunk of any length,
// or one decode token), how many of its tokens are already in the KV cache
// (n_past), and its block table into the paged KV cache. It writes the new
// tokens' K/V into those blocks and, for sequences that ask, samples the next
// token. Which sequences run, and which blocks they own, is decided by host code
// (engine/scheduler, engine/kv-block-pool): the backend only stores and computes.
//
// The CPU backend (engine/cpu-backend) and the CUDA backend (gpu/cuda-backend)
// implement this same interface; tests compare them.
#pragma once
#include <algorithm>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "model/model-config.hpp"
#include "base/result.hpp"
#include "base/sampling-params.hpp"

namespace infer {

// Flat arrays, reused from step to step: after warm-up, building a batch allocates nothing.
struct step_batch {
  int32_t max_blocks_per_seq = 0;       // stride of block_tables
  std::vector<int32_t> tokens;          // new tokens of all sequences, back to back
  std::vector<int32_t> seq_start;       // [n_seqs + 1] offsets into tokens
  std::vector<int32_t> n_past;          // [n_seqs] tokens already cached
  std::vector<int32_t> block_tables;    // [n_seqs * max_blocks_per_seq], -1 padded
  std::vector<uint8_t> sample;          // [n_seqs] 1: sample after the last new token
  std::vector<sampling_params> sampling;  // [n_seqs]
  std::vector<uint64_t> sample_counter;   // [n_seqs] index of the token being generated
  // Sequence i's logit changes (penalties, logit_bias, min_tokens bans) before it samples:
  // adjust[adjust_start[i] .. adjust_start[i + 1]). Logprobs ignore them (raw distribution).
  std::vector<int32_t> adjust_start;      // [n_seqs + 1]
  std::vector<logit_adjust> adjust;
  // Copy-on-write of forked sequences (n > 1): block copy_dst[i] gets the K/V of block
  // copy_src[i] (every layer) before the step's forward runs.
  std::vector<int32_t> copy_src, copy_dst;
  // Prompt logprobs (vLLM's prompt_logprobs, OpenAI's echo with logprobs), opt-in per
  // sequence: prompt_next[i] >= -1 asks for the log-softmax at every new token of sequence i:
  // the logprob of the token after it (the next new token; after the last, prompt_next[i],
  // and no entry when that is -1) and the top sampling[i].logprobs ids. -2 (or no entry:
  // the vector stays empty while nobody asks) is off, and costs nothing.
  std::vector<int32_t> prompt_next;
  // Backends that keep token counts per sequence (backend::device_token_counts): the slot of
  // each sequence (-1: none, its list is the one above), and whether this step loads the
  // slot from the list above (else the list above is empty and the slot's is used, with the
  // sampled token counted into it after the step when the sequence is penalized).
  std::vector<int32_t> counts_slot;       // [n_seqs]
  std::vector<uint8_t> counts_load;       // [n_seqs]

  void reset(int32_t max_blocks) {
    max_blocks_per_seq = max_blocks;
    tokens.clear(); seq_start.assign(1, 0); n_past.clear(); block_tables.clear();
    sample.clear(); sampling.clear(); sample_counter.clear();
    adjust_start.assign(1, 0); adjust.clear();
    counts_slot.clear(); counts_load.clear();
    copy_src.clear(); copy_dst.clear(); prompt_next.clear();
  }
  // Asks prompt logprobs of the sequence added last (see prompt_next).
  void want_prompt_logprobs(int32_t next) {
    prompt_next.resize(size_t(n_seqs()), -2);
    prompt_next.back() = next;
  }
  int32_t prompt_next_of(int32_t i) const { return size_t(i) < prompt_next.size() ? prompt_next[size_t(i)] : -2; }
  bool any_prompt_logprobs() const {
    for (int32_t v : prompt_next)
      if (v >= -1) return true;
    return false;
  }
  void add_copy(int32_t src, int32_t dst) {
    copy_src.push_back(src);
    copy_dst.push_back(dst);
  }
  int32_t n_seqs() const { return int32_t(n_past.size()); }
  int32_t n_tokens() const { return int32_t(tokens.size()); }
  int32_t seq_len(int32_t i) const { return seq_start[i + 1] - seq_start[i]; }

  void add(int32_t past, std::span<const int32_t> new_tokens, std::span<const int32_t> blocks,
           bool do_sample, const sampling_params& sp, uint64_t counter,
           std::span<const logit_adjust> adj = {}, int32_t slot = -1, bool load = false) {
    tokens.insert(tokens.end(), new_tokens.begin(), new_tokens.end());
    seq_start.push_back(int32_t(tokens.size()));
    n_past.push_back(past);
    size_t base = block_tables.size();
    block_tables.resize(base + size_t(max_blocks_per_seq), -1);
    for (size_t i = 0; i < blocks.size() && i < size_t(max_blocks_per_seq); ++i)
      block_tables[base + i] = blocks[i];
    sample.push_back(do_sample ? 1 : 0);
    sampling.push_back(sp);
    sample_counter.push_back(counter);
    if (adjust_start.empty()) adjust_start.push_back(0);
    if (do_sample) adjust.insert(adjust.end(), adj.begin(), adj.end());
    adjust_start.push_back(int32_t(adjust.size()));
    counts_slot.push_back(slot);
    counts_load.push_back(slot >= 0 && load ? 1 : 0);
  }
  bool any_slot() const {
    for (int32_t s : counts_slot)
      if (s >= 0) return true;
    return false;
  }
  // Whether any sampled sequence needs more than the plain rule (adjustments or logprobs).
  bool any_adjust() const { return !adjust.empty(); }
  std::span<const logit_adjust> adjustments(int32_t i) const {
    if (adjust.empty()) return {};
    return {adjust.data() + adjust_start[i], size_t(adjust_start[i + 1] - adjust_start[i])};
  }
  bool any_logprobs() const {
    for (size_t i = 0; i < sampling.size(); ++i)
      if (sample[i] && sampling[i].logprobs >= 0) return true;
    return false;
  }
};

enum class logits_mode {
  none,  // sampled tokens only (serving)
  last,  // also logits of each sequence's last new token: [n_seqs, V]
  all,   // also logits of every new token: [n_tokens, V] (tests)
};

struct step_output {
  std::vector<int32_t> tokens;  // [n_seqs], -1 where the sequence did not sample
  std::vector<float> logits;    // per logits_mode
  // Only when some sampled sequence asks for logprobs (else empty), from the log-softmax of
  // the raw logits (before adjustments and temperature, as vLLM's default):
  std::vector<float> logprob;        // [n_seqs] the sampled token's
  std::vector<int32_t> top_ids;      // [n_seqs * max_logprobs] best first (logit desc, id asc)
  std::vector<float> top_logprobs;   // [n_seqs * max_logprobs]; the first sampling.logprobs are set
  // Prompt logprobs of the sequences that asked (step_batch::prompt_next), from the raw
  // logits: sequence i's entries are [prompt_start[i], prompt_start[i + 1]), one per new
  // token that has a token after it. All empty when no sequence asked.
  std::vector<int32_t> prompt_start;        // [n_seqs + 1]
  std::vector<float> prompt_logprob;        // [entries] the following token's logprob
  std::vector<int32_t> prompt_top_ids;      // [entries * max_logprobs]
  std::vector<float> prompt_top_logprobs;   // [entries * max_logprobs]

  // Fills the prompt entries from logits rows: row_of(t) is the row of new token t. Shared by
  // the backends (the CUDA one copies the rows it needs back first).
  template <class RowOf>
  void fill_prompt_logprobs(const step_batch& b, int32_t V, RowOf row_of);
};

// log-softmax of one row: writes its k best (logit desc, id asc) and returns log-sum-exp.
float log_softmax_top_row(const float* logits, int V, int k, int32_t* top_ids, float* top_lp);

template <class RowOf>
void step_output::fill_prompt_logprobs(const step_batch& b, int32_t V, RowOf row_of) {
  constexpr size_t K = size_t(sampling_params::max_logprobs);
  prompt_start.assign(1, 0);
  prompt_logprob.clear(); prompt_top_ids.clear(); prompt_top_logprobs.clear();
  for (int32_t s = 0; s < b.n_seqs(); ++s) {
    const int32_t next_after = b.prompt_next_of(s);
    if (next_after >= -1) {
      const int k = std::clamp(b.sampling[size_t(s)].logprobs, 0, int(K));
      for (int32_t t = b.seq_start[size_t(s)]; t < b.seq_start[size_t(s) + 1]; ++t) {
        const int32_t next = t + 1 < b.seq_start[size_t(s) + 1] ? b.tokens[size_t(t) + 1] : next_after;
        if (next < 0 || next >= V) break;
        const float* row = row_of(t);
        const size_t e = prompt_logprob.size();
        prompt_top_ids.resize((e + 1) * K, -1);
        prompt_top_logprobs.resize((e + 1) * K, 0.0f);
        const float lse = log_softmax_top_row(row, V, k, prompt_top_ids.data() + e * K, prompt_top_logprobs.data() + e * K);
        prompt_logprob.push_back(row[next] - lse);
      }
    }
    prompt_start.push_back(int32_t(prompt_logprob.size()));
  }
}

struct kv_geometry {
  int32_t block_size = 16;  // tokens per block
  int32_t n_blocks = 0;     // blocks in the pool
};

class backend {
 public:
  virtual ~backend() = default;
  virtual const char* name() const = 0;  // "cpu", "cuda"
  virtual const model_config& config() const = 0;
  virtual kv_geometry kv() const = 0;
  // Runs one step. Misuse (a block table too short, a position past n_ctx, ...)
  // is an invalid_argument error; device faults are device_error.
  virtual status step(const step_batch& batch, step_output& out,
                      logits_mode mode = logits_mode::none) = 0;
  // Block dst[i] := block src[i], the K and V rows of every layer (a fork's copy-on-write of
  // its partial last block). step() runs a batch's copies first through this; a wrapper that
  // forwards step() needs nothing more. Errors: ids outside the pool, a dst listed twice or
  // also a src (checked by validate_block_copies).
  virtual status copy_blocks(std::span<const int32_t> src, std::span<const int32_t> dst) {
    if (src.empty() && dst.empty()) return status::ok();
    return make_status(errc::invalid_argument, std::string(name()) + " backend: no block copy");
  }
  // Whether it keeps each sequence's token counts itself (step_batch::counts_slot): the
  // scheduler then hands a sequence's list over once per admission instead of every step.
  virtual bool device_token_counts() const { return false; }
};

// The checks of copy_blocks' arguments, for every backend.
status validate_block_copies(std::span<const int32_t> src, std::span<const int32_t> dst, const kv_geometry& kv);

// The checks every backend runs before a step: misuse is an invalid_argument error
// naming the sequence, never a crash.
status validate_step_batch(const step_batch& b, const model_config& cfg, const kv_geometry& kv);

struct backend_options {
  std::string kind = "cpu";   // cpu | cuda
  int32_t kv_block_size = 16;
  int32_t kv_blocks = 0;      // 0: sized from kv_memory_mb
  int64_t kv_memory_mb = 256;
  // CUDA: > 0 sizes the KV cache instead of kv_memory_mb: this fraction of the device's memory
  // holds the weights plus the KV caches of its `device_workers` workers (an equal share each).
  double gpu_memory_utilization = 0.0;
  int32_t device_workers = 1;
  int32_t device = 0;         // CUDA device ordinal
  std::string dtype = "auto"; // CUDA: auto (checkpoint's torch_dtype; GPT-2 fp16) | bf16 | fp16
  int32_t threads = 0;        // CPU: BLAS threads (process-wide), 0 = 1
};

}  // namespace infer
