// Breaker, restart intensity / back-off and token bucket, on a virtual clock.
#include <doctest/doctest.h>

#include "supervision/circuit-breaker.hpp"
#include "supervision/overload-monitor.hpp"
#include "supervision/restart-policy.hpp"
#include "supervision/token-bucket.hpp"

using namespace infer;
using namespace std::chrono_literals;
using clk = std::chrono::steady_clock;

TEST_CASE("circuit breaker: closed -> open -> half_open -> closed / open") {
  circuit_breaker b({3, 1000ms});
  auto t = clk::time_point{} + 1h;
  CHECK(b.current(t) == circuit_breaker::state::closed);
  b.on_failure(t);
  b.on_failure(t);
  CHECK(b.allow(t));  // two failures: still closed
  b.on_success();     // success resets the count
  b.on_failure(t);
  b.on_failure(t);
  CHECK(b.current(t) == circuit_breaker::state::closed);
  b.on_failure(t);
  CHECK(b.current(t) == circuit_breaker::state::open);
  CHECK(b.opened_count() == 1);
  CHECK_FALSE(b.allow(t + 500ms));
  CHECK(b.retry_after(t + 400ms) == 600ms);
  // After open_for: one probe only.
  CHECK(b.current(t + 1000ms) == circuit_breaker::state::half_open);
  CHECK(b.allow(t + 1000ms));
  CHECK_FALSE(b.allow(t + 1001ms));
  // Probe fails: open again, timer restarts.
  b.on_failure(t + 1100ms);
  CHECK(b.current(t + 1500ms) == circuit_breaker::state::open);
  CHECK(b.opened_count() == 2);
  CHECK(b.current(t + 2100ms) == circuit_breaker::state::half_open);
  CHECK(b.allow(t + 2100ms));
  b.on_success();
  CHECK(b.current(t + 2100ms) == circuit_breaker::state::closed);
  CHECK(b.allow(t + 2100ms));
  CHECK(std::string(to_string(circuit_breaker::state::half_open)) == "half_open");
}

TEST_CASE("restart intensity: at most N restarts in T, then escalate") {
  restart_policy p({3, 1000ms, 10ms, 200ms, 0.0});
  auto t = clk::time_point{} + 1h;
  CHECK(p.on_failure(t));
  CHECK(p.on_failure(t + 100ms));
  CHECK(p.on_failure(t + 200ms));
  CHECK_FALSE(p.on_failure(t + 300ms));  // 4 in 1 s: escalate
  restart_policy q({3, 1000ms, 10ms, 200ms, 0.0});
  CHECK(q.on_failure(t));
  CHECK(q.on_failure(t + 600ms));
  CHECK(q.on_failure(t + 1200ms));  // the first left the window
  CHECK(q.on_failure(t + 1800ms));
  CHECK(q.recent_failures() == 2);  // 1200 ms and 1800 ms
}

TEST_CASE("restart back-off doubles, caps and jitters") {
  restart_policy p({100, 100000ms, 10ms, 200ms, 0.2});
  auto t = clk::time_point{} + 1h;
  p.on_failure(t);
  CHECK(p.next_delay(0.5) == 10ms);
  p.on_failure(t);
  CHECK(p.next_delay(0.5) == 20ms);
  p.on_failure(t);
  CHECK(p.next_delay(0.5) == 40ms);
  for (int i = 0; i < 10; ++i) p.on_failure(t);
  CHECK(p.next_delay(0.5) == 200ms);
  CHECK(p.next_delay(0.0) == 160ms);
  CHECK(p.next_delay(0.999) > 239ms);
}

TEST_CASE("token bucket: burst, refill, retry_after") {
  auto t = clk::time_point{} + 1h;
  token_bucket b(10.0, 3.0, t);
  CHECK(b.try_take(t));
  CHECK(b.try_take(t));
  CHECK(b.try_take(t));
  CHECK_FALSE(b.try_take(t));
  CHECK(b.retry_after(t) == 101ms);
  CHECK_FALSE(b.try_take(t + 50ms));
  CHECK(b.try_take(t + 101ms));
  CHECK(b.try_take(t + 10s));
  CHECK(b.try_take(t + 10s));
  CHECK(b.try_take(t + 10s));
  CHECK_FALSE(b.try_take(t + 10s));  // refill caps at the burst
}

TEST_CASE("overload monitor: sustained only after the queue stayed above the threshold long enough") {
  using clk = std::chrono::steady_clock;
  overload_monitor m(10, 0.75, 1000ms);  // 8 queued of 10
  CHECK(m.threshold() == 8);
  const auto t = clk::now();
  m.observe(7, t);
  CHECK(!m.sustained(t + 5000ms));
  m.observe(8, t);
  CHECK(!m.sustained(t + 999ms));
  m.observe(9, t + 500ms);  // still above: the start stays at t
  CHECK(m.sustained(t + 1000ms));
  m.observe(3, t + 1200ms);  // a dip ends it
  CHECK(!m.sustained(t + 1300ms));
  m.observe(8, t + 1400ms);
  CHECK(!m.sustained(t + 2300ms));
  CHECK(m.sustained(t + 2400ms));
  overload_monitor now(4, 1.0, 0ms);  // full queue, at once
  now.observe(3, t);
  CHECK(!now.sustained(t));
  now.observe(4, t);
  CHECK(now.sustained(t));
  overload_monitor tiny(1, 0.1, 0ms);  // the threshold is at least one request
  CHECK(tiny.threshold() == 1);
}
