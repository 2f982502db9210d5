#!/usr/bin/env bash
# soak.sh — a bounded soak: evaluation load through the local LM server with
# every fault class injected, and the same program served over HTTP
# (dx_serve) under a steady stream of requests, some malformed
# (tests/reliability/soak_main.c, built as build/tests/dspex-soak); the
# process's RSS sampled every second. Prints the RSS slope over the run
# after a warm-up (least squares, KiB/min), the examples and HTTP requests
# done / failed / lost, and a verdict:
#   FLAT     slope <= DX_SOAK_MAX_SLOPE KiB/min (default 100), nothing lost
#   GROWING  otherwise (exit 1)
# Not part of test.sh (it runs for minutes).
#
# Usage: scripts/soak.sh [SECONDS]   (default 600)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
seconds=${1:-600}
max_slope=${DX_SOAK_MAX_SLOPE:-100}
dir=build
if [ ! -f "$dir/build.ninja" ]; then
    meson setup "$dir" --buildtype=debugoptimized >/dev/null
fi
ninja -C "$dir" -j "${DX_JOBS:-2}" tests/dspex-soak >/dev/null
log=$dir/soak.log
echo "soak.sh: ${seconds}s of evaluation load with faults; samples in $log"
rc=0
"$dir/tests/dspex-soak" "$seconds" >"$log" || rc=$?
python3 - "$log" "$max_slope" "$rc" <<'PY'
import sys
path, max_slope, rc = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
samples, heap, summary = [], [], ""
for line in open(path):
    f = line.split()
    if f and f[0] == "sample":
        samples.append((float(f[1]), float(f[2])))
        heap.append((float(f[1]), float(f[3])))
    elif f and f[0] == "soak":
        summary = line.strip()
if len(samples) < 10:
    print("soak: too few samples (%d); exit status %d" % (len(samples), rc))
    sys.exit(1)
# Warm-up: the first fifth (at least 10 s) fills pools, caches, arenas.
start = max(10.0, samples[-1][0] / 5)
pts = [p for p in samples if p[0] >= start] or samples
def slope_per_min(pts):
    n = len(pts)
    mt = sum(t for t, _ in pts) / n
    mr = sum(r for _, r in pts) / n
    var = sum((t - mt) ** 2 for t, _ in pts)
    return (sum((t - mt) * (r - mr) for t, r in pts) / var * 60) if var else 0.0
n = len(pts)
slope = slope_per_min(pts)
# malloc'd bytes in use beside RSS: tells memory held from fragmentation.
heap_slope = slope_per_min([p for p in heap if p[0] >= start] or heap)
lost = 0
for kv in summary.split()[1:]:
    k, _, v = kv.partition("=")
    if k == "lost":
        lost = int(v)
print("soak: %s" % summary)
print("soak: rss first %.0f KiB, after warm-up %.0f KiB, last %.0f KiB, peak %.0f KiB"
      % (samples[0][1], pts[0][1], samples[-1][1], max(r for _, r in samples)))
print("soak: slope %.1f KiB/min over %.0f s (%d samples after %.0f s warm-up);"
      " heap in use %.1f KiB/min" % (slope, pts[-1][0] - pts[0][0], n, start,
                                     heap_slope))
ok = slope <= max_slope and lost == 0 and rc == 0
print("soak: verdict %s" % ("FLAT" if ok else "GROWING" if slope > max_slope else "FAILED"))
sys.exit(0 if ok else 1)
PY
