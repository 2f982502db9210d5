#!/usr/bin/env bash
# test.sh — the whole test command (the README's, and CI's through .ci/run):
# installs what is missing, lints, then builds and runs every test suite in
# three builds:
#   gcc   gcc, debugoptimized, in build/
#   release  gcc -O3 (buildtype release), compile only, in build-release/:
#         gcc warns at -O3 about what -O2 does not see (a variable it thinks
#         may be used uninitialized), and -Werror makes that a failed build
#         for anyone building a release
#   asan  clang with AddressSanitizer + UndefinedBehaviorSanitizer, build-asan/
#   tsan  clang with ThreadSanitizer, build-tsan/
#   valgrind  the gcc build's kernel suites under valgrind memcheck
#   fuzz  every fuzz target under libFuzzer (clang, ASan+UBSan) for
#         DX_FUZZ_SECONDS each (default 8: with its build the stage stays
#         under 3 minutes), in build-fuzz/ (scripts/fuzz.sh)
# Every build's `meson test` also replays the fuzz corpora (suite `fuzz`).
# Every stage runs even after an earlier one failed, so one run shows all
# the failures; the exit status is non-zero if any stage failed. The last
# line counts the test executables of all stages ("tests: N passed, ...").
#
# Knobs, for developers:
#   DX_TEST_SETUPS  which builds to run (default "gcc release asan tsan
#                   valgrind fuzz")
#   DX_JOBS         parallel compile jobs (default 2)
#   Extra arguments go to every `meson test` (e.g. a test name, --suite unit).
# A build directory is configured once; later runs only rebuild (ninja reruns
# meson by itself when a meson.build changes). Delete it to start clean.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
"$root/scripts/deps.sh"

setups=${DX_TEST_SETUPS:-gcc release asan tsan valgrind fuzz}
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

# Add a summary line: stage, PASS or FAIL, step, start time, detail.
record()
{
    local line
    line=$(printf '%-5s %s  %-10s %s' "$1" "$2" "$3" "$(elapsed "$4")")
    if [ -n "${5:-}" ]; then
        line+="  ($5)"
    fi
    summary+=("$line")
    if [ "$2" != PASS ]; then
        failed=1
    fi
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
    CC=$cc meson setup "${wipe[@]}" "$dir" \
        --buildtype="${buildtype:-debugoptimized}" "$@"
}

# Count test results from meson's log of the last `meson test` in $1 and
# print "pass fail skip".
count_results()
{
    python3 - "$1/meson-logs" <<'EOF'
import glob, json, os, sys
counts = {"pass": 0, "fail": 0, "skip": 0}
# meson names the log after the test setup: testlog.json, testlog-valgrind.json
logs = glob.glob(os.path.join(sys.argv[1], "testlog*.json"))
try:
    if not logs:
        raise FileNotFoundError
    with open(max(logs, key=os.path.getmtime)) as f:
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
        record "$name" FAIL configure "$t0"
        return
    fi
    if ! ninja -C "$dir" -j "$jobs"; then
        record "$name" FAIL build "$t0"
        return
    fi
    rm -f "$dir"/meson-logs/testlog*.json
    meson test -C "$dir" --print-errorlogs "${setup_args[@]}" \
        "${test_args[@]}" || rc=$?
    local pass=0 fail=0 skip=0
    read -r pass fail skip < <(count_results "$dir") || true
    pass=${pass:-0} fail=${fail:-0} skip=${skip:-0}
    total_pass=$((total_pass + pass))
    total_fail=$((total_fail + fail))
    total_skip=$((total_skip + skip))
    what="$pass passed, $fail failed, $skip skipped"
    if [ "$rc" -ne 0 ] || [ "$fail" -ne 0 ]; then
        record "$name" FAIL tests "$t0" "$what"
    elif [ "$pass" -eq 0 ]; then
        # A test command that runs no test is a defect, not a success.
        record "$name" FAIL "no tests" "$t0"
    else
        record "$name" PASS tests "$t0" "$what"
    fi
}

test_args=("$@")
setup_args=()
# The suites valgrind's memcheck runs over: the kernel's, the LM client's
# (flights, leads, retries against a live local server) and the evaluation
# report's (rows, journals). The crash suite faults on purpose and the
# supervisor suites are long; the sanitizer builds cover those. descriptors
# measures the kernel's descriptor table, which valgrind has already grown
# to the limit with descriptors of its own.
valgrind_suites=(alloc htab term proc mailbox links monitor registry timer server
    sched shutdown log app blocking lmclient eval_report)
# ... and the fuzz corpus replays (fuzz_<target>, listed in fuzz/meson.build;
# one of a layer this build lacks matches no test and is left out by meson).
mapfile -t fuzz_tests < <(sed -n \
    "/^ *fuzz_targets +\{0,1\}= {/,/^ *}/s/^ *'\([a-z_]*\)'.*/fuzz_\1/p" \
    fuzz/meson.build)
valgrind_suites+=("${fuzz_tests[@]}")

t0=$(date +%s)
echo "==> lint"
if "$root/scripts/lint.sh"; then
    record lint PASS lint "$t0"
else
    record lint FAIL lint "$t0"
fi

# b_lundef=false: the sanitizer runtimes are linked into executables only,
# so shared objects legitimately have undefined sanitizer symbols.
for setup in $setups; do
    case $setup in
    gcc)
        run_setup gcc gcc build
        ;;
    release)
        t0=$(date +%s)
        echo
        echo "==> release: gcc -O3 build in build-release/ (compile only)"
        if ! buildtype=release configure gcc build-release; then
            record release FAIL configure "$t0"
        elif ! ninja -C build-release -j "$jobs"; then
            record release FAIL build "$t0"
        else
            record release PASS build "$t0"
        fi
        ;;
    valgrind)
        # The gcc build again, each test binary under memcheck (meson's
        # `valgrind` test setup in meson.build).
        if [ ${#test_args[@]} -eq 0 ]; then
            setup_args=(--setup valgrind --num-processes 2 "${valgrind_suites[@]}")
        else
            setup_args=(--setup valgrind --num-processes 2)
        fi
        run_setup valgrind gcc build
        setup_args=()
        ;;
    asan)
        run_setup asan clang build-asan \
            -Db_sanitize=address,undefined -Db_lundef=false
        ;;
    tsan)
        # Sanitizer builds give every process its own mapped stack (two
        # mappings) and TSan adds a shadow stack per process; the suites
        # keep 10,000+ processes alive, past Linux's default limit of
        # 65,530 mappings. Raise it when we may (root), else say why.
        maps=$(cat /proc/sys/vm/max_map_count 2>/dev/null || echo 0)
        if [ "$maps" -lt 262144 ]; then
            if [ "$(id -u)" -eq 0 ]; then
                sysctl -q -w vm.max_map_count=262144 ||
                    echo "test.sh: could not raise vm.max_map_count" >&2
            else
                echo "test.sh: vm.max_map_count is $maps; the tsan stage's" \
                    "10,000-process tests may fail (raise it as root)" >&2
            fi
        fi
        run_setup tsan clang build-tsan \
            -Db_sanitize=thread -Db_lundef=false
        ;;
    fuzz)
        # A bounded libFuzzer run of every target (crashes are copied to
        # fuzz/crashes/); the corpus replays ran in the builds above.
        t0=$(date +%s)
        echo
        echo "==> fuzz: libFuzzer, ${DX_FUZZ_SECONDS:-8}s per target"
        rc=0
        flog=$(mktemp)
        DX_FUZZ_SECONDS=${DX_FUZZ_SECONDS:-8} "$root/scripts/fuzz.sh" |
            tee "$flog" || rc=$?
        clean=0 bad=0
        read -r clean bad < <(sed -n \
            's/^fuzz: \([0-9]*\) targets clean, \([0-9]*\) found.*/\1 \2/p' \
            "$flog") || true
        clean=${clean:-0} bad=${bad:-0}
        rm -f "$flog"
        total_pass=$((total_pass + clean))
        total_fail=$((total_fail + bad))
        if [ "$rc" -ne 0 ] || [ "$bad" -ne 0 ] || [ "$clean" -eq 0 ]; then
            record fuzz FAIL fuzz "$t0" "$clean clean, $bad found problems"
        else
            record fuzz PASS fuzz "$t0" "$clean targets clean"
        fi
        ;;
    *)
        echo "test.sh: unknown setup '$setup' in DX_TEST_SETUPS" \
            "(known: gcc release asan tsan valgrind fuzz)" >&2
        record "$setup" FAIL "unknown" "$(date +%s)"
        ;;
    esac
done

echo
echo "==> summary"
printf '%s\n' "${summary[@]}"
echo "tests: $total_pass passed, $total_fail failed, $total_skip skipped"
exit "$failed"
