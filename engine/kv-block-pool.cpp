#include "engine/kv-block-pool.hpp"

#include <algorithm>
#include <string>

#include "base/sampling-params.hpp"

namespace infer {

uint64_t kv_hash_root(uint64_t salt) { return splitmix64(salt ^ 0x6b76'6361'6368'6521ull); }

uint64_t kv_block_hash(uint64_t parent, std::span<const int32_t> tokens) {
  // splitmix64 is a bijection with full avalanche: chaining it over (state ^ token) keeps
  // distinct token strings apart except by chance (about 2^-64 per pair).
  uint64_t h = splitmix64(parent + 0x9E3779B97F4A7C15ull);
  for (int32_t t : tokens) h = splitmix64(h ^ uint64_t(uint32_t(t)));
  return splitmix64(h ^ uint64_t(tokens.size()));
}

kv_block_pool::kv_block_pool(int32_t n_blocks, int32_t block_size)
    : n_blocks_(n_blocks < 0 ? 0 : n_blocks), block_size_(block_size < 1 ? 1 : block_size) {
  const size_t n = size_t(n_blocks_);
  free_.reserve(n);
  // Highest id at the bottom so that allocation starts from block 0.
  for (int32_t i = n_blocks_ - 1; i >= 0; --i) free_.push_back(i);
  refs_.assign(n, 0);
  committed_.assign(n, 0);
  hash_.assign(n, 0);
  parent_.assign(n, 0);
  tokens_.assign(n * size_t(block_size_), 0);
  prev_.assign(n, -1);
  next_.assign(n, -1);
  size_t cap = 16;
  while (cap < 2 * n) cap *= 2;  // load factor <= 1/2: short probes
  slot_hash_.assign(cap, 0);
  slot_id_.assign(cap, -1);
}

size_t kv_block_pool::slot_of(uint64_t hash) const { return size_t(splitmix64(hash)) & (slot_id_.size() - 1); }

int32_t kv_block_pool::table_find(uint64_t hash) const {
  const size_t mask = slot_id_.size() - 1;
  for (size_t i = slot_of(hash);; i = (i + 1) & mask) {
    if (slot_id_[i] < 0) return -1;
    if (slot_hash_[i] == hash) return slot_id_[i];
  }
}

void kv_block_pool::table_insert(uint64_t hash, int32_t id) {
  const size_t mask = slot_id_.size() - 1;
  size_t i = slot_of(hash);
  while (slot_id_[i] >= 0) i = (i + 1) & mask;
  slot_hash_[i] = hash;
  slot_id_[i] = id;
}

void kv_block_pool::table_erase(uint64_t hash) {
  const size_t mask = slot_id_.size() - 1;
  size_t i = slot_of(hash);
  while (slot_id_[i] >= 0 && slot_hash_[i] != hash) i = (i + 1) & mask;
  if (slot_id_[i] < 0) return;
  // Backward-shift deletion: later entries of the probe run move up, so no tombstones.
  size_t hole = i;
  for (size_t j = (hole + 1) & mask; slot_id_[j] >= 0; j = (j + 1) & mask) {
    const size_t home = slot_of(slot_hash_[j]);
    // j may fill the hole when its home is not cyclically within (hole, j].
    const bool stays = hole <= j ? (home > hole && home <= j) : (home > hole || home <= j);
    if (stays) continue;
    slot_hash_[hole] = slot_hash_[j];
    slot_id_[hole] = slot_id_[j];
    hole = j;
  }
  slot_id_[hole] = -1;
}

void kv_block_pool::lru_push_back(int32_t id) {
  prev_[size_t(id)] = lru_tail_;
  next_[size_t(id)] = -1;
  if (lru_tail_ >= 0) next_[size_t(lru_tail_)] = id;
  else lru_head_ = id;
  lru_tail_ = id;
  ++n_lru_;
}

void kv_block_pool::lru_unlink(int32_t id) {
  const int32_t p = prev_[size_t(id)], n = next_[size_t(id)];
  if (p >= 0) next_[size_t(p)] = n;
  else lru_head_ = n;
  if (n >= 0) prev_[size_t(n)] = p;
  else lru_tail_ = p;
  prev_[size_t(id)] = next_[size_t(id)] = -1;
  --n_lru_;
}

void kv_block_pool::uncommit(int32_t id) {
  table_erase(hash_[size_t(id)]);
  committed_[size_t(id)] = 0;
  --n_committed_;
}

int32_t kv_block_pool::allocate() {
  int32_t id;
  if (!free_.empty()) {
    id = free_.back();
    free_.pop_back();
  } else if (lru_head_ >= 0) {
    id = lru_head_;  // the least recently used cached block
    lru_unlink(id);
    uncommit(id);
    ++n_evictions_;
  } else {
    return -1;
  }
  refs_[size_t(id)] = 1;
  return id;
}

bool kv_block_pool::allocate(int32_t n, std::vector<int32_t>& out) {
  if (n < 0 || n > n_free()) return false;
  for (int32_t i = 0; i < n; ++i) out.push_back(allocate());
  return true;
}

status kv_block_pool::free(int32_t id) {
  if (!valid(id))
    return make_status(errc::invalid_argument, "kv_block_pool: block id " + std::to_string(id) +
                                                   " out of range [0, " + std::to_string(n_blocks_) + ")");
  if (refs_[size_t(id)] <= 0)
    return make_status(errc::invalid_argument,
                       "kv_block_pool: block " + std::to_string(id) + " freed twice (not in use)");
  if (--refs_[size_t(id)] > 0) return status::ok();
  if (committed_[size_t(id)]) lru_push_back(id);
  else free_.push_back(id);
  return status::ok();
}

status kv_block_pool::free(std::span<const int32_t> ids) {
  for (size_t i = 0; i < ids.size(); ++i) {
    int32_t id = ids[i];
    if (!valid(id) || refs_[size_t(id)] <= 0) return free(id);  // the single-id path words the error
    for (size_t j = 0; j < i; ++j)
      if (ids[j] == id)
        return make_status(errc::invalid_argument,
                           "kv_block_pool: block " + std::to_string(id) + " listed twice in one free");
  }
  for (int32_t id : ids) (void)free(id);
  return status::ok();
}

result<bool> kv_block_pool::commit(int32_t id, uint64_t hash, uint64_t parent, std::span<const int32_t> tokens) {
  if (!valid(id) || refs_[size_t(id)] <= 0)
    return make_status(errc::invalid_argument, "kv_block_pool: commit of block " + std::to_string(id) + ", not in use");
  if (committed_[size_t(id)])
    return make_status(errc::invalid_argument, "kv_block_pool: block " + std::to_string(id) + " committed twice");
  if (int32_t(tokens.size()) != block_size_)
    return make_status(errc::invalid_argument, "kv_block_pool: commit of " + std::to_string(tokens.size()) +
                                                   " tokens, a block holds " + std::to_string(block_size_));
  if (table_find(hash) >= 0) return false;
  committed_[size_t(id)] = 1;
  ++n_committed_;
  hash_[size_t(id)] = hash;
  parent_[size_t(id)] = parent;
  std::copy(tokens.begin(), tokens.end(), tokens_.begin() + std::ptrdiff_t(size_t(id) * size_t(block_size_)));
  table_insert(hash, id);
  return true;
}

int32_t kv_block_pool::lookup(uint64_t hash, uint64_t parent, std::span<const int32_t> tokens) const {
  const int32_t id = table_find(hash);
  if (id < 0 || parent_[size_t(id)] != parent || int32_t(tokens.size()) != block_size_) return -1;
  const int32_t* held = tokens_.data() + size_t(id) * size_t(block_size_);
  return std::equal(tokens.begin(), tokens.end(), held) ? id : -1;
}

status kv_block_pool::acquire(int32_t id) {
  if (!valid(id) || !committed_[size_t(id)])
    return make_status(errc::invalid_argument,
                       "kv_block_pool: acquire of block " + std::to_string(id) + ", which holds no cached prefix");
  if (refs_[size_t(id)]++ == 0) lru_unlink(id);
  return status::ok();
}

status kv_block_pool::share(int32_t id) {
  if (!valid(id) || refs_[size_t(id)] <= 0)
    return make_status(errc::invalid_argument, "kv_block_pool: share of block " + std::to_string(id) + ", not in use");
  ++refs_[size_t(id)];
  return status::ok();
}

int32_t kv_block_pool::flush() {
  int32_t n = 0;
  while (lru_head_ >= 0) {
    const int32_t id = lru_head_;
    lru_unlink(id);
    uncommit(id);
    free_.push_back(id);
    ++n;
  }
  return n;
}

std::vector<int32_t> kv_block_pool::lru_order() const {
  std::vector<int32_t> out;
  for (int32_t id = lru_head_; id >= 0; id = next_[size_t(id)]) out.push_back(id);
  return out;
}

}  // namespace infer
