// batcher actor: the bounded admission queue and the router in front of the workers.
//
//   request    --enqueue_msg-------> batcher --admission_msg (accepted | overloaded)--> request
//   request    --cancel_msg--------> batcher --cancel_msg--> worker (if dispatched)
//   batcher    --admit_msg---------> worker  (while the worker reports room)
//   batcher    --dispatched_msg----> request
//   worker     --worker_hello_msg--> batcher
//   worker     --worker_report_msg-> batcher (after each step: capacity, finished ids, step figures)
//   worker     --seq_gone_msg------> batcher --seq_closed_msg--> request
//   supervisor --worker_down_msg---> batcher --seq_closed_msg(lost)--> request of each of its sequences
//
// Three FIFO levels (high, normal, low); a new request beyond queue_capacity gets
// `overloaded` at once. A sequence is admitted to the worker with the most free KV
// blocks among those whose held sequences (running + waiting + in transit) stay under
// max_running and whose free blocks cover its prompt; the worker schedules it from the
// next step on. Per-step scheduling (chunked prefill, preemption, KV bookkeeping)
// happens on the worker's side, so only admission, routing, tokens and control cross
// machines when workers are remote.
#pragma once
#include <caf/all.hpp>

#include "actors/service-core.hpp"

namespace infer {

caf::actor spawn_batcher_actor(caf::actor_system& sys, service_core_ptr core);

}  // namespace infer
