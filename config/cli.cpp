// Command-line overrides with CLI11. Every value flag maps onto one config key and goes
// through set_service_config_value, so a flag and `--set` read values the same way and give
// the same error messages (naming the key).
#include "config/cli.hpp"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
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
    {"-m,--model", "model.model", "model directory or synthetic:NAME (also the positional MODEL; env INFERD_MODEL)",
     nullptr, true},
    {"--seed", "model.model_seed", "seed of synthetic weights", nullptr, false},
    {"--tokenizer-dir", "model.tokenizer_dir", "tokenizer folder (tokenizer.json, or vocab.json + merges.txt) or builtin:NAME", nullptr, true},
    {"--max-model-len,--ctx-size", "model.max_model_len", "context served, capped by the model's max_position_embeddings (0: the model's)", nullptr, false},
    {"--chat-template", "model.chat_template", "Jinja file replacing the model's chat template", nullptr, true},
    {"--backend", "backend.backend", "auto|cpu|cuda", nullptr, true},
    {"--dtype", "backend.dtype", "auto|bf16|fp16: the CUDA backend's weights/activations (auto: the checkpoint's torch_dtype; GPT-2 fp16)", nullptr, true},
    {"--workers", "backend.workers", "engine instances (1..64)", nullptr, false},
    {"--kv-memory-mb", "backend.kv_memory_mb", "KV cache memory per worker / device share, MiB", nullptr, false},
    {"--gpu-memory-utilization", "backend.gpu_memory_utilization",
     "CUDA: fraction of device memory for weights + KV cache, sizing the KV pool (0: --kv-memory-mb)", nullptr, false},
    {"--kv-block-size", "backend.kv_block_size", "tokens per KV block (power of two, 1..256)", nullptr, false},
    {"--max-batch-tokens", "batching.max_batch_tokens", "token budget of one engine step", nullptr, false},
    {"--max-running,--max-num-seqs", "batching.max_running", "sequences running at once per worker", nullptr, false},
    {"--prefix-affinity-tokens", "batching.prefix_affinity_tokens",
     "cache-aware routing: prefix tokens worth one extra sequence of load, 0: by load only", nullptr, false},
    {"--queue-capacity", "queue.queue_capacity", "admission queue bound", nullptr, false},
    {"--listen", "server.listen", "HOST:PORT to listen on, IPv6 as [::1]:8080", nullptr, true},
    {"--io-threads", "server.io_threads", "network I/O threads (1..64; 0: half the cores, 2..16)", nullptr, false},
    {"--actor-scheduler", "runtime.actor_scheduler", "CAF scheduler of the actors: sharing | stealing", nullptr,
     false},
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

// The name a flag is reported by: its first long name ("-m,--model" -> "--model").
std::string flag_name(const char* flag) {
  std::string f = flag;
  size_t p = f.find("--");
  f = p == std::string::npos ? f : f.substr(p);
  return f.substr(0, f.find(','));
}

bool all_digits(const std::string& s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

std::string env_or_empty(const char* name) {
  const char* v = std::getenv(name);
  return v ? std::string(v) : std::string();
}

}  // namespace

cli_outcome parse_command_line(int argc, const char* const* argv, const std::string& program) {
  // `inferd serve MODEL` as `vllm serve MODEL`: the word is the only subcommand, and optional.
  std::vector<const char*> av(argv, argv + argc);
  if (av.size() >= 2 && std::strcmp(av[1], "serve") == 0) av.erase(av.begin() + 1);

  CLI::App app{"inferd: LLM inference service (OpenAI-compatible HTTP, WebSocket)", program};
  app.option_defaults()->take_last();
  app.footer(key_list_footer());
  // Unknown flags are reported below with the closest known one.
  app.allow_extras();

  const service_config defaults;
  std::string config_path;
  app.add_option("-c,--config", config_path,
                 "TOML configuration file (see config/inferd.toml); llama-server's -c is --ctx-size here")
      ->envname("INFERD_CONFIG")
      ->type_name("FILE");
  std::string positional_model;
  app.add_option("MODEL", positional_model, "model to serve, as --model (vllm serve MODEL / inferd serve MODEL)")
      ->type_name("");

  std::vector<std::string> values(std::size(k_flags));
  std::vector<CLI::Option*> opts;
  for (size_t i = 0; i < std::size(k_flags); ++i) {
    const auto& f = k_flags[i];
    std::string help = std::string(f.help) + " [" + f.key + "]";
    auto* o = app.add_option(f.flag, values[i], help)
                  ->type_name(f.raw_string ? std::string("TEXT") : service_config_value_kind(f.key));
    std::string dflt = service_config_value_text(defaults, f.key);
    if (f.raw_string && dflt.size() >= 2 && dflt.front() == '"') dflt = dflt.substr(1, dflt.size() - 2);
    if (!dflt.empty() && std::string_view(f.key) != "server.api_key") o->default_str(dflt);
    if (f.env) o->envname(f.env);
    opts.push_back(o);
  }
  std::string host, port;
  auto* host_opt = app.add_option("--host", host, "host to listen on, with --port replacing --listen (env INFERD_HOST)")
                       ->type_name("HOST");
  auto* port_opt = app.add_option("--port", port, "port to listen on, 0: any free one (env INFERD_PORT)")
                       ->type_name("INT");
  std::vector<std::string> served_names;
  auto* served_opt =
      app.add_option("--served-model-name", served_names,
                     "names clients may give as \"model\", the first one reported (after MODEL on the command line) "
                     "[model.served_model_name]")
          ->type_name("NAME...")
          ->expected(1, CLI::detail::expected_max_vector_size)
          ->take_all();
  int64_t tensor_parallel = 1;
  app.add_option("--tensor-parallel-size,--tp", tensor_parallel,
                 "GPUs one model copy is split over; only 1 for now (--workers runs one copy per device)")
      ->type_name("INT")
      ->default_str("1");
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
    app.parse(static_cast<int>(av.size()), av.data());
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

  if (auto extra = app.remaining(); !extra.empty()) {
    const std::string& bad = extra.front();
    if (bad.size() > 1 && bad[0] == '-') {
      std::vector<std::string> names;
      for (const CLI::Option* o : app.get_options()) {
        for (const auto& l : o->get_lnames()) names.push_back("--" + l);
        for (const auto& sn : o->get_snames()) names.push_back("-" + sn);
      }
      std::string flag = bad.substr(0, bad.find('='));
      std::string near = closest_name(flag, names);
      return fail(program + ": unknown option " + flag + (near.empty() ? "" : " (did you mean " + near + "?)") +
                  "\nRun with --help for more information.");
    }
    return fail(program + ": unexpected argument \"" + bad + "\" (one MODEL at most; flags take one value each)" +
                "\nRun with --help for more information.");
  }

  if (version) {
    cli_outcome out;
    out.message = program + " " + INFER_VERSION;
    return out;
  }

  if (all_digits(config_path) && !std::filesystem::exists(config_path))
    return fail(program + ": -c " + config_path + ": -c is --config FILE here and there is no such file; " +
                "for a context of " + config_path + " tokens use --ctx-size " + config_path +
                " (or --max-model-len, as vLLM)");
  if (tensor_parallel != 1)
    return fail(program + ": --tensor-parallel-size " + std::to_string(tensor_parallel) +
                ": not yet: one model copy runs on one GPU (tensor parallelism is a planned feature); --workers N "
                "runs N copies, spread over the visible devices");

  auto loaded = load_service_config(config_path);
  if (!loaded) return fail(program + ": " + loaded.error().message);
  service_config cfg = std::move(loaded.value());

  size_t model_flag = 0;
  for (size_t i = 0; i < std::size(k_flags); ++i)
    if (std::string_view(k_flags[i].key) == "model.model") model_flag = i;
  // INFERD_MODEL is read here, not by CLI11, so that a positional MODEL beats it too.
  if (positional_model.empty() && opts[model_flag]->count() == 0) positional_model = env_or_empty("INFERD_MODEL");
  if (!positional_model.empty()) {
    if (opts[model_flag]->count() > 0 && values[model_flag] != positional_model)
      return fail(program + ": the model is given twice: MODEL \"" + positional_model + "\" and --model \"" +
                  values[model_flag] + "\"");
    cfg.model = positional_model;
  }
  for (size_t i = 0; i < std::size(k_flags); ++i) {
    if (opts[i]->count() == 0) continue;  // neither given nor in its environment variable
    if (i == model_flag && !positional_model.empty()) continue;
    status st;
    if (k_flags[i].raw_string) {
      // A quoted TOML string would be read as one; plain text never is, which is what a flag wants.
      st = set_service_config_value(cfg, k_flags[i].key, toml_quote(values[i]));
    } else {
      st = set_service_config_value(cfg, k_flags[i].key, values[i]);
    }
    if (!st) return fail(program + ": " + flag_name(k_flags[i].flag) + ": " + st.message);
  }
  if (served_opt->count() > 0) cfg.served_model_name = served_names;

  // --host / --port (vLLM, llama-server) replace the parts of server.listen they name; the
  // environment's are used only when neither they nor --listen are on the command line.
  size_t listen_flag = 0;
  for (size_t i = 0; i < std::size(k_flags); ++i)
    if (std::string_view(k_flags[i].key) == "server.listen") listen_flag = i;
  const bool listen_given = opts[listen_flag]->count() > 0;
  if (listen_given && (host_opt->count() > 0 || port_opt->count() > 0))
    return fail(program + ": --listen and --host/--port both name the address: give one of them");
  if (!listen_given) {
    if (host_opt->count() == 0) host = env_or_empty("INFERD_HOST");
    if (port_opt->count() == 0) port = env_or_empty("INFERD_PORT");
  }
  if (!host.empty() || !port.empty()) {
    auto cur = parse_listen_address(cfg.listen);
    if (!cur) return fail(program + ": " + cur.error().message);
    std::string h = host.empty() ? cur.value().host : host;
    if (h.size() >= 2 && h.front() == '[' && h.back() == ']') h = h.substr(1, h.size() - 2);
    if (!port.empty() && (!all_digits(port) || port.size() > 5 || std::stoul(port) > 65535))
      return fail(program + ": --port: must be a port number 0..65535, got \"" + port + "\"");
    std::string p = port.empty() ? std::to_string(cur.value().port) : port;
    cfg.listen = (h.find(':') != std::string::npos ? "[" + h + "]" : h) + ":" + p;
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
