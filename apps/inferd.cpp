// inferd: the inference server. Binds the listen address first (so /healthz and
// /readyz answer while the model loads), then starts the service inside a CAF actor
// system and attaches it to the server; SIGINT / SIGTERM shut down in order:
// service first (every request gets its terminal event), then the network.
//
//   inferd [serve] [MODEL] [--config config/inferd.toml] [--listen HOST:PORT | --host H --port P]
//          [--model SPEC] [--backend cpu]   (vllm serve / llama-server flags: README)
//          [--port-file PATH]   (writes the bound port, for --listen HOST:0)
//          [--worker-node HOST:PORT]...   (front node: use these worker nodes too, or only them
//                                          with --workers 0)
//   inferd --role worker --listen HOST:PORT [...]   a worker node: loads the model, runs its
//          workers and waits for a front node; --listen is its CAF port (no HTTP here)
#include <caf/all.hpp>
#include <caf/io/all.hpp>
#include <caf/openssl/all.hpp>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <fstream>
#include <pthread.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include "actors/messages.hpp"
#include "actors/service.hpp"
#include "actors/worker-node.hpp"
#include "config/cli.hpp"
#include "config/service-config.hpp"
#include "net/server.hpp"
#include "tokenizer/tokenizer.hpp"

namespace {

bool write_port_file(const std::string& path, uint16_t port) {
  // Written whole, then renamed: a reader never sees a half-written number.
  std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp);
    if (!(f << port << "\n")) return false;
  }
  return std::rename(tmp.c_str(), path.c_str()) == 0;
}

// CAF's networking for multi-node: the middleman (and OpenSSL's) with heartbeats, so that a
// node that stops answering (hung, cut off) is noticed within cluster.node_timeout_ms.
void configure_cluster(caf::actor_system_config& caf_cfg, const infer::service_config& cfg) {
  caf_cfg.set("scheduler.policy", caf::atom_from_string(cfg.actor_scheduler));  // runtime.actor_scheduler
  if (cfg.role != "worker" && cfg.worker_nodes.empty()) return;
  caf_cfg.load<caf::io::middleman>();
  if (cfg.heartbeat_ms > 0)
    caf_cfg.set("middleman.heartbeat-interval", caf::timespan{std::chrono::milliseconds(cfg.heartbeat_ms)});
  if (cfg.node_timeout_ms > 0)
    caf_cfg.set("middleman.connection-timeout", caf::timespan{std::chrono::milliseconds(cfg.node_timeout_ms)});
  if (!cfg.cluster_tls_cert.empty()) {
    caf_cfg.load<caf::openssl::manager>();
    caf_cfg.openssl_certificate = cfg.cluster_tls_cert;
    caf_cfg.openssl_key = cfg.cluster_tls_key;
    caf_cfg.openssl_cafile = cfg.cluster_tls_ca;
  }
}

// --role worker: no client-facing server; the node agent is published at server.listen.
int run_worker_node(const infer::service_config& cfg, sigset_t& sigs, const std::string& port_file) {
  caf::actor_system_config caf_cfg;
  infer::register_message_types(caf_cfg);
  configure_cluster(caf_cfg, cfg);
  int rc = 0;
  {
    caf::actor_system sys{caf_cfg};
    spdlog::info("worker node: loading model {} (backend {}, {} workers)", cfg.model, cfg.backend, cfg.workers);
    auto node = infer::worker_node::start(sys, cfg);
    if (!node) {
      spdlog::error("worker node: {}", node.error().message);
      rc = 1;
    } else if (!port_file.empty() && !write_port_file(port_file, (*node)->port())) {
      spdlog::error("--port-file: cannot write {}", port_file);
      rc = 1;
    } else {
      spdlog::info("worker node: listening on {} (CAF{}, protocol version {})", (*node)->port(),
                   cfg.cluster_tls_cert.empty() ? "" : " over TLS", infer::wire_protocol_version);
      int sig = 0;
      sigwait(&sigs, &sig);
      spdlog::info("signal {}: stopping the worker node", sig);
    }
    if (node) (*node)->shutdown();
  }
  spdlog::info("bye");
  return rc;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args;
  std::string port_file;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--port-file" && i + 1 < argc) port_file = argv[++i];
    else if (a.rfind("--port-file=", 0) == 0) port_file = a.substr(12);
    else args.push_back(std::move(a));
  }
  auto cli = infer::parse_command_line(args, "inferd");
  if (!cli.run) {
    if (cli.exit_code == 0 && cli.message.find("--help") != std::string::npos)
      cli.message += "\n  --port-file PATH            write the bound port to PATH (with --listen HOST:0)";
    return infer::print_cli_outcome(cli);
  }
  infer::service_config cfg = cli.config;
  cfg.io_threads = infer::resolved_io_threads(cfg);  // 0: from the core count

  spdlog::set_default_logger(spdlog::stderr_color_mt("inferd"));
  spdlog::set_level(spdlog::level::from_str(cfg.log_level));
  spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%e %l %v");

  // Every thread started from here on inherits the mask: only sigwait sees the signals.
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);
  std::signal(SIGPIPE, SIG_IGN);

  if (cfg.role == "worker") return run_worker_node(cfg, sigs, port_file);

  auto srv = infer::net::server::start(cfg);
  if (!srv) {
    spdlog::error("{}", srv.error().message);
    return 1;
  }
  if (!port_file.empty() && !write_port_file(port_file, (*srv)->port())) {
    spdlog::error("--port-file: cannot write {}", port_file);
    return 1;
  }

  caf::actor_system_config caf_cfg;
  infer::register_message_types(caf_cfg);
  configure_cluster(caf_cfg, cfg);
  int rc = 0;
  {
    caf::actor_system sys{caf_cfg};
    for (const auto& n : cfg.worker_nodes) spdlog::info("worker node {}: connecting", n);
    spdlog::info("loading model {} (backend {}, {} workers)", cfg.model, cfg.backend, cfg.workers);
    auto svc = infer::service::start(sys, cfg);
    if (!svc) {
      spdlog::error("service: {}", svc.error().message);
      (*srv)->stop();
      rc = 1;
    } else {
      (*srv)->attach(**svc);
      const auto& tok = (*svc)->tok();
      spdlog::info("tokenizer: {}", tok.describe());
      if (!tok.info().generation.empty())
        spdlog::info("model's generation defaults (generation_config.json): {}", tok.info().generation.describe());
      std::string names;
      for (const auto& n : infer::served_model_names(cfg)) names += (names.empty() ? "" : ", ") + n;
      spdlog::info("ready: model {} served as {} n_ctx {}", cfg.model, names, (*svc)->n_ctx());
      int sig = 0;
      sigwait(&sigs, &sig);
      spdlog::info("signal {}: draining for up to {} ms", sig, cfg.drain_timeout_ms);
      // Graceful: no new requests, those in flight finish (or are cancelled at the
      // drain timeout), each with its terminal event.
      int64_t cancelled = (*svc)->shutdown(std::chrono::milliseconds(cfg.drain_timeout_ms));
      spdlog::info("drained ({} cancelled at the timeout)", cancelled);
      (*srv)->stop();
      svc->reset();
    }
  }
  spdlog::info("bye");
  return rc;
}
