// service_config: every setting of the service, from a TOML file (config/inferd.toml)
// plus command-line overrides. Invalid values are rejected at start-up with a
// message naming the key (e.g. "batching.max_batch_tokens: must be >= 1, got 0").
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "base/result.hpp"

namespace infer {

struct service_config {
  // [model]
  std::string model = "synthetic:tiny";  // a directory or synthetic:NAME
  uint64_t model_seed = 1234;            // synthetic weights
  std::string tokenizer_dir;             // empty: beside the model, or the built-in one
  int32_t max_model_len = 0;             // context served: min(max_position_embeddings, this); 0: the model's
  std::string chat_template;             // a Jinja file replacing the model's chat template(s)
  // Names clients use in "model" (the first is the one reported); empty: model.model as given.
  std::vector<std::string> served_model_name;

  // [backend]
  std::string backend = "auto";  // auto | cpu | cuda
  std::string dtype = "auto";    // CUDA: auto (checkpoint's torch_dtype; GPT-2 fp16) | bf16 | fp16
  int32_t workers = 1;           // engine instances
  int32_t cpu_threads = 0;       // BLAS threads per CPU worker, 0: library default
  std::vector<int32_t> devices;  // CUDA devices, empty: all visible
  int32_t kv_block_size = 16;
  int64_t kv_memory_mb = 256;    // per worker (CPU) / per device share (CUDA)
  int32_t kv_blocks = 0;         // 0: sized from kv_memory_mb
  // CUDA: fraction of the device's memory for weights + KV cache of its workers (vLLM's
  // --gpu-memory-utilization); 0: size the KV cache from kv_memory_mb. No effect on CPU workers.
  double gpu_memory_utilization = 0.0;
  bool prefix_caching = true;    // keep finished sequences' full KV blocks and reuse shared prefixes

  // [batching]
  int32_t max_batch_tokens = 512;  // token budget of one step (prefill chunks + decodes)
  int32_t max_running = 64;        // sequences running at once per worker
  int32_t prefill_chunk = 256;     // longest prefill slice of one sequence in one step
  // Cache-aware routing (actors/README.md): a worker holding a longer cached prefix of a new
  // request wins over the least loaded one when it holds at least this many more prefix
  // tokens per extra sequence it already holds. 0: route by load only.
  int32_t prefix_affinity_tokens = 64;

  // [queue]
  int32_t queue_capacity = 256;    // admission queue bound; beyond: overloaded
  int64_t default_timeout_ms = 60000;
  int32_t max_tokens_default = 16;
  int32_t max_tokens_limit = 4096;

  // [server]
  std::string listen = "127.0.0.1:8080";
  int32_t io_threads = 0;  // 0: from the core count (resolved_io_threads)
  std::string api_key;             // empty: no authentication
  bool metrics_require_key = false;  // /metrics needs the key too (default open, as vLLM: scrapers)
  std::string tls_cert, tls_key;   // both set: https / wss
  int32_t max_connections = 1024;
  int64_t max_frame_bytes = 1 << 20;
  int64_t max_header_bytes = 16 << 10;
  int64_t idle_timeout_ms = 300000;  // a connection quiet this long is closed (keep-alive wait, WebSocket)
  // The whole request head (request line, headers) must arrive within this of the first byte
  // (of the accept, for a connection's first request): slow-header clients are closed.
  int64_t header_timeout_ms = 10000;
  // Connections open at once from one IP address; 0: no cap (behind a proxy every client
  // shares the proxy's address).
  int32_t max_connections_per_client = 0;
  int32_t max_inflight_per_connection = 256;
  // Outgoing bytes queued for one connection beyond which its client counts as too slow:
  // its requests are cancelled and the connection closed (WebSocket: close 1008).
  int64_t max_pending_bytes = 4 << 20;
  // Per-client (IP address) generation requests per second, 0: no limit; bucket depth;
  // clients tracked at most (the least recently seen is forgotten beyond).
  double rate_limit_rps = 0.0;
  int32_t rate_limit_burst = 20;
  int32_t rate_limit_clients = 10000;

  // [supervision]
  std::string restart_strategy = "one_for_one";  // one_for_one | one_for_all (device-level faults always restart the device)
  int32_t max_restarts = 5;          // restarts of one supervisor's children within restart_window_ms, then escalate
  int64_t restart_window_ms = 10000;
  int64_t backoff_initial_ms = 50;   // first restart delay; doubles per recent failure, jittered
  int64_t backoff_max_ms = 5000;
  int32_t breaker_failures = 3;      // consecutive step failures / timeouts that open a worker's breaker
  int64_t breaker_open_ms = 2000;    // how long an open breaker stays open before one probe
  int64_t step_timeout_ms = 30000;   // a step running longer marks its worker hung (watchdog)
  int32_t quarantine_after = 2;      // solo failures after which a suspect request is quarantined
  int64_t drain_timeout_ms = 10000;  // graceful shutdown: in-flight requests may finish this long

  // [degradation] (see supervision/README.md): how the service keeps serving, worse but
  // never silently, when its engines fail or the queue stays long.
  int32_t fallback_cpu_workers = 0;     // CPU workers (same weights, host memory) used only while no primary worker can serve
  int64_t fallback_after_ms = 1000;     // primaries down (restarting) this long count as unavailable; open breakers / given-up devices at once
  int64_t fallback_kv_memory_mb = 256;  // KV cache of each fallback worker, MiB
  double overload_queue_fraction = 0.8; // overload: queue depth >= this fraction of queue_capacity ...
  int64_t overload_after_ms = 1000;     // ... for at least this long
  int32_t overload_max_tokens = 0;      // then max_tokens of newly admitted requests is capped to this; 0: never

  // [fault] injection, for tests and demos (off by default)
  double fault_rate = 0.0;           // probability that a step fails
  uint64_t fault_seed = 1;
  std::string fault_kind = "throw";  // throw | cuda | hang | mixed
  int32_t fault_poison_token = -1;   // any step containing this token id fails; -1: none
  int64_t fault_hang_ms = 600000;    // a hung step returns after this long (or at shutdown)

  // [cluster] several machines through CAF's networking (docs/deployment.md)
  std::string role = "front";             // front: clients + batcher (+ local workers); worker: a worker node
  std::vector<std::string> worker_nodes;  // front: "HOST:PORT" of each worker node
  int64_t heartbeat_ms = 500;             // CAF middleman heartbeat between nodes (0: off)
  int64_t node_timeout_ms = 3000;         // a node silent this long is lost (0: only on disconnect)
  int64_t reconnect_initial_ms = 200;     // front: first reconnect delay; doubles, jittered
  int64_t reconnect_max_ms = 5000;
  std::string cluster_tls_cert;           // all three set: node links over TLS, both sides verified
  std::string cluster_tls_key;
  std::string cluster_tls_ca;
  // A worker node's CAF port authenticates nobody without TLS: it listens on a non-loopback
  // address without cluster.tls_* only when this is true (a network you trust).
  bool cluster_allow_insecure = false;
  // Worker node: connections its CAF port relays at once (a front node needs one), and the
  // largest message a peer may announce there (plain TCP; CAF would allocate it unchecked).
  int32_t cluster_max_connections = 8;
  int64_t cluster_max_message_bytes = 64 << 20;

  // [log]
  std::string log_level = "info";  // trace | debug | info | warn | error | off

  // [runtime]
  // CAF's scheduler for the actors: "stealing" (CAF's default: a queue per thread, idle
  // threads poll and then sleep) or "sharing" (one locked queue, an idle thread woken per
  // job: lower latency at few messages, contention at many; bench/RESULTS.md, issue 18).
  std::string actor_scheduler = "stealing";

  bool operator==(const service_config&) const = default;
};

// The names a request's "model" may give, the reported one first: model.served_model_name,
// else model.model exactly as given (vLLM's rule: the path as typed).
inline std::vector<std::string> served_model_names(const service_config& cfg) {
  return cfg.served_model_name.empty() ? std::vector<std::string>{cfg.model} : cfg.served_model_name;
}

// Loads a TOML file over the defaults; an empty path gives the defaults.
// Does not validate (command-line overrides may still fix a value): call validate() last.
// Errors: io_error naming the path; format_error as "PATH:LINE:COLUMN: message" for syntax
// errors, unknown keys ("unknown key server.lisen (did you mean server.listen?)") and wrong
// types ("server.io_threads: expected an integer, got a string").
result<service_config> load_service_config(const std::string& toml_path);
// Parses TOML text (for tests); `origin` names the source in error messages.
result<service_config> parse_service_config(const std::string& toml_text, const std::string& origin);
// Checks every value; the error (invalid_argument) names the key and the bad value, one line
// per bad key.
status validate(const service_config& cfg);

// Sets one key ("section.key", e.g. "batching.max_batch_tokens") from text read with the TOML
// value rules ("4", "[0, 1]", "\"text\""). A string key also takes bare text, so
// server.listen=0.0.0.0:80 needs no quotes. Does not validate.
status set_service_config_value(service_config& cfg, const std::string& key, const std::string& value_text);
// Every key as "section.key", in the order of the struct (help text, tests).
std::vector<std::string> service_config_keys();

// server.io_threads as used: the configured count, or for 0 half the cores (2..16): a
// streamed token costs a write on its connection, and 256 streams at GPU speed are
// several hundred thousand writes a second.
int32_t resolved_io_threads(const service_config& cfg);
// How --help labels a key's value: "NUMBER" (a fraction is fine), "INT", "BOOL", "TEXT" or
// "LIST"; "" for an unknown key.
std::string service_config_value_kind(std::string_view key);
// The settings as TOML text that parse_service_config reads back to an equal service_config.
std::string format_service_config(const service_config& cfg);

// The value of `key` in `cfg` as TOML text ("" for an unknown key): --help shows defaults.
std::string service_config_value_text(const service_config& cfg, std::string_view key);
// The candidate close enough to `bad` to be a plausible typo of it, or "".
std::string closest_name(std::string_view bad, const std::vector<std::string>& candidates);

// `text` as a TOML basic string ("..." with escapes), read back as the same bytes when they are
// valid UTF-8; an invalid sequence becomes U+FFFD (TOML strings are Unicode).
std::string toml_string_literal(std::string_view text);

// server.listen split up: "HOST:PORT", IPv6 as "[::1]:8080" (host given without brackets).
struct listen_address {
  std::string host;
  uint16_t port = 0;
};
result<listen_address> parse_listen_address(const std::string& text);

}  // namespace infer
