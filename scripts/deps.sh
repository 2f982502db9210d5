#!/usr/bin/env bash
# deps.sh — installs the Debian packages dspex needs to build, test and run
# its demo, and nothing else. demo.sh, test.sh and lint.sh call it first, so
# a fresh Debian 12 machine needs no manual step. When every package is
# already there it only asks dpkg (no network, no apt-get update), so calling
# it on every run costs a fraction of a second.
#
# Usage: scripts/deps.sh        (exit 0 when everything is installed)
#        scripts/deps.sh --docs (the optional documentation tools instead:
#                                doxygen for scripts/apidocs.sh)
# DX_SKIP_DEPS=1 skips the check, for machines that provide the tools some
# other way (another distribution, a container built ahead of time).
set -euo pipefail

# gcc/make, the build system, the compilers and sanitizer runtimes, the
# libraries dspex links, the test framework, valgrind, the formatter and
# gcovr (line/branch coverage per folder, scripts/coverage.sh).
DX_PACKAGES=(
    build-essential
    meson
    ninja-build
    pkg-config
    clang
    libclang-rt-14-dev
    libuv1-dev
    libcurl4-openssl-dev
    # zlib: gzip / deflate response bodies (providers/http.c)
    zlib1g-dev
    libcjson-dev
    # malloc of the programs dspex ships (meson option `allocator`)
    libmimalloc-dev
    libhttp-parser-dev
    libsqlite3-dev
    libssl-dev
    sqlite3
    libcriterion-dev
    valgrind
    clang-format
    # serve: curl replays the OpenAI SDK's request in the chat-route test,
    # chromium loads the dashboard headless in its test, wrk drives
    # bench/serve_bench.sh.
    curl
    chromium
    wrk
    # Distribution (include/dspex/node.h): erl_interface (ei.h, libei.a)
    # from erlang-dev; erl, erlc and epmd from erlang-base, which the
    # distribution tests start to talk to BEAM nodes.
    erlang-dev
    erlang-base
    # scripts/coverage.sh: line and branch coverage per folder.
    gcovr
)

# Optional: only scripts/apidocs.sh needs these (the test suite runs its
# API-reference check only when doxygen is there).
DX_DOCS_PACKAGES=(
    doxygen
)

missing_packages()
{
    local pkg status
    for pkg in "${wanted[@]}"; do
        status=$(dpkg-query -W -f='${db:Status-Abbrev}' "$pkg" 2>/dev/null ||
            true)
        # "ii " is installed; anything else (absent, half-installed,
        # config-files only) needs an install.
        if [ "${status:0:2}" != "ii" ]; then
            printf '%s\n' "$pkg"
        fi
    done
}

main()
{
    wanted=("${DX_PACKAGES[@]}")
    if [ "${1:-}" = --docs ]; then
        wanted=("${DX_DOCS_PACKAGES[@]}")
    fi
    if [ "${DX_SKIP_DEPS:-0}" = 1 ]; then
        return 0
    fi
    if ! command -v dpkg-query >/dev/null 2>&1; then
        echo "deps.sh: dpkg-query not found: this script installs Debian" \
            "packages (Debian 12). Install these some other way and rerun" \
            "with DX_SKIP_DEPS=1: ${wanted[*]}" >&2
        return 1
    fi

    local missing
    mapfile -t missing < <(missing_packages)
    if [ "${#missing[@]}" -eq 0 ]; then
        return 0
    fi

    if [ "$(id -u)" -ne 0 ]; then
        echo "deps.sh: missing packages: ${missing[*]}" >&2
        echo "deps.sh: installing them needs root; run as root:" >&2
        echo "    apt-get update && apt-get install -y ${missing[*]}" >&2
        return 1
    fi

    echo "deps.sh: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # Wait for a dpkg lock held by another apt run (e.g. an unattended
    # upgrade on a fresh machine) instead of failing at once.
    local apt=(apt-get -q -y -o DPkg::Lock::Timeout=300)
    "${apt[@]}" update
    "${apt[@]}" install --no-install-recommends "${missing[@]}"

    mapfile -t missing < <(missing_packages)
    if [ "${#missing[@]}" -ne 0 ]; then
        echo "deps.sh: still missing after apt-get install: ${missing[*]}" >&2
        return 1
    fi
}

main "$@"
