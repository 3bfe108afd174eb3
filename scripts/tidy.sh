#!/usr/bin/env bash
# tidy.sh: clang-tidy (.clang-tidy) over the project's C++ sources, with the compile commands
# of a build dir (CUDA sources are left out: clang-tidy does not read nvcc's flags).
#   scripts/tidy.sh [BUILD_DIR] [FILE...]     default build/, every .cpp of the libraries and apps
# Exits non-zero on any finding. About a minute per file on a busy 2-core machine: give it
# the files you changed.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-build}
shift || true
TIDY=${CLANG_TIDY:-$(command -v clang-tidy-14 || command -v clang-tidy)}
[ -f "$dir/compile_commands.json" ] || { echo "tidy.sh: no $dir/compile_commands.json (configure first)" >&2; exit 2; }
if (($#)); then
  files=("$@")
else
  mapfile -t files < <(git ls-files 'base/*.cpp' 'kernels/*.cpp' 'model/*.cpp' 'engine/*.cpp' 'tokenizer/*.cpp' \
                         'template/*.cpp' 'config/*.cpp' 'gpu/*.cpp' 'supervision/*.cpp' 'actors/*.cpp' \
                         'net/*.cpp' 'apps/*.cpp')
fi
# GCC-only flags in the compile commands that clang does not know are dropped.
status=0
for f in "${files[@]}"; do
  echo "tidy: $f"
  "$TIDY" -p "$dir" --quiet --extra-arg=-Wno-unknown-warning-option --extra-arg=-Wno-unused-command-line-argument "$f" || status=1
done
exit $status
