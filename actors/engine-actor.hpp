// engine actor: runs one backend's steps on a thread of its own (a detached actor),
// so a step, which blocks for milliseconds (CPU) or a stream synchronize (CUDA),
// never stalls the CAF scheduler. It is linked to its worker and dies with it.
//
//   worker --iinit------------------> engine  builds the backend (factory may block)
//   engine --(ok, msg, n_blocks, block_size, n_ctx, backend name)--> worker (the response)
//   worker --(istep, step_job_ptr)--> engine  runs job->batch into job->out
//   engine --(istep, step_job_ptr)--> worker  job->st, job->step_us filled in
//
// step_job is local: the batch and output buffers are reused across steps and
// passed by pointer; the worker does not touch them while a step is in flight.
#pragma once
#include <caf/all.hpp>

#include "actors/service-core.hpp"

namespace infer {

caf::actor spawn_engine_actor(caf::local_actor* worker, service_core_ptr core, int32_t index);

}  // namespace infer
