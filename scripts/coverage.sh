#!/usr/bin/env bash
# coverage.sh — line and branch coverage per folder. Builds dspex with gcc
# and -Db_coverage=true in its own directory (build-cov/), runs the test
# suites there (all but `slow` unless DX_COV_SUITES says otherwise), then
# has gcovr read the counters and prints, per folder (runtime/, actors/,
# programs/, providers/, cli/) and in total, lines and branches covered.
# The target for runtime/, actors/, programs/ and providers/ is 90 % of
# lines (docs/reliability.md has the latest figures). Not part of test.sh:
# a coverage build runs the suites again, slower.
#
# Usage: scripts/coverage.sh            build, test, report
#        scripts/coverage.sh --report   report on the counters already there
# DX_COV_SUITES   meson test suites to run (default "unit integration fuzz")
# Writes build-cov/coverage.json (gcovr's JSON summary) and
# build-cov/coverage.txt (its per-file table).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
"$root/scripts/deps.sh"
dir=build-cov

if [ "${1:-}" != --report ]; then
    if [ ! -f "$dir/build.ninja" ]; then
        CC=gcc meson setup "$dir" --buildtype=debug -Db_coverage=true \
            >/dev/null
    fi
    ninja -C "$dir" -j "${DX_JOBS:-2}"
    # Counters of an earlier run would add up with this one's.
    find "$dir" -name '*.gcda' -delete
    suites=()
    for s in ${DX_COV_SUITES:-unit integration fuzz}; do
        suites+=(--suite "$s")
    done
    # A failing test still leaves its counters: report what ran, and say so.
    meson test -C "$dir" --num-processes 2 "${suites[@]}" \
        --timeout-multiplier 3 >/dev/null ||
        echo "coverage.sh: some tests failed (see $dir/meson-logs);" \
            "coverage below is of what ran" >&2
fi

# Only the library and command sources count, not tests, benchmarks,
# examples or fuzz drivers; gcc's unreachable exception branches are left
# out (C has none).
gcovr -r "$root" "$dir" \
    --filter 'runtime/' --filter 'providers/' --filter 'actors/' \
    --filter 'programs/' --filter 'cli/' \
    --exclude-unreachable-branches \
    --json-summary "$dir/coverage.json" --txt "$dir/coverage.txt" >/dev/null

python3 - "$dir/coverage.json" <<'PY'
import json, sys
data = json.load(open(sys.argv[1]))
folders = ["runtime", "actors", "programs", "providers", "cli"]
acc = {f: [0, 0, 0, 0] for f in folders}
for f in data["files"]:
    top = f["filename"].split("/")[0]
    if top in acc:
        a = acc[top]
        a[0] += f["line_covered"]; a[1] += f["line_total"]
        a[2] += f["branch_covered"]; a[3] += f["branch_total"]
def pct(c, t):
    return 100.0 * c / t if t else 100.0
print("%-10s %8s %14s %8s %14s" % ("folder", "lines", "", "branches", ""))
tot = [0, 0, 0, 0]
for f in folders:
    a = acc[f]
    tot = [x + y for x, y in zip(tot, a)]
    mark = "" if f == "cli" or pct(a[0], a[1]) >= 90 else "  (< 90 % target)"
    print("%-10s %7.1f%% %14s %7.1f%% %14s%s" % (f + "/", pct(a[0], a[1]),
          "%d/%d" % (a[0], a[1]), pct(a[2], a[3]), "%d/%d" % (a[2], a[3]), mark))
print("%-10s %7.1f%% %14s %7.1f%% %14s" % ("total", pct(tot[0], tot[1]),
      "%d/%d" % (tot[0], tot[1]), pct(tot[2], tot[3]), "%d/%d" % (tot[2], tot[3])))
PY
