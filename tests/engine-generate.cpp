// Not a test: greedy generation with the CPU backend alone (no actors, no scheduler, no
// server), the oracle tests/e2e/llama-e2e.js compares the service's tokens with.
//   engine-generate --model synthetic:llama-tiny [--seed N] --max-tokens N --prompt-tokens 1,2,3 [...]
// Prints one JSON line per --prompt-tokens: {"prompt":[...],"tokens":[...]}.
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "engine/cpu-backend.hpp"
#include "model/weights.hpp"

using namespace infer;

int main(int argc, char** argv) {
  std::string model = "synthetic:llama-tiny";
  uint64_t seed = 1234;
  int max_tokens = 16;
  std::vector<std::vector<int32_t>> prompts;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i], v = argv[i + 1];
    if (a == "--model") model = v;
    else if (a == "--seed") seed = std::strtoull(v.c_str(), nullptr, 10);
    else if (a == "--max-tokens") max_tokens = std::atoi(v.c_str());
    else if (a == "--prompt-tokens") {
      std::vector<int32_t> p;
      for (size_t pos = 0; pos < v.size();) {
        size_t end = v.find(',', pos);
        if (end == std::string::npos) end = v.size();
        p.push_back(int32_t(std::atoi(v.substr(pos, end - pos).c_str())));
        pos = end + 1;
      }
      prompts.push_back(p);
    } else {
      std::fprintf(stderr, "unknown argument %s\n", a.c_str());
      return 2;
    }
  }
  auto w = load_model_weights(model, seed);
  if (!w) {
    std::fprintf(stderr, "%s\n", w.error().message.c_str());
    return 1;
  }
  for (const auto& prompt : prompts) {
    backend_options o;
    o.kv_block_size = 16;
    o.kv_memory_mb = 64;
    auto be = make_cpu_backend(*w, o);
    if (!be) {
      std::fprintf(stderr, "%s\n", be.error().message.c_str());
      return 1;
    }
    const int total = int(prompt.size()) + max_tokens;
    std::vector<int32_t> blocks;
    for (int b = 0; b * 16 < total; ++b) blocks.push_back(b);
    std::vector<int32_t> out_tokens;
    step_batch batch;
    step_output out;
    int past = 0;
    std::vector<int32_t> next = prompt;
    for (int k = 0; k < max_tokens; ++k) {
      batch.reset(int32_t(blocks.size()));
      batch.add(past, next, blocks, true, {}, uint64_t(k));
      if (auto s = (*be)->step(batch, out); !s) {
        std::fprintf(stderr, "%s\n", s.message.c_str());
        return 1;
      }
      past += int(next.size());
      out_tokens.push_back(out.tokens[0]);
      next = {out.tokens[0]};
    }
    std::string line = "{\"prompt\":[";
    for (size_t i = 0; i < prompt.size(); ++i) line += (i ? "," : "") + std::to_string(prompt[i]);
    line += "],\"tokens\":[";
    for (size_t i = 0; i < out_tokens.size(); ++i) line += (i ? "," : "") + std::to_string(out_tokens[i]);
    std::printf("%s]}\n", line.c_str());
  }
  return 0;
}
