#!/usr/bin/env bash
# apidocs.sh — builds the API reference (HTML) from the public headers with
# Doxygen (Debian's `doxygen`, installed by `scripts/deps.sh --docs` when
# missing). Output: build/apidocs/html/index.html, or $1/html/index.html.
#
# Usage: scripts/apidocs.sh [OUTPUT_DIR]
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
if ! command -v doxygen >/dev/null 2>&1; then
    "$root/scripts/deps.sh" --docs
fi
out=${1:-build/apidocs}
mkdir -p "$out"
out=$(cd "$out" && pwd)
# Doxygen reads OUTPUT_DIRECTORY from this variable (see Doxyfile).
DX_APIDOCS_OUT="$out" doxygen Doxyfile
echo "apidocs: $out/html/index.html"
