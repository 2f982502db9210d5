#!/usr/bin/env bash
# fuzz.sh — runs the libFuzzer targets of fuzz/ for a bounded time each.
# Sets up build-fuzz/ once (clang, ASan+UBSan, -fsanitize=fuzzer-no-link so
# the libraries feed coverage back to libFuzzer; Criterion suites off) and
# builds only the fuzz targets. Each target starts from its seed corpus
# (fuzz/corpus/<target>/, read-only) and a scratch corpus in
# build-fuzz/fuzz-work/<target>/ where new inputs accumulate between runs.
# A crash, leak or failed invariant is copied to fuzz/crashes/<target>/; add
# it to the seed corpus as regress-<what> once it is fixed, so every build's
# `meson test --suite fuzz` replays it.
#
# Usage: scripts/fuzz.sh [-t SECONDS] [TARGET...]
#   -t SECONDS   time per target (default 30; DX_FUZZ_SECONDS also sets it)
#   TARGET       signature, sse, openai, ... (default: all in fuzz/meson.build
#                that this build has: a target of an optional layer, such as
#                term_ext of the distribution layer, is skipped, with a
#                note, where the layer is not built)
# Exit status: 0 when no target found anything, 1 otherwise (also when a
# TARGET named on the command line is not in the build).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
seconds=${DX_FUZZ_SECONDS:-30}
if [ "${1:-}" = -t ]; then
    seconds=$2
    shift 2
fi
dir=build-fuzz
jobs=${DX_JOBS:-2}

named=$#
if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    # The keys of fuzz_targets in fuzz/meson.build, in order: the main
    # block, then the `fuzz_targets += {...}` blocks of optional layers.
    mapfile -t targets < <(sed -n \
        "/^ *fuzz_targets +\{0,1\}= {/,/^ *}/s/^ *'\([a-z_]*\)'.*/\1/p" \
        fuzz/meson.build)
fi

if [ ! -f "$dir/build.ninja" ]; then
    wipe=()
    if [ -f "$dir/meson-private/coredata.dat" ]; then
        wipe=(--wipe)
    fi
    CC=clang meson setup "${wipe[@]}" "$dir" --buildtype=debugoptimized \
        -Db_sanitize=address,undefined -Db_lundef=false -Dtests=disabled \
        -Dc_args=-fsanitize=fuzzer-no-link >/dev/null
fi
# Regenerate first if a meson.build changed, so the query below sees the
# targets as they are now.
ninja -C "$dir" build.ninja >/dev/null
present=()
for t in "${targets[@]}"; do
    if ninja -C "$dir" -t query "fuzz/fuzz_$t" >/dev/null 2>&1; then
        present+=("$t")
    elif [ "$named" -gt 0 ]; then
        echo "fuzz.sh: $t is not a fuzz target of this build" >&2
        exit 1
    else
        echo "==> skip $t: not in this build (its layer is not built)"
    fi
done
if [ "${#present[@]}" -eq 0 ]; then
    echo "fuzz.sh: no fuzz target in $dir" >&2
    exit 1
fi
targets=("${present[@]}")
ninja -C "$dir" -j "$jobs" "${targets[@]/#/fuzz/fuzz_}"

# The runtime's own SIGSEGV handler is not in play (ASan keeps the signal
# unless allow_user_segv_handler is set), so ASan reports faults itself,
# also in the processes serve_http runs; leaks are findings.
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=0
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1

found=0
clean=0
bad=0
for t in "${targets[@]}"; do
    work="$dir/fuzz-work/$t"
    art="$dir/fuzz-artifacts/$t"
    # Artifacts of earlier runs were copied out then; start clean.
    rm -rf "$art"
    mkdir -p "$work" "$art"
    echo "==> fuzz $t for ${seconds}s"
    rc=0
    # -timeout: an input that takes over 10 s is a hang (a finding);
    # -rss_limit_mb: a runaway allocation is one too.
    "$dir/fuzz/fuzz_$t" "$work" "fuzz/corpus/$t" \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
        -max_len=65536 -print_final_stats=1 \
        -artifact_prefix="$art/" >"$dir/fuzz-$t.log" 2>&1 || rc=$?
    grep -E '^(stat::number_of_executed_units|stat::new_units_added|#[0-9]+.*DONE)' \
        "$dir/fuzz-$t.log" | tr '\n' ' ' || true
    echo
    shopt -s nullglob
    crashes=("$art"/*)
    shopt -u nullglob
    if [ "$rc" -ne 0 ] || [ "${#crashes[@]}" -gt 0 ]; then
        found=1
        mkdir -p "fuzz/crashes/$t"
        for c in "${crashes[@]}"; do
            cp "$c" "fuzz/crashes/$t/"
        done
        echo "fuzz.sh: $t found a problem (exit $rc): see $dir/fuzz-$t.log" \
            "and fuzz/crashes/$t/" >&2
        grep -m1 -E 'ERROR: |invariant failed|runtime error' \
            "$dir/fuzz-$t.log" >&2 || true
        bad=$((bad + 1))
    else
        clean=$((clean + 1))
    fi
done
# test.sh reads this line.
echo "fuzz: $clean targets clean, $bad found problems (${seconds}s each)"
exit "$found"
