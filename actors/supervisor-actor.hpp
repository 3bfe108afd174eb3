// supervisor actor: the root of the supervision tree (see supervision/README.md).
//
//   root --spawn (linked)----------> device supervisor g   (g = one per device of core->plan)
//   device supervisor g --exit_msg (escalation: its restart intensity was exceeded)--> root
//        root restarts that subtree after a back-off (restart_policy per device), other
//        devices keep serving; beyond the root's own intensity the device is given up:
//        root --worker_down_msg(gave_up)--> batcher for each of its workers
//   service --exit (shutdown)------> root, which quits; device supervisors, workers and their
//                                    engines go with it (links)
//   root --(irestart, group)-------> itself, when the back-off has elapsed
//
// The batcher is spawned beside the root by the service (it owns the queue and the routes,
// which a restart would lose); the request actors are not supervised: each ends itself.
#pragma once
#include <caf/all.hpp>

#include "actors/service-core.hpp"

namespace infer {

caf::actor spawn_supervisor_actor(caf::actor_system& sys, service_core_ptr core);

}  // namespace infer
