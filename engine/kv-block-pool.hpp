// kv_block_pool: the free list of one worker's paged KV cache.
//
// The backend owns the memory (kv_geometry: n_blocks of block_size tokens); this
// pool only decides which block ids are in use. Running out is a normal answer
// (the scheduler preempts or waits); a double free or an unknown id is a bug in
// the caller and is reported as invalid_argument, never silently absorbed.
#pragma once
#include <cstdint>
#include <span>
#include <vector>

#include "engine/result.hpp"

namespace infer {

class kv_block_pool {
 public:
  kv_block_pool(int32_t n_blocks, int32_t block_size);

  // A free block id, or -1 when none is left.
  int32_t allocate();
  // Appends n block ids to `out`, all or nothing: false (and `out` unchanged) when
  // fewer than n are free.
  bool allocate(int32_t n, std::vector<int32_t>& out);
  // Returns a block to the pool. Errors: id out of range, block not in use.
  status free(int32_t id);
  // Frees every id (all are checked first: on error nothing is freed).
  status free(std::span<const int32_t> ids);

  int32_t n_free() const { return int32_t(free_.size()); }
  int32_t n_used() const { return n_blocks_ - n_free(); }
  int32_t n_total() const { return n_blocks_; }
  int32_t block_size() const { return block_size_; }
  bool in_use(int32_t id) const { return id >= 0 && id < n_blocks_ && used_[size_t(id)] != 0; }
  // Blocks that hold n_tokens tokens.
  int32_t blocks_for(int32_t n_tokens) const { return (n_tokens + block_size_ - 1) / block_size_; }

 private:
  int32_t n_blocks_;
  int32_t block_size_;
  std::vector<int32_t> free_;  // stack: the most recently freed block is reused first (warm)
  std::vector<uint8_t> used_;
};

}  // namespace infer
