// Command-line overrides with CLI11. Every value flag maps onto one config key and goes
// through set_service_config_value, so a flag and `--set` read values the same way and give
// the same error messages (naming the key).
#include "config/cli.hpp"

#include <cstdio>
#include <sstream>
#include <utility>

#include <CLI/CLI.hpp>

#ifndef INFER_VERSION
#define INFER_VERSION "unknown"
#endif

namespace infer {
namespace {

struct value_flag {
  const char* flag;
  const char* key;  // section.key
  const char* help;
  const char* env;  // environment variable read when the flag is absent, or nullptr
  bool raw_string;  // taken verbatim: paths and secrets must not be reinterpreted as TOML
};

const value_flag k_flags[] = {
    {"--model", "model.model", "model directory or synthetic:NAME", nullptr, true},
    {"--seed", "model.model_seed", "seed of synthetic weights", nullptr, false},
    {"--tokenizer-dir", "model.tokenizer_dir", "tokenizer folder (tokenizer.json, or vocab.json + merges.txt) or builtin:NAME", nullptr, true},
    {"--max-model-len", "model.max_model_len", "context served, capped by the model's max_position_embeddings (0: the model's)", nullptr, false},
    {"--chat-template", "model.chat_template", "Jinja file replacing the model's chat template", nullptr, true},
    {"--backend", "backend.backend", "auto|cpu|cuda", nullptr, true},
    {"--dtype", "backend.dtype", "auto|bf16|fp16: the CUDA backend's weights/activations (auto: the checkpoint's torch_dtype; GPT-2 fp16)", nullptr, true},
    {"--workers", "backend.workers", "engine instances (1..64)", nullptr, false},
    {"--kv-memory-mb", "backend.kv_memory_mb", "KV cache memory per worker / device share, MiB", nullptr, false},
    {"--kv-block-size", "backend.kv_block_size", "tokens per KV block (power of two, 1..256)", nullptr, false},
    {"--max-batch-tokens", "batching.max_batch_tokens", "token budget of one engine step", nullptr, false},
    {"--max-running", "batching.max_running", "sequences running at once per worker", nullptr, false},
    {"--prefix-affinity-tokens", "batching.prefix_affinity_tokens",
     "cache-aware routing: prefix tokens worth one extra sequence of load, 0: by load only", nullptr, false},
    {"--queue-capacity", "queue.queue_capacity", "admission queue bound", nullptr, false},
    {"--listen", "server.listen", "HOST:PORT to listen on, IPv6 as [::1]:8080", nullptr, true},
    {"--io-threads", "server.io_threads", "network I/O threads (1..64)", nullptr, false},
    {"--api-key", "server.api_key", "key clients must present, empty: no authentication", "INFERD_API_KEY", true},
    {"--tls-cert", "server.tls_cert", "PEM certificate chain (with --tls-key: https/wss)", nullptr, true},
    {"--tls-key", "server.tls_key", "PEM private key", nullptr, true},
    {"--rate-limit-rps", "server.rate_limit_rps", "generation requests per second per client IP, 0: no limit",
     nullptr, false},
    {"--rate-limit-burst", "server.rate_limit_burst", "requests a client may send at once before the rate applies",
     nullptr, false},
    {"--max-pending-bytes", "server.max_pending_bytes",
     "outgoing bytes queued for a connection before its client counts as too slow", nullptr, false},
    {"--fault-rate", "fault.fault_rate", "fault injection: probability that a step fails (0..1)", nullptr, false},
    {"--fault-seed", "fault.fault_seed", "fault injection: seed of the per-step draws", nullptr, false},
    {"--fault-kind", "fault.fault_kind", "fault injection: throw|cuda|hang|mixed", nullptr, true},
    {"--fault-poison-token", "fault.fault_poison_token", "fault injection: steps holding this token id fail",
     nullptr, false},
    {"--restart-strategy", "supervision.restart_strategy", "one_for_one|one_for_all", nullptr, true},
    {"--role", "cluster.role", "front (clients, batcher) | worker (a worker node: --listen is its CAF port)", nullptr,
     true},
    {"--log-level", "log.log_level", "trace|debug|info|warn|error|off", nullptr, true},
};

// A TOML basic string holding `text` exactly (quotes, backslashes and controls escaped).
std::string toml_quote(const std::string& text) { return toml_string_literal(text); }

cli_outcome fail(std::string msg) {
  cli_outcome out;
  out.exit_code = cli_exit_usage;
  out.message = std::move(msg);
  return out;
}

std::string key_list_footer() {
  std::string s = "Precedence: defaults < --config file < the flags above < --set (in order).\nKeys for --set:";
  size_t col = 80;
  for (const auto& k : service_config_keys()) {
    if (col + k.size() + 1 > 78) s += "\n ", col = 1;
    s += " " + k;
    col += k.size() + 1;
  }
  return s;
}

}  // namespace

cli_outcome parse_command_line(int argc, const char* const* argv, const std::string& program) {
  CLI::App app{"inferd: GPT-2 inference service", program};
  app.option_defaults()->take_last();
  app.footer(key_list_footer());

  std::string config_path;
  app.add_option("-c,--config", config_path, "TOML configuration file (see config/inferd.toml)")
      ->envname("INFERD_CONFIG")
      ->type_name("FILE");

  std::vector<std::string> values(std::size(k_flags));
  std::vector<CLI::Option*> opts;
  for (size_t i = 0; i < std::size(k_flags); ++i) {
    const auto& f = k_flags[i];
    auto* o = app.add_option(f.flag, values[i], std::string(f.help) + " [" + f.key + "]")
                  ->type_name(f.raw_string ? std::string("TEXT") : service_config_value_kind(f.key));
    if (f.env) o->envname(f.env);
    opts.push_back(o);
  }
  std::vector<std::string> worker_nodes;
  app.add_option("--worker-node", worker_nodes, "a worker node to use, HOST:PORT (repeatable) [cluster.worker_nodes]")
      ->type_name("HOST:PORT")
      ->expected(1)
      ->take_all();
  std::vector<std::string> sets;
  app.add_option("--set", sets, "override any key with a TOML value (repeatable)")
      ->type_name("SECTION.KEY=VALUE")
      ->expected(1)
      ->take_all();
  bool prefix_caching = true;
  auto* prefix_flag = app.add_flag("--prefix-caching,!--no-prefix-caching", prefix_caching,
                                   "reuse the cached KV blocks of shared prompt prefixes (default: on) "
                                   "[backend.prefix_caching]");
  bool print_config = false;
  app.add_flag("--print-config", print_config, "print the effective configuration as TOML and exit");
  bool version = false;
  app.add_flag("--version", version, "print the version and exit");

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp&) {
    cli_outcome out;
    out.message = app.help();
    return out;
  } catch (const CLI::CallForAllHelp&) {
    cli_outcome out;
    out.message = app.help("", CLI::AppFormatMode::All);
    return out;
  } catch (const CLI::ParseError& e) {
    return fail(program + ": " + e.what() + "\nRun with --help for more information.");
  }

  if (version) {
    cli_outcome out;
    out.message = program + " " + INFER_VERSION;
    return out;
  }

  auto loaded = load_service_config(config_path);
  if (!loaded) return fail(program + ": " + loaded.error().message);
  service_config cfg = std::move(loaded.value());

  for (size_t i = 0; i < std::size(k_flags); ++i) {
    if (opts[i]->count() == 0) continue;  // neither given nor in its environment variable
    status st;
    if (k_flags[i].raw_string) {
      // A quoted TOML string would be read as one; plain text never is, which is what a flag wants.
      st = set_service_config_value(cfg, k_flags[i].key, toml_quote(values[i]));
    } else {
      st = set_service_config_value(cfg, k_flags[i].key, values[i]);
    }
    if (!st) return fail(program + ": " + k_flags[i].flag + ": " + st.message);
  }
  if (!worker_nodes.empty()) cfg.worker_nodes = worker_nodes;  // the flags replace the file's list
  if (prefix_flag->count() > 0) cfg.prefix_caching = prefix_caching;
  for (const auto& s : sets) {
    size_t eq = s.find('=');
    if (eq == std::string::npos || eq == 0)
      return fail(program + ": --set " + s + ": expected SECTION.KEY=VALUE");
    status st = set_service_config_value(cfg, s.substr(0, eq), s.substr(eq + 1));
    if (!st) return fail(program + ": --set " + s + ": " + st.message);
  }

  status st = validate(cfg);
  if (!st) {
    std::string where = config_path.empty() ? "invalid configuration" : "invalid configuration (" + config_path + ")";
    return fail(program + ": " + where + ":\n" + st.message);
  }

  cli_outcome out;
  out.config = std::move(cfg);
  out.config_path = std::move(config_path);
  if (print_config) {
    out.message = format_service_config(out.config);
    return out;
  }
  out.run = true;
  return out;
}

cli_outcome parse_command_line(const std::vector<std::string>& args, const std::string& program) {
  std::vector<const char*> argv;
  argv.reserve(args.size() + 2);
  argv.push_back(program.c_str());
  for (const auto& a : args) argv.push_back(a.c_str());
  argv.push_back(nullptr);
  return parse_command_line(static_cast<int>(args.size() + 1), argv.data(), program);
}

int print_cli_outcome(const cli_outcome& cli) {
  std::FILE* f = cli.exit_code == 0 ? stdout : stderr;
  std::fputs(cli.message.c_str(), f);
  if (cli.message.empty() || cli.message.back() != '\n') std::fputc('\n', f);
  std::fflush(f);
  return cli.exit_code;
}

}  // namespace infer
