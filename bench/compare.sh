#!/bin/sh
# compare.sh — run the kernel benchmarks on dspex and on BEAM, interleaved,
# and print a table of medians with the ratio dspex/beam and the issue's
# targets, followed by machine-readable SUMMARY lines.
#
# It owns the comparison protocol: for each benchmark, K runs of each system
# alternate (dspex, beam, dspex, beam, ...) so that drift of a shared machine
# hits both alike; medians, not means, go into the table; both systems get the
# same number of scheduler threads (DX_SCHEDULERS, else all online CPUs).
#
# usage: bench/compare.sh [-k K] [-w W] [-B builddir] [-o file] [bench[=n] ...]
#   -k K        runs per system and benchmark (default 3)
#   -w W        unrecorded warm-up runs per system and benchmark before those
#               (default 0; on a VM that backs memory lazily, the first runs
#               of spawn and skynet pay for first-touch page faults)
#   -B dir      meson build directory holding bench/runtime-bench
#               (default: $BUILD, else build)
#   -o file     also append the raw RESULT lines and the SUMMARY lines to file
#   bench[=n]   benchmarks to run, optionally with a size; default: all of
#               noop spawn pingpong call ring skynet fanout restart at issue
#               2's sizes (call, a server round trip, has no target there)
# env: DX_SCHEDULERS (threads for both systems), TIMEOUT (seconds per run,
#      default 600), ERL (default erl), ERLC (default erlc)
set -eu

K=3
W=0
BUILD=${BUILD:-build}
OUT=
while getopts k:w:B:o:h opt; do
    case $opt in
    k) K=$OPTARG ;;
    w) W=$OPTARG ;;
    B) BUILD=$OPTARG ;;
    o) OUT=$OPTARG ;;
    *) sed -n '2,/^set -eu/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2 ;;
    esac
done
shift $((OPTIND - 1))
case $K in '' | *[!0-9]* | 0) echo "compare.sh: -k wants a positive integer" >&2; exit 2 ;; esac
case $W in '' | *[!0-9]*) echo "compare.sh: -w wants a number" >&2; exit 2 ;; esac

ROOT=$(cd "$(dirname "$0")/.." && pwd)
case $BUILD in /*) ;; *) BUILD=$ROOT/$BUILD ;; esac
BIN=$BUILD/bench/runtime-bench
ERL=${ERL:-erl}
ERLC=${ERLC:-erlc}
TIMEOUT=${TIMEOUT:-600}
SCHED=${DX_SCHEDULERS:-$(nproc)}
export DX_SCHEDULERS="$SCHED"

if [ ! -x "$BIN" ]; then
    echo "compare.sh: $BIN not found; build first: meson setup $BUILD --buildtype=release && ninja -C $BUILD" >&2
    exit 1
fi
if ! command -v "$ERLC" >/dev/null 2>&1; then
    echo "compare.sh: $ERLC not found; install Erlang/OTP (Debian: apt-get install erlang-nox)" >&2
    exit 1
fi

default_n() {
    case $1 in
    noop) echo 1 ;;
    restart) echo 10000 ;;
    *) echo 1000000 ;;
    esac
}

[ $# -gt 0 ] || set -- noop spawn pingpong call ring skynet fanout restart

WORK=$(mktemp -d "${TMPDIR:-/tmp}/dspex-compare.XXXXXX")
trap 'rm -rf "$WORK"' EXIT INT TERM
"$ERLC" -o "$WORK" "$ROOT/bench/erlang/runtime_bench.erl"
RAW=$WORK/raw

# One run: append its RESULT line (or a FAIL line) to $RAW, or to
# $WORK/warmup when $WARM is set.
run_one() { # sys bench n
    if [ "$1" = dspex ]; then
        set -- "$1" "$2" "$3" "$BIN" "$2" "$3"
    else
        # +P: room for skynet's 1.1 million processes on top of the system's.
        set -- "$1" "$2" "$3" "$ERL" -noshell +S "$SCHED:$SCHED" +P 4194304 \
            -pa "$WORK" -run runtime_bench main "$2" "$3"
    fi
    sys=$1 bench=$2 n=$3
    shift 3
    dest=$RAW
    [ -z "${WARM:-}" ] || dest=$WORK/warmup
    printf '  %-5s %-8s n=%-8s %s' "$sys" "$bench" "$n" "${WARM:+(warm-up) }" >&2
    rc=0
    timeout "$TIMEOUT" "$@" >"$WORK/out" 2>"$WORK/err" || rc=$?
    line=$(grep '^RESULT ' "$WORK/out" | head -n 1 || true)
    if [ "$rc" -eq 0 ] && [ -n "$line" ]; then
        echo "$line" >>"$dest"
        echo "$line" | sed 's/.* time_s=\([^ ]*\).*/time_s=\1/; t; s/.*\(p50_us=[^ ]*\).*/\1/' >&2
    else
        echo "FAIL sys=$sys bench=$bench n=$n rc=$rc" >>"$dest"
        echo "FAILED (exit $rc)" >&2
        sed 's/^/    | /' "$WORK/err" | tail -n 5 >&2
    fi
}

# Other work on the machine skews everything; the load average says how much.
load() { cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo unknown; }
LOAD0=$(load)
REV=$(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown)
echo "compare: dspex $REV, $K runs per system, $SCHED scheduler threads," \
    "$(date -u +%Y-%m-%dT%H:%MZ), load $LOAD0" >&2
for spec in "$@"; do
    bench=${spec%%=*}
    if [ "$bench" = "$spec" ]; then n=$(default_n "$bench"); else n=${spec#*=}; fi
    WARM=1
    i=0
    while [ $i -lt "$W" ]; do
        run_one dspex "$bench" "$n"
        run_one beam "$bench" "$n"
        i=$((i + 1))
    done
    WARM=
    i=0
    while [ $i -lt "$K" ]; do
        run_one dspex "$bench" "$n"
        run_one beam "$bench" "$n"
        i=$((i + 1))
    done
done

DATE=$(date -u +%Y-%m-%dT%H:%MZ)
LOAD1=$(load)
echo "compare: done, load $LOAD1 (at the start: $LOAD0)" >&2
awk -v K="$K" -v date="$DATE" -v sched="$SCHED" '
function median(key,    n, i, j, v, t) {
    n = cnt[key]
    if (n == 0) return ""
    for (i = 1; i <= n; i++) v[i] = val[key, i] + 0
    for (i = 2; i <= n; i++) {
        t = v[i]
        for (j = i - 1; j >= 1 && v[j] > t; j--) v[j + 1] = v[j]
        v[j + 1] = t
    }
    return (n % 2) ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
}
function num(x) { return x == "" ? "NA" : sprintf("%.10g", x) }
function fmt(x) {
    if (x == "") return "-"
    if (x >= 1e6) return sprintf("%.3gM", x / 1e6)
    if (x >= 1e4 || x == int(x)) return sprintf("%.0f", x)
    if (x >= 100) return sprintf("%.1f", x)
    return sprintf("%.3g", x)
}
# bench metric better target: the rows of the table, in order.
BEGIN {
    nrow = split("noop:rss_kb:lower:- spawn:time_s:lower:<1.5 " \
        "spawn:spawn_s:lower:- spawn:bytes_per_actor:lower:<=2048 " \
        "pingpong:rate:higher:>=2x call:rate:higher:- ring:rate:higher:>=2x " \
        "skynet:time_s:lower:<1 fanout:rate:higher:>=2x " \
        "restart:p50_us:lower:<20 restart:p99_us:lower:<100", row, " ")
}
$1 == "RESULT" || $1 == "FAIL" {
    delete kv
    for (i = 2; i <= NF; i++) {
        eq = index($i, "=")
        if (eq) kv[substr($i, 1, eq - 1)] = substr($i, eq + 1)
    }
    s = kv["sys"]; b = kv["bench"]
    seen[b] = 1; size[b] = kv["n"]
    if ($1 == "FAIL") { fails[s, b]++; next }
    runs[s, b]++
    if ("unit" in kv) unit[b] = kv["unit"]
    for (k in kv) {
        key = s SUBSEP b SUBSEP k
        val[key, ++cnt[key]] = kv[k]
    }
}
END {
    printf "\n%-9s %-8s %-16s %12s %12s %9s %8s %4s %s\n", "bench", "n", "metric (median)",
        "dspex", "beam", "dspex/beam", "target", "met", "runs ok (dspex beam)"
    for (r = 1; r <= nrow; r++) {
        split(row[r], f, ":")
        b = f[1]; m = f[2]; better = f[3]; target = f[4]
        if (!(b in seen)) continue
        d = median("dspex" SUBSEP b SUBSEP m)
        e = median("beam" SUBSEP b SUBSEP m)
        ratio = (d != "" && e != "" && e + 0 != 0) ? d / e : ""
        met = "-"
        if (d != "" && target != "-") {
            if (target == ">=2x") met = (ratio != "" && ratio >= 2) ? "yes" : "no"
            else if (target ~ /^<=/) met = (d <= substr(target, 3) + 0) ? "yes" : "no"
            else if (target ~ /^</) met = (d < substr(target, 2) + 0) ? "yes" : "no"
        } else if (target != "-") met = "no"
        label = m (m == "rate" ? " " unit[b] : "")
        printf "%-9s %-8s %-16s %12s %12s %9s %8s %4s %d/%d %d/%d\n", b, size[b], label,
            fmt(d), fmt(e), ratio == "" ? "-" : sprintf("%.2f", ratio), target, met,
            runs["dspex", b], runs["dspex", b] + fails["dspex", b],
            runs["beam", b], runs["beam", b] + fails["beam", b]
        summary = summary sprintf("SUMMARY date=%s sched=%d k=%d bench=%s n=%s metric=%s better=%s dspex=%s beam=%s ratio=%s target=%s met=%s\n",
            date, sched, K, b, size[b], m, better, num(d), num(e),
            ratio == "" ? "NA" : sprintf("%.4f", ratio), target, met)
    }
    printf "\nratio = dspex/beam of the medians: above 1 means dspex is faster for rates, slower for times and memory.\n\n"
    printf "%s", summary
}' "$RAW" >"$WORK/table"

cat "$WORK/table"
if [ -n "$OUT" ]; then
    {
        echo "# compare.sh $DATE rev=$REV k=$K w=$W sched=$SCHED host=$(uname -n)" \
            "load_start=\"$LOAD0\" load_end=\"$LOAD1\""
        cat "$RAW"
        grep '^SUMMARY ' "$WORK/table"
    } >>"$OUT"
fi
# Non-zero when any run failed, so a broken kernel cannot look like a slow one.
if cat "$RAW" "$WORK/warmup" 2>/dev/null | grep -q '^FAIL '; then exit 1; fi
