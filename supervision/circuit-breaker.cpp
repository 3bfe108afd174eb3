#include "supervision/circuit-breaker.hpp"

namespace infer {

const char* to_string(circuit_breaker::state s) {
  switch (s) {
    case circuit_breaker::state::closed: return "closed";
    case circuit_breaker::state::open: return "open";
    case circuit_breaker::state::half_open: return "half_open";
  }
  return "?";
}

circuit_breaker::state circuit_breaker::current(clock::time_point now) {
  if (state_ == state::open && now - opened_at_ >= opt_.open_for) {
    state_ = state::half_open;
    probe_in_flight_ = false;
  }
  return state_;
}

bool circuit_breaker::allow(clock::time_point now) {
  switch (current(now)) {
    case state::closed: return true;
    case state::open: return false;
    case state::half_open:
      if (probe_in_flight_) return false;
      probe_in_flight_ = true;
      return true;
  }
  return false;
}

void circuit_breaker::on_success() {
  state_ = state::closed;
  failures_ = 0;
  probe_in_flight_ = false;
}

void circuit_breaker::on_failure(clock::time_point now) {
  ++failures_;
  if (state_ == state::half_open || failures_ >= opt_.failure_threshold) {
    if (state_ != state::open) ++opened_;
    state_ = state::open;
    opened_at_ = now;
    probe_in_flight_ = false;
  }
}

std::chrono::milliseconds circuit_breaker::retry_after(clock::time_point now) const {
  if (state_ != state::open) return std::chrono::milliseconds(0);
  auto left = opt_.open_for - std::chrono::duration_cast<std::chrono::milliseconds>(now - opened_at_);
  return left.count() > 0 ? left : std::chrono::milliseconds(0);
}

}  // namespace infer
