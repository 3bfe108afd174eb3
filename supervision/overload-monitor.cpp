#include "supervision/overload-monitor.hpp"

#include <algorithm>
#include <cmath>

namespace infer {

overload_monitor::overload_monitor(int64_t capacity, double fraction, std::chrono::milliseconds after)
    : threshold_(std::max<int64_t>(1, int64_t(std::ceil(double(capacity) * fraction)))), after_(after) {}

void overload_monitor::observe(int64_t depth, clock::time_point now) {
  if (depth < threshold_) since_.reset();
  else if (!since_) since_ = now;
}

}  // namespace infer
