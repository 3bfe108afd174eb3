// Replays every saved fuzz input (fuzz/corpus/TARGET: the seeds, fuzz/regressions/TARGET:
// what the fuzzers found) through the very functions the libFuzzer targets call
// (fuzz/fuzz-entry.hpp), in the normal build: each must come back normally with its
// promises kept. Plus, per fixed finding, the error value it now gets.
#include <doctest/doctest.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "config/service-config.hpp"
#include "base/safetensors.hpp"
#include "fuzz/fuzz-entry.hpp"
#include "net/protocol.hpp"

namespace fs = std::filesystem;

namespace {

struct input {
  std::string path;
  std::string bytes;
};

std::vector<input> inputs(const std::string& dir) {
  std::vector<input> out;
  const fs::path root = fs::path(INFER_SOURCE_DIR) / dir;
  if (!fs::is_directory(root)) return out;
  for (const auto& e : fs::directory_iterator(root)) {
    if (!e.is_regular_file() || e.path().filename().string().front() == '.') continue;
    std::ifstream in(e.path(), std::ios::binary);
    out.push_back({e.path().string(), std::string(std::istreambuf_iterator<char>(in), {})});
  }
  std::sort(out.begin(), out.end(), [](const input& a, const input& b) { return a.path < b.path; });
  return out;
}

template <class F>
size_t replay(const std::string& target, F entry) {
  size_t n = 0;
  for (const char* kind : {"fuzz/corpus/", "fuzz/regressions/"}) {
    for (const auto& in : inputs(kind + target)) {
      INFO(in.path);
      CHECK(entry(reinterpret_cast<const uint8_t*>(in.bytes.data()), in.bytes.size()));
      ++n;
    }
  }
  return n;
}

std::string file(const std::string& rel) {
  std::ifstream in(fs::path(INFER_SOURCE_DIR) / rel, std::ios::binary);
  REQUIRE(in);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

}  // namespace

TEST_CASE("fuzz regressions: protocol inputs replay cleanly") {
  CHECK(inputs("fuzz/corpus/protocol").size() >= 5);
  CHECK(replay("protocol", infer::fuzz_protocol) >= 5);
}

TEST_CASE("fuzz regressions: config inputs replay cleanly") {
  CHECK(inputs("fuzz/corpus/config").size() >= 2);
  CHECK(replay("config", infer::fuzz_config) >= 2);
}

TEST_CASE("fuzz regressions: safetensors inputs replay cleanly") {
  CHECK(inputs("fuzz/corpus/safetensors").size() >= 2);
  CHECK(replay("safetensors", infer::fuzz_safetensors) >= 2);
}

// The seeds are meant to be valid inputs, so that mutations start deep in the parsers.
TEST_CASE("fuzz seeds: the valid ones parse") {
  auto cfg = infer::parse_service_config(file("fuzz/corpus/config/inferd.toml"), "inferd.toml");
  REQUIRE(cfg);
  CHECK(cfg->model == "synthetic:tiny");
  CHECK(validate(*cfg));
  auto custom = infer::parse_service_config(file("fuzz/corpus/config/custom.toml"), "custom.toml");
  REQUIRE(custom);
  CHECK(custom->listen == "[::1]:9000");
  CHECK(custom->api_key == "s3cr\xc3\xa9t");  // non-ASCII inside a string stays accepted
  CHECK(validate(*custom));

  const std::string st = file("fuzz/corpus/safetensors/f32-f16-bf16");
  auto f = infer::safetensors_file::from_memory(st.data(), st.size());
  REQUIRE(f);
  CHECK(f->names() == std::vector<std::string>{"wte", "h.0.ln", "bias"});
  CHECK(f->metadata().at("format") == "pt");
  float v[4];
  REQUIRE(infer::st_to_f32(*f->find("wte"), v, f->path()));
  CHECK(v[3] == 4.0f);

  infer::net::protocol_limits lim;
  auto cmd = infer::net::parse_command(file("fuzz/corpus/protocol/ws-generate").substr(1), lim);
  REQUIRE(std::holds_alternative<infer::net::generate_command>(cmd));
  CHECK(std::get<infer::net::generate_command>(cmd).request.max_tokens == 32);
}

// toml++ 3.3 reached __builtin_unreachable classifying some non-ASCII characters where
// whitespace may stand; the patched copy (cmake/deps.cmake) says "not whitespace", so these
// are ordinary TOML: errors where TOML forbids the character, values where it allows it.
TEST_CASE("fuzz finding: non-ASCII where toml++ 3.3 expects whitespace") {
  for (const char* name : {"toml-nonascii-after-bare-key", "toml-nonascii-ends-value-scan",
                           "toml-nonascii-document-start"}) {
    INFO(name);
    auto r = infer::parse_service_config(file(std::string("fuzz/regressions/config/") + name), "x.toml");
    REQUIRE_FALSE(r);
    CHECK(r.error().code == infer::errc::format_error);
    CHECK(r.error().message.rfind("x.toml:1:", 0) == 0);
  }
  auto value = infer::parse_service_config("[server]\nio_threads = 4\xc2\xa7\n", "v.toml");
  REQUIRE_FALSE(value);
  CHECK(value.error().message.rfind("v.toml:2:", 0) == 0);

  // Valid TOML: the first character after a line-ending backslash (upstream issue #190).
  auto ml = infer::parse_service_config(file("fuzz/regressions/config/toml-nonascii-after-line-ending-backslash"),
                                        "ml.toml");
  REQUIRE_FALSE(ml);  // `s` is no key of ours, but toml++ read the string to get there
  CHECK(ml.error().message.rfind("ml.toml:1:1: unknown key s", 0) == 0);
  auto ok = infer::parse_service_config(
      "# caf\xc3\xa9\n[model]\nmodel = \"\"\"\\\n  \xc2\xa7/caf\xc3\xa9\"\"\" # \xc2\xa7\n"
      "tokenizer_dir = '''\xc2\xa7\\\n\xc2\xa7'''\n[server]\napi_key = '\xcd\x88'\n",
      "ok.toml");
  REQUIRE(ok);
  CHECK(ok->model == "\xc2\xa7/caf\xc3\xa9");
  CHECK(ok->tokenizer_dir == "\xc2\xa7\\\n\xc2\xa7");
  CHECK(ok->api_key == "\xcd\x88");

  // --set parses its value with toml++ too.
  infer::service_config cfg;
  REQUIRE(infer::set_service_config_value(cfg, "server.api_key", "\xc2\xa7\xcd\x88"));
  CHECK(cfg.api_key == "\xc2\xa7\xcd\x88");
  CHECK_FALSE(infer::set_service_config_value(cfg, "backend.workers", "2\xcd\x88"));
  CHECK(cfg.workers == 1);
}

// A double the sampler's float cannot hold passed the range checks made on the double:
// temperature 1e300 became inf, top_p 1e-300 became 0 (outside (0, 1]).
TEST_CASE("fuzz finding: sampling numbers beyond float are invalid requests") {
  infer::net::protocol_limits lim;
  auto ws = [&](const char* extra) {
    auto c = infer::net::parse_command(std::string(R"({"type":"generate","id":"a","prompt":"x",)") + extra + "}", lim);
    REQUIRE(std::holds_alternative<infer::net::invalid_request>(c));
    return std::get<infer::net::invalid_request>(c);
  };
  auto hot = ws(R"("temperature":1e300)");
  CHECK(hot.id == std::optional<std::string>("a"));
  CHECK(hot.message.rfind("temperature: must be at most 3.4028235e+38", 0) == 0);
  CHECK(ws(R"("top_p":1e-300)").message == "top_p: must be in (0, 1], got 1e-300");

  auto c = infer::net::parse_completion_request(R"({"prompt":"x","temperature":1e39})", lim);
  REQUIRE(std::holds_alternative<infer::net::invalid_request>(c));
  CHECK(std::get<infer::net::invalid_request>(c).message.rfind("temperature: must be at most", 0) == 0);

  // The largest float and the smallest positive one still pass.
  auto big = infer::net::parse_command(
      R"({"type":"generate","id":"a","prompt":"x","temperature":3.4028234663852886e38,"top_p":1.5e-45})", lim);
  REQUIRE(std::holds_alternative<infer::net::generate_command>(big));
  CHECK(std::get<infer::net::generate_command>(big).request.sampling.top_p > 0.0f);
}

// [3, 2^62, 0] holds no element, yet st_tensor_view::numel() overflowed int64 on the way to 0.
TEST_CASE("fuzz finding: a shape whose running product overflows int64 is a format error") {
  const std::string st = file("fuzz/regressions/safetensors/shape-int64-overflow-zero-elements");
  auto f = infer::safetensors_file::from_memory(st.data(), st.size(), "x.safetensors");
  REQUIRE_FALSE(f);
  CHECK(f.error().code == infer::errc::format_error);
  CHECK(f.error().message == "x.safetensors: tensor 'a': shape [3, 4611686018427387904, 0] overflows");
}

// Error messages printed the offending JSON with dump(), which recurses per nesting level.
TEST_CASE("fuzz finding: deeply nested header values are reported without recursion") {
  const std::string shape = file("fuzz/regressions/safetensors/shape-deeply-nested");
  auto f = infer::safetensors_file::from_memory(shape.data(), shape.size(), "x.safetensors");
  REQUIRE_FALSE(f);
  CHECK(f.error().message == "x.safetensors: tensor 'a': shape [array] has a non-integer or negative dimension");
  const std::string off = file("fuzz/regressions/safetensors/data-offsets-deeply-nested");
  auto g = infer::safetensors_file::from_memory(off.data(), off.size(), "y.safetensors");
  REQUIRE_FALSE(g);
  CHECK(g.error().message == "y.safetensors: tensor 'a': data_offsets [array, 4] are not non-negative integers");
}

TEST_CASE("safetensors_file::from_memory: same checks as open, views outlive the buffer") {
  std::string bytes = file("fuzz/corpus/safetensors/i64-and-empty");
  auto f = infer::safetensors_file::from_memory(bytes.data(), bytes.size());
  bytes.assign(bytes.size(), '\xff');  // the file keeps its own copy
  REQUIRE(f);
  CHECK(f->path() == "<memory>");
  const auto* ids = f->find("ids");
  REQUIRE(ids);
  CHECK(ids->dtype == infer::st_dtype::i64);
  int64_t v[2];
  std::memcpy(v, ids->data, sizeof v);
  CHECK(v[0] == 5);
  CHECK(v[1] == -1);
  float out[2];
  CHECK(infer::st_to_f32(*ids, out, f->path()).message.find("unsupported dtype I64") != std::string::npos);
  auto tiny = infer::safetensors_file::from_memory("\x02\0\0\0", 4, "t");
  REQUIRE_FALSE(tiny);
  CHECK(tiny.error().message == "t: file is 4 bytes, too small for the 8-byte header length");
}

// format_service_config wrote strings with toml++'s formatter, which picks a multi-line literal
// string ('''...''') for text with a line break: it cannot hold ''' and drops a leading newline.
TEST_CASE("fuzz finding: every string reads back from format_service_config") {
  const char* texts[] = {"a\\b\n'''c", "\nleading newline", "\r\n'single' \"double\" \t\x01\x7f",
                         "caf\xc3\xa9 \xf0\x9f\x98\x80", "''", "trailing quote'", "\n'''''\n", ""};
  for (const char* t : texts) {
    INFO(t);
    infer::service_config c;
    c.api_key = t;
    c.tokenizer_dir = std::string("multi\n") + t;
    auto back = infer::parse_service_config(infer::format_service_config(c), "formatted");
    REQUIRE_MESSAGE(back, back.error().message);
    CHECK(back->api_key == t);
    CHECK(back.value() == c);
  }
  CHECK(infer::toml_string_literal("a\n\"b\"\\") == R"("a\n\"b\"\\")");
  // TOML strings are Unicode: invalid UTF-8 (only --set can bring it in) reads back as U+FFFD.
  CHECK(infer::toml_string_literal("x\xff\xc3(") == R"("x\uFFFD\uFFFD(")");
  infer::service_config c;
  c.api_key = "x\xff";
  auto back = infer::parse_service_config(infer::format_service_config(c), "formatted");
  REQUIRE(back);
  CHECK(back->api_key == "x\xef\xbf\xbd");
}
