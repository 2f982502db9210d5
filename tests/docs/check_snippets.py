#!/usr/bin/env python3
"""check_snippets.py — the docs cannot rot: every ```c block of README.md
and docs/**/*.md is compiled against the public headers, those marked
runnable are linked and run, and ```sh blocks marked testable are run.

Fence info strings (after ```c or ```sh, space-separated words):
  c               a whole translation unit; compiled (-c) with the project's
                  warnings as errors. Linked and run too when it says
                  `runnable` (it must exit 0).
  c fragment      statements: compiled inside a function body, after every
                  public header is included.
  c decls         top-level declarations: compiled after every public header.
  c skip          not compiled (say why in the text around it).
  expect=TEXT     (runnable) its standard output must contain TEXT (no
                  spaces; `_` stands for a space).
  file=NAME       also save the block as NAME in the shell blocks' working
                  directory, so a later ```sh testable block can use it.
  sh testable     run with `bash -eo pipefail` in a scratch directory that
                  holds `build` (the build directory), `examples`, `data`,
                  `include` and `tests` (the source folders), the files saved with
                  file=; `dspex` is on PATH. It must exit 0. With `nosan` too,
                  only in a build without sanitizers or coverage counters
                  (a block that links the libraries with a plain `cc`).
Other ``` blocks (text, json, output) are prose. Relative links
([text](path)) must point at files that exist.

Usage (from tests/meson.build):
  check_snippets.py SRC_ROOT BUILD_ROOT SANITIZE CC [LINK_ARGS...]
"""
import glob
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile

FENCE = re.compile(r"^(\s*)```(\S*)\s*(.*)$")
LINK = re.compile(r"\]\(([^)#\s]+)(#[^)]*)?\)")


def broken_links(path):
    """Relative link targets of path that do not exist."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    base = os.path.dirname(path)
    return [m.group(1) for m in LINK.finditer(text)
            if "://" not in m.group(1) and not m.group(1).startswith("mailto:")
            and not os.path.exists(os.path.join(base, m.group(1)))]


def blocks(path):
    """Yield (line, lang, words, text) for each fenced block of path."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m or not m.group(2):
            i += 1
            continue
        indent, lang, info = m.group(1), m.group(2), m.group(3).split()
        start = i + 1
        body = []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith("```"):
            line = lines[i]
            body.append(line[len(indent):] if line.startswith(indent) else line)
            i += 1
        i += 1
        yield start, lang, info, "\n".join(body) + "\n"


def main():
    src, build, sanitize, cc = sys.argv[1:5]
    link_args = sys.argv[5:]
    san = [] if sanitize in ("", "none") else ["-fsanitize=" + sanitize]
    # A coverage build's libraries need gcov's runtime (meson passes
    # -lgcov then), which a plain `cc` line does not link either.
    instrumented = bool(san) or "-lgcov" in link_args
    cflags = ["-std=c11", "-Wall", "-Wextra", "-Wpedantic", "-Werror",
              "-Wno-unused-function", "-I" + os.path.join(src, "include")] + san
    headers = sorted(os.path.basename(h) for h in
                     glob.glob(os.path.join(src, "include", "dspex", "*.h")))
    prelude = "".join("#include <dspex/%s>\n" % h for h in headers)
    prelude = "#include <stdio.h>\n#include <stdlib.h>\n#include <string.h>\n" + prelude

    docs = [os.path.join(src, "README.md")]
    docs += sorted(glob.glob(os.path.join(src, "docs", "**", "*.md"),
                             recursive=True))
    work = tempfile.mkdtemp(prefix="dx_snippets_")
    shell_dir = os.path.join(work, "sh")
    os.mkdir(shell_dir)
    os.symlink(build, os.path.join(shell_dir, "build"))
    for d in ("examples", "data", "include", "tests"):
        os.symlink(os.path.join(src, d), os.path.join(shell_dir, d))
    env = dict(os.environ)
    env["PATH"] = os.path.join(build, "cli") + os.pathsep + env.get("PATH", "")
    env["DSPEX_HOME"] = os.path.join(work, "home")
    for k in ("DSPEX_MODEL", "DSPEX_CONFIG"):
        env.pop(k, None)

    counts = {"compiled": 0, "ran": 0, "shell": 0, "skipped": 0}
    failures = []
    n = 0
    for doc in docs:
        rel = os.path.relpath(doc, src)
        for target in broken_links(doc):
            failures.append("%s: link to a missing file: %s" % (rel, target))
        # Shell blocks of one document share its saved files; a new
        # document starts from a clean directory of saved files.
        for line, lang, info, text in blocks(doc):
            where = "%s:%d" % (rel, line)
            words = set(w for w in info if "=" not in w)
            saved = [w.split("=", 1)[1] for w in info if w.startswith("file=")]
            for name in saved:
                with open(os.path.join(shell_dir, name), "w") as f:
                    f.write(text)
            if lang == "c":
                if "skip" in words:
                    counts["skipped"] += 1
                    continue
                n += 1
                # Errors point at the Markdown file's own lines.
                mark = "#line %d \"%s\"\n" % (line + 1, rel)
                if "fragment" in words:
                    code = (prelude + "void dx_snippet(void);\n"
                            "void dx_snippet(void)\n{\n" + mark + text + "}\n")
                elif "decls" in words:
                    code = prelude + mark + text
                else:
                    code = mark + text
                c_path = os.path.join(work, "snippet%d.c" % n)
                with open(c_path, "w") as f:
                    f.write(code)
                runnable = "runnable" in words
                exe = os.path.join(work, "snippet%d" % n)
                cmd = [cc] + cflags + [c_path]
                cmd += (["-o", exe] + link_args) if runnable else ["-c", "-o", exe + ".o"]
                r = subprocess.run(cmd, capture_output=True, text=True)
                if r.returncode != 0:
                    failures.append("%s: does not compile:\n%s" % (where, r.stderr))
                    continue
                counts["compiled"] += 1
                if runnable:
                    r = subprocess.run([exe], capture_output=True, text=True,
                                       timeout=60, env=env, cwd=shell_dir)
                    if r.returncode != 0:
                        failures.append("%s: exited %d:\n%s%s" % (
                            where, r.returncode, r.stdout, r.stderr))
                        continue
                    want = [w.split("=", 1)[1].replace("_", " ")
                            for w in info if w.startswith("expect=")]
                    missing = [w for w in want if w not in r.stdout]
                    if missing:
                        failures.append("%s: output lacks %r:\n%s" % (
                            where, missing, r.stdout))
                        continue
                    counts["ran"] += 1
            elif lang == "sh" and "testable" in words:
                if "nosan" in words and instrumented:
                    counts["skipped"] += 1
                    continue
                # A session of its own, so whatever the block started in
                # the background is killed with it, even on a timeout.
                p = subprocess.Popen(["bash", "-eo", "pipefail", "-c", text],
                                     stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True,
                                     env=env, cwd=shell_dir,
                                     start_new_session=True)
                try:
                    out, _ = p.communicate(timeout=120)
                except subprocess.TimeoutExpired:
                    out = "(timed out after 120 s)"
                finally:
                    try:
                        os.killpg(p.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    p.wait()
                if p.returncode != 0:
                    failures.append("%s: shell block exited %d:\n%s" % (
                        where, p.returncode, out))
                    continue
                counts["shell"] += 1
    shutil.rmtree(work, ignore_errors=True)
    print("snippets: %(compiled)d C compiled (%(ran)d run), %(shell)d shell "
          "blocks run, %(skipped)d skipped" % counts)
    for f in failures:
        print("FAIL " + f)
    if counts["compiled"] == 0:
        print("FAIL no C snippet found: the test would prove nothing")
        return 1
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
