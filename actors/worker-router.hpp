// worker-router: where the batcher sends a queued sequence. Pure (no CAF): the batcher
// actor keeps one worker_slot per worker (what it believes the worker holds) and asks
// worker_router which one takes a sequence; tests drive both alone.
//
// Policy (actors/README.md): a worker takes a sequence when it is eligible (up, its breaker
// lets it, a fallback worker only while no primary serves: the caller decides), below its
// max_running and with free KV blocks for it, counting admissions not yet acknowledged;
// the one with the most free blocks wins, unless cache-aware routing finds one believed to
// hold a longer prefix whose extra prefix tokens outweigh prefix_affinity_tokens per extra
// sequence it holds. When the worker believed to hold the longest prefix has no free slot
// (max_running), the sequence waits for it on the same terms (choice::wait), without blocking the queue: under
// load, room appears one slot at a time on whichever worker finishes first, and ranking
// only the workers with room would route a saturated server by load alone. Suspects (suspect-tracker.hpp) run without others: only on an idle
// worker, which they then hold exclusively (their group may join); when none is idle the
// least busy one is reserved for them and takes nothing new until it is.
#pragma once
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <deque>
#include <optional>
#include <span>
#include <unordered_set>
#include <utility>
#include <vector>

#include "actors/prefix-index.hpp"
#include "actors/suspect-tracker.hpp"

namespace infer {

struct worker_slot {
  bool up = false;
  int32_t max_running = 0;
  int32_t block_size = 16;
  int32_t total_blocks = 0;
  // From the last report.
  int32_t held = 0;  // running + waiting
  int32_t free_blocks = 0;
  int32_t used_blocks = 0;
  uint64_t admits_seen = 0;
  // Admissions sent and not yet seen in a report: (admit number, blocks it needs).
  uint64_t admits_sent = 0;
  std::deque<std::pair<uint64_t, int32_t>> in_transit;

  int32_t est_held() const { return held + int32_t(in_transit.size()); }
  int32_t est_free() const {
    int32_t f = free_blocks;
    for (auto& t : in_transit) f -= t.second;
    return f;
  }
  int32_t blocks_for(int32_t n) const { return (n + block_size - 1) / block_size; }
  int32_t n_ctx = 0;
  uint64_t preemptions = 0;  // the worker's cumulative count at its last report
  uint64_t prefix_queries = 0, prefix_hits = 0;  // likewise, prefix cache tokens
  int32_t cached_blocks = 0;
  prefix_index cached;  // what it is believed to hold (actors/prefix-index.hpp)
  // Suspects retried here (the key of one suspect running alone, or of a failed step's
  // group retried together): nothing else is admitted until a step holding every one of
  // them succeeds (or they are gone).
  uint64_t exclusive = 0;
  bool exclusive_group = false;
  std::vector<uint64_t> exclusive_ids;  // admitted under the exclusivity and still held here
  uint64_t exclusive_admit = 0;         // admission number (admits_sent) of the latest of them
  bool probe = false;                   // admitted the half-open breaker's single probe
  // Held for suspects (this key) that must run without others: takes nothing new until idle.
  uint64_t reserved = 0;
  // Since when it is down after a failure (unset: up, or never started yet).
  std::optional<std::chrono::steady_clock::time_point> down_since;

  // An admission of `blocks` KV blocks was sent; returns its admission number.
  uint64_t sent(int32_t blocks) {
    in_transit.emplace_back(++admits_sent, blocks);
    return admits_sent;
  }
  // A report saw admissions up to `seen`: they are in `held` / `free_blocks` now.
  void seen(uint64_t seen) {
    admits_seen = seen;
    while (!in_transit.empty() && in_transit.front().first <= seen) in_transit.pop_front();
  }
  // Suspect `id` (retry key `key`) was admitted here: the worker is theirs alone.
  void hold_exclusive(uint64_t key, bool group, uint64_t id) {
    exclusive = key;
    exclusive_group = group;
    exclusive_ids.push_back(id);
    exclusive_admit = admits_sent;
  }
  // A sequence left (finished, cancelled, refused): it no longer holds the worker's
  // exclusivity, which ends when none of its suspects is left here.
  void leave_exclusive(uint64_t id) {
    auto it = std::find(exclusive_ids.begin(), exclusive_ids.end(), id);
    if (it != exclusive_ids.end()) exclusive_ids.erase(it);
    if (exclusive != 0 && exclusive_ids.empty() && admits_seen >= exclusive_admit) {
      exclusive = 0;
      exclusive_group = false;
    }
  }
  // A step of `batch_seqs` sequences succeeded. When it held every suspect here (the
  // worker holds nothing else) they are not poison: returns them (the caller clears them
  // as suspects) and ends the exclusivity.
  std::vector<uint64_t> step_succeeded(int32_t batch_seqs) {
    std::vector<uint64_t> cleared;
    if (exclusive != 0 && admits_seen >= exclusive_admit && batch_seqs >= int32_t(exclusive_ids.size())) {
      cleared.swap(exclusive_ids);
      exclusive = 0;
      exclusive_group = false;
    }
    return cleared;
  }
};

struct router_options {
  bool prefix_caching = false;
  int32_t prefix_affinity_tokens = 0;  // batching.prefix_affinity_tokens
};

class worker_router {
 public:
  explicit worker_router(router_options o = {}) : o_(o) {}

  // A sequence that no worker could ever hold must not block the queue: when some worker
  // is up and none could hold `prompt` + `max_tokens` tokens (capped at its context) in its
  // whole pool, the largest pool (blocks) among the up workers; else nullopt.
  static std::optional<int32_t> never_fits(const std::vector<worker_slot>& ws, int32_t prompt, int32_t max_tokens) {
    bool any_up = false, fits_some = false;
    int32_t most = 0;
    for (auto& w : ws) {
      if (!w.up) continue;
      any_up = true;
      const int32_t peak = std::min<int32_t>(prompt + max_tokens, w.n_ctx);
      fits_some |= w.blocks_for(peak) <= w.total_blocks;
      most = std::max(most, w.total_blocks);
    }
    if (any_up && !fits_some) return most;
    return std::nullopt;
  }

  struct choice {
    int worker = -1;             // -1: none has room now (or it waits)
    bool prefix_routed = false;  // cache-aware routing chose another than the least loaded
    // The worker believed to hold the longest prefix has no free slot now and is worth
    // waiting for (worker is -1): the caller leaves the sequence queued and goes on.
    bool wait = false;
    int home = -1;               // the worker believed to hold the longest prefix, -1: none
  };

  // At most this many sequences should wait in one dispatch pass (each costs its prompt's
  // block hashes): the caller passes may_wait = false past it.
  static constexpr int max_waits_per_pass = 32;

  // The worker that takes a sequence of `n` tokens (prompt + generated + 1) retried as `r`
  // (key 0: an ordinary sequence). eligible(i): may worker i take work at all now. The
  // chosen worker is believed to hold the prompt's prefix blocks from now on.
  template <class Eligible>
  choice choose(std::vector<worker_slot>& ws, Eligible&& eligible, int32_t n, suspect_tracker::retry r,
                std::span<const int32_t> prompt, bool may_wait = true) {
    choice c;
    int best = -1, n_fit = 0;
    for (int i = 0; i < int(ws.size()); ++i) {
      auto& w = ws[size_t(i)];
      if (!eligible(size_t(i))) continue;
      if (w.exclusive != 0) {
        if (r.key == 0 || w.exclusive != r.key || !r.group) continue;  // only its own group joins
      } else {
        if (w.reserved != 0 && w.reserved != r.key) continue;
        if (r.key != 0 && (w.held != 0 || !w.in_transit.empty())) continue;  // suspects start on an idle worker
      }
      if (w.est_held() >= w.max_running || w.est_free() < w.blocks_for(n)) continue;
      ++n_fit;
      if (best < 0 || w.est_free() > ws[size_t(best)].est_free()) best = i;
    }
    if (best >= 0 && r.key == 0 && o_.prefix_caching && o_.prefix_affinity_tokens > 0 && ws.size() > 1) {
      const int32_t bs = ws[size_t(best)].block_size;
      prefix_chain(prompt, bs, chain_);
      const auto& b0 = ws[size_t(best)];
      const int64_t base_hit = int64_t(b0.cached.match(chain_)) * bs;
      const int64_t per_seq = o_.prefix_affinity_tokens;
      int pick = best;
      int64_t pick_score = 0;
      if (n_fit > 1) {
        for (int i = 0; i < int(ws.size()); ++i) {
          auto& w = ws[size_t(i)];
          if (i == best || !eligible(size_t(i)) || w.exclusive != 0 || w.reserved != 0) continue;
          if (w.est_held() >= w.max_running || w.est_free() < w.blocks_for(n) || w.block_size != bs) continue;
          const int64_t gain = int64_t(w.cached.match(chain_)) * bs - base_hit;
          const int64_t score = gain - per_seq * std::max<int64_t>(0, w.est_held() - b0.est_held());
          if (gain > 0 && score > pick_score) pick = i, pick_score = score;
        }
      }
      // The worker believed to hold the longest prefix, room or not (one that could never
      // hold the sequence is not waited for).
      int64_t home_hit = 0;
      for (int i = 0; i < int(ws.size()); ++i) {
        auto& w = ws[size_t(i)];
        if (!eligible(size_t(i)) || w.exclusive != 0 || w.reserved != 0 || w.block_size != bs) continue;
        if (w.blocks_for(n) > w.total_blocks) continue;
        const int64_t hit = int64_t(w.cached.match(chain_)) * bs;
        if (hit > home_hit) c.home = i, home_hit = hit;
      }
      if (may_wait && c.home >= 0 && c.home != pick) {
        const auto& hw = ws[size_t(c.home)];
        const auto& pw = ws[size_t(pick)];
        // Only for a slot: one frees whenever any of its sequences ends. A worker short of KV
        // blocks may stay so for as long as its longest sequence runs: not worth waiting for.
        const bool full = hw.est_held() >= hw.max_running;
        const int64_t gain = home_hit - int64_t(pw.cached.match(chain_)) * bs;
        if (full && gain - per_seq * std::max<int64_t>(0, hw.est_held() - pw.est_held()) > 0) {
          c.wait = true;
          return c;
        }
      }
      c.prefix_routed = pick != best;
      best = pick;
      ws[size_t(best)].cached.insert(chain_);
    }
    c.worker = best;
    return c;
  }

  // Suspects under `key` found no idle worker: reserve the least busy eligible one (once
  // per key) so that it drains; the others go on.
  template <class Eligible>
  static void reserve(std::vector<worker_slot>& ws, Eligible&& eligible, uint64_t key) {
    for (auto& w : ws)
      if (w.reserved == key || w.exclusive == key) return;
    int pick = -1;
    for (int i = 0; i < int(ws.size()); ++i) {
      auto& w = ws[size_t(i)];
      if (!eligible(size_t(i)) || w.exclusive != 0 || w.reserved != 0) continue;
      if (pick < 0 || w.est_held() < ws[size_t(pick)].est_held()) pick = i;
    }
    if (pick >= 0) ws[size_t(pick)].reserved = key;
  }

  // Suspect `id` under `key` was admitted to worker `to`: reservations for the key end, the
  // worker holds it exclusively.
  static void admitted_suspect(std::vector<worker_slot>& ws, int to, uint64_t key, bool group, uint64_t id) {
    for (auto& o : ws)
      if (o.reserved == key) o.reserved = 0;
    ws[size_t(to)].hold_exclusive(key, group, id);
  }

  // Drops reservations that no queued suspect needs any more (`wanted`: the retry keys of
  // the queued suspects) or that the worker cannot honour now (keep(i) false: breaker
  // open, a fallback worker while primaries serve), so that a reserved worker never idles
  // for nothing.
  template <class Keep>
  static void prune_reservations(std::vector<worker_slot>& ws, const std::unordered_set<uint64_t>& wanted, Keep&& keep) {
    for (size_t i = 0; i < ws.size(); ++i) {
      auto& w = ws[i];
      if (w.reserved == 0) continue;
      if (!wanted.count(w.reserved) || !keep(i)) w.reserved = 0;
    }
  }

 private:
  router_options o_;
  std::vector<uint64_t> chain_;  // scratch: prefix block hashes of the sequence being routed
};

}  // namespace infer
