#!/usr/bin/env bash
# demo.sh — the README's "run it" command: installs what is missing, builds
# dspex (gcc, debugoptimized, in build/, shared with test.sh) and runs
# `dspex demo`, the main job on the offline sim model, passing every argument
# through to it.
#
# Usage: scripts/demo.sh [ARGS...]   (e.g. scripts/demo.sh --task arithmetic)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
"$root/scripts/deps.sh"


if [ ! -f build/build.ninja ]; then
    wipe=()
    if [ -f build/meson-private/coredata.dat ]; then
        wipe=(--wipe)
    fi
    CC=gcc meson setup "${wipe[@]}" build --buildtype=debugoptimized >&2
fi
# Build output goes to stderr so the demo's own stdout stays clean to pipe.
ninja -C build -j "${DX_JOBS:-2}" cli/dspex >&2

exec build/cli/dspex demo "$@"
