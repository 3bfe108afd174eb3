// device supervisor actor: one per device (a GPU, or a CPU "device" group). Spawns that
// device's workers linked (they share the device's weights), traps their exits and
// restarts them with the configured strategy, restart intensity and back-off.
//
//   root   --spawn (linked)------------------> device supervisor g
//   device supervisor --spawn (linked)-------> worker i   (i in plan.workers[g])
//   worker --step_failed_msg-----------------> device supervisor (device_fault?) and batcher
//   worker --exit_msg (failure)--------------> device supervisor --worker_down_msg--> batcher
//          one_for_one: restart that worker after back-off (restart_policy::next_delay)
//          one_for_all, or a device fault: stop every worker of the device, restart them all
//   intensity exceeded (max_restarts in restart_window_ms) --> every worker down, quit with an
//          error: the root sees the exit and restarts (or gives up on) the whole subtree
//   device supervisor --(irestart, worker)---> itself, when the back-off has elapsed
#pragma once
#include <caf/all.hpp>

#include "actors/service-core.hpp"

namespace infer {

// Spawned linked to `root`. `group` indexes core->plan.
caf::actor spawn_device_supervisor_actor(caf::local_actor* root, service_core_ptr core, int32_t group);

}  // namespace infer
