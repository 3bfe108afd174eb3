// node link actor: the front node's end of one worker node (`--worker-node HOST:PORT`).
// It connects through CAF's middleman (or the OpenSSL one), joins the node's agent, and
// makes the node's workers look like local ones to the batcher: it gives each remote
// worker a front-wide worker index (kept across reconnects) and relays the node's control
// messages under that index. Admissions, cancels and tokens do not pass through it: they
// go straight between the batcher / request actors and the remote workers.
//
//   link --(irelink)--> itself: connect_atom to the middleman actor (asynchronous)
//   link --(ijoin, version, model_id, link)--> agent --(ok, why, n_workers)--> link
//        refused (version or model mismatch): a log line, node state "refused", retry later
//   agent --worker_hello_msg / worker_report_msg / seq_gone_msg / step_failed_msg /
//        worker_down_msg (node-local index)--> link --(front index, sent as the worker)--> batcher
//   agent down (node died, or silent past middleman.connection-timeout: heartbeats)
//        --> link --worker_down_msg (each of its workers)--> batcher: their sequences
//            resume elsewhere; the node is "down" (no route: its circuit is open), and the
//            link reconnects with exponential back-off and jitter; on rejoin the agent
//            resets its workers (nothing half-done is reused) and they say hello again.
#pragma once
#include <cstdint>
#include <string>

#include <caf/all.hpp>

#include "actors/service-core.hpp"

namespace infer {

caf::actor spawn_node_link_actor(caf::actor_system& sys, service_core_ptr core, std::string host, uint16_t port,
                                 bool tls);

}  // namespace infer
