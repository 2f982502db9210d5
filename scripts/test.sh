#!/usr/bin/env bash
# test.sh — the whole test command (the README's, and CI's through .ci/run):
# installs what is missing, lints, then builds and runs every test suite in
# three builds:
#   gcc   gcc, debugoptimized, in build/
#   asan  clang with AddressSanitizer + UndefinedBehaviorSanitizer, build-asan/
#   tsan  clang with ThreadSanitizer, build-tsan/
# Every stage runs even after an earlier one failed, so one run shows all
# the failures; the exit status is non-zero if any stage failed.
#
# Knobs, for developers:
#   DX_TEST_SETUPS  which builds to run (default "gcc asan tsan")
#   DX_JOBS         parallel compile jobs (default 2)
#   Extra arguments go to every `meson test` (e.g. a test name, --suite unit).
# A build directory is configured once; later runs only rebuild (ninja reruns
# meson by itself when a meson.build changes). Delete it to start clean.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
"$root/scripts/deps.sh"

setups=${DX_TEST_SETUPS:-gcc asan tsan}
jobs=${DX_JOBS:-2}
summary=()
failed=0
total_pass=0
total_fail=0
total_skip=0

elapsed()
{
    echo "$(($(date +%s) - $1))s"
}

# Configure dir (if it is not configured yet) with CC=$1 and the given meson
# options. A directory left by a failed configure is wiped and set up again.
configure()
{
    local cc=$1 dir=$2
    shift 2
    if [ -f "$dir/build.ninja" ]; then
        return 0
    fi
    local wipe=()
    if [ -f "$dir/meson-private/coredata.dat" ]; then
        wipe=(--wipe)
    fi
    CC=$cc meson setup "${wipe[@]}" "$dir" --buildtype=debugoptimized "$@"
}

# Count test results from meson's log of the last `meson test` in $1 and
# print "pass fail skip".
count_results()
{
    python3 - "$1/meson-logs/testlog.json" <<'EOF'
import json, sys
counts = {"pass": 0, "fail": 0, "skip": 0}
try:
    with open(sys.argv[1]) as f:
        for line in f:
            if not line.strip():
                continue
            r = json.loads(line).get("result", "")
            if r in ("OK", "EXPECTEDFAIL"):
                counts["pass"] += 1
            elif r == "SKIP":
                counts["skip"] += 1
            else:
                counts["fail"] += 1
except FileNotFoundError:
    pass
print(counts["pass"], counts["fail"], counts["skip"])
EOF
}

# Build and test one setup: name, compiler, build dir, meson options.
run_setup()
{
    local name=$1 cc=$2 dir=$3
    shift 3
    local t0 rc=0 what
    t0=$(date +%s)
    echo
    echo "==> $name: $cc build in $dir/"
    if ! configure "$cc" "$dir" "$@"; then
        summary+=("$(printf '%-5s FAIL  configure  %s' "$name" "$(elapsed "$t0")")")
        failed=1
        return
    fi
    if ! ninja -C "$dir" -j "$jobs"; then
        summary+=("$(printf '%-5s FAIL  build      %s' "$name" "$(elapsed "$t0")")")
        failed=1
        return
    fi
    rm -f "$dir/meson-logs/testlog.json"
    meson test -C "$dir" --print-errorlogs "${test_args[@]}" || rc=$?
    local pass fail skip
    read -r pass fail skip < <(count_results "$dir")
    total_pass=$((total_pass + pass))
    total_fail=$((total_fail + fail))
    total_skip=$((total_skip + skip))
    what="$pass passed, $fail failed, $skip skipped"
    if [ "$rc" -ne 0 ] || [ "$fail" -ne 0 ]; then
        summary+=("$(printf '%-5s FAIL  tests      %s  (%s)' "$name" "$(elapsed "$t0")" "$what")")
        failed=1
    elif [ "$pass" -eq 0 ]; then
        # A test command that runs no test is a defect, not a success.
        summary+=("$(printf '%-5s FAIL  no tests   %s' "$name" "$(elapsed "$t0")")")
        failed=1
    else
        summary+=("$(printf '%-5s PASS  tests      %s  (%s)' "$name" "$(elapsed "$t0")" "$what")")
    fi
}

test_args=("$@")

t0=$(date +%s)
echo "==> lint"
if "$root/scripts/lint.sh"; then
    summary+=("$(printf '%-5s PASS  lint       %s' lint "$(elapsed "$t0")")")
else
    summary+=("$(printf '%-5s FAIL  lint       %s' lint "$(elapsed "$t0")")")
    failed=1
fi

# b_lundef=false: the sanitizer runtimes are linked into executables only,
# so shared objects legitimately have undefined sanitizer symbols.
for setup in $setups; do
    case $setup in
    gcc)
        run_setup gcc gcc build
        ;;
    asan)
        run_setup asan clang build-asan \
            -Db_sanitize=address,undefined -Db_lundef=false
        ;;
    tsan)
        run_setup tsan clang build-tsan \
            -Db_sanitize=thread -Db_lundef=false
        ;;
    *)
        echo "test.sh: unknown setup '$setup' in DX_TEST_SETUPS" \
            "(known: gcc asan tsan)" >&2
        summary+=("$(printf '%-5s FAIL  unknown setup' "$setup")")
        failed=1
        ;;
    esac
done

echo
echo "==> summary"
printf '%s\n' "${summary[@]}"
echo "tests: $total_pass passed, $total_fail failed, $total_skip skipped"
exit "$failed"
