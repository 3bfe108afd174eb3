// worker actor: one engine instance, its KV block pool and its scheduler.
//
//   batcher --admit_msg / cancel_msg--------> worker
//   worker  --worker_hello_msg--------------> batcher (once its engine is up)
//   worker  --worker_report_msg-------------> batcher (after every step and every cancel)
//   worker  --seq_gone_msg------------------> batcher (cancel applied / admission refused)
//   worker  --token_msg---------------------> request actors (each sampled token)
//   worker <-> engine (istep, step_job_ptr)   one step in flight at a time
//
// Per-step scheduling lives here, next to the engine: the scheduler picks the next
// batch (decodes, prefill chunks, admissions, preemption) as soon as the previous
// step returns, so new sequences join at the next step and finished or cancelled
// ones leave at once. The worker itself never blocks: the step runs on the engine
// actor's thread, and admissions and cancels are handled while it runs. A failed
// step ends the worker with an error; the supervisor replaces it and the batcher
// has its sequences resumed. (Not detached: CAF 0.17 hangs at shutdown while a handle to a
// detached actor is held, and the batcher and node agents hold the worker's.)
#pragma once
#include <caf/all.hpp>

#include "actors/service-core.hpp"

namespace infer {

// Spawned linked to `supervisor`.
caf::actor spawn_worker_actor(caf::local_actor* supervisor, service_core_ptr core, int32_t index);

}  // namespace infer
