// device_plan: which workers belong to which device supervisor. Pure host code.
//
// Workers are numbered 0..n_workers-1 across the whole service (the batcher routes by that
// number); worker i belongs to group i % n_groups. A group is one device: a GPU ordinal, or
// for the CPU backend an entry of backend.devices (CPU "devices" are just groups with their
// own weights and workers), or a single group labelled -1 when none are listed.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace infer {

struct device_plan {
  std::vector<int32_t> labels;                // device label of each group (-1: plain CPU)
  std::vector<std::vector<int32_t>> workers;  // workers of each group

  int32_t n_groups() const { return int32_t(labels.size()); }
  int32_t n_workers() const;
  int32_t group_of(int32_t worker) const { return n_groups() > 0 ? worker % n_groups() : 0; }
  int32_t device_of(int32_t worker) const { return labels.empty() ? -1 : labels[size_t(group_of(worker))]; }
};

// At least one worker per device: n_workers is raised to devices.size() when smaller.
device_plan make_device_plan(int32_t n_workers, const std::vector<int32_t>& devices);

}  // namespace infer
