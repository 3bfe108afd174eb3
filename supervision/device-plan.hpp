// device_plan: which workers belong to which device supervisor. Pure host code.
//
// Workers are numbered 0..n_workers-1 across the whole service (the batcher routes by that
// number). The primary workers 0..n_primary-1 are dealt round-robin over the devices: worker
// i belongs to group i % (primary groups). A group is one device: a GPU ordinal, or for the
// CPU backend an entry of backend.devices (CPU "devices" are just groups with their own
// weights and workers), or a single group labelled -1 when none are listed.
// With CPU fallback workers (degradation.fallback_cpu_workers), they come last, numbered
// n_primary.., in one extra group labelled k_fallback_device (-2): the CPU fallback.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace infer {

inline constexpr int32_t k_fallback_device = -2;  // device label of the CPU fallback group

struct device_plan {
  std::vector<int32_t> labels;                // device label of each group (-1: plain CPU)
  std::vector<std::vector<int32_t>> workers;  // workers of each group
  int32_t fallback_group = -1;                // index of the CPU fallback group, -1: none
  int32_t n_primary = 0;                      // workers 0..n_primary-1 are primary
  int32_t n_fallback = 0;                     // then this many CPU fallback workers

  int32_t n_groups() const { return int32_t(labels.size()); }
  int32_t n_workers() const;
  int32_t n_primary_groups() const { return n_groups() - (fallback_group >= 0 ? 1 : 0); }
  bool is_fallback(int32_t worker) const { return worker >= n_primary && worker < n_primary + n_fallback; }
  int32_t group_of(int32_t worker) const {
    if (is_fallback(worker)) return fallback_group;
    return n_primary_groups() > 0 ? worker % n_primary_groups() : 0;
  }
  int32_t device_of(int32_t worker) const { return labels.empty() ? -1 : labels[size_t(group_of(worker))]; }
};

// At least one worker per device: n_workers is raised to devices.size() when smaller.
// n_fallback > 0 adds the CPU fallback group with that many workers. n_workers = 0: no
// primary group at all (a front node that leaves the work to its worker nodes).
device_plan make_device_plan(int32_t n_workers, const std::vector<int32_t>& devices, int32_t n_fallback = 0);

}  // namespace infer
