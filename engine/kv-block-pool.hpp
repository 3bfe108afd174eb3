// kv_block_pool: the blocks of one worker's paged KV cache, reference-counted and
// content-addressed (automatic prefix caching, vLLM v1 style).
//
// The backend owns the memory (kv_geometry: n_blocks of block_size tokens); this
// pool only decides which block ids are in use. Running out is a normal answer
// (the scheduler preempts or waits); a double free or an unknown id is a bug in
// the caller and is reported as invalid_argument, never silently absorbed.
//
// A block is in one of three states:
//   free       no reference, no content worth keeping: allocated first
//   in use     one reference or more (shared blocks have several)
//   cached     no reference, but committed: its K/V is that of one exact prefix, named
//              by a chain hash (kv_block_hash of the block before it and its tokens).
//              Cached blocks sit in an LRU list and are handed out again only when no
//              free block is left (eviction happens under pressure, never before).
// A full block is committed once its K/V is written; lookup() finds it by hash (and
// checks its tokens and parent hash, so a 64-bit collision cannot hand out wrong K/V
// unless it also collides on the parent chain), acquire() takes a reference.
// n_free() counts free + cached: what an allocation can get.
#pragma once
#include <cstdint>
#include <span>
#include <vector>

#include "base/result.hpp"

namespace infer {

// Parent hash of a sequence's first block: the salt separates caches whose K/V differ for
// the same tokens (another model, dtype or adapter).
uint64_t kv_hash_root(uint64_t salt);
// Chain hash of one full block: its parent's hash and its tokens.
uint64_t kv_block_hash(uint64_t parent, std::span<const int32_t> tokens);

class kv_block_pool {
 public:
  kv_block_pool(int32_t n_blocks, int32_t block_size);

  // A block (one reference), or -1 when none is left. Takes a free block, else evicts the
  // least recently used cached block.
  int32_t allocate();
  // Appends n block ids to `out`, all or nothing: false (and `out` unchanged) when
  // fewer than n are available.
  bool allocate(int32_t n, std::vector<int32_t>& out);
  // Drops one reference; at zero a committed block becomes cached (the most recently
  // used end of the LRU list), any other block free. Errors: id out of range, block not in use.
  status free(int32_t id);
  // free() of every id in order (all are checked first: on error nothing is freed). Give a
  // sequence's blocks tail first so that its tail is evicted before its head.
  status free(std::span<const int32_t> ids);

  // Marks in-use block `id` as holding the full block named `hash` (parent: the hash of
  // the block before it, `tokens`: its block_size tokens). False when the hash already
  // names another block (the same prefix computed twice): this one stays private and is
  // freed as usual. Errors: the block is not in use, is committed already, or `tokens`
  // is not one block long.
  result<bool> commit(int32_t id, uint64_t hash, uint64_t parent, std::span<const int32_t> tokens);
  // The block holding exactly this prefix block, or -1.
  int32_t lookup(uint64_t hash, uint64_t parent, std::span<const int32_t> tokens) const;
  // One more reference to a committed block (found by lookup): a cached one leaves the LRU list.
  status acquire(int32_t id);
  // One more reference to a block in use, committed or not (a fork sharing its parent's
  // blocks). Errors: id out of range, block not in use.
  status share(int32_t id);
  // Evicts every cached block (no reference): returns how many. In-use blocks keep their content.
  int32_t flush();

  int32_t n_free() const { return int32_t(free_.size()) + n_lru_; }  // free + cached: available to allocate
  int32_t n_used() const { return n_blocks_ - n_free(); }
  int32_t n_total() const { return n_blocks_; }
  int32_t block_size() const { return block_size_; }
  int32_t n_evictable() const { return n_lru_; }         // cached, no reference
  int32_t n_committed() const { return n_committed_; }   // content-addressed, referenced or not
  uint64_t n_evictions() const { return n_evictions_; }
  int32_t refs(int32_t id) const { return valid(id) ? refs_[size_t(id)] : 0; }
  bool in_use(int32_t id) const { return refs(id) > 0; }
  bool is_committed(int32_t id) const { return valid(id) && committed_[size_t(id)] != 0; }
  // Blocks that hold n_tokens tokens.
  int32_t blocks_for(int32_t n_tokens) const { return (n_tokens + block_size_ - 1) / block_size_; }
  // Cached block ids from least to most recently used (tests).
  std::vector<int32_t> lru_order() const;

 private:
  bool valid(int32_t id) const { return id >= 0 && id < n_blocks_; }
  void lru_push_back(int32_t id);
  void lru_unlink(int32_t id);
  void uncommit(int32_t id);  // drops the content (eviction)
  // Open-addressing table hash -> block id, sized once: inserting allocates nothing.
  size_t slot_of(uint64_t hash) const;
  void table_insert(uint64_t hash, int32_t id);
  void table_erase(uint64_t hash);
  int32_t table_find(uint64_t hash) const;

  int32_t n_blocks_;
  int32_t block_size_;
  std::vector<int32_t> free_;  // stack: the most recently freed block is reused first (warm)
  std::vector<int32_t> refs_;
  std::vector<uint8_t> committed_;
  std::vector<uint64_t> hash_, parent_;
  std::vector<int32_t> tokens_;      // [n_blocks * block_size] content of committed blocks
  std::vector<int32_t> prev_, next_;  // LRU list links (-1: none)
  int32_t lru_head_ = -1, lru_tail_ = -1;
  int32_t n_lru_ = 0;
  int32_t n_committed_ = 0;
  uint64_t n_evictions_ = 0;
  std::vector<uint64_t> slot_hash_;
  std::vector<int32_t> slot_id_;  // -1: empty
};

}  // namespace infer
