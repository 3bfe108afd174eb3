// admission_queue: the batcher's bounded wait line, one FIFO per priority level (high,
// normal, low). Pure (no CAF): the batcher actor holds one and tests drive it alone.
//
// Item: anything with a uint64_t `id` (the batcher's enqueue_msg). The capacity is the
// caller's check (queue.capacity): this only counts.
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>
#include <deque>

namespace infer {

template <class Item>
class admission_queue {
 public:
  static constexpr size_t n_levels = 3;  // infer::priority: high, normal, low

  // Levels past the last count as the last.
  static size_t level_of(uint32_t prio) { return prio < n_levels ? prio : n_levels - 1; }

  // A new request waits behind its level.
  void push_back(size_t level, Item m) {
    levels_[level_of(uint32_t(level))].push_back(std::move(m));
    ++size_;
  }
  // A request accepted long ago (resumed after its worker failed) goes first in its level.
  void push_front(size_t level, Item m) {
    levels_[level_of(uint32_t(level))].push_front(std::move(m));
    ++size_;
  }
  // Removes the queued request `id`; false when it is not queued.
  bool remove(uint64_t id) {
    for (auto& q : levels_)
      for (auto it = q.begin(); it != q.end(); ++it)
        if (it->id == id) {
          q.erase(it);
          --size_;
          return true;
        }
    return false;
  }
  // Removes entry `index` of `level` (dispatch admitted or refused it).
  void erase(size_t level, size_t index) {
    auto& q = levels_[level];
    q.erase(q.begin() + std::ptrdiff_t(index));
    --size_;
  }

  // One level, highest priority at 0, in arrival order (resumed ones first).
  std::deque<Item>& level(size_t i) { return levels_[i]; }
  const std::deque<Item>& level(size_t i) const { return levels_[i]; }
  int32_t size() const { return size_; }
  bool empty() const { return size_ == 0; }

  // Every queued item in dispatch order.
  template <class F>
  void for_each(F&& f) const {
    for (const auto& q : levels_)
      for (const auto& m : q) f(m);
  }

 private:
  std::array<std::deque<Item>, n_levels> levels_;
  int32_t size_ = 0;
};

}  // namespace infer
