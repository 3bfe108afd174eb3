// fuzz-entry: the bodies of the libFuzzer targets (fuzz/fuzz-*.cpp), kept apart so that the
// normal build replays every saved input through exactly the same code
// (tests/test-fuzz-regressions.cpp) without libFuzzer or clang.
//
// Each takes arbitrary bytes, runs a parser on them and checks what its contract promises
// of the outcome (an error value with a message, or a value within the documented limits,
// and frames built from it that are valid JSON). Returns false, after naming the broken
// promise on stderr, when one does not hold; a crash, sanitizer report or escaping
// exception is a failure too. Never throws on purpose.
#pragma once
#include <cstddef>
#include <cstdint>

namespace infer {

// net/protocol.hpp. data[0] selects the parser and the limits (see fuzz-entry.cpp):
// WebSocket frame, /v1/completions body, /tokenize body, /detokenize body, or
// append_json_string on raw bytes; the rest of the input is the text.
bool fuzz_protocol(const uint8_t* data, size_t size);
// config/service-config.hpp: TOML text -> service_config -> validate, and
// format_service_config read back to an equal config.
bool fuzz_config(const uint8_t* data, size_t size);
// base/safetensors.hpp: the bytes as a whole .safetensors file (header and data).
bool fuzz_safetensors(const uint8_t* data, size_t size);

}  // namespace infer
