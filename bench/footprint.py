#!/usr/bin/env python3
"""footprint.py - the memory one piece of work touches, counted exactly.

At 1 in flight an evaluated example runs after 100 ms idle, with its code
and data gone from the caches; its CPU is then mostly the cache lines and
pages it touches, not its instructions, and timing it on a shared VM moves
by tens of microseconds from run to run. This counts the lines and pages
instead, from valgrind's lackey trace of every instruction and data access,
which is the same from one run to the next.

    DX_EVAL_BENCH_FLOOR=0 DX_SCHEDULERS=1 valgrind --tool=lackey \\
        --trace-mem=yes build/bench/eval-bench 40 5 1 2>&1 >/dev/null |
      python3 bench/footprint.py build/bench/eval-bench \\
        --window dx_lm_decode --mark example_proc

The trace is cut into windows, each starting where the --window function
is entered (dx_lm_decode: once per LM call, in the evaluation and in its
baseline of plain calls alike). A window in which the --mark function is
entered (example_proc: an evaluated example starting) is "marked"; the
others are "plain". For each kind it prints one machine-readable line

    FOOTPRINT kind=marked windows=.. code_lines=.. data_lines=..
              code_pages=.. data_pages=.. steady_code_lines=..

(medians over the windows of distinct 64-byte lines and 4 KiB pages;
steady_code_lines are the lines run in at least half of that kind's
windows), then the code lines only marked windows run, by function
(symbols from nm; "shared libraries" for code outside the binary), and the
data lines per window by the function that first touched them. The first
and last three windows of each kind are left out (start-up, shutdown).

With --order PATH it also writes the functions run in at least half of
either kind's windows, in the order a window first runs them, as the
linker section-ordering file the build links with (build-aux/
hot-sections.txt, meson option hot_layout). Write it again when the path
of an LM call changes: a function missing from it still links, only away
from the rest.

Every thread's accesses count (lackey does not tell threads apart): the
server's and the I/O lane's are in both kinds, so the difference between
the kinds is what the marked work adds. Valgrind loads a position-
independent executable at 0x108000 on amd64 Linux; --base overrides that.
"""
import argparse
import bisect
import collections
import subprocess
import sys

LINE = 6  # log2 of a cache line
PAGE = 12  # log2 of a page
EDGE = 3  # windows left out at each end


def elf_is_pie(path):
    """True for ET_DYN (a position-independent executable)."""
    with open(path, "rb") as f:
        head = f.read(18)
    return head[:4] == b"\x7fELF" and int.from_bytes(head[16:18], "little") == 3


class Symbols:
    """The binary's functions, by load address."""

    def __init__(self, path, base):
        out = subprocess.run(["nm", "-S", "--defined-only", path],
                             capture_output=True, text=True, check=True)
        syms = []
        for line in out.stdout.splitlines():
            f = line.split()
            if len(f) == 4 and f[2] in "tTwW":
                syms.append((int(f[0], 16) + base, int(f[1], 16), f[3]))
        syms.sort()
        self.syms = syms
        self.starts = [s[0] for s in syms]
        self.end = max((a + n for a, n, _ in syms), default=0)

    def address(self, name):
        for a, _, n in self.syms:
            if n == name:
                return a
        sys.exit(f"footprint.py: no function {name!r} in the binary")

    def name(self, addr):
        return self.span(addr)[2]

    def span(self, addr):
        """(start, end, name) of what holds addr; outside every function,
        the gap between its neighbours."""
        i = bisect.bisect_right(self.starts, addr) - 1
        if i >= 0 and addr < self.syms[i][0] + max(self.syms[i][1], 1):
            a, n, name = self.syms[i]
            return a, a + max(n, 1), name
        lo = self.syms[i][0] + max(self.syms[i][1], 1) if i >= 0 else 0
        if addr >= self.end:
            return self.end, 1 << 64, "shared libraries"
        return lo, self.starts[i + 1], "(no symbol)"


def read_windows(stream, window_at, mark_at, syms):
    """Yield (marked, code lines, {data line: first toucher's address},
    the binary's functions in the order the window first ran them)."""
    code, data, ran = set(), {}, {}  # ran: a dict for its insertion order
    marked, pc, started = False, 0, False
    lo, hi = 0, 0  # the function pc is in
    for raw in stream:
        # lackey: "I  addr,size", " L addr,size", " S ...", " M ..."
        if len(raw) < 4 or raw[0] == "=":
            continue
        kind = raw[:2].strip()
        try:
            addr = int(raw[3:].split(",", 1)[0], 16)
        except ValueError:
            continue
        if kind == "I":
            if addr == window_at:
                if started:
                    yield marked, code, data, ran
                code, data, ran = set(), {}, {}
                marked, started, hi = False, True, 0
            if addr == mark_at:
                marked = True
            if not lo <= addr < hi:
                lo, hi, fn = syms.span(addr)
                if fn not in ("shared libraries", "(no symbol)"):
                    ran.setdefault(fn)
            pc = addr
            code.add(addr >> LINE)
        elif kind in ("L", "S", "M"):
            data.setdefault(addr >> LINE, pc)


def write_order(path, ran_in, how):
    """Write the functions run in at least half of either kind's windows as
    a section-ordering file (one ".text.<function>" per line, what
    -ffunction-sections names them): the marked windows' functions first,
    then those only plain windows run, each kind's in the order a typical
    window first runs them. Linked in this order, the path one LM call
    takes sits on a few dozen contiguous pages instead of being spread
    over the whole binary."""
    order = {}
    for marked in (True, False):
        windows = ran_in[marked]
        windows = windows[EDGE:-EDGE] if len(windows) > 2 * EDGE else []
        at = collections.defaultdict(list)
        for ran in windows:
            for i, fn in enumerate(ran):
                at[fn].append(i)
        steady = [fn for fn, pos in at.items() if len(pos) * 2 >= len(windows)]
        steady.sort(key=lambda fn: median(at[fn]))
        for fn in steady:
            order.setdefault(fn)
    with open(path, "w") as f:
        f.write("# Functions on the path of one LM call, hottest first: the\n"
                "# order the linker lays them out in (meson.build, hot_layout).\n"
                "# Written by bench/footprint.py " + how + "\n")
        for fn in order:
            f.write(f".text.{fn}\n")


def median(values):
    v = sorted(values)
    return v[len(v) // 2] if v else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("binary")
    ap.add_argument("--window", required=True,
                    help="function whose entry starts a window")
    ap.add_argument("--mark", required=True,
                    help="function whose entry marks a window")
    ap.add_argument("--base", type=lambda s: int(s, 0), default=None,
                    help="load address of the binary (default: 0x108000 "
                         "for a PIE, 0 otherwise)")
    ap.add_argument("--top", type=int, default=40,
                    help="functions to list (default 40)")
    ap.add_argument("--order", metavar="PATH",
                    help="also write the functions both kinds run, hottest "
                         "path first, as a linker section-ordering file")
    args = ap.parse_args()
    base = args.base
    if base is None:
        base = 0x108000 if elf_is_pie(args.binary) else 0
    syms = Symbols(args.binary, base)
    window_at = syms.address(args.window)
    mark_at = syms.address(args.mark)

    kinds = {True: [], False: []}
    ran_in = {True: [], False: []}
    for marked, code, data, ran in read_windows(sys.stdin, window_at,
                                                mark_at, syms):
        toucher = collections.Counter(syms.name(pc) for pc in data.values())
        kinds[marked].append((code, set(data), toucher))
        ran_in[marked].append(list(ran))
    steady = {}
    for marked, windows in kinds.items():
        windows = windows[EDGE:-EDGE] if len(windows) > 2 * EDGE else []
        kinds[marked] = windows
        name = "marked" if marked else "plain"
        if not windows:
            print(f"FOOTPRINT kind={name} windows=0")
            steady[marked] = set()
            continue
        runs = collections.Counter()
        for code, _, _ in windows:
            runs.update(code)
        steady[marked] = {ln for ln, n in runs.items()
                          if n * 2 >= len(windows)}
        print(f"FOOTPRINT kind={name} windows={len(windows)}"
              f" code_lines={median(len(c) for c, _, _ in windows)}"
              f" data_lines={median(len(d) for _, d, _ in windows)}"
              f" code_pages={median(len({ln >> (PAGE - LINE) for ln in c}) for c, _, _ in windows)}"
              f" data_pages={median(len({ln >> (PAGE - LINE) for ln in d}) for _, d, _ in windows)}"
              f" steady_code_lines={len(steady[marked])}")
    if not kinds[True] or not kinds[False]:
        return
    if args.order:
        write_order(args.order, ran_in, " ".join(sys.argv[1:]))
    only = steady[True] - steady[False]
    by_fn = collections.Counter(syms.name(ln << LINE) for ln in only)
    print(f"\ncode lines only marked windows run: {len(only)}"
          f" (plain-only: {len(steady[False] - steady[True])})")
    for fn, n in by_fn.most_common(args.top):
        print(f"{n:6d}  {fn}")
    per = {}
    for marked, windows in kinds.items():
        total = collections.Counter()
        for _, _, toucher in windows:
            total.update(toucher)
        per[marked] = {fn: n / len(windows) for fn, n in total.items()}
    diff = sorted(((per[True].get(fn, 0) - per[False].get(fn, 0), fn)
                   for fn in set(per[True]) | set(per[False])), reverse=True)
    print("\ndata lines per window, marked minus plain, by first toucher:")
    for d, fn in diff[:args.top]:
        if d < 0.5:
            break
        print(f"{d:8.1f}  {fn}")


if __name__ == "__main__":
    main()
