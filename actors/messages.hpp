// messages: the typed protocol between the actors (see actors/README.md for who
// sends what to whom).
//
// Messages that cross nodes once workers run elsewhere (batcher <-> worker,
// worker -> request) hold only integers, byte strings and actor handles: CAF 0.17
// serializes floats wrongly (NaN, -0, denormals, and an infinity hangs the
// serializer), so sampling parameters travel as IEEE-754 bit patterns
// (wire_sampling) and timings as integer microseconds. Every message type has an
// inspect() overload and is registered by register_message_types(), which both
// nodes must call before creating their actor_system.
#pragma once
#include <algorithm>
#include <bit>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <caf/all.hpp>

#include "engine/backend.hpp"
#include "base/sampling-params.hpp"

namespace infer {

// --- atoms (CAF 0.17: at most 10 characters) ---
using step_atom = caf::atom_constant<caf::atom("istep")>;       // worker -> engine, engine -> worker
using init_atom = caf::atom_constant<caf::atom("iinit")>;       // worker -> engine
using cancel_atom = caf::atom_constant<caf::atom("icancel")>;   // service -> request
using deadline_atom = caf::atom_constant<caf::atom("ideadline")>;  // request -> itself
using closeto_atom = caf::atom_constant<caf::atom("icloseto")>;    // request -> itself: ack overdue
using watchdog_atom = caf::atom_constant<caf::atom("iwatchdog")>;  // worker -> itself: step deadline
using restart_atom = caf::atom_constant<caf::atom("irestart")>;    // supervisor -> itself: back-off over
using dispatch_atom = caf::atom_constant<caf::atom("idispatch")>;  // batcher -> itself: a breaker half-opens
using join_atom = caf::atom_constant<caf::atom("ijoin")>;          // front's node link -> worker node's agent
using reset_atom = caf::atom_constant<caf::atom("ireset")>;        // agent -> worker: drop every sequence
using relink_atom = caf::atom_constant<caf::atom("irelink")>;      // node link -> itself: (re)connect now
using grammar_atom = caf::atom_constant<caf::atom("igrammar")>;    // compile helper -> request: constraint compiled

// The version of every message below that crosses nodes. A node link and a node agent
// compare it in their handshake (which uses only built-in types, so it always decodes)
// and refuse each other on a mismatch: CAF 0.17 would otherwise deliver unknown or
// changed types as empty messages. Bump it whenever a crossing message changes.
// 2: stop ids on admit, stop flag on token; 3: cached_tokens on token; 4: penalties, min_p,
// logit_bias, logprobs; 5: n choices (forks on admit and enqueue, fork on token and cancel),
// prompt logprobs (flag on admit and enqueue, the prompt's on the first token);
// 6: constraint (grammar key) on enqueue/admit, complete flag on token.
constexpr uint32_t wire_protocol_version = 6;

// n > 1: the choices still to run of a resumed request, each with its tokens so far, flat
// (fork_ids[i] has fork_lens[i] tokens, back to back in fork_tokens). Empty: all n fresh.
struct wire_forks {
  std::vector<int32_t> ids, lens, tokens;
  bool empty() const { return ids.empty(); }
  void add(int32_t fork, const std::vector<int32_t>& generated) {
    ids.push_back(fork);
    lens.push_back(int32_t(generated.size()));
    tokens.insert(tokens.end(), generated.begin(), generated.end());
  }
  // Tokens of the i-th entry (nothing if the lengths do not add up).
  std::vector<int32_t> generated(size_t i) const {
    size_t at = 0;
    for (size_t j = 0; j < i && j < lens.size(); ++j) at += size_t(std::max(lens[j], 0));
    if (i >= lens.size() || at + size_t(std::max(lens[i], 0)) > tokens.size()) return {};
    return {tokens.begin() + std::ptrdiff_t(at), tokens.begin() + std::ptrdiff_t(at + size_t(lens[i]))};
  }
};
template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, wire_forks& x) {
  return f(caf::meta::type_name("infer.wire_forks"), x.ids, x.lens, x.tokens);
}

// sampling_params (and the logit_bias) without floats on the wire.
struct wire_sampling {
  uint32_t temperature_bits = 0;
  int32_t top_k = 0;
  uint32_t top_p_bits = std::bit_cast<uint32_t>(1.0f);
  uint64_t seed = 0;
  uint32_t min_p_bits = 0;
  uint32_t presence_bits = 0;
  uint32_t frequency_bits = 0;
  uint32_t repetition_bits = std::bit_cast<uint32_t>(1.0f);
  int32_t min_tokens = 0;
  int32_t logprobs = -1;
  std::vector<int32_t> bias_ids;     // logit_bias keys
  std::vector<uint32_t> bias_bits;   // and values, same length

  static wire_sampling from(const sampling_params& p,
                            const std::vector<std::pair<int32_t, float>>& bias = {}) {
    wire_sampling w;
    w.temperature_bits = std::bit_cast<uint32_t>(p.temperature);
    w.top_k = p.top_k;
    w.top_p_bits = std::bit_cast<uint32_t>(p.top_p);
    w.seed = p.seed;
    w.min_p_bits = std::bit_cast<uint32_t>(p.min_p);
    w.presence_bits = std::bit_cast<uint32_t>(p.presence_penalty);
    w.frequency_bits = std::bit_cast<uint32_t>(p.frequency_penalty);
    w.repetition_bits = std::bit_cast<uint32_t>(p.repetition_penalty);
    w.min_tokens = p.min_tokens;
    w.logprobs = p.logprobs;
    for (const auto& [id, b] : bias) {
      w.bias_ids.push_back(id);
      w.bias_bits.push_back(std::bit_cast<uint32_t>(b));
    }
    return w;
  }
  sampling_params to() const {
    sampling_params p;
    p.temperature = std::bit_cast<float>(temperature_bits);
    p.top_k = top_k;
    p.top_p = std::bit_cast<float>(top_p_bits);
    p.seed = seed;
    p.min_p = std::bit_cast<float>(min_p_bits);
    p.presence_penalty = std::bit_cast<float>(presence_bits);
    p.frequency_penalty = std::bit_cast<float>(frequency_bits);
    p.repetition_penalty = std::bit_cast<float>(repetition_bits);
    p.min_tokens = min_tokens;
    p.logprobs = logprobs;
    return p;
  }
  std::vector<std::pair<int32_t, float>> bias() const {
    std::vector<std::pair<int32_t, float>> b;
    for (size_t i = 0; i < bias_ids.size() && i < bias_bits.size(); ++i)
      b.emplace_back(bias_ids[i], std::bit_cast<float>(bias_bits[i]));
    return b;
  }
};
template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, wire_sampling& x) {
  return f(caf::meta::type_name("infer.wire_sampling"), x.temperature_bits, x.top_k, x.top_p_bits, x.seed,
           x.min_p_bits, x.presence_bits, x.frequency_bits, x.repetition_bits, x.min_tokens, x.logprobs,
           x.bias_ids, x.bias_bits);
}

// request -> batcher (local). A resumed sequence (its worker died) carries the
// tokens already streamed and jumps the queue: it was accepted long ago.
struct enqueue_msg {
  uint64_t id = 0;
  caf::actor request;  // receives admission_msg, dispatched_msg, token_msg, seq_closed_msg
  uint8_t prio = 1;    // infer::priority
  std::vector<int32_t> prompt;
  std::vector<int32_t> generated;
  int32_t max_tokens = 0;
  wire_sampling sampling;
  std::vector<int32_t> stop_ids;  // EOS ids (unless ignore_eos) and the request's stop_token_ids
  bool resume = false;
  int64_t timeout_ms = 0;  // time left until the request's deadline (0: none): admission checks it
  uint32_t attempt = 0;    // bumped by every (re)submission: tokens of an older attempt are dropped
  int32_t n = 1;           // choices (forks of one prompt); > 1: `generated` is unused
  wire_forks forks;
  bool prompt_logprobs = false;  // the prompt's logprobs come with the first token
  // Tokens its KV will hold at first (all its forks): what admission reserves.
  int32_t kv_tokens() const {
    return int32_t(prompt.size() + generated.size() + forks.tokens.size()) + std::max(n, 1);
  }
  std::string grammar;     // constrained decoding: grammar::grammar_spec::key(); empty: none
};
template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, enqueue_msg& x) {
  return f(caf::meta::type_name("infer.enqueue"), x.id, x.request, x.prio, x.prompt, x.generated, x.max_tokens,
           x.sampling, x.stop_ids, x.resume, x.timeout_ms, x.attempt, x.n, x.forks, x.prompt_logprobs, x.grammar);
}

// batcher -> request: accepted into the queue, or rejected (code: infer::error_code).
struct admission_msg {
  uint64_t id = 0;
  bool ok = false;
  uint8_t code = 0;
  int64_t retry_after_ms = 0;
  std::string message;
};
template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, admission_msg& x) {
  return f(caf::meta::type_name("infer.admission"), x.id, x.ok, x.code, x.retry_after_ms, x.message);
}

// batcher -> request: handed to a worker (ends the queue time). fallback: a CPU fallback
// worker (degraded service).
struct dispatched_msg {
  uint64_t id = 0;
  int32_t worker = 0;
  bool fallback = false;
};
template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, dispatched_msg& x) {
  return f(caf::meta::type_name("infer.dispatched"), x.id, x.worker, x.fallback);
}

// request -> batcher -> worker: stop this sequence and free its blocks. fork >= 0: only that
// choice of an n > 1 request (a stop string ended it); the others go on, and nobody confirms.
struct cancel_msg {
  uint64_t id = 0;
  int32_t fork = -1;
};
template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, cancel_msg& x) {
  return f(caf::meta::type_name("infer.cancel"), x.id, x.fork);
}

// batcher -> worker (crosses nodes).
struct admit_msg {
  uint64_t id = 0;
  caf::actor request;  // where the worker streams token_msg
  std::vector<int32_t> prompt;
  std::vector<int32_t> generated;
  int32_t max_tokens = 0;
  wire_sampling sampling;
  std::vector<int32_t> stop_ids;  // the worker's scheduler ends the sequence on one of these
  uint32_t attempt = 0;  // echoed in every token_msg
  int32_t n = 1;         // as enqueue_msg
  wire_forks forks;
  bool prompt_logprobs = false;
  std::string grammar;   // grammar_spec::key(): the worker looks it up in its node's cache (compiles on a miss)
};
template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, admit_msg& x) {
  return f(caf::meta::type_name("infer.admit"), x.id, x.request, x.prompt, x.generated, x.max_tokens, x.sampling,
           x.stop_ids, x.attempt, x.n, x.forks, x.prompt_logprobs, x.grammar);
}

// worker -> request (crosses nodes): one sampled token. `last`: the worker ended
// the sequence (max_tokens, context limit or a stop id) and freed its blocks; `stop`:
// it ended because this token is a stop id (finish reason stop, its text not shown). `attempt`: that of
// the admission; a worker cut off from the front (a hung node taken back) may still
// send tokens of a sequence that was resumed elsewhere: the request drops them.
// n_top >= 0 (logprobs asked): logprob_bits is the token's logprob, top_* the n_top best.
// fork: the choice it belongs to (n > 1); `last` ends that choice only.
struct token_msg {
  uint64_t id = 0;
  int32_t index = 0;
  int32_t token = -1;
  bool last = false;
  bool stop = false;
  uint32_t attempt = 0;
  int32_t cached_tokens = -1;  // on the first token of an admission: prompt tokens found in the prefix cache
  int32_t n_top = -1;
  uint32_t logprob_bits = 0;
  std::vector<int32_t> top_ids;
  std::vector<uint32_t> top_bits;
  int32_t fork = 0;
  // On the first token of a request that asked for prompt logprobs: prompt token j + 1's
  // logprob (bits), its n_top best ids and their logprobs at [j * n_top, + n_top).
  std::vector<uint32_t> prompt_bits;
  std::vector<int32_t> prompt_top_ids;
  std::vector<uint32_t> prompt_top_bits;
  bool complete = false;  // `last` because the constraint's output is complete (finish reason stop, text shown)
};
template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, token_msg& x) {
  return f(caf::meta::type_name("infer.token"), x.id, x.fork, x.index, x.token, x.last, x.stop, x.attempt,
           x.cached_tokens, x.n_top, x.logprob_bits, x.top_ids, x.top_bits, x.prompt_bits, x.prompt_top_ids,
           x.prompt_top_bits, x.complete);
}

// worker -> batcher (crosses nodes): announces a worker that is ready to run.
struct worker_hello_msg {
  int32_t worker = 0;
  caf::actor handle;
  int32_t total_blocks = 0;
  int32_t block_size = 0;
  int32_t n_ctx = 0;
  int32_t max_running = 0;
  std::string backend;  // "cpu", "cuda", ...
};
template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, worker_hello_msg& x) {
  return f(caf::meta::type_name("infer.worker_hello"), x.worker, x.handle, x.total_blocks, x.block_size, x.n_ctx,
           x.max_running, x.backend);
}

// worker -> batcher (crosses nodes), after every step and every cancel: capacity for
// admission, the sequences that left, and the step's figures for metrics.
struct worker_report_msg {
  int32_t worker = 0;
  uint64_t admits_seen = 0;  // admit_msg received so far (the batcher counts those in transit)
  int32_t n_running = 0;
  int32_t n_waiting = 0;
  int32_t free_blocks = 0;     // minus the blocks its waiting sequences' prompts will take
  int32_t total_blocks = 0;
  int32_t used_blocks = 0;
  int32_t batch_seqs = 0;      // 0: no step (a cancel report)
  int32_t batch_tokens = 0;
  int32_t n_sampled = 0;
  int64_t step_us = 0;
  uint64_t preemptions = 0;
  // Prefix cache, cumulative since the worker started (tokens), and blocks holding a cached prefix now.
  uint64_t prefix_queries = 0;
  uint64_t prefix_hits = 0;
  int32_t cached_blocks = 0;
  std::vector<uint64_t> left;  // finished sequences
};
template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, worker_report_msg& x) {
  return f(caf::meta::type_name("infer.worker_report"), x.worker, x.admits_seen, x.n_running, x.n_waiting,
           x.free_blocks, x.total_blocks, x.used_blocks, x.batch_seqs, x.batch_tokens, x.n_sampled, x.step_us,
           x.preemptions, x.prefix_queries, x.prefix_hits, x.cached_blocks, x.left);
}

// worker -> batcher (crosses nodes): a cancel was applied (found: it was still there),
// or an admission was refused by the worker's scheduler (message says why).
struct seq_gone_msg {
  uint64_t id = 0;
  int32_t worker = 0;
  bool rejected = false;
  bool found = false;
  std::string message;
};
template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, seq_gone_msg& x) {
  return f(caf::meta::type_name("infer.seq_gone"), x.id, x.worker, x.rejected, x.found, x.message);
}

// supervisor -> batcher: worker `worker` is gone (a restarted one says hello again).
// gave_up: its supervisor will not restart it (intensity limit exceeded at the root).
struct worker_down_msg {
  int32_t worker = 0;
  std::string reason;
  bool gave_up = false;
};
template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, worker_down_msg& x) {
  return f(caf::meta::type_name("infer.worker_down"), x.worker, x.reason, x.gave_up);
}

// worker -> batcher and -> its device supervisor (crosses nodes), just before the worker
// quits: which sequences were in the step that failed (they become suspects) and why.
// device_fault: a device-level error (sticky CUDA error): the device's workers restart.
// timed_out: the watchdog fired (the engine thread is abandoned, its backend never reused).
struct step_failed_msg {
  int32_t worker = 0;
  std::vector<uint64_t> ids;
  std::string reason;
  bool device_fault = false;
  bool timed_out = false;
};
template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, step_failed_msg& x) {
  return f(caf::meta::type_name("infer.step_failed"), x.worker, x.ids, x.reason, x.device_fault, x.timed_out);
}

// batcher -> request: the sequence is no longer anywhere.
enum class closed_why : uint8_t {
  cancelled = 0,  // the cancel it asked for is done: its KV blocks are free
  lost = 1,       // its worker died: resubmit with the tokens so far
  failed = 2,     // failed for good (message): error(internal)
  rejected = 3,   // can never run, e.g. needs more KV blocks than a worker has: error(invalid_request)
};
struct seq_closed_msg {
  uint64_t id = 0;
  uint8_t why = 0;  // closed_why
  std::string message;
};
template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, seq_closed_msg& x) {
  return f(caf::meta::type_name("infer.seq_closed"), x.id, x.why, x.message);
}

// worker <-> engine (local only, never serialized): one step's buffers, reused.
struct step_job {
  step_batch batch;
  step_output out;
  status st;
  int64_t step_us = 0;
};
using step_job_ptr = std::shared_ptr<step_job>;

// Registers every message type above that may cross nodes. Call on the
// actor_system_config of every node before constructing the actor_system.
void register_message_types(caf::actor_system_config& cfg);

}  // namespace infer

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(infer::step_job_ptr)
