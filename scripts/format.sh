#!/usr/bin/env bash
# format.sh: clang-format (.clang-format) over the project's C++ and CUDA sources.
#   scripts/format.sh            rewrite the files in place
#   scripts/format.sh --check    change nothing; list the files that differ, exit 1 if any
#   scripts/format.sh FILE...    only these files (either mode)
# Uses clang-format-14 (Debian bookworm's; scripts/setup.sh installs clang) so that every
# machine formats alike.
set -euo pipefail
cd "$(dirname "$0")/.."
CF=${CLANG_FORMAT:-$(command -v clang-format-14 || command -v clang-format || true)}
[ -n "$CF" ] || { echo "format.sh: clang-format not found (apt-get install clang-format-14)" >&2; exit 2; }
check=0
if [ "${1:-}" = "--check" ]; then check=1; shift; fi
if (($#)); then
  files=("$@")
else
  mapfile -t files < <(git ls-files '*.cpp' '*.hpp' '*.h' '*.cu' '*.cuh' | grep -v '^third_party/')
fi
bad=0
for f in "${files[@]}"; do
  if ((check)); then
    if ! "$CF" --style=file "$f" | cmp -s - "$f"; then
      echo "$f"
      bad=1
    fi
  else
    "$CF" --style=file -i "$f"
  fi
done
if ((check && bad)); then
  echo "format.sh: the files above are not formatted (run scripts/format.sh)" >&2
  exit 1
fi
