// request actor: one per request; the single place that decides its terminal event.
//
//   service ---------------------------------> request   cancel_atom
//   request --enqueue_msg / cancel_msg-------> batcher
//   batcher --admission_msg / dispatched_msg-> request
//   worker  --token_msg----------------------> request   (tokens stream straight from the worker)
//   batcher --seq_closed_msg-----------------> request   (cancel applied / worker lost / failed)
//   request --deadline_atom / closeto_atom---> request   (timers)
//   request --event--------------------------> subscriber callback
//
// It owns the prompt, the sampling parameters, the generated tokens, the deadline
// and the subscriber. It tokenizes and validates the request, detokenizes the stream
// (utf8_stream_decoder) and matches stop strings on the text (holding back a tail
// that could still become a stop string). To end a sequence early (cancel, stop,
// deadline) it asks the batcher to remove it and emits the terminal event once the
// removal is confirmed, so when a client sees `done(cancelled)` the sequence's KV
// blocks are already free. If its worker dies, it resubmits itself with the tokens
// it has, and the stream continues with the next index.
#pragma once
#include <cstdint>

#include <caf/all.hpp>

#include "actors/service-core.hpp"
#include "actors/service.hpp"

namespace infer {

caf::actor spawn_request_actor(caf::actor_system& sys, service_core_ptr core, uint64_t id, generate_request req,
                               event_callback cb);

}  // namespace infer
