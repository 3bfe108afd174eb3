#include "supervision/restart-policy.hpp"

#include <algorithm>
#include <cmath>

namespace infer {

bool restart_policy::on_failure(clock::time_point now) {
  failures_.push_back(now);
  while (!failures_.empty() && now - failures_.front() > opt_.window) failures_.pop_front();
  return int32_t(failures_.size()) <= opt_.max_restarts;
}

std::chrono::milliseconds restart_policy::next_delay(double unit) const {
  const int n = std::max<int>(1, int(failures_.size()));
  double base = double(opt_.backoff_initial.count()) * std::pow(2.0, std::min(n - 1, 30));
  base = std::min(base, double(opt_.backoff_max.count()));
  const double j = 1.0 + opt_.jitter * (2.0 * unit - 1.0);
  return std::chrono::milliseconds(int64_t(std::llround(base * j)));
}

}  // namespace infer
