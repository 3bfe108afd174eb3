// scheduler: per-step continuous batching for one worker (vLLM v1 style), pure host code.
//
// It holds the worker's sequences (running, in admission order, and waiting, FIFO)
// and the worker's kv_block_pool. Each step, schedule() fills a step_batch within a
// token budget: first one decode token for every running sequence that is decoding,
// then the next prefill chunk (at most prefill_chunk tokens) of running sequences
// still prefilling, then new sequences from the waiting queue while there is budget,
// room (max_running) and KV blocks. A long prompt is thus prefilled over several steps
// while the others keep decoding (chunked prefill). Batches are ragged (no padding),
// so grouping prefills by length would gain nothing: order stays FIFO, which is fair.
//
// When a running sequence needs a block and none is free, the most recently admitted
// running sequence is preempted: its blocks are freed, its tokens (prompt + generated)
// are kept, and it goes to the front of the waiting queue; when it is admitted again
// its KV is recomputed by prefilling prompt + generated. Counter-based sampling makes
// the resumed output identical. A sequence is never dropped for lack of memory.
//
// Prefix caching (prefix_caching, on by default): every full block whose K/V has been
// written is committed to the pool under its chain hash (kv_block_hash over cache_salt);
// when a sequence leaves (finished, cancelled, preempted, drained) its blocks are freed
// tail first, and its committed ones stay cached until an allocation needs the room. An
// admission takes the longest cached prefix of its tokens (shared, reference-counted) and
// prefills only the rest; the last token is always computed, so there are logits to
// sample from, and a partial last block is never shared. A preempted sequence thus finds
// most of its own blocks again when it is re-admitted, unless they were evicted meanwhile.
//
// The scheduler ends a sequence at max_tokens or at the context limit (finish reason
// length), and when it samples one of the sequence's stop ids (the model's end-of-sequence
// ids unless the request ignores them, plus its stop_token_ids: finish reason stop). Both
// free the blocks in the same on_step_done() that produced the last token, on whichever
// node the worker runs. Stop strings need the detokenized text: the request actor matches
// them and cancels the sequence, which frees its blocks at once (cancel()).
//
// Sampling controls that need a sequence's history are lists of sparse logit changes
// (logit_adjust) handed to the backend with every sampled step: with penalties, one entry
// per distinct token of prompt + output (output occurrences counted, kept up to date as
// tokens are sampled); the request's logit_bias; and, while fewer than min_tokens tokens
// are generated, -inf on every stop id. Both backends apply them the same way
// (adjusted_logit) before temperature / top-k / top-p / min-p. A backend that keeps the
// counts itself (device_counts: the CUDA one) gets a sequence's list once, with its first
// sampled step after each admission, in the count slot the sequence holds while it runs;
// later steps name the slot, the device counts the sampled tokens and bans the stop ids
// (flagged adjust_stop) while min_tokens is not reached. The host's list stays the truth a
// resumed (preempted) sequence or a failed step reloads from.
//
// n > 1 (choices of one request, OpenAI's `n`): one sequence id holds n forks, numbered
// 0..n-1. The prompt is prefilled once, up to its last token, by fork 0 alone; then the
// others fork from it: they share its full blocks (reference counts) and get a copy of the
// partial block holding the last prompt token (copy-on-write: the batch's block copies,
// run by the backend before the step). Every fork then computes that last token for its
// own logits (one token, as a decode) and samples with a seed of its own (fork_seed). From
// there forks are sequences like any other: preempted, resumed and finished one by one.
// Admitting a group reserves room in max_running for all its forks; the fork itself
// takes blocks as a decode does (preempting from the back, never the sequences before it).
// A resumed group (seq_spec::forks: each fork with its own tokens) is n independent
// sequences that find the prompt in the prefix cache.
//
// Protocol: schedule() -> the backend runs the batch -> on_step_done(out) (or
// on_step_failed()) -> schedule() ... add() and cancel() may be called at any time,
// including while a step is in flight (a cancelled sequence's blocks are reused only
// by a later schedule(), after the step has ended).
#pragma once
#include <algorithm>
#include <array>
#include <cstdint>
#include <deque>
#include <memory>
#include <span>
#include <unordered_map>
#include <vector>

#include "engine/backend.hpp"
#include "engine/kv-block-pool.hpp"
#include "base/result.hpp"
#include "base/sampling-params.hpp"

namespace infer {

struct scheduler_config {
  int32_t max_batch_tokens = 512;  // tokens in one step (decodes + prefill chunks)
  int32_t max_running = 64;        // sequences in the running batch
  int32_t prefill_chunk = 256;     // longest prefill slice of one sequence in one step
  int32_t n_ctx = 1024;            // context limit: prompt + generated tokens
  bool prefix_caching = true;      // reuse cached full blocks of earlier sequences
  uint64_t cache_salt = 0;         // what else the K/V depends on (model, weights, adapter)
  // The backend keeps each running sequence's token counts in a slot of its own
  // (backend::device_token_counts): the list goes out once per admission, not every step.
  bool device_counts = false;
};

// One sequence as handed to (or taken back from) a scheduler.
struct seq_spec {
  uint64_t id = 0;
  std::vector<int32_t> prompt;
  std::vector<int32_t> generated;  // already generated (a resumed sequence)
  int32_t max_tokens = 16;         // generated tokens in all, `generated` included
  sampling_params sampling;
  std::vector<int32_t> stop_ids;   // sampling one of these ends the sequence (it is its last token)
  std::vector<std::pair<int32_t, float>> logit_bias;  // token id -> added to its logit, distinct ids
  // n > 1: this many choices (forks). `forks` empty: all n start fresh from the prompt
  // (and `generated` must be empty); else the forks still to run, each with its tokens so
  // far (a resumed request), and `generated` is unused.
  // Prompt logprobs (OpenAI's echo with logprobs): the logprob of every prompt token after the
  // first and the top sampling.logprobs ids at each, from the backend's raw logits, handed
  // out with the first result. Its prefill never starts from the prefix cache (the cached
  // prefix's logits were never computed).
  bool prompt_logprobs = false;
  int32_t n = 1;
  struct fork_state {
    int32_t index = 0;
    std::vector<int32_t> generated;
  };
  std::vector<fork_state> forks;
};

// One sampled token of one sequence.
struct seq_result {
  uint64_t id = 0;
  int32_t fork = 0;   // the choice (0 unless n > 1)
  int32_t index = 0;  // position among the generated tokens, 0-based
  int32_t token = -1;
  bool finished = false;  // the last token: max_tokens, the context limit or a stop id
  bool stopped = false;   // finished because `token` is one of the sequence's stop ids
  bool group_done = false;  // finished, and no other fork of this id is left: the id is gone
  int32_t n_top = -1;     // -1: no logprobs asked; else top_ids/top_logprobs[0, n_top) are set
  float logprob = 0.0f;   // the token's (raw distribution), when n_top >= 0
  std::array<int32_t, sampling_params::max_logprobs> top_ids{};
  std::array<float, sampling_params::max_logprobs> top_logprobs{};
  // On the first token a sequence samples after add(): the prompt tokens whose K/V came
  // from the prefix cache at its admission (usage.prompt_tokens_details.cached_tokens); -1 else.
  int32_t cached_tokens = -1;
  // With the first result of a sequence that asked for prompt logprobs: entry j is prompt
  // token j + 1's logprob, and its top ids / logprobs at [j * max_logprobs, + n_top).
  std::vector<float> prompt_logprob;
  std::vector<int32_t> prompt_top_ids;
  std::vector<float> prompt_top_logprobs;
};

class scheduler {
 public:
  scheduler(const scheduler_config& cfg, kv_geometry kv);
  ~scheduler();
  scheduler(const scheduler&) = delete;
  scheduler& operator=(const scheduler&) = delete;

  // Queues a sequence; it joins the running batch at a following schedule().
  // invalid_argument: duplicate id, empty prompt, nothing left to generate,
  // prompt + generated beyond n_ctx, or more KV blocks than the whole pool holds.
  status add(seq_spec s);
  // Removes a sequence (every fork, or only fork `fork`) wherever it is and frees its
  // blocks now. False: unknown id (or fork).
  bool cancel(uint64_t id, int32_t fork = -1);

  // Builds the next step into `batch` (reset first). Returns its number of sequences;
  // 0 when there is nothing to run. Must not be called while a step is in flight.
  int32_t schedule(step_batch& batch);
  // Applies the sampled tokens of the step built by the last schedule(): appends one
  // result per sampled token; finished sequences leave and free their blocks.
  void on_step_done(const step_output& out, std::vector<seq_result>& results);
  // The step failed: its work is discarded; the same tokens are scheduled again.
  void on_step_failed();
  // Removes every sequence (running first, then waiting), with the tokens generated so
  // far, freeing all blocks: for re-admission elsewhere.
  std::vector<seq_spec> drain();

  bool step_in_flight() const { return in_flight_; }
  bool has_work() const { return !running_.empty() || !waiting_.empty(); }
  bool contains(uint64_t id) const { return groups_.count(id) != 0; }
  int32_t n_running() const { return int32_t(running_.size()); }
  int32_t n_waiting() const { return int32_t(waiting_.size()); }
  int32_t n_seqs() const { return int32_t(seqs_.size()); }  // forks count one each
  uint64_t n_preemptions() const { return n_preemptions_; }
  const kv_block_pool& pool() const { return pool_; }
  // Prefix cache figures, in tokens, over the first admission of every sequence added
  // (re-admissions after a preemption are not counted): tokens looked up, tokens found.
  uint64_t prefix_queries() const { return prefix_queries_; }
  uint64_t prefix_hits() const { return prefix_hits_; }
  // Drops every cached block nobody references (blocks in use keep their content).
  int32_t flush_prefix_cache() { return pool_.flush(); }
  const scheduler_config& config() const { return cfg_; }
  int32_t max_blocks_per_seq() const { return max_blocks_; }
  // KV blocks the waiting sequences will need to start (their whole tokens so far).
  int32_t waiting_blocks() const;
  // Tokens of the sequences in the last built batch that are prefill (not decode) tokens.
  int32_t last_prefill_tokens() const { return last_prefill_tokens_; }
  // Ids of the sequences in the last built batch (a failed step makes them suspects), once each.
  void scheduled_ids(std::vector<uint64_t>& out) const {
    out.clear();
    for (const auto& s : scheduled_)
      if (std::find(out.begin(), out.end(), s.id) == out.end()) out.push_back(s.id);
  }
  // Forks made so far (tests): each one shared its parent's prefill.
  uint64_t n_forks() const { return n_forks_; }

 private:
  struct sequence;
  struct seq_key {
    uint64_t id;
    int32_t fork;
    bool operator==(const seq_key&) const = default;
  };
  struct seq_key_hash {
    size_t operator()(const seq_key& k) const { return size_t(splitmix64(k.id) ^ uint64_t(uint32_t(k.fork))); }
  };
  struct group {  // what the forks of one id share
    int32_t n = 1;
    int32_t live = 0;         // its sequences held here
    sampling_params sampling;  // the request's (fork i samples with fork_seed(seed, i))
  };
  struct scheduled {
    uint64_t id;
    int32_t fork;
    uint64_t serial;  // tells a cancelled-and-re-added sequence from the scheduled one
    int32_t n_new;
    bool sample;
  };

  sequence* create(const seq_spec& s, int32_t fork, std::span<const int32_t> generated);
  bool fork_group(step_batch& batch, sequence* parent);  // false: not enough blocks yet
  int32_t pending_forks() const;  // forks the running parents will add to running_
  void preempt(sequence* s);
  void release(sequence* s);  // frees blocks, leaves running/waiting, destroys
  bool grow(sequence* s, int32_t n_tokens);  // blocks for n_tokens cached tokens
  void emit(step_batch& batch, sequence* s, int32_t n_new);
  void count_token(sequence* s, int32_t tok, bool generated);
  void leave_slot(sequence* s);        // gives its device-counts slot back
  void free_blocks(sequence* s);       // tail first, so that its tail is evicted before its head
  void hash_blocks(sequence* s, int32_t n_full);  // chain hashes of its first n_full blocks
  void commit_blocks(sequence* s);     // commits the full blocks whose K/V is written
  int32_t find_prefix(sequence* s);    // cached blocks of its longest prefix -> hits_

  scheduler_config cfg_;
  kv_block_pool pool_;
  int32_t max_blocks_;
  std::unordered_map<seq_key, std::unique_ptr<sequence>, seq_key_hash> seqs_;
  std::unordered_map<uint64_t, group> groups_;
  std::vector<sequence*> running_;  // admission order: the back is preempted first
  std::deque<sequence*> waiting_;
  std::vector<scheduled> scheduled_;
  std::vector<int32_t> free_slots_;  // device-counts slots, [0, max_running)
  bool in_flight_ = false;
  uint64_t next_serial_ = 1;
  uint64_t step_no_ = 0;
  uint64_t n_preemptions_ = 0;
  uint64_t n_forks_ = 0;
  int32_t last_prefill_tokens_ = 0;
  uint64_t root_hash_ = 0;
  std::vector<int32_t> hits_;  // scratch of find_prefix
  uint64_t prefix_queries_ = 0, prefix_hits_ = 0;
};

}  // namespace infer
