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
  std::unique_ptr<scheduler> sched;
  step_job_ptr job = std::make_shared<step_job>();
  bool in_flight = false;
  int32_t batch_seqs = 0, batch_tokens = 0;
  uint64_t admits_seen = 0;
  std::unordered_map<uint64_t, caf::actor> requests;  // where each sequence's tokens go
  std::vector<seq_result> results;
};

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
  self->send(st.engine, step_atom::value, st.job);
}

caf::behavior worker_fun(worker_actor* self, service_core_ptr core, int32_t index) {
  auto& st = self->state;
  st.core = std::move(core);
  st.index = index;
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
            st.sched = std::make_unique<scheduler>(sc, kv_geometry{block_size, n_blocks});
            worker_hello_msg h;
            h.worker = st.index;
            h.handle = caf::actor_cast<caf::actor>(self);
            h.total_blocks = n_blocks;
            h.block_size = block_size;
            h.n_ctx = n_ctx;
            h.max_running = cfg.max_running;
            h.backend = name;
            self->send(st.core->batcher, std::move(h));
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
        status ok = st.sched ? st.sched->add(std::move(s)) : make_status(errc::internal, "worker not ready");
        if (!ok) {
          report(self, 0, 0, 0, 0, {});
          self->send(st.core->batcher, seq_gone_msg{m.id, st.index, true, false, ok.message});
          return;
        }
        st.requests[m.id] = std::move(m.request);
        kick(self);
      },
      [=](const cancel_msg& c) {
        auto& st = self->state;
        bool found = st.sched && st.sched->cancel(c.id);  // frees its blocks now
        st.requests.erase(c.id);
        if (st.sched) report(self, 0, 0, 0, 0, {});
        self->send(st.core->batcher, seq_gone_msg{c.id, st.index, false, found, {}});
      },
      [=](step_atom, step_job_ptr& job) {
        auto& st = self->state;
        st.in_flight = false;
        if (!job->st) {
          st.sched->on_step_failed();
          self->quit(caf::make_error(caf::sec::runtime_error,
                                     "worker " + std::to_string(st.index) + ": step failed: " + job->st.message));
          return;
        }
        st.results.clear();
        st.sched->on_step_done(job->out, st.results);
        std::vector<uint64_t> left;
        for (const auto& r : st.results) {
          auto it = st.requests.find(r.id);
          if (it == st.requests.end()) continue;
          self->send(it->second, token_msg{r.id, r.index, r.token, r.finished});
          if (r.finished) {
            left.push_back(r.id);
            st.requests.erase(it);
          }
        }
        report(self, st.batch_seqs, st.batch_tokens, int32_t(st.results.size()), job->step_us, std::move(left));
        kick(self);
      },
  };
}

}  // namespace

caf::actor spawn_worker_actor(caf::local_actor* supervisor, service_core_ptr core, int32_t index) {
  return supervisor->spawn<caf::linked>(worker_fun, std::move(core), index);
}

}  // namespace infer
