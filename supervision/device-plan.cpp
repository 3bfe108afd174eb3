#include "supervision/device-plan.hpp"

#include <algorithm>

namespace infer {

int32_t device_plan::n_workers() const {
  int32_t n = 0;
  for (const auto& g : workers) n += int32_t(g.size());
  return n;
}

device_plan make_device_plan(int32_t n_workers, const std::vector<int32_t>& devices, int32_t n_fallback) {
  device_plan p;
  // No local primaries (a front node whose workers are all on worker nodes): no device group,
  // only the fallback one if any.
  if (n_workers > 0) p.labels = devices.empty() ? std::vector<int32_t>{-1} : devices;
  const int32_t groups = int32_t(p.labels.size());
  n_workers = n_workers > 0 ? std::max(n_workers, groups) : 0;
  p.workers.resize(size_t(groups));
  for (int32_t i = 0; i < n_workers; ++i) p.workers[size_t(i % groups)].push_back(i);
  p.n_primary = n_workers;
  if (n_fallback > 0) {
    p.fallback_group = groups;
    p.n_fallback = n_fallback;
    p.labels.push_back(k_fallback_device);
    p.workers.emplace_back();
    for (int32_t i = 0; i < n_fallback; ++i) p.workers.back().push_back(n_workers + i);
  }
  return p;
}

}  // namespace infer
