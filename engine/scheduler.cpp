#include "engine/scheduler.hpp"

#include <algorithm>
#include <cmath>
#include <span>
#include <string>

namespace infer {

struct scheduler::sequence {
  uint64_t id = 0;
  int32_t fork = 0;     // its choice among the id's n
  int32_t pending = 0;  // fork 0 of a fresh group: forks still to make once its prompt is prefilled
  int32_t copy_src = -1;  // a fork's parent block to copy into its own (held until the copy ran)
  uint64_t serial = 0;
  std::vector<int32_t> tokens;  // prompt, then generated; capacity reserved up front
  int32_t n_prompt = 0;
  int32_t max_tokens = 0;
  sampling_params sampling;
  std::vector<int32_t> stop_ids;  // few (the EOS ids, a request's stop_token_ids): a linear scan
  std::vector<std::pair<int32_t, float>> logit_bias;
  // The logit adjustments handed to the backend with every sample: one entry per distinct
  // token seen (when penalized), biased, or a stop id (when min_tokens bans them).
  std::vector<logit_adjust> adj;
  std::unordered_map<int32_t, int32_t> adj_at;  // token -> index in adj
  std::vector<int32_t> stop_adj;                // indices in adj of the stop ids
  // Device-held counts (scheduler_config::device_counts): the backend's slot of this
  // sequence while it runs (-1: none), and whether the slot holds `adj` already (it is
  // loaded from `adj` at the first sampled step after each admission, and kept up to date
  // on the device from then on).
  int32_t slot = -1;
  bool slot_loaded = false;
  int32_t n_cached = 0;         // tokens whose K/V are in `blocks`
  std::vector<int32_t> blocks;  // block table
  std::vector<uint64_t> hashes;  // chain hashes of its full blocks so far (tokens never change)
  int32_t n_committed = 0;      // leading blocks committed to (or taken from) the prefix cache
  int32_t cached_prompt = -1;   // prompt tokens found cached at its first admission; -1: not admitted yet
  bool cache_reported = false;  // cached_prompt went out with its first result
  bool prompt_lp = false;       // collects prompt logprobs (seq_spec::prompt_logprobs) until its first result
  std::vector<float> plp;       // [j]: prompt token j + 1's logprob, as collected so far
  std::vector<int32_t> ptop_ids;
  std::vector<float> ptop_lps;
  uint64_t scheduled_at = 0;    // step_no_ of the last step that included it
  bool running = false;

  int32_t n_tokens() const { return int32_t(tokens.size()); }
  int32_t n_generated() const { return n_tokens() - n_prompt; }
};

scheduler::scheduler(const scheduler_config& cfg, kv_geometry kv)
    : cfg_(cfg), pool_(kv.n_blocks, kv.block_size) {
  cfg_.max_batch_tokens = std::max(cfg_.max_batch_tokens, 1);
  cfg_.max_running = std::max(cfg_.max_running, 1);
  cfg_.prefill_chunk = std::max(cfg_.prefill_chunk, 1);
  cfg_.n_ctx = std::max(cfg_.n_ctx, 1);
  max_blocks_ = pool_.blocks_for(cfg_.n_ctx + 1);
  root_hash_ = kv_hash_root(cfg_.cache_salt);
  hits_.reserve(size_t(max_blocks_));
  running_.reserve(size_t(cfg_.max_running));
  if (cfg_.device_counts)
    for (int32_t i = cfg_.max_running - 1; i >= 0; --i) free_slots_.push_back(i);
  scheduled_.reserve(size_t(cfg_.max_running));
}

scheduler::~scheduler() = default;

status scheduler::add(seq_spec s) {
  auto bad = [&](const std::string& why) {
    return make_status(errc::invalid_argument, "sequence " + std::to_string(s.id) + ": " + why);
  };
  if (groups_.count(s.id)) return bad("id already in use");
  if (s.prompt.empty()) return bad("empty prompt");
  if (s.n < 1) return bad("n must be >= 1");
  if (s.n > cfg_.max_running)
    return bad("n: " + std::to_string(s.n) + " choices cannot run together; at most " +
               std::to_string(cfg_.max_running) + " sequences run at once (batching.max_running)");
  const bool resumed = s.n > 1 && !s.forks.empty();
  if (s.n > 1 && !resumed && !s.generated.empty()) return bad("forks start fresh: tokens go with each fork");
  // What to create: (fork, its tokens so far).
  std::vector<std::pair<int32_t, std::span<const int32_t>>> make;
  if (resumed) {
    for (const auto& f : s.forks) {
      if (f.index < 0 || f.index >= s.n) return bad("fork " + std::to_string(f.index) + " outside [0, n)");
      for (const auto& [i, g] : make)
        if (i == f.index) return bad("fork " + std::to_string(f.index) + " given twice");
      make.emplace_back(f.index, std::span<const int32_t>(f.generated));
    }
  } else if (s.n > 1 && s.prompt.size() == 1) {
    for (int32_t i = 0; i < s.n; ++i) make.emplace_back(i, std::span<const int32_t>());  // nothing to share
  } else {
    make.emplace_back(0, std::span<const int32_t>(s.generated));
  }
  const int32_t n_prompt = int32_t(s.prompt.size());
  for (const auto& [i, g] : make) {
    const int32_t n_gen = int32_t(g.size());
    if (n_prompt + n_gen > cfg_.n_ctx)
      return bad("prompt of " + std::to_string(n_prompt + n_gen) + " tokens exceeds the context (" +
                 std::to_string(cfg_.n_ctx) + ")");
    if (s.max_tokens <= n_gen) return bad("nothing left to generate (max_tokens " + std::to_string(s.max_tokens) + ")");
  }
  // The most one sequence will ever hold in the cache: it stops at n_ctx tokens.
  const int32_t peak = std::min(n_prompt + s.max_tokens, cfg_.n_ctx);
  if (pool_.blocks_for(peak) > pool_.n_total())
    return bad("needs " + std::to_string(pool_.blocks_for(peak)) + " KV blocks, the pool has " +
               std::to_string(pool_.n_total()));
  const bool fresh_group = s.n > 1 && !resumed && n_prompt > 1;
  if (fresh_group) {
    // At the fork every choice must hold its first token at once: the shared full blocks
    // plus each fork's own from the last prompt token on. Later they are preempted one by one.
    const int32_t shared = (n_prompt - 1) / pool_.block_size();
    const int32_t need = shared + s.n * (pool_.blocks_for(n_prompt + 1) - shared);
    if (need > pool_.n_total())
      return bad("n: " + std::to_string(s.n) + " choices need " + std::to_string(need) + " KV blocks at once, the pool has " +
                 std::to_string(pool_.n_total()));
  }
  group& g = groups_[s.id];
  g.n = s.n;
  g.sampling = s.sampling;
  for (const auto& [i, gen] : make) {
    sequence* q = create(s, i, gen);
    if (fresh_group) q->pending = s.n - 1;
  }
  return status::ok();
}

scheduler::sequence* scheduler::create(const seq_spec& s, int32_t fork, std::span<const int32_t> generated) {
  const int32_t n_prompt = int32_t(s.prompt.size());
  auto seq = std::make_unique<sequence>();
  seq->id = s.id;
  seq->fork = fork;
  seq->serial = next_serial_++;
  seq->tokens.reserve(size_t(std::min(n_prompt + s.max_tokens, cfg_.n_ctx + 1)));
  seq->tokens.assign(s.prompt.begin(), s.prompt.end());
  seq->tokens.insert(seq->tokens.end(), generated.begin(), generated.end());
  seq->n_prompt = n_prompt;
  seq->max_tokens = s.max_tokens;
  seq->sampling = s.sampling;
  seq->sampling.seed = fork_seed(s.sampling.seed, fork);
  seq->stop_ids = s.stop_ids;
  seq->logit_bias = s.logit_bias;
  seq->prompt_lp = s.prompt_logprobs && fork == 0;  // a request's prompt logprobs come once
  sequence* q = seq.get();
  auto entry = [q](int32_t tok) -> logit_adjust& {
    auto [it, fresh] = q->adj_at.emplace(tok, int32_t(q->adj.size()));
    if (fresh) q->adj.push_back(logit_adjust{tok, 0, 0.0f, 0});
    return q->adj[size_t(it->second)];
  };
  for (const auto& [tok, bias] : q->logit_bias) entry(tok).bias += bias;
  if (q->sampling.min_tokens > 0)
    for (int32_t tok : q->stop_ids) {
      entry(tok).seen |= adjust_stop;
      q->stop_adj.push_back(q->adj_at[tok]);
    }
  if (q->sampling.penalized()) {
    for (int32_t i = 0; i < q->n_tokens(); ++i) count_token(q, q->tokens[size_t(i)], i >= n_prompt);
  }
  seq->blocks.reserve(size_t(max_blocks_));
  if (cfg_.prefix_caching) seq->hashes.reserve(size_t(max_blocks_));
  waiting_.push_back(q);
  seqs_.emplace(seq_key{s.id, fork}, std::move(seq));
  ++groups_[s.id].live;
  return q;
}

int32_t scheduler::pending_forks() const {
  int32_t n = 0;
  for (const sequence* s : running_) n += s->pending;
  return n;
}

bool scheduler::fork_group(step_batch& batch, sequence* p) {
  const int32_t bs = pool_.block_size();
  const int32_t shared = p->n_cached / bs;     // full blocks before the last prompt token
  const bool partial = p->n_cached % bs != 0;  // its block holds earlier prompt tokens: copied
  const int32_t need = partial ? p->pending : 0;
  while (pool_.n_free() < need) {
    sequence* victim = running_.back();
    preempt(victim);
    if (victim == p) return false;
  }
  size_t at = size_t(std::find(running_.begin(), running_.end(), p) - running_.begin()) + 1;
  const group& g = groups_[p->id];
  for (int32_t f = g.n - p->pending; f < g.n; ++f) {
    auto seq = std::make_unique<sequence>();
    sequence* q = seq.get();
    q->id = p->id;
    q->fork = f;
    q->serial = next_serial_++;
    q->tokens.reserve(p->tokens.capacity());
    q->tokens = p->tokens;
    q->n_prompt = p->n_prompt;
    q->max_tokens = p->max_tokens;
    q->sampling = g.sampling;
    q->sampling.seed = fork_seed(g.sampling.seed, f);
    q->stop_ids = p->stop_ids;
    q->logit_bias = p->logit_bias;
    q->adj = p->adj;  // nothing generated yet: the same counts
    q->adj_at = p->adj_at;
    q->stop_adj = p->stop_adj;
    q->n_cached = p->n_cached;
    q->blocks.reserve(size_t(max_blocks_));
    for (int32_t b = 0; b < shared; ++b) {
      (void)pool_.share(p->blocks[size_t(b)]);  // the parent holds it: in use
      q->blocks.push_back(p->blocks[size_t(b)]);
    }
    if (partial) {
      q->blocks.push_back(pool_.allocate());  // counted free above
      q->copy_src = p->blocks[size_t(shared)];
      (void)pool_.share(q->copy_src);  // kept until the copy has run
    }
    if (cfg_.prefix_caching) {
      q->hashes.reserve(size_t(max_blocks_));
      q->hashes = p->hashes;
    }
    q->n_committed = std::min(p->n_committed, shared);
    q->cached_prompt = p->cached_prompt;
    q->running = true;
    if (cfg_.device_counts && !free_slots_.empty()) {  // its own slot, loaded from its copied list
      q->slot = free_slots_.back();
      free_slots_.pop_back();
    }
    seqs_.emplace(seq_key{q->id, f}, std::move(seq));
    ++groups_[p->id].live;
    running_.insert(running_.begin() + std::ptrdiff_t(at++), q);
    ++n_forks_;
  }
  (void)batch;
  p->pending = 0;
  return true;
}

void scheduler::free_blocks(sequence* s) {
  // ids come from the pool and each is held once: cannot fail
  for (auto it = s->blocks.rbegin(); it != s->blocks.rend(); ++it) (void)pool_.free(*it);
  if (s->copy_src >= 0) (void)pool_.free(s->copy_src);
  s->copy_src = -1;
  s->blocks.clear();
  s->n_committed = 0;
}

void scheduler::hash_blocks(sequence* s, int32_t n_full) {
  const int32_t bs = pool_.block_size();
  while (int32_t(s->hashes.size()) < n_full) {
    const size_t b = s->hashes.size();
    const uint64_t parent = b == 0 ? root_hash_ : s->hashes[b - 1];
    s->hashes.push_back(kv_block_hash(parent, std::span<const int32_t>(s->tokens.data() + b * size_t(bs), size_t(bs))));
  }
}

void scheduler::commit_blocks(sequence* s) {
  const int32_t bs = pool_.block_size();
  const int32_t n_full = std::min(s->n_cached / bs, int32_t(s->blocks.size()));
  if (n_full <= s->n_committed) return;
  hash_blocks(s, n_full);
  for (int32_t b = s->n_committed; b < n_full; ++b) {
    const uint64_t parent = b == 0 ? root_hash_ : s->hashes[size_t(b) - 1];
    // false: another sequence committed the same prefix first; this copy stays private.
    (void)pool_.commit(s->blocks[size_t(b)], s->hashes[size_t(b)], parent,
                       std::span<const int32_t>(s->tokens.data() + size_t(b) * size_t(bs), size_t(bs)));
  }
  s->n_committed = n_full;
}

int32_t scheduler::find_prefix(sequence* s) {
  hits_.clear();
  if (!cfg_.prefix_caching) return 0;
  if (s->prompt_lp && int32_t(s->plp.size()) < s->n_prompt - 1) return 0;  // needs the prefix's logits
  const int32_t bs = pool_.block_size();
  // Only blocks wholly before the last token: it is computed again for its logits, and a
  // shared block is never written.
  const int32_t max_hit = (s->n_tokens() - 1) / bs;
  hash_blocks(s, max_hit);
  for (int32_t b = 0; b < max_hit; ++b) {
    const uint64_t parent = b == 0 ? root_hash_ : s->hashes[size_t(b) - 1];
    const int32_t id = pool_.lookup(s->hashes[size_t(b)], parent,
                                    std::span<const int32_t>(s->tokens.data() + size_t(b) * size_t(bs), size_t(bs)));
    if (id < 0) break;
    hits_.push_back(id);
  }
  return int32_t(hits_.size());
}

void scheduler::release(sequence* s) {
  free_blocks(s);
  leave_slot(s);
  if (s->running) {
    running_.erase(std::find(running_.begin(), running_.end(), s));
  } else {
    auto it = std::find(waiting_.begin(), waiting_.end(), s);
    if (it != waiting_.end()) waiting_.erase(it);
  }
  auto g = groups_.find(s->id);
  if (g != groups_.end() && --g->second.live <= 0) groups_.erase(g);
  seqs_.erase(seq_key{s->id, s->fork});  // destroys s
}

bool scheduler::cancel(uint64_t id, int32_t fork) {
  auto g = groups_.find(id);
  if (g == groups_.end()) return false;
  if (fork >= 0) {
    auto it = seqs_.find(seq_key{id, fork});
    if (it == seqs_.end()) return false;
    release(it->second.get());
    return true;
  }
  const int32_t n = g->second.n;  // release() may erase the group
  for (int32_t f = 0; f < n; ++f) {
    auto it = seqs_.find(seq_key{id, f});
    if (it != seqs_.end()) release(it->second.get());
  }
  return true;
}

void scheduler::leave_slot(sequence* s) {
  if (s->slot < 0) return;
  free_slots_.push_back(s->slot);
  s->slot = -1;
  s->slot_loaded = false;
}

void scheduler::preempt(sequence* s) {
  free_blocks(s);
  leave_slot(s);  // the counts are rebuilt from `adj` when it runs again
  s->n_cached = 0;
  s->running = false;
  running_.erase(std::find(running_.begin(), running_.end(), s));
  waiting_.push_front(s);
  ++n_preemptions_;
}

bool scheduler::grow(sequence* s, int32_t n_tokens) {
  int32_t need = pool_.blocks_for(n_tokens) - int32_t(s->blocks.size());
  return need <= 0 || pool_.allocate(need, s->blocks);
}

void scheduler::count_token(sequence* s, int32_t tok, bool generated) {
  auto [it, fresh] = s->adj_at.emplace(tok, int32_t(s->adj.size()));
  if (fresh) s->adj.push_back(logit_adjust{tok, 0, 0.0f, 0});
  logit_adjust& a = s->adj[size_t(it->second)];
  a.seen |= adjust_seen;
  if (generated) ++a.count;
}

void scheduler::emit(step_batch& batch, sequence* s, int32_t n_new) {
  const bool sample = s->n_cached + n_new == s->n_tokens();
  const size_t base = batch.adjust.size();
  const std::span<const int32_t> fresh(s->tokens.data() + s->n_cached, size_t(n_new));
  if (s->slot >= 0 && !s->adj.empty()) {
    // The backend holds the list: it goes out once (the load), the device counts from then on
    // and bans the stop ids itself (adjust_stop) while min_tokens is not reached.
    const bool load = sample && !s->slot_loaded;
    batch.add(s->n_cached, fresh, std::span<const int32_t>(s->blocks), sample, s->sampling,
              uint64_t(s->n_generated()), load ? std::span<const logit_adjust>(s->adj) : std::span<const logit_adjust>{},
              s->slot, load);
    if (load) s->slot_loaded = true;
  } else {
    batch.add(s->n_cached, fresh, std::span<const int32_t>(s->blocks), sample, s->sampling,
              uint64_t(s->n_generated()), std::span<const logit_adjust>(s->adj));
    // min_tokens: the stop ids (EOS unless ignored, stop_token_ids) cannot be sampled yet.
    if (sample && s->n_generated() < s->sampling.min_tokens)
      for (int32_t i : s->stop_adj) batch.adjust[base + size_t(i)].bias = -INFINITY;
  }
  // A fork's first step: its own block gets the parent's prompt K/V before the forward.
  if (s->copy_src >= 0) batch.add_copy(s->copy_src, s->blocks[size_t(s->n_cached / pool_.block_size())]);
  // Prompt logprobs still missing in this chunk: the token after it, if any, is the next one's.
  if (s->prompt_lp && int32_t(s->plp.size()) < s->n_prompt - 1 && s->n_cached < s->n_prompt - 1) {
    const int32_t end = s->n_cached + n_new;
    batch.want_prompt_logprobs(end < s->n_tokens() ? s->tokens[size_t(end)] : -1);
  }
  scheduled_.push_back({s->id, s->fork, s->serial, n_new, sample});
  s->scheduled_at = step_no_;
  if (!sample || n_new > 1) last_prefill_tokens_ += n_new;
}

int32_t scheduler::schedule(step_batch& batch) {
  if (in_flight_) return 0;  // the batch may still be read by the backend: leave it alone
  batch.reset(max_blocks_);
  scheduled_.clear();
  last_prefill_tokens_ = 0;
  ++step_no_;
  int32_t budget = cfg_.max_batch_tokens;

  // 0. Forks: a group whose prompt is prefilled up to its last token forks (n > 1).
  for (size_t i = 0; i < running_.size(); ++i) {
    sequence* s = running_[i];
    if (s->pending > 0 && s->n_cached == s->n_tokens() - 1 && !fork_group(batch, s)) break;  // s preempted
  }

  // 1. Decodes: one token for each running sequence whose prompt is cached. When a
  //    block is missing, preempt from the back (the most recently admitted), which
  //    has not been scheduled yet in this pass since we walk front to back.
  for (size_t i = 0; i < running_.size() && budget > 0;) {
    sequence* s = running_[i];
    if (s->pending > 0 || s->n_tokens() - s->n_cached != 1) { ++i; continue; }
    bool preempted_self = false;
    while (!grow(s, s->n_cached + 1)) {
      sequence* victim = running_.back();
      preempt(victim);
      if (victim == s) { preempted_self = true; break; }
    }
    if (preempted_self) break;  // s was the back: nothing after it
    emit(batch, s, 1);
    --budget;
    ++i;
  }

  // 2. Running sequences still prefilling (chunked prefill, or a resumed recompute).
  for (size_t i = 0; i < running_.size() && budget > 0;) {
    sequence* s = running_[i];
    if (s->scheduled_at == step_no_ || s->n_tokens() - s->n_cached == 1) { ++i; continue; }
    // A group's prompt stops before its last token: each fork computes that one.
    const int32_t target = s->n_tokens() - (s->pending > 0 ? 1 : 0);
    int32_t n_new = std::min({target - s->n_cached, cfg_.prefill_chunk, budget});
    // Take what the free blocks allow; if none, preempt an unscheduled sequence
    // from the back (possibly s itself) so that the oldest ones always progress.
    int32_t room = (int32_t(s->blocks.size()) + pool_.n_free()) * pool_.block_size() - s->n_cached;
    bool preempted_self = false;
    while (room <= 0) {
      sequence* victim = running_.back();
      if (victim->scheduled_at == step_no_ && victim != s) break;  // busy this step: wait
      preempt(victim);
      if (victim == s) { preempted_self = true; break; }
      room = (int32_t(s->blocks.size()) + pool_.n_free()) * pool_.block_size() - s->n_cached;
    }
    if (preempted_self) break;
    if (room <= 0) { ++i; continue; }
    n_new = std::min(n_new, room);
    grow(s, s->n_cached + n_new);
    emit(batch, s, n_new);
    budget -= n_new;
    ++i;
  }

  // 3. Admissions, FIFO (preempted sequences are at the front). No preemption here:
  //    a newcomer waits until blocks free up.
  //    A group reserves max_running room for all its forks.
  int32_t reserved = pending_forks();
  while (!waiting_.empty() && budget > 0 && int32_t(running_.size()) + reserved < cfg_.max_running) {
    sequence* s = waiting_.front();
    if (int32_t(running_.size()) + reserved + 1 + s->pending > cfg_.max_running) break;
    int32_t n_hit = find_prefix(s);
    const int32_t target = s->n_tokens() - (s->pending > 0 ? 1 : 0);
    while (n_hit > 0 && n_hit * pool_.block_size() >= target) {  // a group prefills at least one token
      hits_.pop_back();
      --n_hit;
    }
    const int32_t n_reuse = n_hit * pool_.block_size();
    // Cached blocks nobody holds count as free until this sequence takes them.
    int32_t revived = 0;
    for (int32_t id : hits_) revived += pool_.refs(id) == 0 ? 1 : 0;
    int32_t n_new = std::min({target - n_reuse, cfg_.prefill_chunk, budget});
    int32_t room = (pool_.n_free() - revived) * pool_.block_size();
    if (room <= 0) break;
    n_new = std::min(n_new, room);
    waiting_.pop_front();
    s->running = true;
    if (cfg_.device_counts && !free_slots_.empty()) {
      s->slot = free_slots_.back();
      free_slots_.pop_back();
      s->slot_loaded = false;
    }
    for (int32_t id : hits_) {
      (void)pool_.acquire(id);  // found by lookup: committed
      s->blocks.push_back(id);
    }
    s->n_cached = n_reuse;
    s->n_committed = n_hit;
    if (s->cached_prompt < 0) {  // its first admission here (not a resume after preemption)
      s->cached_prompt = std::min(n_reuse, s->n_prompt);
      if (cfg_.prefix_caching) {
        prefix_queries_ += uint64_t(s->n_tokens());
        prefix_hits_ += uint64_t(n_reuse);
      }
    }
    running_.push_back(s);
    reserved += s->pending;
    grow(s, n_reuse + n_new);
    emit(batch, s, n_new);
    budget -= n_new;
  }

  in_flight_ = batch.n_seqs() > 0;
  return batch.n_seqs();
}

void scheduler::on_step_done(const step_output& out, std::vector<seq_result>& results) {
  if (!in_flight_) return;
  in_flight_ = false;
  for (size_t k = 0; k < scheduled_.size(); ++k) {
    const scheduled& e = scheduled_[k];
    auto it = seqs_.find(seq_key{e.id, e.fork});
    if (it == seqs_.end() || it->second->serial != e.serial) continue;  // cancelled meanwhile
    sequence* s = it->second.get();
    if (!s->running) continue;  // cannot happen: preemption only inside schedule()
    if (s->prompt_lp && k + 1 < out.prompt_start.size()) {
      // Entry j of this chunk is the logprob of the token at n_cached + j + 1: keep prompt
      // tokens not yet collected (a recompute after preemption finds them known).
      constexpr size_t K = size_t(sampling_params::max_logprobs);
      for (int32_t j = out.prompt_start[k]; j < out.prompt_start[k + 1]; ++j) {
        const int32_t tok_at = s->n_cached + (j - out.prompt_start[k]) + 1;
        if (tok_at != int32_t(s->plp.size()) + 1 || tok_at >= s->n_prompt) continue;
        s->plp.push_back(out.prompt_logprob[size_t(j)]);
        s->ptop_ids.insert(s->ptop_ids.end(), out.prompt_top_ids.begin() + std::ptrdiff_t(size_t(j) * K),
                           out.prompt_top_ids.begin() + std::ptrdiff_t(size_t(j + 1) * K));
        s->ptop_lps.insert(s->ptop_lps.end(), out.prompt_top_logprobs.begin() + std::ptrdiff_t(size_t(j) * K),
                           out.prompt_top_logprobs.begin() + std::ptrdiff_t(size_t(j + 1) * K));
      }
    }
    s->n_cached += e.n_new;
    if (s->copy_src >= 0) {  // the copy ran with this step
      (void)pool_.free(s->copy_src);
      s->copy_src = -1;
    }
    if (cfg_.prefix_caching) commit_blocks(s);
    if (!e.sample) continue;
    int32_t tok = k < out.tokens.size() ? out.tokens[k] : -1;
    s->tokens.push_back(tok);
    seq_result r;
    r.id = s->id;
    r.fork = s->fork;
    r.index = s->n_generated() - 1;
    r.token = tok;
    r.stopped = std::find(s->stop_ids.begin(), s->stop_ids.end(), tok) != s->stop_ids.end();
    if (s->sampling.logprobs >= 0 && k < out.logprob.size()) {
      constexpr size_t K = size_t(sampling_params::max_logprobs);
      r.n_top = s->sampling.logprobs;
      r.logprob = out.logprob[k];
      for (int32_t j = 0; j < r.n_top; ++j) {
        r.top_ids[size_t(j)] = out.top_ids[k * K + size_t(j)];
        r.top_logprobs[size_t(j)] = out.top_logprobs[k * K + size_t(j)];
      }
    }
    if (s->sampling.penalized() && tok >= 0) count_token(s, tok, true);
    r.finished = r.stopped || s->n_generated() >= s->max_tokens || s->n_tokens() >= cfg_.n_ctx;
    if (!s->cache_reported) {
      s->cache_reported = true;
      r.cached_tokens = std::max(s->cached_prompt, 0);
    }
    if (s->prompt_lp) {  // with its first result, once
      s->prompt_lp = false;
      r.prompt_logprob = std::move(s->plp);
      r.prompt_top_ids = std::move(s->ptop_ids);
      r.prompt_top_logprobs = std::move(s->ptop_lps);
    }
    if (r.finished) {
      const uint64_t id = s->id;
      release(s);
      r.group_done = groups_.count(id) == 0;
    }
    results.push_back(r);
  }
  scheduled_.clear();
}

void scheduler::on_step_failed() {
  in_flight_ = false;
  scheduled_.clear();
  // The device may have counted the tokens the host never got: reload every slot.
  for (sequence* s : running_) s->slot_loaded = false;
}

int32_t scheduler::waiting_blocks() const {
  int32_t n = 0;
  for (const sequence* s : waiting_) n += pool_.blocks_for(s->n_tokens() + 1);
  return n;
}

std::vector<seq_spec> scheduler::drain() {
  std::vector<seq_spec> outv;
  std::vector<uint64_t> done;
  auto take = [&](sequence* s) {
    if (std::find(done.begin(), done.end(), s->id) != done.end()) return;
    done.push_back(s->id);
    const group& g = groups_[s->id];
    seq_spec sp;
    sp.id = s->id;
    sp.prompt.assign(s->tokens.begin(), s->tokens.begin() + s->n_prompt);
    sp.max_tokens = s->max_tokens;
    sp.sampling = g.sampling;
    sp.stop_ids = s->stop_ids;
    sp.logit_bias = s->logit_bias;
    sp.prompt_logprobs = s->prompt_lp;  // not yet handed out
    sp.n = g.n;
    if (g.n == 1) {
      sp.generated.assign(s->tokens.begin() + s->n_prompt, s->tokens.end());
    } else if (!(s->pending > 0 && g.live == 1)) {  // a group not yet forked starts fresh again
      for (int32_t f = 0; f < g.n; ++f) {
        auto it = seqs_.find(seq_key{s->id, f});
        if (it == seqs_.end()) continue;
        const sequence* q = it->second.get();
        sp.forks.push_back({f, std::vector<int32_t>(q->tokens.begin() + q->n_prompt, q->tokens.end())});
      }
    }
    outv.push_back(std::move(sp));
  };
  for (sequence* s : running_) take(s);
  for (sequence* s : waiting_) take(s);
  while (!running_.empty()) release(running_.back());
  while (!waiting_.empty()) release(waiting_.back());
  in_flight_ = false;
  scheduled_.clear();
  return outv;
}

}  // namespace infer
