#!/usr/bin/env bash
# serve_bench.sh — throughput and tail latency of `dspex serve` under wrk:
# POST /v1/programs/capitals/predict with one fixed question, so after the
# first request every answer comes from the LM client's in-memory cache of
# the offline sim model (what is measured is dspex: HTTP, the request
# process, the program, the client round trip, JSON). Runs wrk RUNS times
# and prints one RESULT line per run and the medians; cpu_us is the server
# process's CPU time (all its threads, from /proc) per request answered:
# dspex's own cost per request, HTTP included:
#   RESULT sys=dspex bench=serve_wrk run=<i> conns=<c> rps=.. p50_ms=.. p99_ms=.. cpu_us=..
#   RESULT sys=dspex bench=serve_wrk_median conns=<c> rps=.. p99_ms=.. cpu_us=..
# Usage: bench/serve_bench.sh [BUILD_DIR] (default build); env RUNS (5),
# SECS (5), CONNS (32), THREADS (2), PORT (18181).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${1:-$root/build}
runs=${RUNS:-5}
secs=${SECS:-5}
conns=${CONNS:-32}
threads=${THREADS:-2}
port=${PORT:-18181}
command -v wrk >/dev/null || { echo "serve_bench: wrk missing (scripts/deps.sh)" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$tmp"' EXIT
cat >"$tmp/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body = '{"inputs":{"question":"What is the capital of France?"}}'
wrk.headers["Content-Type"] = "application/json"
LUA
DSPEX_HOME=$tmp "$build/cli/dspex" serve "$root/examples/programs/capitals.json" \
    --port "$port" >"$tmp/serve.log" 2>&1 &
pid=$!
for _ in $(seq 100); do
    grep -q listening "$tmp/serve.log" 2>/dev/null && break
    sleep 0.05
done
url=http://127.0.0.1:$port/v1/programs/capitals/predict
curl -sf -X POST "$url" -d '{"inputs":{"question":"What is the capital of France?"}}' >/dev/null
# utime + stime of the server, in clock ticks
cpu_ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
hz=$(getconf CLK_TCK)
rps_all=()
p99_all=()
cpu_all=()
for i in $(seq "$runs"); do
    t0=$(cpu_ticks)
    out=$(wrk -t"$threads" -c"$conns" -d"${secs}s" --latency -s "$tmp/post.lua" "$url")
    rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
    to_ms='{v=$2; if (v ~ /us$/) {sub(/us/,"",v); v/=1000} else if (v ~ /ms$/) {sub(/ms/,"",v)} else if (v ~ /s$/) {sub(/s/,"",v); v*=1000}; print v}'
    p50=$(awk '$1=="50%"' <<<"$out" | awk "$to_ms")
    p99=$(awk '$1=="99%"' <<<"$out" | awk "$to_ms")
    t1=$(cpu_ticks)
    errs=$(awk '/Non-2xx/ {print $NF}' <<<"$out")
    reqs=$(awk '/requests in/ {print $1}' <<<"$out")
    cpu=$(awk -v d=$((t1 - t0)) -v hz="$hz" -v n="$reqs" 'BEGIN {printf "%.1f", d / hz / n * 1e6}')
    echo "RESULT sys=dspex bench=serve_wrk run=$i conns=$conns rps=$rps p50_ms=$p50 p99_ms=$p99 cpu_us=$cpu non2xx=${errs:-0}"
    rps_all+=("$rps")
    p99_all+=("$p99")
    cpu_all+=("$cpu")
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
echo "RESULT sys=dspex bench=serve_wrk_median conns=$conns runs=$runs rps=$(median "${rps_all[@]}") p99_ms=$(median "${p99_all[@]}") cpu_us=$(median "${cpu_all[@]}")"
kill -TERM "$pid"
wait "$pid"
echo "serve exited $?" >&2
