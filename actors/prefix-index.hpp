// prefix_index: the batcher's estimate of what one worker holds in its prefix cache.
//
// The batcher never asks a worker what it caches: it remembers the chain hashes of the
// prompt blocks it sent there (kv_block_hash, the same chain the worker's scheduler
// uses), least recently sent first out, bounded by the blocks the worker's pool has, so
// the estimate costs at most total_blocks entries per worker and nothing on the wire. It
// is optimistic: the worker may have evicted a block the batcher still counts (its
// running sequences took the room), and then the request just prefills more there; it
// misses blocks of generated text (the batcher does not see tokens). Both cost speed,
// never correctness: the worker's own lookup decides what is reused.
#pragma once
#include <cstdint>
#include <list>
#include <span>
#include <unordered_map>
#include <vector>

#include "engine/kv-block-pool.hpp"

namespace infer {

class prefix_index {
 public:
  prefix_index() = default;
  // A copy must point into its own list (the batcher's worker slots live in a vector that
  // copies them when it grows): rebuild the positions.
  prefix_index(const prefix_index& o) : capacity_(o.capacity_), lru_(o.lru_) { reindex(); }
  prefix_index& operator=(const prefix_index& o) {
    if (this != &o) {
      capacity_ = o.capacity_;
      lru_ = o.lru_;
      reindex();
    }
    return *this;
  }
  prefix_index(prefix_index&&) noexcept = default;  // list nodes move along: positions stay valid
  prefix_index& operator=(prefix_index&&) noexcept = default;

  // Forgets everything (a new or restarted worker has an empty cache).
  void reset(int32_t capacity_blocks) {
    capacity_ = size_t(capacity_blocks < 0 ? 0 : capacity_blocks);
    lru_.clear();
    where_.clear();
  }
  // How many leading blocks of `chain` the worker is believed to hold.
  int32_t match(std::span<const uint64_t> chain) const {
    int32_t n = 0;
    while (size_t(n) < chain.size() && where_.count(chain[size_t(n)])) ++n;
    return n;
  }
  // The worker was sent these blocks: they become the most recent, the head last, so that
  // a prefix loses its tail before its head (as the worker's pool evicts).
  void insert(std::span<const uint64_t> chain) {
    if (capacity_ == 0) return;
    for (auto it = chain.rbegin(); it != chain.rend(); ++it) {
      auto found = where_.find(*it);
      if (found != where_.end()) {
        lru_.splice(lru_.end(), lru_, found->second);
        continue;
      }
      lru_.push_back(*it);
      where_.emplace(*it, std::prev(lru_.end()));
      if (lru_.size() > capacity_) {
        where_.erase(lru_.front());
        lru_.pop_front();
      }
    }
  }
  size_t size() const { return lru_.size(); }

 private:
  void reindex() {
    where_.clear();
    for (auto it = lru_.begin(); it != lru_.end(); ++it) where_.emplace(*it, it);
  }

  size_t capacity_ = 0;
  std::list<uint64_t> lru_;  // front: least recently sent
  std::unordered_map<uint64_t, std::list<uint64_t>::iterator> where_;
};

// Chain hashes of the full blocks of `tokens` that a worker could take from its cache
// (every block wholly before the last token), appended to `out`.
inline void prefix_chain(std::span<const int32_t> tokens, int32_t block_size, std::vector<uint64_t>& out) {
  out.clear();
  if (block_size < 1 || tokens.empty()) return;
  const size_t n_full = (tokens.size() - 1) / size_t(block_size);
  uint64_t parent = kv_hash_root(0);
  for (size_t b = 0; b < n_full; ++b) {
    parent = kv_block_hash(parent, tokens.subspan(b * size_t(block_size), size_t(block_size)));
    out.push_back(parent);
  }
}

}  // namespace infer
