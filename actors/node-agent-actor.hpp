// node agent actor: the published face of a worker node (`inferd --role worker`). It
// stands where the batcher stands for the node's own workers (core->batcher is the agent),
// and relays their control messages to the front node that joined last.
//
//   front's node link --(ijoin, version, model_id, link)----------> agent
//        agent --(true, "", n_workers) | (false, why, n_workers)--> link
//        a version or model mismatch is refused with a log line on both sides
//   agent --(ireset)--> every worker: drop every sequence, say hello again
//   worker / device supervisor --worker_hello_msg, worker_report_msg, seq_gone_msg,
//        step_failed_msg, worker_down_msg (local worker indices)--> agent --> link
//   batcher --admit_msg / cancel_msg--> worker        (direct, across the network)
//   worker  --token_msg--> request actor             (direct, across the network)
//   agent monitors the link: when the front is lost (down_msg, heartbeat timeout) it resets
//   every worker, so the front's sequences stop and free their KV blocks at once.
//
// One front at a time: another front is refused while the one joined is alive (its link
// still connected); the same front rejoining (it declared us lost) resets the workers.
#pragma once
#include <caf/all.hpp>

#include "actors/service-core.hpp"

namespace infer {

caf::actor spawn_node_agent_actor(caf::actor_system& sys, service_core_ptr core);

}  // namespace infer
