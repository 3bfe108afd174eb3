#include "actors/suspect-tracker.hpp"

namespace infer {

suspect_tracker::retry suspect_tracker::retry_of(uint64_t id) const {
  auto it = suspects_.find(id);
  if (it == suspects_.end()) return {};
  const bool together = it->second.at == suspect::stage::together;
  return {together ? it->second.group : id, together};
}

void suspect_tracker::on_step_failed(std::span<const uint64_t> ids, uint64_t exclusive_key, bool exclusive_group,
                                     const std::string& reason) {
  uint64_t fresh_group = 0;
  for (uint64_t id : ids) {
    auto it = suspects_.find(id);
    if (it == suspects_.end()) {  // first failed step: a suspect, retried with its group
      if (fresh_group == 0) fresh_group = group_key_bit | ++next_group_;
      suspect s;
      s.group = fresh_group;
      s.reason = reason;
      suspects_.emplace(id, std::move(s));
      continue;
    }
    auto& s = it->second;
    s.reason = reason;
    if (s.at == suspect::stage::together) {  // failed again: each of them runs alone
      s.at = suspect::stage::alone;
      s.group = 0;
    } else if (exclusive_key == id && !exclusive_group) {
      ++s.solo_failures;  // failed while alone: counts towards quarantine
    }
  }
}

std::optional<std::string> suspect_tracker::quarantine(uint64_t id, int32_t limit) {
  auto it = suspects_.find(id);
  if (it == suspects_.end() || it->second.solo_failures < limit) return std::nullopt;
  std::string why = "quarantined: the request failed its engine step " + std::to_string(limit) +
                    " times while running alone (" + it->second.reason + ")";
  suspects_.erase(it);
  return why;
}

}  // namespace infer
