// fake_service: an infer::service without an engine, for deterministic tests of the
// network layer. A thread of its own emits the events, like CAF threads would:
// accepted, then one token per tick per running request ('a', 'b', 'c', ... as ids of
// the tokenizer it is given), then done(length) after max_tokens or done(stop) when
// the text ends with a stop sequence. Knobs: `hold` keeps accepted requests from
// producing tokens (to cancel or disconnect mid-stream), `hold_accept` keeps submissions
// from even being accepted, `reject_overloaded` rejects
// the next N submissions, `tokens_per_tick` floods (a client that cannot keep up).
// kv_blocks_used counts live requests, as the real pool would; it and `cancels` change
// before the event that reveals the change is delivered, so a test that has seen the
// event may check them at once.
#pragma once
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <thread>

#include "actors/metrics.hpp"
#include "actors/service.hpp"
#include "tokenizer/tokenizer.hpp"

namespace infer::testing {

class fake_service final : public service {
 public:
  explicit fake_service(tokenizer tok, int32_t n_ctx = 64) : tok_(std::move(tok)), n_ctx_(n_ctx) {
    th_ = std::thread([this] { loop(); });
  }
  ~fake_service() override { shutdown(); }

  std::atomic<bool> hold{false};
  std::atomic<bool> hold_accept{false};  // submissions wait, unanswered (not even accepted)
  std::atomic<int> reject_overloaded{0};
  std::atomic<int> capacity{0};  // > 0: requests beyond this many running are overloaded
  std::atomic<bool> is_ready{true};
  std::atomic<int> cancels{0};    // cancel() calls that hit a live request
  std::atomic<int> submitted{0};
  std::atomic<int> tokens_per_tick{1};  // per running request

  uint64_t submit(generate_request req, event_callback cb) override {
    std::lock_guard lk(mu_);
    uint64_t id = next_id_++;
    submitted++;
    incoming_.push_back(job{id, std::move(req), std::move(cb), 0, {}});
    cv_.notify_one();
    return id;
  }

  void cancel(uint64_t id) override {
    std::lock_guard lk(mu_);
    cancel_ids_.push_back(id);
    cv_.notify_one();
  }

  std::vector<completion_handle> submit(std::vector<generate_request>) override { return {}; }
  completion generate(generate_request) override { return {}; }
  const tokenizer& tok() const override { return tok_; }
  int32_t n_ctx() const override { return n_ctx_; }
  bool ready() const override { return is_ready; }
  metrics& stats() override { return m_; }

  void shutdown() override {
    {
      std::lock_guard lk(mu_);
      if (stop_) return;
      stop_ = true;
      cv_.notify_one();
    }
    th_.join();
  }

  int64_t live() const { return m_.kv_blocks_used.load(); }

 private:
  struct job {
    uint64_t id;
    generate_request req;
    event_callback cb;
    int32_t produced = 0;
    std::string text;
  };

  void loop() {
    std::unique_lock lk(mu_);
    while (true) {
      cv_.wait_for(lk, std::chrono::milliseconds(1));
      std::deque<job> fresh;
      if (!hold_accept || stop_) fresh.swap(incoming_);
      std::vector<uint64_t> cancel_now;
      cancel_now.swap(cancel_ids_);
      bool stopping = stop_;
      lk.unlock();
      // Outside the lock, as the real service calls back from actor threads.
      for (auto& j : fresh) {
        if (reject_overloaded > 0 || (capacity > 0 && int(running_.size()) >= capacity)) {
          if (reject_overloaded > 0) reject_overloaded--;
          event e;
          e.type = event::kind::error;
          e.request_id = j.id;
          e.code = error_code::overloaded;
          e.message = "queue full";
          e.retry_after_ms = 50;
          m_.count_outcome("overloaded");
          j.cb(e);
          continue;
        }
        event e;
        e.type = event::kind::accepted;
        e.request_id = j.id;
        m_.kv_blocks_used++;
        m_.running_sequences++;
        j.cb(e);
        running_.emplace(j.id, std::move(j));
      }
      for (uint64_t id : cancel_now) {
        auto it = running_.find(id);
        if (it == running_.end()) continue;
        finish(it->second, finish_reason::cancelled, /*by_cancel=*/true);
        running_.erase(it);
      }
      for (auto it = running_.begin(); it != running_.end();) {
        job& j = it->second;
        if (stopping) {
          finish(j, finish_reason::cancelled);
          it = running_.erase(it);
          continue;
        }
        if (hold) {
          ++it;
          continue;
        }
        bool stopped = false;
        for (int k = std::max(1, tokens_per_tick.load()); k > 0 && !stopped && j.produced < j.req.max_tokens; --k) {
          event t;
          t.type = event::kind::token;
          t.request_id = j.id;
          t.index = j.produced;
          t.token = 'a' + j.produced % 26;
          int32_t id = t.token;
          t.text = tok_.decode(std::span<const int32_t>(&id, 1));
          j.text += t.text;
          if (j.text.size() > 1024) j.text.erase(0, j.text.size() - 512);  // enough for stop sequences
          j.produced++;
          m_.tokens_generated++;
          j.cb(t);
          for (auto& s : j.req.stop)
            if (j.text.size() >= s.size() && j.text.compare(j.text.size() - s.size(), s.size(), s) == 0) stopped = true;
        }
        if (stopped || j.produced >= j.req.max_tokens) {
          finish(j, stopped ? finish_reason::stop : finish_reason::length);
          it = running_.erase(it);
        } else {
          ++it;
        }
      }
      lk.lock();
      if (stopping && incoming_.empty()) return;
    }
  }

  // Gauges and counts first, the event last: whoever sees the event or the cancel count
  // sees the request gone from kv_blocks_used.
  void finish(job& j, finish_reason r, bool by_cancel = false) {
    event d;
    d.type = event::kind::done;
    d.request_id = j.id;
    d.reason = r;
    d.prompt_tokens = int32_t(j.req.prompt_tokens.empty() ? j.req.prompt.size() : j.req.prompt_tokens.size());
    d.completion_tokens = j.produced;
    d.total_ms = 1;
    m_.kv_blocks_used--;
    m_.running_sequences--;
    m_.count_outcome(r == finish_reason::cancelled ? "cancelled" : r == finish_reason::stop ? "done_stop" : "done_length");
    if (by_cancel) cancels++;
    j.cb(d);
  }

  tokenizer tok_;
  int32_t n_ctx_;
  metrics m_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<job> incoming_;
  std::vector<uint64_t> cancel_ids_;
  std::map<uint64_t, job> running_;  // touched by the loop thread only
  uint64_t next_id_ = 1;
  bool stop_ = false;
  std::thread th_;
};

}  // namespace infer::testing
