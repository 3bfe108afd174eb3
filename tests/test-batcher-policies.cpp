// The batcher's pure policies without CAF: the admission queue, the worker router
// (room, suspects' exclusivity and reservations, cache-aware routing) and the suspect /
// quarantine tracker.
#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "actors/admission-queue.hpp"
#include "actors/suspect-tracker.hpp"
#include "actors/worker-router.hpp"

using namespace infer;

namespace {

struct item {
  uint64_t id = 0;
};

std::vector<uint64_t> ids_in_order(const admission_queue<item>& q) {
  std::vector<uint64_t> out;
  q.for_each([&](const item& m) { out.push_back(m.id); });
  return out;
}

// An up worker with `free` of `total` blocks of 16 tokens, holding `held` sequences.
worker_slot up_worker(int32_t total, int32_t free, int32_t held = 0, int32_t max_running = 8) {
  worker_slot w;
  w.up = true;
  w.max_running = max_running;
  w.block_size = 16;
  w.total_blocks = total;
  w.free_blocks = free;
  w.held = held;
  w.n_ctx = 4096;
  w.cached.reset(total);
  return w;
}

const auto all = [](size_t) { return true; };

}  // namespace

TEST_CASE("admission_queue: priority levels in order, resumed first in its level, remove and erase count") {
  admission_queue<item> q;
  q.push_back(1, {1});
  q.push_back(2, {2});
  q.push_back(0, {3});
  q.push_front(1, {4});  // resumed
  q.push_back(7, {5});   // past the last level: the last
  CHECK(q.size() == 5);
  CHECK(ids_in_order(q) == std::vector<uint64_t>{3, 4, 1, 2, 5});
  CHECK(admission_queue<item>::level_of(9) == 2);
  CHECK(q.remove(1));
  CHECK_FALSE(q.remove(1));
  CHECK(q.size() == 4);
  q.erase(2, 0);  // id 2
  CHECK(ids_in_order(q) == std::vector<uint64_t>{3, 4, 5});
  CHECK(q.size() == 3);
  CHECK_FALSE(q.empty());
}

TEST_CASE("worker_router: the most free blocks wins, counting admissions in transit and max_running") {
  std::vector<worker_slot> ws{up_worker(100, 40), up_worker(100, 60), up_worker(100, 90, 2, 2)};
  worker_router r;
  const std::vector<int32_t> prompt(20, 7);
  auto c = r.choose(ws, all, 21, {}, prompt);
  CHECK(c.worker == 1);  // worker 2 has more room but runs max_running sequences
  ws[1].sent(30);        // in transit: 60 - 30 = 30 free now, worker 0 has 40
  CHECK(r.choose(ws, all, 21, {}, prompt).worker == 0);
  ws[1].seen(ws[1].admits_sent);  // the report saw it (free_blocks still says 60)
  CHECK(ws[1].in_transit.empty());
  CHECK(r.choose(ws, all, 21, {}, prompt).worker == 1);
  CHECK(r.choose(ws, [](size_t i) { return i == 0; }, 21, {}, prompt).worker == 0);
  CHECK(r.choose(ws, all, 16 * 61, {}, prompt).worker == -1);  // needs 61 blocks: none has them
}

TEST_CASE("worker_router: a sequence no worker could ever hold is named with the largest pool") {
  std::vector<worker_slot> ws{up_worker(10, 10), up_worker(20, 20)};
  CHECK_FALSE(worker_router::never_fits(ws, 100, 200).has_value());  // 300 tokens: 19 blocks
  auto most = worker_router::never_fits(ws, 300, 100);                // 400 tokens: 25 blocks
  REQUIRE(most.has_value());
  CHECK(*most == 20);
  ws[0].up = ws[1].up = false;
  CHECK_FALSE(worker_router::never_fits(ws, 300, 100).has_value());  // none up: it waits
}

TEST_CASE("worker_router: suspects start on an idle worker, hold it alone; others reserve the least busy") {
  std::vector<worker_slot> ws{up_worker(100, 90, 1), up_worker(100, 50, 0)};
  worker_router r;
  const std::vector<int32_t> prompt(8, 1);
  const suspect_tracker::retry alone{42, false};
  auto c = r.choose(ws, all, 9, alone, prompt);
  CHECK(c.worker == 1);  // worker 0 has more room but is busy
  ws[1].sent(1);
  worker_router::admitted_suspect(ws, 1, 42, false, 42);
  CHECK(ws[1].exclusive == 42);
  CHECK(r.choose(ws, all, 9, {}, prompt).worker == 0);        // an ordinary sequence avoids it
  CHECK(r.choose(ws, all, 9, {43, false}, prompt).worker == -1);  // another suspect: no idle worker

  // No room for suspect 43: the least busy free worker is reserved for it, once.
  worker_router::reserve(ws, all, 43);
  CHECK(ws[0].reserved == 43);
  worker_router::reserve(ws, all, 43);
  CHECK(ws[0].reserved == 43);
  CHECK(r.choose(ws, all, 9, {}, prompt).worker == -1);  // reserved: ordinary ones wait

  // A reservation nobody queued wants any more goes.
  worker_router::prune_reservations(ws, {}, all);
  CHECK(ws[0].reserved == 0);

  // The suspect leaves: the exclusivity ends once its admission was seen.
  ws[1].seen(ws[1].admits_sent);
  ws[1].leave_exclusive(42);
  CHECK(ws[1].exclusive == 0);
}

TEST_CASE("worker_slot: a successful step holding every suspect clears them") {
  worker_slot w = up_worker(100, 100);
  w.sent(1);
  w.hold_exclusive(7 | suspect_tracker::group_key_bit, true, 5);
  w.sent(1);
  w.hold_exclusive(7 | suspect_tracker::group_key_bit, true, 6);
  w.seen(1);  // the second admission not yet seen: no verdict
  CHECK(w.step_succeeded(2).empty());
  w.seen(2);
  CHECK(w.step_succeeded(1).empty());  // a step of one held only one of them
  CHECK(w.step_succeeded(2) == std::vector<uint64_t>{5, 6});
  CHECK(w.exclusive == 0);
}

TEST_CASE("worker_router: cache-aware routing prefers the worker holding the prefix, within the affinity") {
  std::vector<worker_slot> ws{up_worker(100, 80), up_worker(100, 60)};
  worker_router r(router_options{true, 64});
  std::vector<int32_t> prompt(64);
  for (size_t i = 0; i < prompt.size(); ++i) prompt[i] = int32_t(i);
  // First time: the least loaded worker (0) takes it and is believed to hold the prefix.
  auto c = r.choose(ws, all, 65, {}, prompt);
  CHECK(c.worker == 0);
  CHECK_FALSE(c.prefix_routed);
  // Worker 0 now has less room than 1 but holds the prefix (3 full blocks before the last token):
  ws[0].free_blocks = 50;
  c = r.choose(ws, all, 65, {}, prompt);
  CHECK(c.worker == 0);
  CHECK(c.prefix_routed);
  // Holding more sequences than the other outweighs the gain: 48 tokens < 64 per extra sequence * 2.
  ws[0].held = 2;
  c = r.choose(ws, all, 65, {}, prompt);
  CHECK(c.worker == 1);
  CHECK_FALSE(c.prefix_routed);
}

TEST_CASE("worker_router: a full worker holding the prefix is waited for while the prefix outweighs the load gap") {
  std::vector<worker_slot> ws{up_worker(100, 80), up_worker(100, 60)};
  worker_router r(router_options{true, 64});
  std::vector<int32_t> prompt(321);  // 20 full blocks before the last token: 320 tokens
  for (size_t i = 0; i < prompt.size(); ++i) prompt[i] = int32_t(i % 97);
  auto c = r.choose(ws, all, 322, {}, prompt);
  REQUIRE(c.worker == 0);  // the most free blocks; now believed to hold the prefix
  CHECK(c.home == -1);     // nobody held it before
  // Worker 0 is full (max_running), worker 1 has one slot: the request waits for 0 ...
  ws[0].held = 8;
  ws[1].held = 7;
  c = r.choose(ws, all, 322, {}, prompt);
  CHECK(c.wait);
  CHECK(c.worker == -1);
  CHECK(c.home == 0);
  // ... unless the caller allows no more waits this pass: then the room it finds.
  c = r.choose(ws, all, 322, {}, prompt, false);
  CHECK_FALSE(c.wait);
  CHECK(c.worker == 1);
  ws[1].cached.reset(100);  // forget that worker 1 got it
  // It waits while 320 tokens > 64 per extra sequence there: 4 more waits, 5 more goes.
  ws[1].held = 4;
  CHECK(r.choose(ws, all, 322, {}, prompt).wait);
  ws[1].held = 3;
  c = r.choose(ws, all, 322, {}, prompt);
  CHECK_FALSE(c.wait);
  CHECK(c.worker == 1);
  ws[1].cached.reset(100);
  // Out of KV blocks rather than slots: not waited for (its longest sequence may hold them
  // for long), the room elsewhere is taken.
  ws[0].held = 1;
  ws[0].free_blocks = 5;  // needs 21
  ws[1].held = 0;
  c = r.choose(ws, all, 322, {}, prompt);
  CHECK_FALSE(c.wait);
  CHECK(c.worker == 1);
  ws[1].cached.reset(100);
  ws[0].held = 8;  // a slot, then: waited for
  ws[0].free_blocks = 80;
  ws[1].held = 7;
  CHECK(r.choose(ws, all, 322, {}, prompt).wait);
  // A worker that could never hold it (a smaller pool) is not waited for.
  ws[0].total_blocks = 20;
  c = r.choose(ws, all, 322, {}, prompt);
  CHECK_FALSE(c.wait);
  CHECK(c.worker == 1);
  ws[0].total_blocks = 100;
  ws[1].cached.reset(100);
  // prefix_affinity_tokens 0 (load only): never waits.
  worker_router load_only(router_options{true, 0});
  c = load_only.choose(ws, all, 322, {}, prompt);
  CHECK_FALSE(c.wait);
  CHECK(c.worker == 1);
}

TEST_CASE("suspect_tracker: a failed step's sequences form a group, fail again alone, then quarantine") {
  suspect_tracker s;
  CHECK(s.retry_of(1).key == 0);
  const std::vector<uint64_t> step{1, 2};
  s.on_step_failed(step, 0, false, "boom");
  const auto r1 = s.retry_of(1), r2 = s.retry_of(2);
  CHECK(r1.group);
  CHECK(r1.key == r2.key);
  CHECK((r1.key & suspect_tracker::group_key_bit) != 0);
  // The group's retry fails: each runs alone now, under its own id.
  s.on_step_failed(step, r1.key, true, "boom again");
  CHECK(s.retry_of(1).key == 1);
  CHECK_FALSE(s.retry_of(1).group);
  // Failing while another suspect held the worker does not count against 1.
  s.on_step_failed(std::vector<uint64_t>{1}, 2, false, "x");
  CHECK_FALSE(s.quarantine(1, 1).has_value());
  // Failing alone twice with quarantine_after 2: poison, named with the last reason.
  s.on_step_failed(std::vector<uint64_t>{1}, 1, false, "nan logits");
  CHECK_FALSE(s.quarantine(1, 2).has_value());
  s.on_step_failed(std::vector<uint64_t>{1}, 1, false, "nan logits");
  auto why = s.quarantine(1, 2);
  REQUIRE(why.has_value());
  CHECK(why->find("2 times while running alone (nan logits)") != std::string::npos);
  CHECK_FALSE(s.is_suspect(1));
  CHECK(s.is_suspect(2));
  s.clear(2);
  CHECK(s.size() == 0);
}
