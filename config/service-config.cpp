// service_config from TOML. One table (`k_keys`) describes every key: its section, name, type
// and field. The file reader, --set overrides, the key list and the formatter all walk it, so a
// new field is one line here plus a line in config/inferd.toml (a test checks the two agree).
#include "config/service-config.hpp"
#include "base/escape.hpp"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <sstream>
#include <string_view>
#include <type_traits>
#include <variant>

#include <sys/stat.h>

#include <thread>
#include <toml++/toml.h>

namespace infer {
namespace {

using str_field = std::string service_config::*;
using i32_field = int32_t service_config::*;
using i64_field = int64_t service_config::*;
using u64_field = uint64_t service_config::*;
using arr_field = std::vector<int32_t> service_config::*;
using f64_field = double service_config::*;
using strs_field = std::vector<std::string> service_config::*;
using bool_field = bool service_config::*;
using field_ptr = std::variant<str_field, i32_field, i64_field, u64_field, arr_field, f64_field, strs_field, bool_field>;

struct key_def {
  const char* section;
  const char* name;
  field_ptr field;
};

const key_def k_keys[] = {
    {"model", "model", &service_config::model},
    {"model", "model_seed", &service_config::model_seed},
    {"model", "tokenizer_dir", &service_config::tokenizer_dir},
    {"model", "max_model_len", &service_config::max_model_len},
    {"model", "chat_template", &service_config::chat_template},
    {"model", "served_model_name", &service_config::served_model_name},

    {"backend", "backend", &service_config::backend},
    {"backend", "dtype", &service_config::dtype},
    {"backend", "workers", &service_config::workers},
    {"backend", "cpu_threads", &service_config::cpu_threads},
    {"backend", "devices", &service_config::devices},
    {"backend", "kv_block_size", &service_config::kv_block_size},
    {"backend", "kv_memory_mb", &service_config::kv_memory_mb},
    {"backend", "kv_blocks", &service_config::kv_blocks},
    {"backend", "gpu_memory_utilization", &service_config::gpu_memory_utilization},
    {"backend", "prefix_caching", &service_config::prefix_caching},

    {"batching", "max_batch_tokens", &service_config::max_batch_tokens},
    {"batching", "max_running", &service_config::max_running},
    {"batching", "prefill_chunk", &service_config::prefill_chunk},
    {"batching", "prefix_affinity_tokens", &service_config::prefix_affinity_tokens},

    {"queue", "queue_capacity", &service_config::queue_capacity},
    {"queue", "default_timeout_ms", &service_config::default_timeout_ms},
    {"queue", "max_tokens_default", &service_config::max_tokens_default},
    {"queue", "max_tokens_limit", &service_config::max_tokens_limit},

    {"server", "listen", &service_config::listen},
    {"server", "io_threads", &service_config::io_threads},
    {"server", "api_key", &service_config::api_key},
    {"server", "metrics_require_key", &service_config::metrics_require_key},
    {"server", "tls_cert", &service_config::tls_cert},
    {"server", "tls_key", &service_config::tls_key},
    {"server", "max_connections", &service_config::max_connections},
    {"server", "max_frame_bytes", &service_config::max_frame_bytes},
    {"server", "max_header_bytes", &service_config::max_header_bytes},
    {"server", "idle_timeout_ms", &service_config::idle_timeout_ms},
    {"server", "header_timeout_ms", &service_config::header_timeout_ms},
    {"server", "max_connections_per_client", &service_config::max_connections_per_client},
    {"server", "max_inflight_per_connection", &service_config::max_inflight_per_connection},
    {"server", "max_pending_bytes", &service_config::max_pending_bytes},
    {"server", "rate_limit_rps", &service_config::rate_limit_rps},
    {"server", "rate_limit_burst", &service_config::rate_limit_burst},
    {"server", "rate_limit_clients", &service_config::rate_limit_clients},

    {"supervision", "restart_strategy", &service_config::restart_strategy},
    {"supervision", "max_restarts", &service_config::max_restarts},
    {"supervision", "restart_window_ms", &service_config::restart_window_ms},
    {"supervision", "backoff_initial_ms", &service_config::backoff_initial_ms},
    {"supervision", "backoff_max_ms", &service_config::backoff_max_ms},
    {"supervision", "breaker_failures", &service_config::breaker_failures},
    {"supervision", "breaker_open_ms", &service_config::breaker_open_ms},
    {"supervision", "step_timeout_ms", &service_config::step_timeout_ms},
    {"supervision", "quarantine_after", &service_config::quarantine_after},
    {"supervision", "drain_timeout_ms", &service_config::drain_timeout_ms},

    {"degradation", "fallback_cpu_workers", &service_config::fallback_cpu_workers},
    {"degradation", "fallback_after_ms", &service_config::fallback_after_ms},
    {"degradation", "fallback_kv_memory_mb", &service_config::fallback_kv_memory_mb},
    {"degradation", "overload_queue_fraction", &service_config::overload_queue_fraction},
    {"degradation", "overload_after_ms", &service_config::overload_after_ms},
    {"degradation", "overload_max_tokens", &service_config::overload_max_tokens},

    {"fault", "fault_rate", &service_config::fault_rate},
    {"fault", "fault_seed", &service_config::fault_seed},
    {"fault", "fault_kind", &service_config::fault_kind},
    {"fault", "fault_poison_token", &service_config::fault_poison_token},
    {"fault", "fault_hang_ms", &service_config::fault_hang_ms},

    {"cluster", "role", &service_config::role},
    {"cluster", "worker_nodes", &service_config::worker_nodes},
    {"cluster", "heartbeat_ms", &service_config::heartbeat_ms},
    {"cluster", "node_timeout_ms", &service_config::node_timeout_ms},
    {"cluster", "reconnect_initial_ms", &service_config::reconnect_initial_ms},
    {"cluster", "reconnect_max_ms", &service_config::reconnect_max_ms},
    {"cluster", "tls_cert", &service_config::cluster_tls_cert},
    {"cluster", "tls_key", &service_config::cluster_tls_key},
    {"cluster", "tls_ca", &service_config::cluster_tls_ca},
    {"cluster", "allow_insecure", &service_config::cluster_allow_insecure},
    {"cluster", "max_connections", &service_config::cluster_max_connections},
    {"cluster", "max_message_bytes", &service_config::cluster_max_message_bytes},

    {"log", "log_level", &service_config::log_level},

    {"runtime", "actor_scheduler", &service_config::actor_scheduler},
};

const char* const k_sections[] = {"model",       "backend",     "batching", "queue",   "server",
                                  "supervision", "degradation", "fault",    "cluster", "log",
                                  "runtime"};

std::string full_name(const key_def& k) { return std::string(k.section) + "." + k.name; }

const key_def* find_key(std::string_view section, std::string_view name) {
  for (const auto& k : k_keys)
    if (section == k.section && name == k.name) return &k;
  return nullptr;
}

bool is_section(std::string_view s) {
  return std::find(std::begin(k_sections), std::end(k_sections), s) != std::end(k_sections);
}

size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (size_t j = 1; j <= b.size(); ++j)
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1)});
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

// The candidate close enough to `bad` to be a plausible typo of it, or "".
std::string closest(std::string_view bad, const std::vector<std::string>& candidates) {
  const std::string* best = nullptr;
  size_t best_d = std::numeric_limits<size_t>::max();
  for (const auto& c : candidates) {
    size_t d = edit_distance(bad, c);
    if (d < best_d) best_d = d, best = &c;
  }
  size_t allowed = std::max<size_t>(2, bad.size() / 3);
  return best && best_d <= allowed ? *best : std::string();
}

std::string did_you_mean(const std::string& s) { return s.empty() ? s : " (did you mean " + s + "?)"; }

std::string suggestion(std::string_view bad, const std::vector<std::string>& candidates) {
  return did_you_mean(closest(bad, candidates));
}

std::vector<std::string> section_candidates() {
  return {std::begin(k_sections), std::end(k_sections)};
}

std::vector<std::string> key_candidates(std::string_view section) {
  std::vector<std::string> out;
  for (const auto& k : k_keys)
    if (section.empty() || section == k.section) out.push_back(full_name(k));
  return out;
}

const char* type_phrase(toml::node_type t) {
  switch (t) {
    case toml::node_type::table: return "a table";
    case toml::node_type::array: return "an array";
    case toml::node_type::string: return "a string";
    case toml::node_type::integer: return "an integer";
    case toml::node_type::floating_point: return "a floating-point number";
    case toml::node_type::boolean: return "a boolean";
    case toml::node_type::date: return "a date";
    case toml::node_type::time: return "a time";
    case toml::node_type::date_time: return "a date-time";
    default: return "nothing";
  }
}

std::string where(const std::string& origin, const toml::source_region& src) {
  std::string o = origin.empty() ? "<config>" : origin;
  if (src.begin.line == 0) return o + ": ";
  return o + ":" + std::to_string(src.begin.line) + ":" + std::to_string(src.begin.column) + ": ";
}

status format_err(std::string msg) { return make_status(errc::format_error, std::move(msg)); }

template <class Int>
status take_integer(const toml::node& node, const std::string& name, Int& out) {
  const auto* v = node.as_integer();
  if (!v) return format_err(name + ": expected an integer, got " + type_phrase(node.type()));
  int64_t x = v->get();
  if constexpr (std::is_unsigned_v<Int>) {
    if (x < 0) return format_err(name + ": expected a non-negative integer, got " + std::to_string(x));
  } else {
    if (x < std::numeric_limits<Int>::min() || x > std::numeric_limits<Int>::max())
      return format_err(name + ": " + std::to_string(x) + " does not fit a " +
                        std::to_string(sizeof(Int) * 8) + "-bit integer");
  }
  out = static_cast<Int>(x);
  return status::ok();
}

// Stores `node` into the field of `k`; the message names the key and, given an origin, starts
// with the position of the offending value (an array element rather than the array).
status assign(service_config& cfg, const key_def& k, const toml::node& node, const std::string* origin) {
  auto locate = [&](status st, const toml::node& at) {
    if (!st && origin) st.message = where(*origin, at.source()) + st.message;
    return st;
  };
  const std::string name = full_name(k);
  return std::visit(
      [&](auto field) -> status {
        using F = decltype(field);
        if constexpr (std::is_same_v<F, str_field>) {
          const auto* s = node.as_string();
          if (!s) return locate(format_err(name + ": expected a string, got " + type_phrase(node.type())), node);
          cfg.*field = s->get();
          return status::ok();
        } else if constexpr (std::is_same_v<F, arr_field>) {
          const auto* a = node.as_array();
          if (!a)
            return locate(format_err(name + ": expected an array of integers, got " + type_phrase(node.type())), node);
          std::vector<int32_t> vals;
          for (size_t i = 0; i < a->size(); ++i) {
            int32_t x = 0;
            status st = take_integer((*a)[i], name + "[" + std::to_string(i) + "]", x);
            if (!st) return locate(std::move(st), (*a)[i]);
            vals.push_back(x);
          }
          cfg.*field = std::move(vals);
          return status::ok();
        } else if constexpr (std::is_same_v<F, strs_field>) {
          const auto* a = node.as_array();
          if (!a)
            return locate(format_err(name + ": expected an array of strings, got " + type_phrase(node.type())), node);
          std::vector<std::string> vals;
          for (size_t i = 0; i < a->size(); ++i) {
            const auto* e = (*a)[i].as_string();
            if (!e)
              return locate(format_err(name + "[" + std::to_string(i) + "]: expected a string, got " +
                                       type_phrase((*a)[i].type())),
                            (*a)[i]);
            vals.push_back(e->get());
          }
          cfg.*field = std::move(vals);
          return status::ok();
        } else if constexpr (std::is_same_v<F, bool_field>) {
          const auto* b = node.as_boolean();
          if (!b) return locate(format_err(name + ": expected true or false, got " + type_phrase(node.type())), node);
          cfg.*field = b->get();
          return status::ok();
        } else if constexpr (std::is_same_v<F, f64_field>) {
          // An integer is a number too: fault_rate = 0 means 0.0.
          if (const auto* d = node.as_floating_point()) {
            cfg.*field = d->get();
          } else if (const auto* i = node.as_integer()) {
            cfg.*field = double(i->get());
          } else {
            return locate(format_err(name + ": expected a number, got " + type_phrase(node.type())), node);
          }
          return status::ok();
        } else {
          return locate(take_integer(node, name, cfg.*field), node);
        }
      },
      k.field);
}

status with_location(status st, const std::string& origin, const toml::source_region& src) {
  if (!st) st.message = where(origin, src) + st.message;
  return st;
}

// Hint for an unknown key `bad` ("section.name" or a bare name): a near spelling in the same
// section first, then the same name in another section (a key put in the wrong section),
// then a near spelling anywhere.
std::string key_hint(const std::string& bad) {
  size_t dot = bad.rfind('.');
  std::string section = dot == std::string::npos ? std::string() : bad.substr(0, dot);
  std::string name = dot == std::string::npos ? bad : bad.substr(dot + 1);
  if (!section.empty() && is_section(section)) {
    std::string near = closest(bad, key_candidates(section));
    if (!near.empty()) return did_you_mean(near);
  }
  for (const auto& k : k_keys)
    if (name == k.name) return did_you_mean(full_name(k));
  return suggestion(bad, key_candidates({}));
}

status apply_table(service_config& cfg, const toml::table& root, const std::string& origin) {
  for (auto&& [skey, snode] : root) {
    std::string section(skey.str());
    if (!is_section(section)) {
      std::string msg;
      if (snode.is_table()) {
        std::string near = closest(section, section_candidates());
        msg = "unknown section [" + section + "]" + (near.empty() ? near : did_you_mean("[" + near + "]"));
      } else {
        // A key written above every section, e.g. `listen = ...` before [server].
        msg = "unknown key " + section + key_hint(section);
      }
      return with_location(format_err(msg), origin, skey.source());
    }
    const auto* tbl = snode.as_table();
    if (!tbl)
      return with_location(format_err(section + ": expected a table [" + section + "], got " + type_phrase(snode.type())),
                           origin, skey.source());
    for (auto&& [key, node] : *tbl) {
      const key_def* k = find_key(section, key.str());
      if (!k) {
        std::string bad = section + "." + std::string(key.str());
        return with_location(format_err("unknown key " + bad + key_hint(bad)), origin, key.source());
      }
      status st = assign(cfg, *k, node, &origin);
      if (!st) return st;
    }
  }
  return status::ok();
}

status invalid(std::string msg) { return make_status(errc::invalid_argument, std::move(msg)); }

bool valid_hostname(std::string_view h) {
  if (h.empty() || h.size() > 253) return false;
  for (char c : h)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-' || c == '_')) return false;
  return true;
}

bool valid_ipv6(std::string_view h) {
  if (h.find(':') == std::string_view::npos) return false;
  size_t zone = h.find('%');  // fe80::1%eth0
  std::string_view addr = h.substr(0, zone);
  if (zone != std::string_view::npos && zone + 1 >= h.size()) return false;
  for (char c : addr)
    if (!(std::isxdigit(static_cast<unsigned char>(c)) || c == ':' || c == '.')) return false;
  return true;
}

std::string quoted(const std::string& s) { return "\"" + s + "\""; }

}  // namespace

result<listen_address> parse_listen_address(const std::string& text) {
  listen_address out;
  std::string_view t = text, port_text;
  if (!t.empty() && t.front() == '[') {
    size_t close = t.find(']');
    if (close == std::string_view::npos) return invalid("missing ']' after the IPv6 address");
    out.host = std::string(t.substr(1, close - 1));
    if (!valid_ipv6(out.host)) return invalid("bad IPv6 address [" + out.host + "]");
    if (close + 1 >= t.size() || t[close + 1] != ':') return invalid("expected HOST:PORT, e.g. [::1]:8080");
    port_text = t.substr(close + 2);
  } else {
    size_t colon = t.rfind(':');
    if (colon == std::string_view::npos) return invalid("expected HOST:PORT, e.g. 127.0.0.1:8080");
    out.host = std::string(t.substr(0, colon));
    if (out.host.find(':') != std::string::npos)
      return invalid("an IPv6 address needs brackets, e.g. [::1]:8080");
    if (!valid_hostname(out.host)) return invalid("bad host '" + out.host + "'");
    port_text = t.substr(colon + 1);
  }
  if (port_text.empty() || port_text.size() > 5) return invalid("port must be 0..65535 (0: any free port)");
  uint32_t port = 0;
  for (char c : port_text) {
    if (c < '0' || c > '9') return invalid("port must be 0..65535 (0: any free port)");
    port = port * 10 + static_cast<uint32_t>(c - '0');
  }
  if (port > 65535) return invalid("port must be 0..65535 (0: any free port)");
  out.port = static_cast<uint16_t>(port);
  return out;
}

result<service_config> parse_service_config(const std::string& toml_text, const std::string& origin) {
  toml::table root;
  try {
    root = toml::parse(std::string_view(toml_text), std::string_view(origin));
  } catch (const toml::parse_error& e) {
    return format_err(where(origin, e.source()) + std::string(e.description()));
  }
  service_config cfg;
  status st = apply_table(cfg, root, origin);
  if (!st) return st;
  return cfg;
}

static bool is_loopback_host(const std::string& host) {
  if (host == "localhost" || host == "::1") return true;
  // 127.0.0.0/8
  return host.rfind("127.", 0) == 0 && host.find_first_not_of("0123456789.") == std::string::npos;
}

result<service_config> load_service_config(const std::string& toml_path) {
  if (toml_path.empty()) return service_config{};
  // An ifstream opens a directory on Linux and reads nothing: that would be an empty config.
  struct stat sb {};
  if (::stat(toml_path.c_str(), &sb) == 0 && !S_ISREG(sb.st_mode))
    return make_status(errc::io_error, "config file " + toml_path + ": not a regular file" +
                                           (S_ISDIR(sb.st_mode) ? " (a directory)" : ""));
  std::ifstream in(toml_path, std::ios::binary);
  if (!in) {
    int e = errno;
    return make_status(errc::io_error,
                       "cannot open config file " + toml_path + ": " + (e ? std::strerror(e) : "unknown error"));
  }
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) return make_status(errc::io_error, "cannot read config file " + toml_path);
  return parse_service_config(text.str(), toml_path);
}

status set_service_config_value(service_config& cfg, const std::string& key, const std::string& value_text) {
  size_t dot = key.find('.');
  const key_def* k = dot == std::string::npos ? nullptr : find_key(key.substr(0, dot), key.substr(dot + 1));
  if (!k) return format_err("unknown key " + key + key_hint(key));
  const bool is_string = std::holds_alternative<str_field>(k->field);
  toml::table doc;
  bool parsed = false;
  std::string parse_msg;
  try {
    const std::string text = "v = " + value_text;
    doc = toml::parse(std::string_view(text), std::string_view("--set"));
    // One value only: text like "1\nother = 2" must not smuggle in more keys.
    parsed = doc.size() == 1 && doc.contains("v");
    if (!parsed) parse_msg = "not a single TOML value";
  } catch (const toml::parse_error& e) {
    parse_msg = std::string(e.description());
  }
  if (is_string && (!parsed || !doc["v"].is_string())) {
    cfg.*std::get<str_field>(k->field) = value_text;
    return status::ok();
  }
  if (!parsed) return format_err(full_name(*k) + ": cannot read '" + value_text + "' as a TOML value: " + parse_msg);
  return assign(cfg, *k, *doc.get("v"), nullptr);
}

std::vector<std::string> service_config_keys() { return key_candidates({}); }

std::string service_config_value_kind(std::string_view key) {
  for (const auto& k : k_keys) {
    if (full_name(k) != key) continue;
    if (std::holds_alternative<f64_field>(k.field)) return "NUMBER";
    if (std::holds_alternative<str_field>(k.field)) return "TEXT";
    if (std::holds_alternative<bool_field>(k.field)) return "BOOL";
    if (std::holds_alternative<arr_field>(k.field) || std::holds_alternative<strs_field>(k.field)) return "LIST";
    return "INT";
  }
  return "";
}

std::string toml_string_literal(std::string_view text) {
  // Not toml++'s formatter: for text with a line break it writes a multi-line literal string
  // ('''...'''), which cannot hold ''' and loses a leading newline (found by fuzz/fuzz-config).
  std::string out = "\"";
  append_escaped(out, text, toml_escape_rules);
  out.push_back('"');
  return out;
}

namespace {
void format_value(std::ostream& out, const service_config& cfg, const key_def& k) {
  std::visit(
      [&](auto field) {
        using F = decltype(field);
        if constexpr (std::is_same_v<F, str_field>) {
          out << toml_string_literal(cfg.*field);
        } else if constexpr (std::is_same_v<F, arr_field>) {
          out << "[";
          const auto& v = cfg.*field;
          for (size_t i = 0; i < v.size(); ++i) out << (i ? ", " : "") << v[i];
          out << "]";
        } else if constexpr (std::is_same_v<F, strs_field>) {
          out << "[";
          const auto& v = cfg.*field;
          for (size_t i = 0; i < v.size(); ++i) out << (i ? ", " : "") << toml_string_literal(v[i]);
          out << "]";
        } else if constexpr (std::is_same_v<F, bool_field>) {
          out << (cfg.*field ? "true" : "false");
        } else if constexpr (std::is_same_v<F, f64_field>) {
          out << toml::value<double>(cfg.*field);
        } else if constexpr (std::is_same_v<F, u64_field>) {
          // TOML integers are signed 64-bit; larger seeds cannot round-trip.
          out << static_cast<int64_t>(std::min<uint64_t>(cfg.*field, std::numeric_limits<int64_t>::max()));
        } else {
          out << cfg.*field;
        }
      },
      k.field);
}
}  // namespace

std::string format_service_config(const service_config& cfg) {
  std::ostringstream out;
  for (const char* section : k_sections) {
    out << "[" << section << "]\n";
    for (const auto& k : k_keys) {
      if (std::string_view(k.section) != section) continue;
      out << k.name << " = ";
      format_value(out, cfg, k);
      out << "\n";
    }
    out << "\n";
  }
  return out.str();
}

std::string service_config_value_text(const service_config& cfg, std::string_view key) {
  for (const auto& k : k_keys) {
    if (full_name(k) != key) continue;
    std::ostringstream out;
    format_value(out, cfg, k);
    return out.str();
  }
  return "";
}

std::string closest_name(std::string_view bad, const std::vector<std::string>& candidates) {
  return closest(bad, candidates);
}

status validate(const service_config& c) {
  std::vector<std::string> errs;
  auto check = [&](bool ok, const char* key, const std::string& rule, const std::string& got) {
    if (!ok) errs.push_back(std::string(key) + ": must be " + rule + ", got " + got);
  };
  auto num = [](auto v) { return std::to_string(v); };

  // [model]
  check(!c.model.empty(), "model.model", "a model directory or synthetic:NAME", "\"\"");
  if (c.model.rfind("synthetic:", 0) == 0)
    check(c.model.size() > 10, "model.model", "synthetic:NAME with a NAME", quoted(c.model));
  for (size_t i = 0; i < c.served_model_name.size(); ++i) {
    std::string key = "model.served_model_name[" + std::to_string(i) + "]";
    check(!c.served_model_name[i].empty(), key.c_str(), "a non-empty name", "\"\"");
  }
  check(c.max_model_len >= 0, "model.max_model_len", ">= 0 (0: the model's max_position_embeddings)",
        num(c.max_model_len));

  // [backend]
  check(c.dtype == "auto" || c.dtype == "bf16" || c.dtype == "fp16", "backend.dtype", "auto|bf16|fp16",
        quoted(c.dtype));
  check(c.backend == "auto" || c.backend == "cpu" || c.backend == "cuda", "backend.backend", "auto|cpu|cuda",
        quoted(c.backend));
  // A front node may leave all the work to its worker nodes.
  if (c.role == "front" && !c.worker_nodes.empty())
    check(c.workers >= 0 && c.workers <= 64, "backend.workers", "0..64 (0: only the worker nodes)", num(c.workers));
  else
    check(c.workers >= 1 && c.workers <= 64, "backend.workers", "1..64 (0 only on a front node with worker_nodes)",
          num(c.workers));
  check(c.cpu_threads >= 0 && c.cpu_threads <= 1024, "backend.cpu_threads", "0..1024 (0: library default)",
        num(c.cpu_threads));
  for (size_t i = 0; i < c.devices.size(); ++i) {
    std::string key = "backend.devices[" + std::to_string(i) + "]";
    check(c.devices[i] >= 0, key.c_str(), ">= 0", num(c.devices[i]));
    for (size_t j = 0; j < i; ++j)
      check(c.devices[i] != c.devices[j], key.c_str(), "unique (listed twice)", num(c.devices[i]));
  }
  bool pow2 = c.kv_block_size >= 1 && c.kv_block_size <= 256 && (c.kv_block_size & (c.kv_block_size - 1)) == 0;
  check(pow2, "backend.kv_block_size", "a power of two in 1..256", num(c.kv_block_size));
  check(c.kv_memory_mb >= 1 && c.kv_memory_mb <= (int64_t{1} << 30), "backend.kv_memory_mb", "1..1073741824",
        num(c.kv_memory_mb));
  check(c.kv_blocks >= 0, "backend.kv_blocks", ">= 0 (0: sized from kv_memory_mb)", num(c.kv_blocks));
  check(c.gpu_memory_utilization >= 0.0 && c.gpu_memory_utilization <= 1.0, "backend.gpu_memory_utilization",
        "a fraction in 0..1 (0: size the KV cache from kv_memory_mb)", std::to_string(c.gpu_memory_utilization));

  // [batching]
  check(c.max_batch_tokens >= 1, "batching.max_batch_tokens", ">= 1", num(c.max_batch_tokens));
  check(c.max_running >= 1, "batching.max_running", ">= 1", num(c.max_running));
  // An upper bound that is itself invalid is reported once, under its own key.
  check(c.prefill_chunk >= 1 && (c.max_batch_tokens < 1 || c.prefill_chunk <= c.max_batch_tokens),
        "batching.prefill_chunk",
        "1..batching.max_batch_tokens (" + num(c.max_batch_tokens) + ")", num(c.prefill_chunk));
  check(c.prefix_affinity_tokens >= 0 && c.prefix_affinity_tokens <= 1000000, "batching.prefix_affinity_tokens",
        "0..1000000 (0: route by load only)", num(c.prefix_affinity_tokens));

  // [queue]
  check(c.queue_capacity >= 1, "queue.queue_capacity", ">= 1", num(c.queue_capacity));
  check(c.default_timeout_ms >= 0, "queue.default_timeout_ms", ">= 0 (0: no timeout)", num(c.default_timeout_ms));
  check(c.max_tokens_limit >= 1, "queue.max_tokens_limit", ">= 1", num(c.max_tokens_limit));
  check(c.max_tokens_default >= 1 && (c.max_tokens_limit < 1 || c.max_tokens_default <= c.max_tokens_limit),
        "queue.max_tokens_default", "1..queue.max_tokens_limit (" + num(c.max_tokens_limit) + ")",
        num(c.max_tokens_default));

  // [server]
  auto addr = parse_listen_address(c.listen);
  if (!addr) errs.push_back("server.listen: " + addr.error().message + ", got " + quoted(c.listen));
  check(c.io_threads >= 0 && c.io_threads <= 64, "server.io_threads", "0..64 (0: from the core count)",
        num(c.io_threads));
  check(c.actor_scheduler == "sharing" || c.actor_scheduler == "stealing", "runtime.actor_scheduler",
        "sharing|stealing", quoted(c.actor_scheduler));
  if (c.tls_cert.empty() != c.tls_key.empty())
    errs.push_back(c.tls_cert.empty() ? "server.tls_cert: must be set when server.tls_key is set (got only tls_key " +
                                            quoted(c.tls_key) + ")"
                                      : "server.tls_key: must be set when server.tls_cert is set (got only tls_cert " +
                                            quoted(c.tls_cert) + ")");
  check(c.max_connections >= 1, "server.max_connections", ">= 1", num(c.max_connections));
  check(c.max_frame_bytes >= 1, "server.max_frame_bytes", ">= 1", num(c.max_frame_bytes));
  check(c.max_header_bytes >= 1, "server.max_header_bytes", ">= 1", num(c.max_header_bytes));
  // 0 is refused rather than taken as "never": a connection nobody closes holds its slot of
  // server.max_connections for good, and Beast has no "never" for a WebSocket's idle time.
  check(c.idle_timeout_ms >= 1, "server.idle_timeout_ms", ">= 1 (there is no \"no timeout\"; use a large value)",
        num(c.idle_timeout_ms));
  check(c.header_timeout_ms >= 1, "server.header_timeout_ms", ">= 1", num(c.header_timeout_ms));
  check(c.max_connections_per_client >= 0, "server.max_connections_per_client", ">= 0 (0: no cap)",
        num(c.max_connections_per_client));
  check(c.max_inflight_per_connection >= 1, "server.max_inflight_per_connection", ">= 1",
        num(c.max_inflight_per_connection));
  check(c.max_pending_bytes >= 4096, "server.max_pending_bytes", ">= 4096", num(c.max_pending_bytes));
  check(std::isfinite(c.rate_limit_rps) && c.rate_limit_rps >= 0.0 && c.rate_limit_rps <= 1e9,
        "server.rate_limit_rps", "0..1e9 requests per second (0: no limit)", std::to_string(c.rate_limit_rps));
  check(c.rate_limit_burst >= 1 && c.rate_limit_burst <= 1000000, "server.rate_limit_burst", "1..1000000",
        num(c.rate_limit_burst));
  check(c.rate_limit_clients >= 1 && c.rate_limit_clients <= 10000000, "server.rate_limit_clients", "1..10000000",
        num(c.rate_limit_clients));

  // [supervision]
  check(c.restart_strategy == "one_for_one" || c.restart_strategy == "one_for_all", "supervision.restart_strategy",
        "one_for_one|one_for_all", quoted(c.restart_strategy));
  check(c.max_restarts >= 0 && c.max_restarts <= 1000, "supervision.max_restarts", "0..1000", num(c.max_restarts));
  check(c.restart_window_ms >= 1, "supervision.restart_window_ms", ">= 1", num(c.restart_window_ms));
  check(c.backoff_initial_ms >= 0, "supervision.backoff_initial_ms", ">= 0", num(c.backoff_initial_ms));
  check(c.backoff_max_ms >= c.backoff_initial_ms, "supervision.backoff_max_ms",
        ">= supervision.backoff_initial_ms (" + num(c.backoff_initial_ms) + ")", num(c.backoff_max_ms));
  check(c.breaker_failures >= 1, "supervision.breaker_failures", ">= 1", num(c.breaker_failures));
  check(c.breaker_open_ms >= 0, "supervision.breaker_open_ms", ">= 0", num(c.breaker_open_ms));
  check(c.step_timeout_ms >= 0, "supervision.step_timeout_ms", ">= 0 (0: no watchdog)", num(c.step_timeout_ms));
  check(c.quarantine_after >= 1, "supervision.quarantine_after", ">= 1", num(c.quarantine_after));
  check(c.drain_timeout_ms >= 0, "supervision.drain_timeout_ms", ">= 0", num(c.drain_timeout_ms));

  // [degradation]
  check(c.fallback_cpu_workers >= 0 && c.fallback_cpu_workers <= 64, "degradation.fallback_cpu_workers",
        "0..64 (0: no CPU fallback)", num(c.fallback_cpu_workers));
  check(c.fallback_after_ms >= 0, "degradation.fallback_after_ms", ">= 0", num(c.fallback_after_ms));
  check(c.fallback_kv_memory_mb >= 1 && c.fallback_kv_memory_mb <= (int64_t{1} << 30),
        "degradation.fallback_kv_memory_mb", "1..1073741824", num(c.fallback_kv_memory_mb));
  check(c.overload_queue_fraction > 0.0 && c.overload_queue_fraction <= 1.0, "degradation.overload_queue_fraction",
        "a fraction in (0, 1]", std::to_string(c.overload_queue_fraction));
  check(c.overload_after_ms >= 0, "degradation.overload_after_ms", ">= 0", num(c.overload_after_ms));
  check(c.overload_max_tokens >= 0 && (c.max_tokens_limit < 1 || c.overload_max_tokens <= c.max_tokens_limit),
        "degradation.overload_max_tokens", "0..queue.max_tokens_limit (" + num(c.max_tokens_limit) + "; 0: no cap)",
        num(c.overload_max_tokens));

  // [fault]
  check(c.fault_rate >= 0.0 && c.fault_rate <= 1.0, "fault.fault_rate", "a probability in 0..1",
        std::to_string(c.fault_rate));
  check(c.fault_kind == "throw" || c.fault_kind == "cuda" || c.fault_kind == "hang" || c.fault_kind == "mixed",
        "fault.fault_kind", "throw|cuda|hang|mixed", quoted(c.fault_kind));
  check(c.fault_poison_token >= -1, "fault.fault_poison_token", ">= -1 (-1: none)", num(c.fault_poison_token));
  check(c.fault_hang_ms >= 1, "fault.fault_hang_ms", ">= 1", num(c.fault_hang_ms));

  // [cluster]
  check(c.role == "front" || c.role == "worker", "cluster.role", "front|worker", quoted(c.role));
  for (size_t i = 0; i < c.worker_nodes.size(); ++i) {
    std::string key = "cluster.worker_nodes[" + std::to_string(i) + "]";
    auto a = parse_listen_address(c.worker_nodes[i]);
    if (!a) check(false, key.c_str(), "HOST:PORT (" + a.error().message + ")", quoted(c.worker_nodes[i]));
    else check(a.value().port != 0, key.c_str(), "HOST:PORT with a port other than 0", quoted(c.worker_nodes[i]));
  }
  check(c.role != "worker" || c.worker_nodes.empty(), "cluster.worker_nodes",
        "empty on a worker node (only a front node connects to worker nodes)", num(c.worker_nodes.size()) + " nodes");
  check(c.heartbeat_ms >= 0, "cluster.heartbeat_ms", ">= 0 (0: off)", num(c.heartbeat_ms));
  check(c.node_timeout_ms >= 0 && (c.node_timeout_ms == 0 || c.node_timeout_ms > c.heartbeat_ms),
        "cluster.node_timeout_ms", "0 (off) or more than cluster.heartbeat_ms (" + num(c.heartbeat_ms) + ")",
        num(c.node_timeout_ms));
  check(c.node_timeout_ms == 0 || c.heartbeat_ms > 0, "cluster.heartbeat_ms",
        "> 0 when cluster.node_timeout_ms is set (a silent node is noticed by missing heartbeats)",
        num(c.heartbeat_ms));
  check(c.reconnect_initial_ms >= 1, "cluster.reconnect_initial_ms", ">= 1", num(c.reconnect_initial_ms));
  check(c.reconnect_max_ms >= c.reconnect_initial_ms, "cluster.reconnect_max_ms",
        ">= cluster.reconnect_initial_ms (" + num(c.reconnect_initial_ms) + ")", num(c.reconnect_max_ms));
  const int tls_set = int(!c.cluster_tls_cert.empty()) + int(!c.cluster_tls_key.empty()) + int(!c.cluster_tls_ca.empty());
  check(tls_set == 0 || tls_set == 3, "cluster.tls_cert",
        "set together with cluster.tls_key and cluster.tls_ca (TLS without all three is not authenticated)",
        std::to_string(tls_set) + " of 3 set");

  check(c.cluster_max_connections >= 1, "cluster.max_connections", ">= 1", num(c.cluster_max_connections));
  check(c.cluster_max_message_bytes >= 4096 && c.cluster_max_message_bytes <= 4294967295LL,
        "cluster.max_message_bytes", "4096..4294967295", num(c.cluster_max_message_bytes));
  // A worker node's CAF port (BASP) has no authentication and no bound on what a peer may
  // announce without TLS: only loopback, unless the operator says the network is trusted.
  if (c.role == "worker" && tls_set == 0 && !c.cluster_allow_insecure && addr && !is_loopback_host(addr.value().host))
    errs.push_back("server.listen: a worker node without cluster.tls_cert/tls_key/tls_ca listens on loopback only "
                   "(its CAF port authenticates nobody and allocates what any peer announces); got " +
                   quoted(c.listen) + ". Set the cluster.tls_* keys, or cluster.allow_insecure = true on a "
                   "network you trust (docs/deployment.md)");

  // [log]
  static const char* const levels[] = {"trace", "debug", "info", "warn", "error", "off"};
  check(std::find(std::begin(levels), std::end(levels), c.log_level) != std::end(levels), "log.log_level",
        "trace|debug|info|warn|error|off", quoted(c.log_level));

  if (errs.empty()) return status::ok();
  std::string msg;
  for (const auto& e : errs) msg += (msg.empty() ? "" : "\n") + e;
  return invalid(std::move(msg));
}

int32_t resolved_io_threads(const service_config& cfg) {
  if (cfg.io_threads > 0) return cfg.io_threads;
  const int32_t cores = int32_t(std::thread::hardware_concurrency());
  return std::clamp(cores / 2, 2, 16);
}

}  // namespace infer
