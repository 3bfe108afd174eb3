#!/usr/bin/env bash
# Runs on the GPU machine from a bundle (scripts/gpu-bundle.sh) that carries, beside our
# bin/infer-bench-cuda, other builds of it to compare with (bin/infer-bench-cuda-<tag>,
# e.g. -main and -cudallama): the GPU tests once, then the GPT-2 engine benchmark of every
# binary alternated PERF_ROUNDS times in a rotating order (so that drift of the card hits
# all alike), then, time permitting, ncu's per-kernel time of decode steps of the
# binaries named in PERF_NCU (default: main and ours). Everything lands under $OUT.
#   bash .gpu-bundle-NAME/gpu-perf-cmp.sh
set -uo pipefail
B=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-/tmp/gpu-out}
WORK=${GPU_WORK:-/tmp/gpu-work}
mkdir -p "$OUT" "$WORK"
START=$SECONDS
BUDGET=${PERF_BUDGET:-300}  # seconds: ncu is skipped when less than a minute is left
# Environment (library path, cuBLAS 13) as gpu-run.sh sets it; its env and tests stages.
bash "$B/gpu-run.sh" env tests
[ -d "$WORK/gpt2-small" ] || python3 "$B/gpu-hf.py" export --preset gpt2-small --seed 1 \
  --out "$WORK/gpt2-small" --prompts 16 >"$OUT/export.log" 2>&1
source <(sed -n '/^cublas_dir=/,/^fi$/p' "$B/gpu-run.sh")
export LD_LIBRARY_PATH="$B/lib${cublas_dir:+:$cublas_dir}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
ldd "$B/bin/test_cuda_kernels" 2>&1 | grep -q "version .* not found" && export LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$B/lib-fallback"

bins=("$B/bin/infer-bench-cuda")
for f in "$B"/bin/infer-bench-cuda-*; do [ -x "$f" ] && bins+=("$f"); done
tag() { local n; n=$(basename "$1"); [ "$n" = infer-bench-cuda ] && echo ours || echo "${n#infer-bench-cuda-}"; }
args() {  # main's binary has no --max-model-len (it serves the model's 1024)
  [ "$(tag "$1")" = main ] && echo "" || echo "--max-model-len 1024"
}
n=${#bins[@]}
for r in $(seq 1 "${PERF_ROUNDS:-4}"); do
  for k in $(seq 0 $((n - 1))); do
    b=${bins[$(((k + r) % n))]}
    t=$(tag "$b")
    echo "== round $r $t" >>"$OUT/perf.log"
    # shellcheck disable=SC2046
    timeout 120 "$b" --model "$WORK/gpt2-small" --batches ${PERF_BATCHES:-1,8,32,64,128,256} \
      --prompt 32 --new 128 $(args "$b") >"$OUT/perf-$t-$r.log" 2>&1
    echo "rc=$?" >>"$OUT/perf-$t-$r.log"
    cat "$OUT/perf-$t-$r.log" >>"$OUT/perf.log"
  done
done

# Median step per (binary, batch) over the rounds.
python3 - "$OUT" <<'EOF' | tee "$OUT/perf-summary.txt"
import glob, os, re, statistics, sys
out = sys.argv[1]
cells = {}
for f in glob.glob(os.path.join(out, "perf-*-*.log")):
    t = re.match(r"perf-(.+)-(\d+)\.log", os.path.basename(f)).group(1)
    for line in open(f):
        m = re.match(r"\s+(\d+)\s+([\d.]+)\s+\d+", line)
        if m:
            cells.setdefault(t, {}).setdefault(int(m.group(1)), []).append(float(m.group(2)))
tags = sorted(cells, key=lambda t: (t != "main", t != "cudallama", t))
batches = sorted({b for t in cells for b in cells[t]})
print("batch " + " ".join(f"{t:>28}" for t in tags) + "   ours/main")
for b in batches:
    row = []
    for t in tags:
        v = cells[t].get(b, [])
        row.append(f"{statistics.median(v):.3f} [{' '.join(f'{x:.3f}' for x in v)}]" if v else "-")
    rel = ""
    if b in cells.get("ours", {}) and b in cells.get("main", {}):
        rel = f"{statistics.median(cells['ours'][b]) / statistics.median(cells['main'][b]) - 1:+.1%}"
    print(f"{b:5d} " + " ".join(f"{c:>28}" for c in row) + f"   {rel}")
EOF

NCU=$(command -v ncu || ls /usr/local/cuda*/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
if [ -z "$NCU" ]; then
  echo "no ncu on this machine" | tee "$OUT/ncu.log"
  exit 0
fi
for pb in ${PERF_NCU_BATCHES:-256 1}; do
  for t in ${PERF_NCU:-main ours}; do
    b="$B/bin/infer-bench-cuda"; [ "$t" = ours ] || b="$B/bin/infer-bench-cuda-$t"
    left=$((BUDGET - (SECONDS - START) - 10))
    if [ $left -lt 40 ]; then
      echo "ncu $t b$pb skipped: $((SECONDS - START)) s used" >>"$OUT/ncu.log"
      continue
    fi
    # shellcheck disable=SC2046
    timeout $((left < 90 ? left : 90)) "$NCU" --launch-skip 600 --launch-count 220 --csv --page raw \
      --metrics gpu__time_duration.sum --log-file "$OUT/ncu-$t-b$pb.csv" \
      "$b" --model "$WORK/gpt2-small" --batches $pb --prompt 32 --new 24 $(args "$b") \
      >>"$OUT/ncu.log" 2>&1
    echo "ncu $t b$pb rc=$?" >>"$OUT/ncu.log"
  done
done
# Per kernel name: launches and total time (ns) in the profiled window.
python3 - "$OUT" <<'EOF' | tee "$OUT/ncu-summary.txt"
import csv, glob, os, sys, collections
out = sys.argv[1]
for f in sorted(glob.glob(os.path.join(out, "ncu-*.csv"))):
    rows = [r for r in csv.reader(l for l in open(f) if not l.startswith("=="))]
    if len(rows) < 3:
        print(os.path.basename(f), "empty"); continue
    h = rows[0]
    try:
        ki, ti = h.index("Kernel Name"), h.index("gpu__time_duration.sum")
    except ValueError:
        print(os.path.basename(f), "no columns"); continue
    agg = collections.defaultdict(lambda: [0, 0.0])
    for r in rows[2:]:
        try:
            v = float(r[ti].replace(",", ""))
        except (ValueError, IndexError):
            continue
        name = r[ki].split("(")[0][:90]
        agg[name][0] += 1
        agg[name][1] += v
    print("==", os.path.basename(f), "total", f"{sum(a[1] for a in agg.values()):.0f}")
    for name, (c, s) in sorted(agg.items(), key=lambda x: -x[1][1]):
        print(f"  {c:4d} {s:12.0f} {s / c:10.0f}  {name}")
EOF
