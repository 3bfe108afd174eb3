#include "actors/messages.hpp"

namespace infer {

void register_message_types(caf::actor_system_config& cfg) {
  cfg.add_message_type<wire_sampling>("infer.wire_sampling");
  cfg.add_message_type<wire_forks>("infer.wire_forks");
  cfg.add_message_type<enqueue_msg>("infer.enqueue");
  cfg.add_message_type<admission_msg>("infer.admission");
  cfg.add_message_type<dispatched_msg>("infer.dispatched");
  cfg.add_message_type<cancel_msg>("infer.cancel");
  cfg.add_message_type<admit_msg>("infer.admit");
  cfg.add_message_type<token_msg>("infer.token");
  cfg.add_message_type<worker_hello_msg>("infer.worker_hello");
  cfg.add_message_type<worker_report_msg>("infer.worker_report");
  cfg.add_message_type<seq_gone_msg>("infer.seq_gone");
  cfg.add_message_type<worker_down_msg>("infer.worker_down");
  cfg.add_message_type<seq_closed_msg>("infer.seq_closed");
  cfg.add_message_type<step_failed_msg>("infer.step_failed");
}

}  // namespace infer
