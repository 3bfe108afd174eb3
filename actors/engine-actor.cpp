#include "actors/engine-actor.hpp"

#include <chrono>
#include <exception>

#include "actors/messages.hpp"

namespace infer {

namespace {

struct engine_state {
  static inline const char* name = "infer.engine";
  std::unique_ptr<backend> be;
};

using engine_actor = caf::stateful_actor<engine_state>;

caf::behavior engine_fun(engine_actor* self, service_core_ptr core, int32_t index) {
  core->engine_started();
  self->attach_functor([core] { core->engine_stopped(); });
  return {
      [=](init_atom) -> std::tuple<bool, std::string, int32_t, int32_t, int32_t, std::string> {
        const backend_factory& make = core->plan.is_fallback(index) && core->make_fallback_backend
                                          ? core->make_fallback_backend
                                          : core->make_backend;
        auto r = make ? make(index)
                      : result<std::unique_ptr<backend>>(make_status(errc::internal, "no backend factory"));
        if (!r) return {false, r.error().message, 0, 0, 0, ""};
        self->state.be = std::move(r.value());
        auto kv = self->state.be->kv();
        return {true, "", kv.n_blocks, kv.block_size, self->state.be->config().n_ctx, self->state.be->name()};
      },
      [=](step_atom, step_job_ptr job) {
        auto t0 = std::chrono::steady_clock::now();
        if (!self->state.be) {
          job->st = make_status(errc::internal, "engine not initialized");
        } else {
          // A throwing backend must fail the step, not the thread: the worker decides.
          try {
            job->st = self->state.be->step(job->batch, job->out, logits_mode::none);
          } catch (const std::exception& e) {
            job->st = make_status(errc::internal, std::string("the step threw: ") + e.what());
          } catch (...) {
            job->st = make_status(errc::internal, "the step threw");
          }
        }
        job->step_us =
            std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - t0).count();
        self->send(caf::actor_cast<caf::actor>(self->current_sender()), step_atom::value, std::move(job));
      },
  };
}

}  // namespace

caf::actor spawn_engine_actor(caf::local_actor* worker, service_core_ptr core, int32_t index) {
  return worker->spawn<caf::detached + caf::linked>(engine_fun, std::move(core), index);
}

}  // namespace infer
