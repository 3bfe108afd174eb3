#include "actors/worker-actor.hpp"

#include <unordered_map>

#include "actors/engine-actor.hpp"
#include "actors/messages.hpp"
#include "engine/scheduler.hpp"

namespace infer {

namespace {

struct worker_state {
  static inline const char* name = "infer.worker";
  service_core_ptr core;
  int32_t index = 0;
  caf::actor engine;
  caf::actor parent;      // its device supervisor: told why the worker fails
  uint64_t step_no = 0;   // identifies the step a watchdog timer belongs to
  std::vector<uint64_t> step_ids;
  std::unique_ptr<scheduler> sched;
  step_job_ptr job = std::make_shared<step_job>();
  bool in_flight = false;
  int32_t batch_seqs = 0, batch_tokens = 0;
  uint64_t admits_seen = 0;
  struct sink {
    caf::actor request;  // where the sequence's tokens go
    uint32_t attempt = 0;
  };
  std::unordered_map<uint64_t, sink> requests;
  std::vector<seq_result> results;
  worker_hello_msg hello;  // sent again after a reset (a new front node)
  bool warming = false;    // running the start-up warm-up: no hello yet
  uint64_t warm_queries = 0, warm_hits = 0;  // the warm-up's prefix cache figures, left out of reports
};

// Sequence ids of the warm-up (request ids count up from 1 and never get here).
constexpr uint64_t warmup_id_base = uint64_t{1} << 62;

using worker_actor = caf::stateful_actor<worker_state>;

void report(worker_actor* self, int32_t batch_seqs, int32_t batch_tokens, int32_t n_sampled, int64_t step_us,
            std::vector<uint64_t> left) {
  auto& st = self->state;
  worker_report_msg r;
  r.worker = st.index;
  r.admits_seen = st.admits_seen;
  r.n_running = st.sched->n_running();
  r.n_waiting = st.sched->n_waiting();
  r.total_blocks = st.sched->pool().n_total();
  r.used_blocks = st.sched->pool().n_used();
  r.free_blocks = st.sched->pool().n_free() - st.sched->waiting_blocks();
  r.batch_seqs = batch_seqs;
  r.batch_tokens = batch_tokens;
  r.n_sampled = n_sampled;
  r.step_us = step_us;
  r.preemptions = st.sched->n_preemptions();
  r.prefix_queries = st.sched->prefix_queries() - st.warm_queries;
  r.prefix_hits = st.sched->prefix_hits() - st.warm_hits;
  r.cached_blocks = st.sched->pool().n_committed();
  r.left = std::move(left);
  self->send(st.core->batcher, std::move(r));
}

// Starts the next step if none is running and there is work.
void kick(worker_actor* self) {
  auto& st = self->state;
  if (st.in_flight || !st.sched) return;
  int32_t n = st.sched->schedule(st.job->batch);
  if (n == 0) return;
  st.in_flight = true;
  st.batch_seqs = n;
  st.batch_tokens = st.job->batch.n_tokens();
  ++st.step_no;
  self->send(st.engine, step_atom::value, st.job);
  if (st.core->cfg.step_timeout_ms > 0)
    self->delayed_send(self, std::chrono::milliseconds(st.core->cfg.step_timeout_ms), watchdog_atom::value,
                       st.step_no);
}

// The step in flight failed (or hung): tell the batcher which sequences were in it (they
// become suspects and are resumed elsewhere) and the supervisor why, then quit. The
// engine is linked: it ends once its step returns, so a hung backend is never reused.
void fail_step(worker_actor* self, std::string reason, bool device_fault, bool timed_out) {
  auto& st = self->state;
  step_failed_msg f;
  f.worker = st.index;
  if (st.sched) st.sched->scheduled_ids(f.ids);
  f.reason = "worker " + std::to_string(st.index) + ": " + reason;
  f.device_fault = device_fault;
  f.timed_out = timed_out;
  auto& m = st.core->stats;
  m.step_failures.fetch_add(1, std::memory_order_relaxed);
  if (timed_out) m.step_timeouts.fetch_add(1, std::memory_order_relaxed);
  m.update_worker(st.index, [](worker_gauge& g) { ++g.step_failures; });
  if (st.parent) self->send(st.parent, f);
  self->send(st.core->batcher, f);
  self->quit(caf::make_error(caf::sec::runtime_error, f.reason));
}

// A CUDA engine pays on its first steps for what later steps reuse: CUDA graphs captured per
// batch-size bucket and context split, kernels loaded on first launch, matmul plans per
// shape (the first 100 tasks through inferd took ten times longer than the next 100). Before
// saying hello the worker runs sequences of its own whose count shrinks by one per step, so
// every decode bucket up to min(max_running, 64) and a spread of prompt lengths is seen once.
// Their tokens go nowhere; a failure here fails the worker like any step.
bool start_warmup(worker_actor* self) {
  auto& st = self->state;
  const int32_t n = std::min<int32_t>(st.core->cfg.max_running, 64);
  const int32_t vocab = std::max<int32_t>(st.core->n_vocab, 2);
  for (int32_t i = 0; i < n; ++i) {
    seq_spec s;
    s.id = warmup_id_base + uint64_t(i);
    s.prompt.resize(size_t(8 + (i * 7) % 57));
    for (size_t j = 0; j < s.prompt.size(); ++j) s.prompt[j] = int32_t((size_t(i) * 31 + j * 7) % size_t(vocab));
    s.max_tokens = 1 + i;
    s.sampling.temperature = 0;
    if (!st.sched->add(std::move(s))) break;  // a small KV cache: warm up with what fits
  }
  if (st.sched->n_running() + st.sched->n_waiting() == 0) return false;
  st.warming = true;
  kick(self);
  return true;
}

caf::behavior worker_fun(worker_actor* self, service_core_ptr core, int32_t index, caf::actor parent) {
  auto& st = self->state;
  st.core = std::move(core);
  st.index = index;
  st.parent = parent;
  st.engine = spawn_engine_actor(self, st.core, index);
  self->request(st.engine, std::chrono::minutes(10), init_atom::value)
      .then(
          [=](bool ok, const std::string& msg, int32_t n_blocks, int32_t block_size, int32_t n_ctx,
              const std::string& name) {
            auto& st = self->state;
            if (!ok) {
              self->quit(caf::make_error(caf::sec::runtime_error, "worker " + std::to_string(st.index) +
                                                                      ": backend failed: " + msg));
              return;
            }
            const auto& cfg = st.core->cfg;
            scheduler_config sc;
            sc.max_batch_tokens = cfg.max_batch_tokens;
            sc.max_running = cfg.max_running;
            sc.prefill_chunk = cfg.prefill_chunk;
            sc.n_ctx = n_ctx;
            sc.prefix_caching = cfg.prefix_caching;
            // The engine names its backend; the CUDA one keeps token counts on the device
            // (backend::device_token_counts), so the penalty lists go out once a sequence.
            sc.device_counts = name == "cuda";
            // K/V of the same tokens differ between models and number formats: a cache is
            // keyed by both (one pool per worker today; the salt also covers adapters later).
            uint64_t salt = 1469598103934665603ull;
            for (char c : st.core->model_id + "/" + name) salt = (salt ^ uint8_t(c)) * 1099511628211ull;
            sc.cache_salt = salt;
            st.sched = std::make_unique<scheduler>(sc, kv_geometry{block_size, n_blocks});
            worker_hello_msg& h = st.hello;
            h.worker = st.index;
            h.handle = caf::actor_cast<caf::actor>(self);
            h.total_blocks = n_blocks;
            h.block_size = block_size;
            h.n_ctx = n_ctx;
            h.max_running = cfg.max_running;
            h.backend = name;
            if (name == std::string("cuda") && start_warmup(self)) return;  // hello when it is done
            self->send(st.core->batcher, h);
          },
          [=](caf::error& err) { self->quit(std::move(err)); });

  return {
      [=](admit_msg& m) {
        auto& st = self->state;
        ++st.admits_seen;
        seq_spec s;
        s.id = m.id;
        s.prompt = std::move(m.prompt);
        s.generated = std::move(m.generated);
        s.max_tokens = m.max_tokens;
        s.sampling = m.sampling.to();
        s.logit_bias = m.sampling.bias();
        s.stop_ids = std::move(m.stop_ids);
        s.n = m.n;
        s.prompt_logprobs = m.prompt_logprobs;
        for (size_t i = 0; i < m.forks.ids.size(); ++i) s.forks.push_back({m.forks.ids[i], m.forks.generated(i)});
        status ok = st.sched ? st.sched->add(std::move(s)) : make_status(errc::internal, "worker not ready");
        if (!ok) {
          report(self, 0, 0, 0, 0, {});
          self->send(st.core->batcher, seq_gone_msg{m.id, st.index, true, false, ok.message});
          return;
        }
        st.requests[m.id] = worker_state::sink{std::move(m.request), m.attempt};
        kick(self);
      },
      [=](const cancel_msg& c) {
        auto& st = self->state;
        if (c.fork >= 0) {  // one choice: the request goes on unless it was its last one
          if (!st.sched) return;
          st.sched->cancel(c.id, c.fork);
          std::vector<uint64_t> left;
          if (!st.sched->contains(c.id) && st.requests.erase(c.id)) left.push_back(c.id);
          report(self, 0, 0, 0, 0, std::move(left));
          return;
        }
        bool found = st.sched && st.sched->cancel(c.id);  // frees its blocks now
        st.requests.erase(c.id);
        if (st.sched) report(self, 0, 0, 0, 0, {});
        self->send(st.core->batcher, seq_gone_msg{c.id, st.index, false, found, {}});
      },
      [=](reset_atom) {
        // A new front node took over (or ours was lost): its predecessor's sequences are
        // resumed elsewhere, so drop them all, free their blocks and start over. A step in
        // flight may still return: its tokens have no sink any more.
        auto& st = self->state;
        if (!st.sched || st.warming) return;  // not up yet: its hello comes when it is
        for (auto& [id, sink] : st.requests) st.sched->cancel(id);
        st.requests.clear();
        st.admits_seen = 0;  // the new front counts its admissions from zero
        self->send(st.core->batcher, st.hello);
      },
      [=](watchdog_atom, uint64_t n) {
        auto& st = self->state;
        if (!st.in_flight || n != st.step_no) return;  // that step returned in time
        fail_step(self,
                  "step hung: no result after " + std::to_string(st.core->cfg.step_timeout_ms) +
                      " ms (step_timeout_ms); its engine thread is abandoned",
                  false, true);
      },
      [=](step_atom, step_job_ptr& job) {
        auto& st = self->state;
        st.in_flight = false;
        if (!job->st) {
          fail_step(self, "step failed: " + job->st.message, job->st.code == errc::device_error, false);
          return;
        }
        st.results.clear();
        st.sched->on_step_done(job->out, st.results);
        // The next step goes to the engine first: its tokens' fan-out, the report and their
        // messages then run while the device computes it, instead of between two steps.
        // (kick reuses the job, so what the report needs of this step is read before it.)
        const int32_t done_seqs = st.batch_seqs, done_tokens = st.batch_tokens;
        const int64_t done_us = job->step_us;
        kick(self);
        std::vector<uint64_t> left;
        for (const auto& r : st.results) {
          auto it = st.requests.find(r.id);
          if (it == st.requests.end()) continue;
          token_msg tm;
          tm.id = r.id;
          tm.fork = r.fork;
          tm.index = r.index;
          tm.token = r.token;
          tm.last = r.finished;
          tm.stop = r.stopped;
          tm.attempt = it->second.attempt;
          tm.cached_tokens = r.cached_tokens;
          if (r.n_top >= 0) {
            tm.n_top = r.n_top;
            tm.logprob_bits = std::bit_cast<uint32_t>(r.logprob);
            tm.top_ids.assign(r.top_ids.begin(), r.top_ids.begin() + r.n_top);
            for (int32_t j = 0; j < r.n_top; ++j) tm.top_bits.push_back(std::bit_cast<uint32_t>(r.top_logprobs[size_t(j)]));
          }
          if (!r.prompt_logprob.empty() || !r.prompt_top_ids.empty()) {  // once, with the first token
            for (float v : r.prompt_logprob) tm.prompt_bits.push_back(std::bit_cast<uint32_t>(v));
            const size_t K = size_t(sampling_params::max_logprobs), k = size_t(std::max(r.n_top, 0));
            for (size_t j = 0; j < r.prompt_logprob.size(); ++j)
              for (size_t i = 0; i < k; ++i) {
                tm.prompt_top_ids.push_back(r.prompt_top_ids[j * K + i]);
                tm.prompt_top_bits.push_back(std::bit_cast<uint32_t>(r.prompt_top_logprobs[j * K + i]));
              }
          }
          self->send(it->second.request, std::move(tm));
          if (r.group_done) {  // its last choice ended
            left.push_back(r.id);
            st.requests.erase(it);
          }
        }
        report(self, done_seqs, done_tokens, int32_t(st.results.size()), done_us, std::move(left));
        if (st.warming && st.sched->n_running() + st.sched->n_waiting() == 0) {
          st.warming = false;
          // Its blocks would only crowd the cache and its figures the metrics.
          st.sched->flush_prefix_cache();
          st.warm_queries = st.sched->prefix_queries();
          st.warm_hits = st.sched->prefix_hits();
          self->send(st.core->batcher, st.hello);
        }
        kick(self);  // nothing was runnable before these tokens went out: admissions may have come
      },
  };
}

}  // namespace

caf::actor spawn_worker_actor(caf::local_actor* supervisor, service_core_ptr core, int32_t index) {
  return supervisor->spawn<caf::linked>(worker_fun, std::move(core), index,
                                        caf::actor_cast<caf::actor>(supervisor));
}

}  // namespace infer
