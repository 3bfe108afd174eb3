#include "engine/kv-block-pool.hpp"

#include <string>

namespace infer {

kv_block_pool::kv_block_pool(int32_t n_blocks, int32_t block_size)
    : n_blocks_(n_blocks < 0 ? 0 : n_blocks), block_size_(block_size < 1 ? 1 : block_size) {
  free_.reserve(size_t(n_blocks_));
  // Highest id at the bottom so that allocation starts from block 0.
  for (int32_t i = n_blocks_ - 1; i >= 0; --i) free_.push_back(i);
  used_.assign(size_t(n_blocks_), 0);
}

int32_t kv_block_pool::allocate() {
  if (free_.empty()) return -1;
  int32_t id = free_.back();
  free_.pop_back();
  used_[size_t(id)] = 1;
  return id;
}

bool kv_block_pool::allocate(int32_t n, std::vector<int32_t>& out) {
  if (n < 0 || n > n_free()) return false;
  for (int32_t i = 0; i < n; ++i) out.push_back(allocate());
  return true;
}

status kv_block_pool::free(int32_t id) {
  if (id < 0 || id >= n_blocks_)
    return make_status(errc::invalid_argument, "kv_block_pool: block id " + std::to_string(id) +
                                                   " out of range [0, " + std::to_string(n_blocks_) + ")");
  if (!used_[size_t(id)])
    return make_status(errc::invalid_argument,
                       "kv_block_pool: block " + std::to_string(id) + " freed twice (not in use)");
  used_[size_t(id)] = 0;
  free_.push_back(id);
  return status::ok();
}

status kv_block_pool::free(std::span<const int32_t> ids) {
  for (size_t i = 0; i < ids.size(); ++i) {
    int32_t id = ids[i];
    if (id < 0 || id >= n_blocks_ || !used_[size_t(id)])
      return free(id);  // the single-id path words the error
    for (size_t j = 0; j < i; ++j)
      if (ids[j] == id)
        return make_status(errc::invalid_argument,
                           "kv_block_pool: block " + std::to_string(id) + " listed twice in one free");
  }
  for (int32_t id : ids) {
    used_[size_t(id)] = 0;
    free_.push_back(id);
  }
  return status::ok();
}

}  // namespace infer
