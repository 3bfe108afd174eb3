// infer-bench-tokenizer: encode / decode throughput of every packaged tokenizer on a
// mixed corpus (English prose, code, CJK, emoji, digits), first pass (word cache cold)
// and later passes (warm). usage: infer-bench-tokenizer [--mb N] [--passes N]
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "tokenizer/tokenizer.hpp"

using clk = std::chrono::steady_clock;

static std::string corpus(size_t bytes) {
  const char* parts[] = {
      "The quick brown fox jumps over the lazy dog. It's 2024 and we're testing tokenizers; ",
      "int main(int argc, char** argv) {\n    return argc > 1 ? 0 : 1;\n}\n",
      "日本語のテキストと中文字符、한국어 텍스트. ", "Emoji 😀🎉👩‍💻 and café naïve résumé. ",
      "Numbers: 3.14159, 1,000,000, $99.99, 100%. ", "    indented\tlines\n\n\n", "Привет, мир! Ελληνικά. "};
  std::string s;
  uint64_t x = 88172645463325252ull;
  while (s.size() < bytes) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    s += parts[x % (sizeof parts / sizeof *parts)];
    // A fresh word now and then, so the cache does not hold every word.
    s += "w" + std::to_string(x % 100000) + " ";
  }
  return s;
}

int main(int argc, char** argv) {
  double mb = 4;
  int passes = 3;
  for (int i = 1; i + 1 < argc; ++i) {
    if (!std::strcmp(argv[i], "--mb")) mb = std::atof(argv[++i]);
    else if (!std::strcmp(argv[i], "--passes")) passes = std::atoi(argv[++i]);
  }
  const std::string text = corpus(size_t(mb * 1e6));
  std::printf("%-12s %10s %12s %12s %12s %12s\n", "tokenizer", "tokens", "cold MB/s", "warm MB/s", "warm Mtok/s",
              "decode MB/s");
  for (const auto& name : infer::tokenizer::builtin_names()) {
    auto r = infer::tokenizer::builtin(name);
    if (!r) {
      std::printf("%-12s %s\n", name.c_str(), r.error().message.c_str());
      continue;
    }
    const auto& tok = r.value();
    std::vector<int32_t> ids;
    ids.reserve(text.size());
    double cold = 0, warm = 1e30;
    for (int p = 0; p < passes; ++p) {
      ids.clear();
      auto t0 = clk::now();
      tok.encode(text, ids, {.add_special_tokens = false});
      double s = std::chrono::duration<double>(clk::now() - t0).count();
      if (p == 0) cold = s;
      else warm = std::min(warm, s);
    }
    if (passes < 2) warm = cold;
    auto t0 = clk::now();
    std::string out = tok.decode_text(ids);
    double ds = std::chrono::duration<double>(clk::now() - t0).count();
    std::printf("%-12s %10zu %12.1f %12.1f %12.2f %12.1f\n", name.c_str(), ids.size(), text.size() / 1e6 / cold,
                text.size() / 1e6 / warm, ids.size() / 1e6 / warm, out.size() / 1e6 / ds);
  }
}
