// libFuzzer target: fuzz_config (fuzz/fuzz-entry.hpp says what it checks). scripts/fuzz.sh runs it.
#include "fuzz/fuzz-entry.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (!infer::fuzz_config(data, size)) __builtin_trap();  // a broken promise is a crash to keep
  return 0;
}
