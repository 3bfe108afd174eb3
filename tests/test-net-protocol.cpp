// The wire formats of net/protocol.hpp: every malformed case of the WebSocket protocol
// v1 and the OpenAI / vLLM bodies, and the frames the server writes (parsed back).
#include <doctest/doctest.h>

#include <algorithm>
#include <limits>

#include <nlohmann/json.hpp>

#include "net/protocol.hpp"

using namespace infer;
using namespace infer::net;
using json = nlohmann::json;

namespace {

protocol_limits test_limits() {
  protocol_limits lim;
  lim.n_ctx = 8;
  lim.n_vocab = 300;
  lim.max_tokens_default = 16;
  lim.max_tokens_limit = 64;
  // One token per byte: lengths are easy to reason about.
  lim.encode = [](std::string_view s) {
    std::vector<int32_t> ids;
    for (unsigned char c : s) ids.push_back(c);
    return ids;
  };
  return lim;
}

invalid_request expect_invalid(std::string_view frame, const protocol_limits& lim = test_limits()) {
  command c = parse_command(frame, lim);
  INFO("frame: " << frame);
  REQUIRE(std::holds_alternative<invalid_request>(c));
  auto bad = std::get<invalid_request>(c);
  CHECK(!bad.message.empty());
  return bad;
}

generate_command expect_generate(std::string_view frame, const protocol_limits& lim = test_limits()) {
  command c = parse_command(frame, lim);
  INFO("frame: " << frame);
  if (auto* bad = std::get_if<invalid_request>(&c)) INFO("error: " << bad->message);
  REQUIRE(std::holds_alternative<generate_command>(c));
  return std::get<generate_command>(c);
}

}  // namespace

TEST_CASE("generate: full frame") {
  auto g = expect_generate(
      R"({"type":"generate","id":"c1","prompt":"abc","max_tokens":32,"temperature":0.5,"top_k":40,)"
      R"("top_p":0.9,"seed":7,"stop":["\n\n","xy"],"priority":"high","timeout_ms":30000})");
  CHECK(g.id == "c1");
  CHECK(g.request.prompt == "abc");
  CHECK(g.request.prompt_tokens == std::vector<int32_t>{'a', 'b', 'c'});  // encoded by the limits
  CHECK(g.request.max_tokens == 32);
  CHECK(g.request.sampling.temperature == doctest::Approx(0.5));
  CHECK(g.request.sampling.top_k == 40);
  CHECK(g.request.sampling.top_p == doctest::Approx(0.9));
  CHECK(g.request.sampling.seed == 7);
  CHECK(g.request.stop == std::vector<std::string>{"\n\n", "xy"});
  CHECK(g.request.prio == priority::high);
  CHECK(g.request.timeout_ms == 30000);
}

TEST_CASE("generate: defaults") {
  auto g = expect_generate(R"({"type":"generate","id":"x","prompt":"hi"})");
  CHECK(g.request.max_tokens == 16);
  CHECK(g.request.sampling.temperature == 0.0f);
  CHECK(g.request.sampling.top_k == 0);
  CHECK(g.request.sampling.top_p == 1.0f);
  CHECK(g.request.sampling.seed == 0);
  CHECK(g.request.stop.empty());
  CHECK(g.request.prio == priority::normal);
  CHECK(g.request.timeout_ms == 0);
  // null counts as absent; unknown fields are ignored
  auto h = expect_generate(R"({"type":"generate","id":"x","prompt":"hi","seed":null,"stop":null,"extra":[1]})");
  CHECK(h.request.sampling.seed == 0);
  // a single stop string
  auto s = expect_generate(R"({"type":"generate","id":"x","prompt":"hi","stop":"."})");
  CHECK(s.request.stop == std::vector<std::string>{"."});
}

TEST_CASE("generate: prompt_tokens replaces prompt") {
  auto g = expect_generate(R"({"type":"generate","id":"t","prompt_tokens":[1,2,299]})");
  CHECK(g.request.prompt.empty());
  CHECK(g.request.prompt_tokens == std::vector<int32_t>{1, 2, 299});
  auto bad = expect_invalid(R"({"type":"generate","id":"t","prompt_tokens":[1,300]})");
  CHECK(bad.id == std::optional<std::string>("t"));
  CHECK(bad.message.find("prompt_tokens[1]") != std::string::npos);
  expect_invalid(R"({"type":"generate","id":"t","prompt_tokens":[-1]})");
  expect_invalid(R"({"type":"generate","id":"t","prompt_tokens":[1.5]})");
  expect_invalid(R"({"type":"generate","id":"t","prompt_tokens":["a"]})");
  expect_invalid(R"({"type":"generate","id":"t","prompt_tokens":[]})");
  expect_invalid(R"({"type":"generate","id":"t","prompt_tokens":5})");
  expect_invalid(R"({"type":"generate","id":"t","prompt_tokens":[1],"prompt":"a"})");
}

TEST_CASE("without an encoder a text prompt is passed on as text") {
  protocol_limits lim = test_limits();
  lim.encode = nullptr;
  auto g = expect_generate(R"({"type":"generate","id":"x","prompt":"a long prompt, longer than eight"})", lim);
  CHECK(g.request.prompt_tokens.empty());
  CHECK(g.request.prompt == "a long prompt, longer than eight");
}

// Issue 13.10: the server no longer tokenizes on its io threads; a text prompt that cannot fit
// the context in any tokenization is refused by its byte length alone.
TEST_CASE("without an encoder a text prompt too long in bytes for any tokenization is refused") {
  protocol_limits lim = test_limits();  // n_ctx 8
  lim.encode = nullptr;
  lim.max_token_bytes = 4;  // at most 7 prompt tokens of at most 4 bytes: 28 bytes may fit
  auto ok = expect_generate(R"({"type":"generate","id":"x","prompt":")" + std::string(31, 'a') + R"("})", lim);
  CHECK(ok.request.prompt.size() == 31);  // 31 / 4 = 7 tokens at the least: may fit, the service decides
  auto bad = expect_invalid(R"({"type":"generate","id":"x","prompt":")" + std::string(32, 'a') + R"("})", lim);
  CHECK(bad.message.find("32 bytes, more than the context holds") != std::string::npos);
  auto c = parse_completion_request(R"({"prompt":")" + std::string(1000, 'b') + R"("})", lim);
  REQUIRE(std::holds_alternative<invalid_request>(c));
  CHECK(std::get<invalid_request>(c).message.find("1000 bytes") != std::string::npos);
}

TEST_CASE("cancel") {
  command c = parse_command(R"({"type":"cancel","id":"c9"})", test_limits());
  REQUIRE(std::holds_alternative<cancel_command>(c));
  CHECK(std::get<cancel_command>(c).id == "c9");
  CHECK(!expect_invalid(R"({"type":"cancel"})").id);
  CHECK(!expect_invalid(R"({"type":"cancel","id":3})").id);
}

TEST_CASE("non-JSON, non-object and id problems have a null id") {
  for (std::string_view f : {"", "not json", "{\"type\":", "[1,2]", "\"generate\"", "42", "null", "{\"type\":\"generate\",}"}) {
    auto bad = expect_invalid(f);
    CHECK(!bad.id);
  }
  CHECK(!expect_invalid(R"({"type":"generate","prompt":"a"})").id);
  CHECK(!expect_invalid(R"({"type":"generate","id":7,"prompt":"a"})").id);
  CHECK(!expect_invalid(R"({"type":"generate","id":"","prompt":"a"})").id);
  CHECK(!expect_invalid(R"({"type":"generate","id":null,"prompt":"a"})").id);
  std::string long_id(200, 'x');
  CHECK(!expect_invalid(R"({"type":"generate","id":")" + long_id + R"(","prompt":"a"})").id);
}

TEST_CASE("type problems keep the id") {
  auto a = expect_invalid(R"({"id":"k","prompt":"a"})");
  CHECK(a.id == std::optional<std::string>("k"));
  CHECK(a.message.find("type") != std::string::npos);
  auto b = expect_invalid(R"({"type":"generat","id":"k","prompt":"a"})");
  CHECK(b.id == std::optional<std::string>("k"));
  CHECK(b.message.find("unknown type") != std::string::npos);
  CHECK(expect_invalid(R"({"type":5,"id":"k"})").id == std::optional<std::string>("k"));
}

TEST_CASE("missing and ill-typed fields") {
  const char* frames[] = {
      R"({"type":"generate","id":"k"})",                               // no prompt
      R"({"type":"generate","id":"k","prompt":""})",                   // empty prompt
      R"({"type":"generate","id":"k","prompt":5})",
      R"({"type":"generate","id":"k","prompt":"a","max_tokens":"32"})",
      R"({"type":"generate","id":"k","prompt":"a","max_tokens":3.5})",
      R"({"type":"generate","id":"k","prompt":"a","temperature":"hot"})",
      R"({"type":"generate","id":"k","prompt":"a","top_k":1.5})",
      R"({"type":"generate","id":"k","prompt":"a","top_p":true})",
      R"({"type":"generate","id":"k","prompt":"a","seed":"7"})",
      R"({"type":"generate","id":"k","prompt":"a","seed":-7})",
      R"({"type":"generate","id":"k","prompt":"a","stop":[1]})",
      R"({"type":"generate","id":"k","prompt":"a","stop":[""]})",
      R"({"type":"generate","id":"k","prompt":"a","stop":{"a":1}})",
      R"({"type":"generate","id":"k","prompt":"a","priority":"urgent"})",
      R"({"type":"generate","id":"k","prompt":"a","priority":1})",
      R"({"type":"generate","id":"k","prompt":"a","timeout_ms":-1})",
      R"({"type":"generate","id":"k","prompt":"a","timeout_ms":"1s"})",
  };
  for (const char* f : frames) {
    auto bad = expect_invalid(f);
    CHECK(bad.id == std::optional<std::string>("k"));
  }
}

TEST_CASE("out-of-range values name the field") {
  struct kase {
    const char* frame;
    const char* field;
  } cases[] = {
      {R"({"type":"generate","id":"k","prompt":"a","max_tokens":-1})", "max_tokens"},
      {R"({"type":"generate","id":"k","prompt":"a","max_tokens":0})", "max_tokens"},
      {R"({"type":"generate","id":"k","prompt":"a","max_tokens":65})", "max_tokens"},
      {R"({"type":"generate","id":"k","prompt":"a","max_tokens":18446744073709551615})", "max_tokens"},
      {R"({"type":"generate","id":"k","prompt":"a","temperature":-0.1})", "temperature"},
      {R"({"type":"generate","id":"k","prompt":"a","top_p":0})", "top_p"},
      {R"({"type":"generate","id":"k","prompt":"a","top_p":1.01})", "top_p"},
      {R"({"type":"generate","id":"k","prompt":"a","top_k":-2})", "top_k"},
      {R"({"type":"generate","id":"k","prompt":"12345678"})", "prompt"},  // 8 tokens, context 8
      {R"({"type":"generate","id":"k","prompt_tokens":[1,2,3,4,5,6,7,8,9]})", "prompt"},
  };
  for (auto& k : cases) {
    auto bad = expect_invalid(k.frame);
    CHECK(bad.id == std::optional<std::string>("k"));
    CHECK(bad.message.rfind(k.field, 0) == 0);
  }
  // the edges that are fine
  expect_generate(R"({"type":"generate","id":"k","prompt":"1234567","max_tokens":64,"top_p":1,"temperature":0})");
}

TEST_CASE("server frames are valid JSON with the documented fields") {
  auto a = json::parse(accepted_frame("c1"));
  CHECK(a == json{{"type", "accepted"}, {"id", "c1"}});

  std::string buf = "garbage";
  token_frame(buf, "c\"1", 3, 464, "The\n");
  auto t = json::parse(buf);
  CHECK(t["type"] == "token");
  CHECK(t["id"] == "c\"1");
  CHECK(t["index"] == 3);
  CHECK(t["token"] == 464);
  CHECK(t["text"] == "The\n");

  event d;
  d.type = event::kind::done;
  d.reason = finish_reason::stop;
  d.prompt_tokens = 5;
  d.completion_tokens = 9;
  d.cached_tokens = 4;
  d.queue_ms = 1.5;
  d.first_token_ms = 12.25;
  d.total_ms = 40;
  auto j = json::parse(event_frame("c1", d));
  CHECK(j["type"] == "done");
  CHECK(j["finish_reason"] == "stop");
  CHECK(j["usage"]["prompt_tokens"] == 5);
  CHECK(j["usage"]["completion_tokens"] == 9);
  CHECK(j["usage"]["prompt_tokens_details"]["cached_tokens"] == 4);
  CHECK(j["timing_ms"]["first_token"].get<double>() == doctest::Approx(12.25));
  CHECK(j["timing_ms"]["total"].get<double>() == doctest::Approx(40));
  CHECK(!j.contains("degraded"));  // a request served normally says nothing
  CHECK(!j.contains("max_tokens_capped_to"));
  d.cpu_fallback = true;
  d.max_tokens_capped_to = 16;
  auto dj = json::parse(event_frame("c1", d));
  CHECK(dj["degraded"] == json::array({"cpu_fallback", "max_tokens_capped"}));
  CHECK(dj["max_tokens_capped_to"] == 16);
  CHECK(dj["usage"]["completion_tokens"] == 9);
  d.cpu_fallback = false;
  dj = json::parse(done_frame("c1", d));
  CHECK(dj["degraded"] == json::array({"max_tokens_capped"}));

  auto e = json::parse(error_frame(std::nullopt, error_code::invalid_request, "bad \"x\""));
  CHECK(e["id"].is_null());
  CHECK(e["code"] == "invalid_request");
  CHECK(e["message"] == "bad \"x\"");
  CHECK(!e.contains("retry_after_ms"));
  auto r = json::parse(error_frame(std::string("q"), error_code::overloaded, "busy", 250));
  CHECK(r["id"] == "q");
  CHECK(r["code"] == "overloaded");
  CHECK(r["retry_after_ms"] == 250);
}

TEST_CASE("strings are escaped and invalid UTF-8 is repaired") {
  std::string out;
  append_json_string(out, std::string_view("a\x01\t\"\\\xC3\xA9\xE2\x82", 9));
  auto v = json::parse(out).get<std::string>();
  CHECK(v == "a\x01\t\"\\\xC3\xA9\xEF\xBF\xBD\xEF\xBF\xBD");
  out.clear();
  append_json_string(out, "\xF0\x9F\x98\x80 \xED\xA0\x80 \xC0\xAF");  // emoji, a surrogate, an overlong '/'
  v = json::parse(out).get<std::string>();
  CHECK(v.rfind("\xF0\x9F\x98\x80 ", 0) == 0);
  CHECK(v.find("\xED\xA0\x80") == std::string::npos);
  CHECK(v.find("\xC0") == std::string::npos);
}

TEST_CASE("OpenAI completion requests") {
  auto lim = test_limits();
  auto r = parse_completion_request(R"({"model":"m","prompt":"hey","max_tokens":5,"stream":true,"seed":3,)"
                                    R"("stop":"\n","stream_options":{"include_usage":true},"logprobs":null})",
                                    lim);
  REQUIRE(std::holds_alternative<completion_command>(r));
  auto& c = std::get<completion_command>(r);
  CHECK(c.stream);
  CHECK(c.include_usage);
  CHECK(c.seeded);
  CHECK(c.model == "m");
  CHECK(c.request.max_tokens == 5);
  CHECK(c.request.sampling.temperature == 1.0f);  // OpenAI's default
  CHECK(c.request.stop == std::vector<std::string>{"\n"});
  CHECK(c.request.prompt_tokens.size() == 3);

  // Issue 13.8: a deadline per HTTP request, as on the WebSocket.
  auto t = parse_completion_request(R"({"prompt":"hey","timeout_ms":120000})", lim);
  REQUIRE(std::holds_alternative<completion_command>(t));
  CHECK(std::get<completion_command>(t).request.timeout_ms == 120000);
  CHECK(std::get<completion_command>(parse_completion_request(R"({"prompt":"hey"})", lim)).request.timeout_ms == 0);
  for (const char* body : {R"({"prompt":"a","timeout_ms":-1})", R"({"prompt":"a","timeout_ms":"5s"})",
                           R"({"prompt":"a","timeout_ms":86400001})"}) {
    INFO(body);
    CHECK(std::holds_alternative<invalid_request>(parse_completion_request(body, lim)));
  }

  auto ids = parse_completion_request(R"({"prompt":[5,6]})", lim);
  REQUIRE(std::holds_alternative<completion_command>(ids));
  CHECK(std::get<completion_command>(ids).request.prompt_tokens == std::vector<int32_t>{5, 6});
  CHECK(!std::get<completion_command>(ids).seeded);
  CHECK(std::holds_alternative<completion_command>(parse_completion_request(R"({"prompt":["one"]})", lim)));
  CHECK(std::holds_alternative<completion_command>(parse_completion_request(R"({"prompt":[[1,2]]})", lim)));

  for (const char* body : {"", "{", "[]", R"({})", R"({"prompt":""})", R"({"prompt":["a","b"]})",
                           R"({"prompt":"a","n":17})", R"({"prompt":"a","n":0})", R"({"prompt":"a","prompt_logprobs":1})",
                           R"({"prompt":"a","logprobs":21})", R"({"prompt":"a","max_tokens":-1})",
                           R"({"prompt":"a","temperature":-1})", R"({"prompt":"a","top_p":2})",
                           R"({"prompt":"a","stream":"yes"})", R"({"prompt":"123456789"})",
                           R"({"prompt":[1,1000]})"}) {
    INFO(body);
    auto b = parse_completion_request(body, lim);
    REQUIRE(std::holds_alternative<invalid_request>(b));
    CHECK(!std::get<invalid_request>(b).message.empty());
  }
}

TEST_CASE("OpenAI response bodies") {
  event d;
  d.type = event::kind::done;
  d.reason = finish_reason::length;
  d.prompt_tokens = 2;
  d.completion_tokens = 3;
  auto j = json::parse(openai_completion_json("cmpl-1", 100, "gpt2", "abc", d));
  CHECK(j["object"] == "text_completion");
  CHECK(j["usage"]["prompt_tokens_details"]["cached_tokens"] == 0);  // OpenAI's field, always there
  d.cached_tokens = 2;
  CHECK(json::parse(openai_completion_json("cmpl-1", 100, "gpt2", "abc", d))["usage"]["prompt_tokens_details"]
            ["cached_tokens"] == 2);
  CHECK(json::parse(openai_usage_chunk_json("cmpl-1", 100, "gpt2", d))["usage"]["prompt_tokens_details"]
            ["cached_tokens"] == 2);
  CHECK(j["choices"][0]["text"] == "abc");
  CHECK(j["choices"][0]["finish_reason"] == "length");
  CHECK(j["usage"]["total_tokens"] == 5);
  CHECK(!j.contains("degraded"));
  auto fin = json::parse(openai_final_chunk_json("cmpl-1", 100, "gpt2", d));
  CHECK(fin["choices"][0]["finish_reason"] == "length");
  CHECK(fin["choices"][0]["text"] == "");
  CHECK(!fin.contains("degraded"));
  d.cpu_fallback = true;
  fin = json::parse(openai_final_chunk_json("cmpl-1", 100, "gpt2", d));
  CHECK(fin["degraded"] == json::array({"cpu_fallback"}));
  CHECK(!fin.contains("max_tokens_capped_to"));
  d.max_tokens_capped_to = 7;
  auto full = json::parse(openai_completion_json("cmpl-1", 100, "gpt2", "abc", d));
  CHECK(full["degraded"] == json::array({"cpu_fallback", "max_tokens_capped"}));
  CHECK(full["max_tokens_capped_to"] == 7);
  CHECK(full["usage"]["total_tokens"] == 5);
  auto c = json::parse(openai_chunk_json("cmpl-1", 100, "gpt2", "x", nullptr));
  CHECK(c["choices"][0]["finish_reason"].is_null());
  CHECK(c["choices"][0]["text"] == "x");
  auto e = json::parse(openai_error_json(error_code::rate_limited, "slow down"));
  CHECK(e["error"]["message"] == "slow down");
  CHECK(e["error"]["type"] == "rate_limit_error");
  CHECK(e["error"]["code"] == "rate_limited");
  CHECK(!e["error"].contains("retry_after_ms"));
  auto w = json::parse(openai_error_json(error_code::rate_limited, "slow down", 1234));
  CHECK(w["error"]["retry_after_ms"] == 1234);
  CHECK(w["error"]["code"] == "rate_limited");
  CHECK(http_status(error_code::invalid_request) == 400);
  CHECK(http_status(error_code::overloaded) == 429);
  CHECK(http_status(error_code::rate_limited) == 429);
  CHECK(http_status(error_code::unavailable) == 503);
}

TEST_CASE("tokenize and detokenize bodies") {
  auto t = parse_tokenize_request(R"({"prompt":"hello"})");
  REQUIRE(std::holds_alternative<std::string>(t));
  CHECK(std::get<std::string>(t) == "hello");
  CHECK(std::holds_alternative<invalid_request>(parse_tokenize_request(R"({"prompt":1})")));
  CHECK(std::holds_alternative<invalid_request>(parse_tokenize_request(R"({})")));
  CHECK(std::holds_alternative<invalid_request>(parse_tokenize_request("nope")));
  std::vector<int32_t> ids{15496, 995};
  auto j = json::parse(tokenize_response_json(ids, 1024));
  CHECK(j["tokens"] == json::array({15496, 995}));
  CHECK(j["count"] == 2);

  auto d = parse_detokenize_request(R"({"tokens":[1,2]})", 10);
  REQUIRE(std::holds_alternative<std::vector<int32_t>>(d));
  CHECK(std::get<std::vector<int32_t>>(d) == std::vector<int32_t>{1, 2});
  CHECK(std::holds_alternative<invalid_request>(parse_detokenize_request(R"({"tokens":[10]})", 10)));
  CHECK(std::holds_alternative<invalid_request>(parse_detokenize_request(R"({"tokens":"1"})", 10)));
  CHECK(json::parse(detokenize_response_json("Hello world"))["prompt"] == "Hello world");
}

TEST_CASE("mutated frames never crash and every accepted command is within the limits") {
  // A poor man's fuzzer: byte flips, truncations and splices of valid frames. Whatever
  // comes out must be a well-formed command or an invalid_request with a message.
  const std::vector<std::string> seeds = {
      R"({"type":"generate","id":"c1","prompt":"abc","max_tokens":32,"temperature":0.5,"top_k":40,"top_p":0.9,"seed":7,"stop":["\n\n"],"priority":"high","timeout_ms":30000})",
      R"({"type":"generate","id":"t","prompt_tokens":[1,2,299],"max_tokens":64})",
      R"({"type":"cancel","id":"c9"})",
  };
  const char alphabet[] = "{}[]\":,-0123456789.eE truefalsnul\\";
  auto lim = test_limits();
  uint64_t x = 42;
  auto rnd = [&x](uint64_t n) {
    x = infer::splitmix64(x);
    return n ? x % n : 0;
  };
  int generates = 0, invalids = 0;
  for (int iter = 0; iter < 20000; ++iter) {
    std::string f = seeds[rnd(seeds.size())];
    int edits = 1 + int(rnd(4));
    for (int e = 0; e < edits && !f.empty(); ++e) {
      size_t at = rnd(f.size());
      switch (rnd(4)) {
        case 0: f[at] = alphabet[rnd(sizeof alphabet - 1)]; break;
        case 1: f.erase(at, 1 + rnd(3)); break;
        case 2: f.insert(at, 1, alphabet[rnd(sizeof alphabet - 1)]); break;
        case 3: f.resize(at); break;
      }
    }
    command c = parse_command(f, lim);
    if (auto* g = std::get_if<generate_command>(&c)) {
      generates++;
      const auto& r = g->request;
      CHECK(!g->id.empty());
      CHECK(r.max_tokens >= 1);
      CHECK(r.max_tokens <= lim.max_tokens_limit);
      CHECK(r.sampling.temperature >= 0);
      CHECK(r.sampling.top_p > 0);
      CHECK(r.sampling.top_p <= 1);
      CHECK(!r.prompt_tokens.empty());
      CHECK(int64_t(r.prompt_tokens.size()) < lim.n_ctx);
      for (int32_t id : r.prompt_tokens) CHECK((id >= 0 && id < lim.n_vocab));
    } else if (auto* bad = std::get_if<invalid_request>(&c)) {
      invalids++;
      CHECK(!bad->message.empty());
      // the error frame for it is valid JSON whatever the id's bytes were
      CHECK(json::accept(error_frame(bad->id, error_code::invalid_request, bad->message)));
    }
  }
  CHECK(generates > 0);
  CHECK(invalids > 0);
}

TEST_CASE("stop token ids and ignore_eos") {
  auto g = expect_generate(R"({"type":"generate","id":"a","prompt":"x","stop_token_ids":[5,299],"ignore_eos":true})");
  CHECK(g.request.stop_token_ids == std::vector<int32_t>{5, 299});
  CHECK(g.request.ignore_eos);
  auto d = expect_generate(R"({"type":"generate","id":"a","prompt":"x"})");
  CHECK_FALSE(d.request.ignore_eos);
  CHECK(d.request.stop_token_ids.empty());
  CHECK(expect_invalid(R"({"type":"generate","id":"a","prompt":"x","stop_token_ids":[300]})").message.find("stop_token_ids[0]") != std::string::npos);
  CHECK(expect_invalid(R"({"type":"generate","id":"a","prompt":"x","stop_token_ids":5})").message.find("stop_token_ids") != std::string::npos);
  CHECK(expect_invalid(R"({"type":"generate","id":"a","prompt":"x","ignore_eos":1})").message.find("ignore_eos") != std::string::npos);
  auto c = parse_completion_request(R"({"prompt":"x","stop_token_ids":[1],"ignore_eos":true})", test_limits());
  REQUIRE(std::holds_alternative<completion_command>(c));
  CHECK(std::get<completion_command>(c).request.ignore_eos);
}

TEST_CASE("WebSocket generate with messages") {
  auto g = expect_generate(
      R"({"type":"generate","id":"c","messages":[{"role":"user","content":"hi","name":"z"}],"max_tokens":3,)"
      R"("chat_template_kwargs":{"enable_thinking":false},"tools":[{"type":"function","function":{"name":"f"}}]})");
  REQUIRE(g.chat.has_value());
  CHECK(g.request.prompt.empty());
  CHECK(g.request.prompt_tokens.empty());  // the template runs later, off the io thread
  CHECK(g.request.max_tokens == 3);
  const auto& v = g.chat->vars;
  CHECK(v["messages"][0]["role"] == "user");
  CHECK(v["messages"][0]["name"] == "z");  // other fields reach the template as given
  CHECK(v["add_generation_prompt"] == true);
  CHECK(v["enable_thinking"] == false);
  CHECK(v["tools"][0]["function"]["name"] == "f");
  CHECK(expect_invalid(R"({"type":"generate","id":"c","messages":[{"content":"x"}]})").message ==
        "messages[0].role: missing (a string such as \"user\")");
  CHECK(expect_invalid(R"({"type":"generate","id":"c","messages":[]})").message.find("non-empty") != std::string::npos);
  CHECK(expect_invalid(R"({"type":"generate","id":"c","prompt":"x","messages":[{"role":"user"}]})").message.find("one of") !=
        std::string::npos);
}

TEST_CASE("OpenAI chat requests") {
  auto ok = [](std::string_view body) {
    auto r = parse_chat_request(body, test_limits());
    if (auto* b = std::get_if<invalid_request>(&r)) FAIL_CHECK(b->message);
    REQUIRE(std::holds_alternative<chat_command>(r));
    return std::get<chat_command>(r);
  };
  auto bad = [](std::string_view body) {
    auto r = parse_chat_request(body, test_limits());
    REQUIRE(std::holds_alternative<invalid_request>(r));
    return std::get<invalid_request>(r).message;
  };
  auto c = ok(R"({"model":"m","messages":[{"role":"system","content":"s"},{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}],)"
              R"("max_tokens":9,"max_completion_tokens":4,"stream":true,"stream_options":{"include_usage":true},"seed":3,"top_k":2})");
  CHECK(c.request.max_tokens == 4);  // max_completion_tokens wins
  CHECK(c.stream);
  CHECK(c.include_usage);
  CHECK(c.seeded);
  CHECK(c.model == "m");
  CHECK(c.request.sampling.top_k == 2);
  CHECK(c.request.sampling.temperature == 1.0f);  // OpenAI's default
  CHECK(c.chat.vars["messages"][1]["content"] == "a\nb");  // text parts joined, as vLLM does
  // Key order is the client's, for tojson in templates.
  auto t = ok(R"({"messages":[{"role":"user","content":"x"}],"tools":[{"type":"function","function":{"name":"f","z":1,"a":2}}]})");
  CHECK(t.chat.vars["tools"][0]["function"].dump() == R"({"name":"f","z":1,"a":2})");
  CHECK(ok(R"({"messages":[{"role":"user","content":"x"}],"add_generation_prompt":false})").chat.vars["add_generation_prompt"] == false);
  auto no_tools = ok(R"({"messages":[{"role":"user","content":"x"}]})");
  CHECK(no_tools.chat.vars.contains("tools"));
  CHECK(no_tools.chat.vars["tools"].is_null());  // None, as transformers passes it
  auto cont = ok(R"({"messages":[{"role":"assistant","content":"x"}],"continue_final_message":true})");
  CHECK(cont.chat.continue_final_message);
  CHECK(cont.chat.vars["add_generation_prompt"] == false);
  CHECK(bad(R"({})") == "messages: missing");
  CHECK(bad(R"({"messages":[{"role":"user","content":[{"type":"image_url"}]}]})").find("only \"text\" parts") != std::string::npos);
  CHECK(bad(R"({"messages":[{"role":"user","content":5}]})").find("messages[0].content") != std::string::npos);
  CHECK(bad(R"({"messages":[{"role":"user"}],"n":17})").find("n:") != std::string::npos);
  CHECK(bad(R"({"messages":[{"role":"user"}],"n":0})").find("n:") != std::string::npos);
  CHECK(bad(R"({"messages":[{"role":"user"}],"max_completion_tokens":0})").find("max_completion_tokens") != std::string::npos);
  CHECK(bad(R"({"messages":[{"role":"user"}],"tool_choice":"required"})").find("tool_choice") != std::string::npos);
  CHECK(bad(R"({"messages":[{"role":"user"}],"chat_template_kwargs":[]})").find("chat_template_kwargs") != std::string::npos);
  CHECK(bad(R"({"messages":[{"role":"user"}],"logprobs":"yes"})").find("logprobs") != std::string::npos);
  CHECK(bad(R"({"messages":[{"role":"user"}],"top_logprobs":3})").find("top_logprobs: needs logprobs") != std::string::npos);
  CHECK(ok(R"({"messages":[{"role":"user"}],"logprobs":true})").request.sampling.logprobs == 0);
  CHECK(ok(R"({"messages":[{"role":"user"}],"logprobs":true,"top_logprobs":4})").request.sampling.logprobs == 4);
  CHECK(ok(R"({"messages":[{"role":"user"}]})").request.sampling.logprobs == -1);
  CHECK(bad(R"({"messages":[{"role":"user"}],"continue_final_message":true,"add_generation_prompt":true})").find("at most one") !=
        std::string::npos);
}

TEST_CASE("OpenAI chat response bodies") {
  event done;
  done.type = event::kind::done;
  done.reason = finish_reason::stop;
  done.prompt_tokens = 5;
  done.completion_tokens = 2;
  auto body = json::parse(openai_chat_json("chatcmpl-1", 7, "m", "hé", done));
  CHECK(body["id"] == "chatcmpl-1");
  CHECK(body["object"] == "chat.completion");
  CHECK(body["choices"][0]["message"]["role"] == "assistant");
  CHECK(body["choices"][0]["message"]["content"] == "hé");
  CHECK(body["choices"][0]["finish_reason"] == "stop");
  CHECK(body["usage"]["total_tokens"] == 7);
  auto first = json::parse(openai_chat_chunk_json("chatcmpl-1", 7, "m", true, "", nullptr));
  CHECK(first["object"] == "chat.completion.chunk");
  CHECK(first["choices"][0]["delta"]["role"] == "assistant");
  CHECK(first["choices"][0]["finish_reason"].is_null());
  auto tok = json::parse(openai_chat_chunk_json("chatcmpl-1", 7, "m", false, "x", nullptr));
  CHECK_FALSE(tok["choices"][0]["delta"].contains("role"));
  CHECK(tok["choices"][0]["delta"]["content"] == "x");
  auto fin = json::parse(openai_chat_final_chunk_json("chatcmpl-1", 7, "m", done));
  CHECK(fin["choices"][0]["delta"].empty());
  CHECK(fin["choices"][0]["finish_reason"] == "stop");
  auto usage = json::parse(openai_chat_usage_chunk_json("chatcmpl-1", 7, "m", done));
  CHECK(usage["choices"].empty());
  CHECK(usage["usage"]["completion_tokens"] == 2);
}

TEST_CASE("tokenize: vLLM's prompt and messages forms") {
  auto p = parse_tokenize_command(R"({"prompt":"hi"})");
  REQUIRE(std::holds_alternative<tokenize_command>(p));
  CHECK(std::get<tokenize_command>(p).add_special_tokens);
  CHECK_FALSE(std::get<tokenize_command>(p).chat);
  auto p2 = parse_tokenize_command(R"({"prompt":"hi","add_special_tokens":false})");
  CHECK_FALSE(std::get<tokenize_command>(p2).add_special_tokens);
  auto m = parse_tokenize_command(R"({"messages":[{"role":"user","content":"x"}],"chat_template_kwargs":{"k":1}})");
  REQUIRE(std::holds_alternative<tokenize_command>(m));
  const auto& mc = std::get<tokenize_command>(m);
  CHECK_FALSE(mc.add_special_tokens);  // the template writes BOS
  REQUIRE(mc.chat);
  CHECK(mc.chat->vars["add_generation_prompt"] == true);
  CHECK(mc.chat->vars["k"] == 1);
  auto both = parse_tokenize_command(R"({"prompt":"x","messages":[{"role":"user"}]})");
  CHECK(std::holds_alternative<invalid_request>(both));
  auto norole = parse_tokenize_command(R"({"messages":[{"content":"x"}]})");
  REQUIRE(std::holds_alternative<invalid_request>(norole));
  CHECK(std::get<invalid_request>(norole).message.find("role") != std::string::npos);
}

// Issue 16: every sampling field parsed or refused naming it, `param` in OpenAI errors.
TEST_CASE("sampling and output fields") {
  auto lim = test_limits();
  auto r = parse_completion_request(R"({"prompt":"ab","max_tokens":8,"presence_penalty":1.5,"frequency_penalty":-2,)"
                                    R"("repetition_penalty":1.2,"min_p":0.05,"min_tokens":3,"logit_bias":{"7":100,"12":-50.5},)"
                                    R"("logprobs":5,"user":"u","best_of":1,"suffix":""})",
                                    lim);
  if (auto* b = std::get_if<invalid_request>(&r)) INFO(b->message);
  REQUIRE(std::holds_alternative<completion_command>(r));
  const auto& c = std::get<completion_command>(r);
  const auto& sp = c.request.sampling;
  CHECK(sp.presence_penalty == 1.5f);
  CHECK(sp.frequency_penalty == -2.0f);
  CHECK(sp.repetition_penalty == 1.2f);
  CHECK(sp.min_p == 0.05f);
  CHECK(sp.min_tokens == 3);
  CHECK(sp.logprobs == 5);
  CHECK(!c.echo);
  CHECK(std::get<completion_command>(parse_completion_request(R"({"prompt":"a","echo":true})", lim)).echo);
  REQUIRE(c.request.logit_bias.size() == 2);
  auto lb = c.request.logit_bias;
  std::sort(lb.begin(), lb.end());
  CHECK(lb[0] == std::pair<int32_t, float>{7, 100.0f});
  CHECK(lb[1] == std::pair<int32_t, float>{12, -50.5f});
  // Defaults leave the plain rule.
  auto d = std::get<completion_command>(parse_completion_request(R"({"prompt":"a"})", lim));
  CHECK(!d.request.sampling.penalized());
  CHECK(d.request.sampling.min_p == 0.0f);
  CHECK(d.request.sampling.logprobs == -1);
  CHECK(d.request.logit_bias.empty());
  CHECK(std::get<completion_command>(parse_completion_request(R"({"prompt":"a","logprobs":false})", lim))
            .request.sampling.logprobs == -1);

  auto param_of = [&](const std::string& body) {
    auto b = parse_completion_request(body, lim);
    INFO(body);
    REQUIRE(std::holds_alternative<invalid_request>(b));
    auto j = json::parse(openai_error_json(error_code::invalid_request, std::get<invalid_request>(b).message));
    return j["error"]["param"].is_null() ? std::string("null") : j["error"]["param"].get<std::string>();
  };
  CHECK(param_of(R"({"prompt":"a","presence_penalty":2.01})") == "presence_penalty");
  CHECK(param_of(R"({"prompt":"a","frequency_penalty":-2.5})") == "frequency_penalty");
  CHECK(param_of(R"({"prompt":"a","repetition_penalty":0})") == "repetition_penalty");
  CHECK(param_of(R"({"prompt":"a","repetition_penalty":-1})") == "repetition_penalty");
  CHECK(param_of(R"({"prompt":"a","min_p":1.01})") == "min_p");
  CHECK(param_of(R"({"prompt":"a","min_p":"x"})") == "min_p");
  CHECK(param_of(R"({"prompt":"a","max_tokens":4,"min_tokens":5})") == "min_tokens");
  CHECK(param_of(R"({"prompt":"a","min_tokens":-1})") == "min_tokens");
  CHECK(param_of(R"({"prompt":"a","logit_bias":{"7":100.5}})") == "logit_bias");
  CHECK(param_of(R"({"prompt":"a","logit_bias":{"300":1}})") == "logit_bias");  // n_vocab 300
  CHECK(param_of(R"({"prompt":"a","logit_bias":{"-1":1}})") == "logit_bias");
  CHECK(param_of(R"({"prompt":"a","logit_bias":{"7":1,"07":2}})") == "logit_bias");
  CHECK(param_of(R"({"prompt":"a","logit_bias":[1]})") == "logit_bias");
  CHECK(param_of(R"({"prompt":"a","logit_bias":{"7":"1"}})") == "logit_bias");
  CHECK(param_of(R"({"prompt":"a","logprobs":21})") == "logprobs");
  CHECK(param_of(R"({"prompt":"a","logprobs":-1})") == "logprobs");
  CHECK(param_of(R"({"prompt":"a","prompt_logprobs":2})") == "prompt_logprobs");
  CHECK(param_of(R"({"prompt":"a","use_beam_search":true})") == "use_beam_search");
  CHECK(param_of(R"({"prompt":"a","include_stop_str_in_output":true})") == "include_stop_str_in_output");
  CHECK(param_of(R"({"prompt":"a","suffix":"z"})") == "suffix");
  CHECK(param_of(R"({"prompt":"a","best_of":3})") == "best_of");
  CHECK(param_of(R"({"prompt":"a","n":17})") == "n");
  CHECK(param_of(R"({"prompt":"a","n":1.5})") == "n");
  CHECK(param_of(R"({"prompt":"a","user":1})") == "user");
  CHECK(param_of(R"({"prompt":"a","stop_token_ids":[999]})") == "stop_token_ids");
  CHECK(param_of(R"({"prompt":"a","top_p":0})") == "top_p");
  CHECK(param_of("{") == "null");
  lim.n_vocab = 1000;  // room for 301 distinct ids
  std::string many = R"({"prompt":"a","logit_bias":{)";
  for (int i = 0; i < 301; ++i) many += (i ? "," : "") + std::string("\"") + std::to_string(i) + "\":1";
  CHECK(param_of(many + "}}") == "logit_bias");
  many.erase(many.rfind(','));  // 300: allowed
  CHECK(std::holds_alternative<completion_command>(parse_completion_request(many + "}}", lim)));
  lim.n_vocab = 300;

  // The WebSocket frame takes the same fields and logprobs as an integer.
  auto g = expect_generate(R"({"type":"generate","id":"a","prompt":"x","logprobs":3,"min_p":0.5,"logit_bias":{"1":-100}})");
  CHECK(g.request.sampling.logprobs == 3);
  CHECK(g.request.sampling.min_p == 0.5f);
  CHECK(g.request.logit_bias.size() == 1);
  CHECK(expect_invalid(R"({"type":"generate","id":"a","prompt":"x","frequency_penalty":3})").message.find(
            "frequency_penalty") == 0);
  CHECK(expect_invalid(R"({"type":"generate","id":"a","prompt":"x","logprobs":true})").message.find("logprobs") == 0);

  // Chat: max_completion_tokens before min_tokens is checked; refused fields.
  auto chat_bad = [&](const std::string& body) {
    auto b = parse_chat_request(body, lim);
    REQUIRE(std::holds_alternative<invalid_request>(b));
    return std::get<invalid_request>(b).message;
  };
  const std::string m = R"("messages":[{"role":"user","content":"x"}])";
  CHECK(chat_bad("{" + m + R"(,"max_tokens":9,"max_completion_tokens":2,"min_tokens":3})").find("min_tokens") == 0);
  CHECK(chat_bad("{" + m + R"(,"store":true})").find("store") == 0);
  CHECK(chat_bad("{" + m + R"(,"audio":{}})").find("audio") == 0);
  CHECK(chat_bad("{" + m + R"(,"modalities":["text","audio"]})").find("modalities") == 0);
  CHECK(chat_bad("{" + m + R"(,"best_of":2})").find("best_of") == 0);
  CHECK(chat_bad("{" + m + R"(,"verbosity":"low"})").find("verbosity") == 0);
  auto okc = parse_chat_request("{" + m + R"(,"modalities":["text"],"store":false,"presence_penalty":1})", lim);
  REQUIRE(std::holds_alternative<chat_command>(okc));
  CHECK(std::get<chat_command>(okc).request.sampling.presence_penalty == 1.0f);
}

TEST_CASE("logprobs in response bodies and frames") {
  auto bytes = [](int32_t id) -> std::string_view {
    static const std::string t[] = {"a", "b", "\xE2\x82", "\xAC"};
    return id >= 0 && id < 4 ? std::string_view(t[id]) : std::string_view();
  };
  auto tok = [](int32_t id, float lp, std::vector<std::pair<int32_t, float>> top) {
    event e;
    e.type = event::kind::token;
    e.token = id;
    e.n_top = int32_t(top.size());
    e.logprob = lp;
    e.top_logprobs = std::move(top);
    return e;
  };
  logprobs_builder b;
  b.offset = 3;  // an echoed prompt of three bytes
  b.add(tok(0, -0.5f, {{1, -0.25f}, {0, -0.5f}}), bytes);
  b.add(tok(2, -1.0f, {}), bytes);
  b.add(event{}, bytes);  // no logprobs: nothing added
  auto j = json::parse(b.json());
  CHECK(j["tokens"] == json::array({"a", "\uFFFD\uFFFD"}));  // each stray byte of a partial character
  CHECK(j["token_logprobs"] == json::array({-0.5, -1.0}));
  CHECK(j["text_offset"] == json::array({3, 4}));
  CHECK(j["top_logprobs"][0] == json({{"b", -0.25}, {"a", -0.5}}));
  CHECK(j["top_logprobs"][1] == json({{"\uFFFD\uFFFD", -1.0}}));

  logprobs_builder c;
  c.chat = true;
  c.add(tok(2, -1.0f, {{2, -1.0f}, {3, -std::numeric_limits<float>::infinity()}}), bytes);
  auto k = json::parse(c.json());
  CHECK(k["refusal"].is_null());
  REQUIRE(k["content"].size() == 1);
  CHECK(k["content"][0]["bytes"] == json::array({0xE2, 0x82}));
  CHECK(k["content"][0]["logprob"] == -1.0);
  CHECK(k["content"][0]["top_logprobs"][1]["bytes"] == json::array({0xAC}));
  CHECK(k["content"][0]["top_logprobs"][1]["logprob"] == -9999.0);

  event d;
  d.type = event::kind::done;
  auto body = json::parse(openai_completion_json("c", 1, "m", "ab", d, b.json()));
  CHECK(body["choices"][0]["logprobs"]["tokens"].size() == 2);
  CHECK(json::parse(openai_completion_json("c", 1, "m", "ab", d))["choices"][0]["logprobs"].is_null());
  CHECK(json::parse(openai_chat_json("c", 1, "m", "ab", d, c.json()))["choices"][0]["logprobs"]["content"].size() == 1);
  CHECK(json::parse(openai_chat_chunk_json("c", 1, "m", false, "x", nullptr, c.json()))["choices"][0]["logprobs"]
            ["content"].size() == 1);
  CHECK(json::parse(openai_chunk_json("c", 1, "m", "x", nullptr, b.json()))["choices"][0]["logprobs"]["tokens"].size() == 2);

  std::string f;
  const event t = tok(1, -0.25f, {{1, -0.25f}, {0, -2.0f}});
  token_frame(f, "id", 0, 1, "b", &t);
  auto w = json::parse(f);
  CHECK(w["logprob"] == -0.25);
  CHECK(w["top_logprobs"] == json::array({json{{"token", 1}, {"logprob", -0.25}}, json{{"token", 0}, {"logprob", -2.0}}}));
  token_frame(f, "id", 0, 1, "b");
  CHECK(!json::parse(f).contains("logprob"));
}

TEST_CASE("the model's generation_config defaults fill what an OpenAI request leaves out") {
  auto lim = test_limits();
  lim.default_temperature = 0.6f;
  lim.default_top_p = 0.9f;
  lim.default_top_k = 20;
  auto d = std::get<completion_command>(parse_completion_request(R"({"prompt":"a"})", lim)).request.sampling;
  CHECK(d.temperature == 0.6f);
  CHECK(d.top_p == 0.9f);
  CHECK(d.top_k == 20);
  auto g = std::get<completion_command>(parse_completion_request(R"({"prompt":"a","temperature":1,"top_k":0})", lim))
               .request.sampling;
  CHECK(g.temperature == 1.0f);
  CHECK(g.top_k == 0);
  CHECK(g.top_p == 0.9f);
  auto c = std::get<chat_command>(parse_chat_request(R"({"messages":[{"role":"user","content":"x"}]})", lim))
               .request.sampling;
  CHECK(c.temperature == 0.6f);
  CHECK(c.top_k == 20);
  // The WebSocket protocol keeps its own (greedy) defaults.
  CHECK(expect_generate(R"({"type":"generate","id":"a","prompt":"x"})", lim).request.sampling.temperature == 0.0f);
}

TEST_CASE("skip_special_tokens (vLLM's, default true); structured-output fields refused, never ignored") {
  CHECK(expect_generate(R"({"type":"generate","id":"a","prompt":"x"})").request.skip_special_tokens);
  CHECK_FALSE(expect_generate(R"({"type":"generate","id":"a","prompt":"x","skip_special_tokens":false})")
                  .request.skip_special_tokens);
  CHECK(expect_invalid(R"({"type":"generate","id":"a","prompt":"x","skip_special_tokens":"no"})")
            .message.find("skip_special_tokens") != std::string::npos);
  auto c = parse_completion_request(R"({"prompt":"x","skip_special_tokens":false})", test_limits());
  REQUIRE(std::holds_alternative<completion_command>(c));
  CHECK_FALSE(std::get<completion_command>(c).request.skip_special_tokens);
  const std::pair<const char*, const char*> refused[] = {
      {"response_format", R"({"prompt":"x","response_format":{"type":"json_object"}})"},
      {"guided_json", R"({"prompt":"x","guided_json":{"type":"object"}})"},
      {"guided_choice", R"({"prompt":"x","guided_choice":["a","b"]})"},
      {"structured_outputs", R"({"prompt":"x","structured_outputs":{"regex":"a+"}})"}};
  for (const auto& [field, body] : refused) {
    auto r = parse_completion_request(body, test_limits());
    REQUIRE(std::holds_alternative<invalid_request>(r));
    CHECK(std::get<invalid_request>(r).message.rfind(field, 0) == 0);  // named first: OpenAI's param
  }
  auto t = parse_completion_request(R"({"prompt":"x","response_format":{"type":"text"}})", test_limits());
  CHECK(std::holds_alternative<completion_command>(t));
}

TEST_CASE("n choices: parsed on every entry point; one body with a choice per index, chunks by index") {
  protocol_limits lim;
  lim.n_vocab = 300;
  lim.n_ctx = 64;
  auto c = std::get<completion_command>(parse_completion_request(R"({"prompt":"a","n":4})", lim));
  CHECK(c.request.n == 4);
  CHECK(std::get<completion_command>(parse_completion_request(R"({"prompt":"a"})", lim)).request.n == 1);
  auto ch = std::get<chat_command>(parse_chat_request(R"({"messages":[{"role":"user","content":"x"}],"n":16})", lim));
  CHECK(ch.request.n == 16);
  auto g = parse_command(R"({"type":"generate","id":"a","prompt":"x","n":3})", lim);
  REQUIRE(std::holds_alternative<generate_command>(g));
  CHECK(std::get<generate_command>(g).request.n == 3);
  CHECK(std::holds_alternative<invalid_request>(parse_command(R"({"type":"generate","id":"a","prompt":"x","n":17})", lim)));

  event d;
  d.type = event::kind::done;
  d.prompt_tokens = 5;
  d.completion_tokens = 7;
  d.choice_reasons = {finish_reason::length, finish_reason::stop};
  d.choice_tokens = {4, 3};
  const std::vector<std::string> texts = {"ab", "c"}, lps = {"", ""};
  auto body = json::parse(openai_completion_json("c", 1, "m", texts, d, lps));
  REQUIRE(body["choices"].size() == 2);
  CHECK(body["choices"][1]["index"] == 1);
  CHECK(body["choices"][1]["text"] == "c");
  CHECK(body["choices"][0]["finish_reason"] == "length");
  CHECK(body["choices"][1]["finish_reason"] == "stop");
  CHECK(body["usage"]["prompt_tokens"] == 5);  // once
  CHECK(body["usage"]["completion_tokens"] == 7);
  auto chat = json::parse(openai_chat_json("c", 1, "m", texts, d, lps));
  CHECK(chat["choices"][1]["message"]["content"] == "c");
  CHECK(chat["choices"][1]["finish_reason"] == "stop");
  CHECK(json::parse(openai_chunk_json("c", 1, "m", "x", nullptr, {}, 3))["choices"][0]["index"] == 3);
  CHECK(json::parse(openai_final_chunk_json("c", 1, "m", d, 1))["choices"][0]["finish_reason"] == "stop");
  CHECK(json::parse(openai_chat_chunk_json("c", 1, "m", true, "", nullptr, {}, 2))["choices"][0]["index"] == 2);
  CHECK(json::parse(openai_chat_final_chunk_json("c", 1, "m", d, 0))["choices"][0]["finish_reason"] == "length");

  auto done = json::parse(event_frame("r", d));
  REQUIRE(done["choices"].size() == 2);
  CHECK(done["choices"][1]["finish_reason"] == "stop");
  CHECK(done["choices"][1]["completion_tokens"] == 3);
  event t;
  t.type = event::kind::token;
  t.n_choices = 2;
  t.choice = 1;
  t.choice_done = true;
  t.reason = finish_reason::stop;
  auto tok = json::parse(event_frame("r", t));
  CHECK(tok["choice"] == 1);
  CHECK(tok["finish_reason"] == "stop");
  t.n_choices = 1;
  t.choice = 0;
  auto one = json::parse(event_frame("r", t));
  CHECK_FALSE(one.contains("choice"));  // n = 1: the frame is as before
  CHECK_FALSE(one.contains("finish_reason"));
}

TEST_CASE("echo with logprobs: the prompt's tokens first, the first with null, then the completion's") {
  protocol_limits lim;
  lim.n_vocab = 300;
  lim.n_ctx = 64;
  auto c = std::get<completion_command>(parse_completion_request(R"({"prompt":"a","echo":true,"logprobs":2})", lim));
  CHECK(c.request.prompt_logprobs);
  CHECK_FALSE(std::get<completion_command>(parse_completion_request(R"({"prompt":"a","echo":true})", lim))
                  .request.prompt_logprobs);
  CHECK_FALSE(std::get<completion_command>(parse_completion_request(R"({"prompt":"a","logprobs":2})", lim))
                  .request.prompt_logprobs);
  auto bytes = [](int32_t id) -> std::string_view {
    static const std::string names[] = {"A", "bb", "c", "dd"};
    return names[id];
  };
  event e;
  e.type = event::kind::token;
  e.prompt_ids = {0, 1, 2};
  e.prompt_logprobs = {-0.5f, -1.5f};
  e.prompt_top = {{1, -0.5f}, {3, -0.9f}, {3, -0.2f}, {2, -1.5f}};
  e.n_top = 2;
  e.token = 3;
  e.logprob = -0.1f;
  e.top_logprobs = {{3, -0.1f}, {0, -3.0f}};
  logprobs_builder b;
  b.add_prompt(e, bytes);
  b.offset = 5;  // the echoed text's length: the completion's offsets count from there
  b.add(e, bytes);
  auto j = json::parse(b.json());
  CHECK(j["tokens"] == json::array({"A", "bb", "c", "dd"}));
  CHECK(j["token_logprobs"][0].is_null());
  CHECK(j["top_logprobs"][0].is_null());
  CHECK(j["token_logprobs"][1] == -0.5);
  CHECK(j["top_logprobs"][2]["dd"] == -0.2);
  CHECK(j["top_logprobs"][2]["c"] == -1.5);
  CHECK(j["text_offset"] == json::array({0, 1, 3, 5}));
  CHECK(std::abs(j["token_logprobs"][3].get<double>() + 0.1) < 1e-6);
}
