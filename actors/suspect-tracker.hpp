// suspect_tracker: the batcher's poison-request policy. Pure (no CAF).
//
// A sequence that was in a failed step is a suspect. Random faults must not condemn it, a
// poison request must not crash-loop the fleet. The sequences of a failed step are retried
// together, in steps of their own (their group); if such a step fails again, each runs
// alone; quarantine_after failures while alone end it with error(internal).
//
// The batcher asks retry_of(id) while routing (a suspect runs only with its own group, on
// an idle worker: worker_slot's exclusivity), reports failed steps, and on a worker's death
// asks quarantine() for each sequence it held.
#pragma once
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <unordered_map>

namespace infer {

class suspect_tracker {
 public:
  // How a queued sequence is retried: key 0 is an ordinary sequence; otherwise the key its
  // retry runs under (its group's, or its own id when alone) and whether that is a group.
  struct retry {
    uint64_t key = 0;
    bool group = false;
  };
  retry retry_of(uint64_t id) const;

  // A step failed on a worker holding `ids`. `exclusive_key` / `exclusive_group`: the
  // suspect retry the worker was running (0: none). First failures form a fresh group;
  // a group that fails again splits (each alone); a suspect failing alone counts towards
  // quarantine.
  void on_step_failed(std::span<const uint64_t> ids, uint64_t exclusive_key, bool exclusive_group,
                      const std::string& reason);

  // The worker running `id` died. If it has failed `limit` steps while alone it is poison:
  // forgotten here, and the message to end it with is returned.
  std::optional<std::string> quarantine(uint64_t id, int32_t limit);

  // Not a suspect any more: it finished, was cancelled, or a step holding it succeeded.
  void clear(uint64_t id) { suspects_.erase(id); }
  bool is_suspect(uint64_t id) const { return suspects_.count(id) != 0; }
  size_t size() const { return suspects_.size(); }

  // Group keys live apart from request ids (which count up from 1 and never reach 2^63).
  static constexpr uint64_t group_key_bit = uint64_t(1) << 63;

 private:
  struct suspect {
    enum class stage : uint8_t { together, alone };
    stage at = stage::together;
    uint64_t group = 0;  // key of its group while `together`
    int32_t solo_failures = 0;
    std::string reason;
  };
  std::unordered_map<uint64_t, suspect> suspects_;
  uint64_t next_group_ = 0;
};

}  // namespace infer
