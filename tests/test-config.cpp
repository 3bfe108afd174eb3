// service_config: TOML loading, validation messages, command-line overrides.
#include <doctest/doctest.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include <unistd.h>

#include <toml++/toml.h>

#include "config/cli.hpp"
#include "config/service-config.hpp"

using namespace infer;

namespace {

bool contains(const std::string& hay, const std::string& needle) { return hay.find(needle) != std::string::npos; }

// A file under the build's temp dir, removed at scope end.
struct temp_file {
  std::string path;
  explicit temp_file(const std::string& text, const std::string& name = "test-config.toml") {
    path = "/tmp/infer-" + std::to_string(::getpid()) + "-" + name;
    std::ofstream(path) << text;
  }
  ~temp_file() { std::remove(path.c_str()); }
};

service_config parse_ok(const std::string& text) {
  auto r = parse_service_config(text, "t.toml");
  INFO(text);
  REQUIRE_MESSAGE(r.has_value(), r.error().message);
  return r.value();
}

}  // namespace

TEST_CASE("defaults validate") {
  service_config c;
  status st = validate(c);
  CHECK_MESSAGE(st.is_ok(), st.message);
}

TEST_CASE("shipped config/inferd.toml loads, validates, lists every key and matches the defaults") {
  auto r = load_service_config("config/inferd.toml");
  REQUIRE_MESSAGE(r.has_value(), r.error().message);
  status st = validate(r.value());
  CHECK_MESSAGE(st.is_ok(), st.message);
  // The shipped file documents the defaults; drift between the two would mislead operators.
  CHECK(r.value() == service_config{});

  toml::table doc = toml::parse_file("config/inferd.toml");
  auto keys = service_config_keys();
  CHECK(keys.size() >= 28);
  for (const auto& k : keys) {
    INFO("key: " << k);
    CHECK(doc.at_path(k).node() != nullptr);
  }
}

TEST_CASE("values map onto the struct fields") {
  auto c = parse_ok(R"(
[model]
model = "/models/gpt2"
model_seed = 99
tokenizer_dir = "/tok"
[backend]
backend = "cpu"
workers = 3
cpu_threads = 4
devices = [0, 2]
kv_block_size = 32
kv_memory_mb = 1024
kv_blocks = 500
[batching]
max_batch_tokens = 2048
max_running = 8
prefill_chunk = 128
[queue]
queue_capacity = 10
default_timeout_ms = 0
max_tokens_default = 32
max_tokens_limit = 64
[server]
listen = "[::1]:9000"
io_threads = 4
api_key = "secret"
tls_cert = "c.pem"
tls_key = "k.pem"
max_connections = 5
max_frame_bytes = 4096
max_header_bytes = 2048
idle_timeout_ms = 1000
max_inflight_per_connection = 3
[log]
log_level = "debug"
)");
  CHECK(c.model == "/models/gpt2");
  CHECK(c.model_seed == 99);
  CHECK(c.tokenizer_dir == "/tok");
  CHECK(c.backend == "cpu");
  CHECK(c.workers == 3);
  CHECK(c.cpu_threads == 4);
  CHECK(c.devices == std::vector<int32_t>{0, 2});
  CHECK(c.kv_block_size == 32);
  CHECK(c.kv_memory_mb == 1024);
  CHECK(c.kv_blocks == 500);
  CHECK(c.max_batch_tokens == 2048);
  CHECK(c.max_running == 8);
  CHECK(c.prefill_chunk == 128);
  CHECK(c.queue_capacity == 10);
  CHECK(c.default_timeout_ms == 0);
  CHECK(c.max_tokens_default == 32);
  CHECK(c.max_tokens_limit == 64);
  CHECK(c.listen == "[::1]:9000");
  CHECK(c.io_threads == 4);
  CHECK(c.api_key == "secret");
  CHECK(c.tls_cert == "c.pem");
  CHECK(c.tls_key == "k.pem");
  CHECK(c.max_connections == 5);
  CHECK(c.max_frame_bytes == 4096);
  CHECK(c.max_header_bytes == 2048);
  CHECK(c.idle_timeout_ms == 1000);
  CHECK(c.max_inflight_per_connection == 3);
  CHECK(c.log_level == "debug");
  CHECK(validate(c).is_ok());

  // Keys left out keep their defaults; dotted keys at the top level mean the same section.
  auto partial = parse_ok("server.io_threads = 7\n");
  service_config expect;
  expect.io_threads = 7;
  CHECK(partial == expect);
}

TEST_CASE("format_service_config round-trips") {
  service_config c;
  c.model = "dir with \"quotes\" and \\ backslash";
  c.devices = {1, 3};
  c.api_key = "k\tey";
  c.max_frame_bytes = 123456789012;
  c.model_seed = 42;
  auto back = parse_service_config(format_service_config(c), "formatted");
  REQUIRE_MESSAGE(back.has_value(), back.error().message);
  CHECK(back.value() == c);
}

TEST_CASE("each invalid value is rejected with a message naming the key and the value") {
  struct bad_case {
    const char* toml;
    const char* key;
    const char* value;  // how the bad value appears in the message
  };
  const bad_case cases[] = {
      {"model.model = \"\"", "model.model", "\"\""},
      {"model.model = \"synthetic:\"", "model.model", "synthetic:"},
      {"backend.backend = \"gpu\"", "backend.backend", "gpu"},
      {"backend.workers = 0", "backend.workers", "0"},
      {"backend.workers = 65", "backend.workers", "65"},
      {"backend.cpu_threads = -1", "backend.cpu_threads", "-1"},
      {"backend.devices = [0, -1]", "backend.devices[1]", "-1"},
      {"backend.devices = [1, 1]", "backend.devices[1]", "1"},
      {"backend.kv_block_size = 0", "backend.kv_block_size", "0"},
      {"backend.kv_block_size = 24", "backend.kv_block_size", "24"},
      {"backend.kv_block_size = 512", "backend.kv_block_size", "512"},
      {"backend.kv_memory_mb = 0", "backend.kv_memory_mb", "0"},
      {"backend.kv_blocks = -5", "backend.kv_blocks", "-5"},
      {"batching.max_batch_tokens = 0", "batching.max_batch_tokens", "0"},
      {"batching.max_running = 0", "batching.max_running", "0"},
      {"batching.prefill_chunk = 0", "batching.prefill_chunk", "0"},
      {"batching.prefill_chunk = 1000", "batching.prefill_chunk", "1000"},
      {"queue.queue_capacity = 0", "queue.queue_capacity", "0"},
      {"queue.default_timeout_ms = -1", "queue.default_timeout_ms", "-1"},
      {"queue.max_tokens_default = 0", "queue.max_tokens_default", "0"},
      {"queue.max_tokens_default = 5000", "queue.max_tokens_default", "5000"},
      {"queue.max_tokens_limit = 0", "queue.max_tokens_limit", "0"},
      {"server.listen = \"localhost\"", "server.listen", "localhost"},
      {"server.listen = \"127.0.0.1:65536\"", "server.listen", "65536"},
      {"server.listen = \"127.0.0.1:80x\"", "server.listen", "80x"},
      {"server.listen = \"::1:8080\"", "server.listen", "::1:8080"},
      {"server.listen = \"[::1:8080\"", "server.listen", "[::1:8080"},
      {"server.listen = \":8080\"", "server.listen", ":8080"},
      {"server.io_threads = -1", "server.io_threads", "-1"},
      {"runtime.actor_scheduler = \"fifo\"", "runtime.actor_scheduler", "fifo"},
      {"server.io_threads = 65", "server.io_threads", "65"},
      {"server.tls_cert = \"c.pem\"", "server.tls_key", "c.pem"},
      {"server.tls_key = \"k.pem\"", "server.tls_cert", "k.pem"},
      {"server.max_connections = 0", "server.max_connections", "0"},
      {"server.max_frame_bytes = 0", "server.max_frame_bytes", "0"},
      {"server.max_header_bytes = 0", "server.max_header_bytes", "0"},
      {"server.idle_timeout_ms = -1", "server.idle_timeout_ms", "-1"},
      // issue 13.6: 0 was documented as "no timeout" but closed connections at once
      {"server.idle_timeout_ms = 0", "server.idle_timeout_ms", "0"},
      {"server.header_timeout_ms = 0", "server.header_timeout_ms", "0"},
      {"server.max_connections_per_client = -1", "server.max_connections_per_client", "-1"},
      {"cluster.max_connections = 0", "cluster.max_connections", "0"},
      {"cluster.max_message_bytes = 100", "cluster.max_message_bytes", "100"},
      {"server.max_inflight_per_connection = 0", "server.max_inflight_per_connection", "0"},
      {"server.max_pending_bytes = 100", "server.max_pending_bytes", "100"},
      {"server.rate_limit_rps = -0.5", "server.rate_limit_rps", "-0.5"},
      {"server.rate_limit_rps = nan", "server.rate_limit_rps", "nan"},
      {"server.rate_limit_burst = 0", "server.rate_limit_burst", "0"},
      {"server.rate_limit_clients = 0", "server.rate_limit_clients", "0"},
      {"log.log_level = \"verbose\"", "log.log_level", "verbose"},
  };
  for (const auto& bc : cases) {
    INFO(std::string(bc.toml));
    auto c = parse_ok(bc.toml);
    status st = validate(c);
    REQUIRE_FALSE(st.is_ok());
    CHECK(st.code == errc::invalid_argument);
    CHECK(contains(st.message, bc.key));
    CHECK(contains(st.message, bc.value));
    // Exactly one complaint: the other keys are still valid.
    CHECK(st.message.find('\n') == std::string::npos);
  }
}

TEST_CASE("several bad values are all reported") {
  auto c = parse_ok("backend.workers = 0\nlog.log_level = \"loud\"\n");
  status st = validate(c);
  REQUIRE_FALSE(st.is_ok());
  CHECK(contains(st.message, "backend.workers: must be 1..64 (0 only on a front node with worker_nodes), got 0"));
  CHECK(contains(st.message, "log.log_level"));
}

TEST_CASE("boundary values are accepted") {
  for (const char* text : {"backend.workers = 64", "backend.kv_block_size = 1", "backend.kv_block_size = 256",
                           "server.listen = \"[::1]:1\"", "server.listen = \"0.0.0.0:65535\"",
                           "server.listen = \"my-host.example:8080\"", "queue.max_tokens_default = 4096",
                           "batching.prefill_chunk = 512", "queue.default_timeout_ms = 0",
                           "server.max_pending_bytes = 4096", "server.rate_limit_rps = 0.1",
                           "server.rate_limit_burst = 1", "server.rate_limit_clients = 1"}) {
    INFO(std::string(text));
    status st = validate(parse_ok(text));
    CHECK_MESSAGE(st.is_ok(), st.message);
  }
}

TEST_CASE("parse_listen_address splits host and port") {
  auto a = parse_listen_address("[::1]:8080");
  REQUIRE(a.has_value());
  CHECK(a->host == "::1");
  CHECK(a->port == 8080);
  auto b = parse_listen_address("0.0.0.0:443");
  REQUIRE(b.has_value());
  CHECK(b->host == "0.0.0.0");
  CHECK(b->port == 443);
  CHECK_FALSE(parse_listen_address("[::1]8080").has_value());
  CHECK_FALSE(parse_listen_address("host:").has_value());
}

TEST_CASE("unknown keys are errors with a location and a suggestion") {
  auto r = parse_service_config("[server]\nio_threads = 2\nlisen = \"0.0.0.0:80\"\n", "f.toml");
  REQUIRE_FALSE(r.has_value());
  CHECK(r.error().code == errc::format_error);
  CHECK(contains(r.error().message, "f.toml:3:1: unknown key server.lisen"));
  CHECK(contains(r.error().message, "did you mean server.listen?"));

  auto sec = parse_service_config("[serve]\nlisten = \"0.0.0.0:80\"\n", "f.toml");
  REQUIRE_FALSE(sec.has_value());
  CHECK(contains(sec.error().message, "unknown section [serve]"));
  CHECK(contains(sec.error().message, "did you mean [server]?"));

  // A key in the wrong section points at the right one.
  auto moved = parse_service_config("[server]\nworkers = 2\n", "f.toml");
  REQUIRE_FALSE(moved.has_value());
  CHECK(contains(moved.error().message, "unknown key server.workers"));
  CHECK(contains(moved.error().message, "backend.workers"));

  // A key above every section.
  auto top = parse_service_config("listen = \"0.0.0.0:80\"\n", "f.toml");
  REQUIRE_FALSE(top.has_value());
  CHECK(contains(top.error().message, "unknown key listen"));
  CHECK(contains(top.error().message, "server.listen"));

  auto far = parse_service_config("[log]\ncompletely_different = 1\n", "f.toml");
  REQUIRE_FALSE(far.has_value());
  CHECK(contains(far.error().message, "unknown key log.completely_different"));
  CHECK_FALSE(contains(far.error().message, "did you mean"));
}

TEST_CASE("wrong types name the key and the expected type") {
  struct type_case {
    const char* toml;
    const char* expect;
  };
  const type_case cases[] = {
      {"[server]\nio_threads = \"2\"", "t.toml:2:14: server.io_threads: expected an integer, got a string"},
      {"[server]\nlisten = 8080", "server.listen: expected a string, got an integer"},
      {"[backend]\nworkers = 1.5", "backend.workers: expected an integer, got a floating-point number"},
      {"[backend]\ndevices = 0", "backend.devices: expected an array of integers, got an integer"},
      {"[backend]\ndevices = [0, \"1\"]", "t.toml:2:15: backend.devices[1]: expected an integer, got a string"},
      {"[backend]\nworkers = 4294967296", "backend.workers: 4294967296 does not fit a 32-bit integer"},
      {"[model]\nmodel_seed = -1", "model.model_seed: expected a non-negative integer"},
      {"[log]\nlog_level = true", "log.log_level: expected a string, got a boolean"},
      {"server = 1", "server: expected a table [server], got an integer"},
  };
  for (const auto& tc : cases) {
    INFO(std::string(tc.toml));
    auto r = parse_service_config(tc.toml, "t.toml");
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().code == errc::format_error);
    CHECK_MESSAGE(contains(r.error().message, tc.expect), r.error().message);
  }
}

TEST_CASE("syntax errors carry file:line:column") {
  auto r = parse_service_config("[server]\nio_threads = 2\nlisten = \"unterminated\n", "bad.toml");
  REQUIRE_FALSE(r.has_value());
  CHECK(r.error().code == errc::format_error);
  CHECK_MESSAGE(contains(r.error().message, "bad.toml:3:"), r.error().message);

  temp_file f("[backend]\nworkers = = 2\n", "syntax.toml");
  auto l = load_service_config(f.path);
  REQUIRE_FALSE(l.has_value());
  CHECK_MESSAGE(contains(l.error().message, f.path + ":2:"), l.error().message);
}

TEST_CASE("a missing file is an io_error naming the path") {
  auto r = load_service_config("/nonexistent/dir/inferd.toml");
  REQUIRE_FALSE(r.has_value());
  CHECK(r.error().code == errc::io_error);
  CHECK(contains(r.error().message, "/nonexistent/dir/inferd.toml"));

  auto empty = load_service_config("");
  REQUIRE(empty.has_value());
  CHECK(empty.value() == service_config{});
}

TEST_CASE("a --config that is not a regular file is an error, not an empty config (issue 13.10)") {
  auto dir = load_service_config("/tmp");
  REQUIRE_FALSE(dir.has_value());
  CHECK(dir.error().code == errc::io_error);
  CHECK(contains(dir.error().message, "/tmp"));
  CHECK(contains(dir.error().message, "a directory"));
  auto cli = parse_command_line({"--config", "/tmp"});
  CHECK_FALSE(cli.run);
  CHECK(cli.exit_code != 0);
  CHECK(contains(cli.message, "not a regular file"));
}

TEST_CASE("--help labels fractional flags NUMBER, integer ones INT (issue 13.10)") {
  auto help = parse_command_line({"--help"});
  auto line_of = [&](const std::string& flag) {
    size_t at = help.message.find(flag + " ");
    REQUIRE(at != std::string::npos);
    return help.message.substr(at, help.message.find('\n', at) - at);
  };
  CHECK(contains(line_of("--fault-rate"), "NUMBER"));
  CHECK(contains(line_of("--rate-limit-rps"), "NUMBER"));
  CHECK(contains(line_of("--workers"), "INT"));
  CHECK(service_config_value_kind("cluster.allow_insecure") == "BOOL");
  CHECK(service_config_value_kind("no.such") == "");
}

TEST_CASE("a worker node refuses a non-loopback plain CAF port unless cluster.allow_insecure (issue 13.5)") {
  auto open = parse_command_line({"--role", "worker", "--listen", "0.0.0.0:7000"});
  CHECK_FALSE(open.run);
  CHECK(contains(open.message, "loopback only"));
  CHECK(contains(open.message, "cluster.allow_insecure"));
  auto lo = parse_command_line({"--role", "worker", "--listen", "127.0.0.1:7000"});
  CHECK_MESSAGE(lo.run, lo.message);
  auto lo6 = parse_command_line({"--role", "worker", "--listen", "[::1]:7000"});
  CHECK_MESSAGE(lo6.run, lo6.message);
  auto trusted = parse_command_line({"--role", "worker", "--listen", "0.0.0.0:7000", "--set", "cluster.allow_insecure=true"});
  CHECK_MESSAGE(trusted.run, trusted.message);
  CHECK(trusted.config.cluster_allow_insecure);
  auto tls = parse_command_line({"--role", "worker", "--listen", "0.0.0.0:7000", "--set", "cluster.tls_cert=\"c\"",
                                 "--set", "cluster.tls_key=\"k\"", "--set", "cluster.tls_ca=\"a\""});
  CHECK_MESSAGE(tls.run, tls.message);
  // A front node's client port is not the CAF port: no such rule there.
  auto front = parse_command_line({"--listen", "0.0.0.0:8080"});
  CHECK_MESSAGE(front.run, front.message);
  auto bad = parse_service_config("cluster.allow_insecure = 1", "t.toml");
  REQUIRE_FALSE(bad);
  CHECK(contains(bad.error().message, "cluster.allow_insecure: expected true or false, got an integer"));
}

TEST_CASE("set_service_config_value reads TOML values and bare strings") {
  service_config c;
  CHECK(set_service_config_value(c, "backend.workers", "4").is_ok());
  CHECK(c.workers == 4);
  CHECK(set_service_config_value(c, "backend.devices", "[1, 2]").is_ok());
  CHECK(c.devices == std::vector<int32_t>{1, 2});
  CHECK(set_service_config_value(c, "server.listen", "0.0.0.0:80").is_ok());  // bare
  CHECK(c.listen == "0.0.0.0:80");
  CHECK(set_service_config_value(c, "server.api_key", "\"quoted\"").is_ok());
  CHECK(c.api_key == "quoted");
  CHECK(set_service_config_value(c, "server.api_key", "12345").is_ok());  // not a TOML string: taken as text
  CHECK(c.api_key == "12345");

  status bad = set_service_config_value(c, "backend.workers", "four");
  CHECK_FALSE(bad.is_ok());
  CHECK(contains(bad.message, "backend.workers"));
  CHECK(c.workers == 4);
  status smuggle = set_service_config_value(c, "backend.workers", "1\nkv_blocks = 3");
  CHECK_FALSE(smuggle.is_ok());
  status unknown = set_service_config_value(c, "server.lisen", "x:1");
  CHECK_FALSE(unknown.is_ok());
  CHECK(contains(unknown.message, "unknown key server.lisen"));
  CHECK(contains(unknown.message, "server.listen"));
  status bare = set_service_config_value(c, "workers", "2");
  CHECK_FALSE(bare.is_ok());
  CHECK(contains(bare.message, "did you mean backend.workers?"));
}

TEST_CASE("command line: no arguments gives the validated defaults") {
  ::unsetenv("INFERD_CONFIG");
  ::unsetenv("INFERD_API_KEY");
  auto cli = parse_command_line(std::vector<std::string>{});
  REQUIRE_MESSAGE(cli.run, cli.message);
  CHECK(cli.exit_code == 0);
  CHECK(cli.config == service_config{});
  CHECK(cli.config_path.empty());
}

TEST_CASE("command line: flags beat the file, --set beats flags") {
  temp_file f(
      "[server]\nlisten = \"127.0.0.1:9000\"\nio_threads = 3\n[backend]\nworkers = 2\n"
      "[batching]\nmax_running = 5\n");
  auto cli = parse_command_line({"--config", f.path, "--listen", "[::1]:7000", "--workers", "4", "--set",
                                 "batching.max_running=9", "--set", "backend.devices=[0, 1]", "--seed", "77",
                                 "--api-key", "\"k\"", "--log-level", "warn", "--queue-capacity", "11",
                                 "--max-batch-tokens", "1024", "--kv-memory-mb", "64", "--kv-block-size", "32",
                                 "--io-threads", "6", "--tokenizer-dir", "/tok", "--model", "synthetic:small",
                                 "--backend", "cpu", "--tls-cert", "c.pem", "--tls-key", "k.pem",
                                 "--max-running", "3", "--rate-limit-rps", "2.5", "--rate-limit-burst", "7",
                                 "--max-pending-bytes", "65536"});
  REQUIRE_MESSAGE(cli.run, cli.message);
  const auto& c = cli.config;
  CHECK(c.rate_limit_rps == 2.5);
  CHECK(c.rate_limit_burst == 7);
  CHECK(c.max_pending_bytes == 65536);
  CHECK(cli.config_path == f.path);
  CHECK(c.listen == "[::1]:7000");
  CHECK(c.workers == 4);
  CHECK(c.max_running == 9);  // --set applied after --max-running 3
  CHECK(c.devices == std::vector<int32_t>{0, 1});
  CHECK(c.model_seed == 77);
  CHECK(c.api_key == "\"k\"");  // flags take text verbatim
  CHECK(c.log_level == "warn");
  CHECK(c.queue_capacity == 11);
  CHECK(c.max_batch_tokens == 1024);
  CHECK(c.kv_memory_mb == 64);
  CHECK(c.kv_block_size == 32);
  CHECK(c.io_threads == 6);
  CHECK(c.tokenizer_dir == "/tok");
  CHECK(c.model == "synthetic:small");
  CHECK(c.backend == "cpu");
  CHECK(c.tls_cert == "c.pem");
  CHECK(c.tls_key == "k.pem");

  // Without overrides the file's values stand.
  auto plain = parse_command_line({"--config", f.path});
  REQUIRE_MESSAGE(plain.run, plain.message);
  CHECK(plain.config.listen == "127.0.0.1:9000");
  CHECK(plain.config.io_threads == 3);
  CHECK(plain.config.workers == 2);
}

TEST_CASE("command line: help, print-config and errors are told apart") {
  auto help = parse_command_line({"--help"});
  CHECK_FALSE(help.run);
  CHECK(help.exit_code == 0);
  CHECK(contains(help.message, "--listen"));
  CHECK(contains(help.message, "--set"));
  CHECK(contains(help.message, "batching.max_batch_tokens"));

  auto printed = parse_command_line({"--workers", "3", "--print-config"});
  CHECK_FALSE(printed.run);
  CHECK(printed.exit_code == 0);
  auto back = parse_service_config(printed.message, "printed");
  REQUIRE_MESSAGE(back.has_value(), back.error().message);
  CHECK(back->workers == 3);

  auto unknown_flag = parse_command_line({"--lisen", "x"});
  CHECK_FALSE(unknown_flag.run);
  CHECK(unknown_flag.exit_code == cli_exit_usage);

  auto missing = parse_command_line({"--config", "/nonexistent/inferd.toml"});
  CHECK_FALSE(missing.run);
  CHECK(missing.exit_code == cli_exit_usage);
  CHECK(contains(missing.message, "/nonexistent/inferd.toml"));

  auto bad_value = parse_command_line({"--workers", "0"});
  CHECK_FALSE(bad_value.run);
  CHECK(bad_value.exit_code == cli_exit_usage);
  CHECK(contains(bad_value.message, "backend.workers"));

  auto bad_type = parse_command_line({"--io-threads", "many"});
  CHECK_FALSE(bad_type.run);
  CHECK(contains(bad_type.message, "--io-threads"));
  CHECK(contains(bad_type.message, "server.io_threads"));

  auto bad_set = parse_command_line({"--set", "server.lisen=1.2.3.4:80"});
  CHECK_FALSE(bad_set.run);
  CHECK(contains(bad_set.message, "unknown key server.lisen"));

  auto no_eq = parse_command_line({"--set", "server.listen"});
  CHECK_FALSE(no_eq.run);
  CHECK(contains(no_eq.message, "SECTION.KEY=VALUE"));

  auto bad_listen = parse_command_line({"--listen", "nowhere"});
  CHECK_FALSE(bad_listen.run);
  CHECK(contains(bad_listen.message, "server.listen"));
}

TEST_CASE("command line: argc/argv entry point") {
  const char* argv[] = {"inferd", "--config", "config/inferd.toml", "--set", "server.listen=0.0.0.0:8081", nullptr};
  auto cli = parse_command_line(5, argv);
  REQUIRE_MESSAGE(cli.run, cli.message);
  CHECK(cli.config.listen == "0.0.0.0:8081");
  CHECK(cli.config_path == "config/inferd.toml");
}

TEST_CASE("command line: INFERD_API_KEY supplies the key, --api-key beats it") {
  ::setenv("INFERD_API_KEY", "from-env", 1);
  auto env = parse_command_line(std::vector<std::string>{});
  auto flag = parse_command_line({"--api-key", "from-flag"});
  ::unsetenv("INFERD_API_KEY");
  REQUIRE_MESSAGE(env.run, env.message);
  CHECK(env.config.api_key == "from-env");
  REQUIRE_MESSAGE(flag.run, flag.message);
  CHECK(flag.config.api_key == "from-flag");
}

TEST_CASE("[cluster]: roles, worker node addresses, TLS all-or-none, workers = 0 only with worker nodes") {
  auto front = parse_command_line({"--workers", "0", "--worker-node", "10.0.0.2:7000", "--worker-node", "[::1]:7001"});
  REQUIRE_MESSAGE(front.run, front.message);
  CHECK(front.config.workers == 0);
  CHECK(front.config.worker_nodes == std::vector<std::string>{"10.0.0.2:7000", "[::1]:7001"});

  auto from_file = parse_service_config("[cluster]\nworker_nodes = [\"a:1\", \"b:2\"]\nrole = \"front\"\n", "t.toml");
  REQUIRE(from_file);
  CHECK(from_file.value().worker_nodes == std::vector<std::string>{"a:1", "b:2"});
  // --print-config output reads back to the same list.
  auto again = parse_service_config(format_service_config(from_file.value()), "printed");
  REQUIRE(again);
  CHECK(again.value().worker_nodes == from_file.value().worker_nodes);

  auto not_strings = parse_service_config("[cluster]\nworker_nodes = [\"a:1\", 2]\n", "t.toml");
  REQUIRE_FALSE(not_strings);
  CHECK(contains(not_strings.error().message, "cluster.worker_nodes[1]: expected a string, got an integer"));

  auto alone = parse_command_line({"--workers", "0"});
  CHECK_FALSE(alone.run);
  CHECK(contains(alone.message, "backend.workers: must be 1..64 (0 only on a front node with worker_nodes), got 0"));

  auto bad = parse_command_line({"--role", "boss", "--worker-node", "nohost", "--set", "cluster.tls_cert=\"c.pem\"",
                                 "--set", "cluster.node_timeout_ms=100", "--set", "cluster.heartbeat_ms=200"});
  CHECK_FALSE(bad.run);
  CHECK(contains(bad.message, "cluster.role: must be front|worker, got \"boss\""));
  CHECK(contains(bad.message, "cluster.worker_nodes[0]: must be HOST:PORT"));
  CHECK(contains(bad.message, "cluster.tls_cert: must be set together with cluster.tls_key and cluster.tls_ca"));
  CHECK(contains(bad.message, "cluster.node_timeout_ms: must be 0 (off) or more than cluster.heartbeat_ms (200)"));

  auto worker_with_nodes = parse_command_line({"--role", "worker", "--worker-node", "a:1"});
  CHECK_FALSE(worker_with_nodes.run);
  CHECK(contains(worker_with_nodes.message, "cluster.worker_nodes: must be empty on a worker node"));
  auto port0 = parse_command_line({"--worker-node", "a:0"});
  CHECK_FALSE(port0.run);
  CHECK(contains(port0.message, "a port other than 0"));
}

TEST_CASE("command line: vllm serve and llama-server habits") {
  // vllm serve MODEL --host H --port P --served-model-name A B --max-model-len N --api-key K
  auto v = parse_command_line({"serve", "synthetic:tiny", "--host", "0.0.0.0", "--port", "8000", "--served-model-name",
                               "tiny", "alias", "--max-model-len", "64", "--api-key", "k", "--max-num-seqs", "8",
                               "--gpu-memory-utilization", "0.5", "--dtype", "bf16"});
  REQUIRE_MESSAGE(v.run, v.message);
  CHECK(v.config.model == "synthetic:tiny");
  CHECK(v.config.listen == "0.0.0.0:8000");
  CHECK(v.config.served_model_name == std::vector<std::string>{"tiny", "alias"});
  CHECK(v.config.max_model_len == 64);
  CHECK(v.config.api_key == "k");
  CHECK(v.config.max_running == 8);
  CHECK(v.config.gpu_memory_utilization == doctest::Approx(0.5));
  CHECK(v.config.dtype == "bf16");
  // llama-server -m MODEL --host H --port P --ctx-size N
  auto l = parse_command_line({"-m", "synthetic:tiny", "--host", "::1", "--port", "0", "--ctx-size", "128"});
  REQUIRE_MESSAGE(l.run, l.message);
  CHECK(l.config.listen == "[::1]:0");
  CHECK(l.config.max_model_len == 128);
  // --port alone keeps the host of server.listen.
  auto p = parse_command_line({"--port", "9001"});
  REQUIRE_MESSAGE(p.run, p.message);
  CHECK(p.config.listen == "127.0.0.1:9001");
  auto both = parse_command_line({"--listen", "127.0.0.1:1", "--port", "2"});
  CHECK_FALSE(both.run);
  CHECK(contains(both.message, "--listen"));
  auto bad_port = parse_command_line({"--port", "70000"});
  CHECK_FALSE(bad_port.run);
  CHECK(contains(bad_port.message, "--port"));
  auto twice = parse_command_line({"synthetic:tiny", "--model", "synthetic:small"});
  CHECK_FALSE(twice.run);
  CHECK(contains(twice.message, "twice"));
}

TEST_CASE("command line: -c NUMBER hints at --ctx-size, unknown flags get a suggestion, tp > 1 is refused") {
  auto c = parse_command_line({"-c", "512"});
  CHECK_FALSE(c.run);
  CHECK(c.exit_code == cli_exit_usage);
  CHECK(contains(c.message, "--ctx-size 512"));
  auto typo = parse_command_line({"--lisen", "127.0.0.1:1"});
  CHECK_FALSE(typo.run);
  CHECK(contains(typo.message, "unknown option --lisen (did you mean --listen?)"));
  auto typo_eq = parse_command_line({"--max-model-lenn=5"});
  CHECK(contains(typo_eq.message, "did you mean --max-model-len?"));
  auto far = parse_command_line({"--zzzzzzzzzzzz"});
  CHECK_FALSE(far.run);
  CHECK(contains(far.message, "unknown option --zzzzzzzzzzzz"));
  CHECK_FALSE(contains(far.message, "did you mean"));
  auto tp = parse_command_line({"--tensor-parallel-size", "2"});
  CHECK_FALSE(tp.run);
  CHECK(contains(tp.message, "not yet"));
  auto tp1 = parse_command_line({"--tensor-parallel-size", "1"});
  CHECK_MESSAGE(tp1.run, tp1.message);
  auto help = parse_command_line({"--help"});
  CHECK(contains(help.message, "--fault-rate NUMBER"));
  CHECK(contains(help.message, "--workers INT=1"));
  CHECK(contains(help.message, "--ctx-size"));
  CHECK(contains(help.message, "INFERD_MODEL"));
}

TEST_CASE("command line: INFERD_MODEL, INFERD_HOST and INFERD_PORT; flags beat them") {
  ::setenv("INFERD_MODEL", "synthetic:small", 1);
  ::setenv("INFERD_HOST", "0.0.0.0", 1);
  ::setenv("INFERD_PORT", "8123", 1);
  auto env = parse_command_line(std::vector<std::string>{});
  auto flags = parse_command_line({"synthetic:tiny", "--port", "9"});
  auto listen = parse_command_line({"--listen", "127.0.0.1:7"});
  ::unsetenv("INFERD_MODEL");
  ::unsetenv("INFERD_HOST");
  ::unsetenv("INFERD_PORT");
  REQUIRE_MESSAGE(env.run, env.message);
  CHECK(env.config.model == "synthetic:small");
  CHECK(env.config.listen == "0.0.0.0:8123");
  REQUIRE_MESSAGE(flags.run, flags.message);
  CHECK(flags.config.model == "synthetic:tiny");
  CHECK(flags.config.listen == "0.0.0.0:9");
  REQUIRE_MESSAGE(listen.run, listen.message);
  CHECK(listen.config.listen == "127.0.0.1:7");
}

TEST_CASE("prefix caching: a boolean key, a flag pair, and the routing trade-off") {
  CHECK(service_config{}.prefix_caching);  // on by default (bench/RESULTS.md)
  auto off = parse_service_config("[backend]\nprefix_caching = false\n[batching]\nprefix_affinity_tokens = 0\n", "t");
  REQUIRE_MESSAGE(off.has_value(), off.error().message);
  CHECK_FALSE(off->prefix_caching);
  CHECK(off->prefix_affinity_tokens == 0);
  auto wrong = parse_service_config("[backend]\nprefix_caching = 1\n", "t");
  REQUIRE_FALSE(wrong.has_value());
  CHECK(contains(wrong.error().message, "backend.prefix_caching: expected true or false, got an integer"));

  auto flag = parse_command_line({"--no-prefix-caching"});
  REQUIRE_MESSAGE(flag.run, flag.message);
  CHECK_FALSE(flag.config.prefix_caching);
  auto last = parse_command_line({"--no-prefix-caching", "--prefix-caching"});
  REQUIRE(last.run);
  CHECK(last.config.prefix_caching);
  auto set = parse_command_line({"--set", "backend.prefix_caching=false"});
  REQUIRE(set.run);
  CHECK_FALSE(set.config.prefix_caching);
  auto printed = parse_command_line({"--no-prefix-caching", "--print-config"});
  auto back = parse_service_config(printed.message, "printed");
  REQUIRE(back.has_value());
  CHECK_FALSE(back->prefix_caching);

  service_config c;
  c.prefix_affinity_tokens = -1;
  status st = validate(c);
  CHECK(contains(st.message, "batching.prefix_affinity_tokens"));
}
