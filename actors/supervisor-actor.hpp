// supervisor actor: spawns the workers (linked, trapping their exits), replaces one
// that fails, and counts restarts in metrics (infer_worker_restarts_total).
//
//   supervisor --spawn (linked)------> worker i   (i = 0 .. cfg.workers-1)
//   worker i   --exit_msg (failure)--> supervisor --worker_down_msg--> batcher, then respawn i
//   service    --exit (shutdown)-----> supervisor, which quits; its linked workers and
//                                      their engines go with it
//
// Restart intensity: at most max_restarts of one worker within restart_window; beyond
// that the worker stays down (the supervision issue adds escalation, back-off and breakers).
#pragma once
#include <caf/all.hpp>

#include "actors/service-core.hpp"

namespace infer {

caf::actor spawn_supervisor_actor(caf::actor_system& sys, service_core_ptr core);

}  // namespace infer
