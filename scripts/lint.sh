#!/usr/bin/env bash
# lint.sh — the source checks of the test command: (a) no banned C library
# calls (unbounded copies, unchecked number parsing, non-reentrant
# tokenising) and (b) every C file formatted as .clang-format says. Both run
# over the C sources of the project's own folders; exit status 1 when either
# finds something, with file:line for (a) and the fix command for (b).
#
# Usage: scripts/lint.sh
# DX_CLANG_FORMAT names the formatter binary (default: clang-format-14 if
# present, else clang-format; the style is tuned for version 14).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
"$root/scripts/deps.sh"

dirs=()
for d in runtime providers actors programs cli serve include tests bench \
    examples fuzz; do
    [ -d "$d" ] && dirs+=("$d")
done
files=()
if [ "${#dirs[@]}" -gt 0 ]; then
    mapfile -t files < <(find "${dirs[@]}" -type f \
        \( -name '*.c' -o -name '*.h' \) | LC_ALL=C sort)
fi
if [ "${#files[@]}" -eq 0 ]; then
    echo "lint: no C files found" >&2
    exit 1
fi

status=0

# ---- (a) banned calls --------------------------------------------------
# Comments and string/character literals are blanked first, so a comment
# that says "never sprintf" is not a hit. snprintf, vsnprintf, fgets and
# strtok_r do not match: the name must start at a word boundary and be
# followed by "(".
banned_calls="strcpy|strcat|sprintf|vsprintf|atoi|atol|atoll|strtok|gets"
banned=$(awk -v names="$banned_calls" '
BEGIN {
    # A member named like a banned function (s.gets(), p->atoi()) is not
    # the C library call.
    re = "(^|[^A-Za-z0-9_.>])(" names ")[ \t]*\\("
}
FNR == 1 { incomment = 0 }
{
    line = $0; out = ""; i = 1; n = length(line)
    while (i <= n) {
        c = substr(line, i, 1); c2 = substr(line, i, 2)
        if (incomment) {
            if (c2 == "*/") { incomment = 0; i += 2 } else i++
            continue
        }
        if (c2 == "/*") { incomment = 1; out = out " "; i += 2; continue }
        if (c2 == "//") break
        if (c == "\"" || c == "\047") {
            q = c; i++
            while (i <= n) {
                d = substr(line, i, 1)
                if (d == "\\") { i += 2; continue }
                i++
                if (d == q) break
            }
            out = out q q
            continue
        }
        out = out c; i++
    }
    hits = ""
    while (match(out, re)) {
        hit = substr(out, RSTART, RLENGTH)
        out = substr(out, RSTART + RLENGTH)
        sub(/^[^A-Za-z_]/, "", hit)
        sub(/[ \t]*\($/, "", hit)
        hits = hits (hits == "" ? "" : ", ") hit "()"
    }
    if (hits != "") {
        text = $0
        sub(/^[ \t]+/, "", text)
        printf "%s:%d: banned call %s: %s\n", FILENAME, FNR, hits, text
    }
}' "${files[@]}")
if [ -n "$banned" ]; then
    printf '%s\n' "$banned"
    echo "lint: banned calls found (use snprintf, memcpy with an explicit" \
        "size, strtol/strtoll with error checks, strtok_r, fgets)"
    status=1
else
    echo "lint: no banned calls in ${#files[@]} files"
fi

# ---- (b) formatting ----------------------------------------------------
fmt=${DX_CLANG_FORMAT:-}
if [ -z "$fmt" ]; then
    if command -v clang-format-14 >/dev/null 2>&1; then
        fmt=clang-format-14
    else
        fmt=clang-format
    fi
fi
if [ ! -f .clang-format ]; then
    echo "lint: .clang-format is missing at the repository root" >&2
    exit 1
fi
bad=()
shown=0
for f in "${files[@]}"; do
    if ! "$fmt" --dry-run --Werror "$f" >/dev/null 2>&1; then
        bad+=("$f")
        # A short diff of the first few files shows what is expected; the
        # fix command below covers them all.
        if [ "$shown" -lt 5 ]; then
            shown=$((shown + 1))
            "$fmt" "$f" | diff -u --label "$f" --label "$f (formatted)" \
                "$f" - | head -n 40 || true
        fi
    fi
done
if [ "${#bad[@]}" -gt 0 ]; then
    echo "lint: ${#bad[@]} of ${#files[@]} files are not formatted:" \
        "${bad[*]}"
    echo "lint: fix with:  $fmt -i ${bad[*]}"
    status=1
else
    echo "lint: all ${#files[@]} files formatted ($("$fmt" --version |
        sed 's/.*version \([0-9.]*\).*/\1/'))"
fi

exit "$status"
