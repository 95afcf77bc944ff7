#!/usr/bin/env python3
"""Benchmark `scopecheck narrow` against its floor, `scopecheck callgraph`, on the same build.

narrow runs the callgraph proof and adds the hand-off analysis, so callgraph is the floor.
Target: narrow <= 1.2x callgraph, cold and warm. In one run, medians of N, alternating:
  * cold: --no-cache for both (libclang parses every hyp translation unit)
  * warm: caches filled (the per-TU source facts, the binary facts, the layouts)
The cold numbers include narrow's second read of the source facts: with --no-cache it parses
again (the proof does not hand its source facts over), so cold narrow costs more than warm.

Usage: python benchmarks/bench_narrow.py [--runs N] [--build DIR] [--no-cold]
Without --build the 6.1 pkvm-tiny build is made (cached) through tests/build_cache.py.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = 1.2


def sc() -> list[str]:
    exe = Path(sys.executable).with_name("scopecheck")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "scopecheck"]


def timed(cmd) -> float:
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if r.returncode not in (0, 1):
        raise SystemExit(f"benchmark: {' '.join(map(str, cmd))} exited {r.returncode}: {r.stderr.strip()[:400]}")
    return wall


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--build")
    ap.add_argument("--no-cold", action="store_true", help="only the warm comparison")
    a = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "tests"))
    if a.build:
        build = Path(a.build)
    else:
        from build_cache import pkvm_tiny_61

        build = pkvm_tiny_61().out
    cases = {}
    for mode in (() if a.no_cold else ("cold",)) + ("warm",):
        extra = ["--no-cache"] if mode == "cold" else []
        cases[(mode, "callgraph")] = sc() + ["callgraph", *extra, "--format", "json", "--quiet", str(build)]
        cases[(mode, "narrow")] = sc() + ["narrow", *extra, "--format", "json", "--quiet", str(build)]
    timed(cases[("warm", "narrow")])  # fill the caches
    rows: dict = {}
    for _ in range(a.runs):
        for key, cmd in cases.items():
            rows.setdefault(key, []).append(timed(cmd))
    print(f"build {build}\n{a.runs} runs each, medians (alternating)")
    print(f"{'mode':6} {'callgraph s':>12} {'narrow s':>9} {'ratio':>6}  target <= {TARGET}x")
    ok = True
    for mode in dict.fromkeys(m for m, _ in cases):
        cg = statistics.median(rows[(mode, "callgraph")])
        nw = statistics.median(rows[(mode, "narrow")])
        ratio = nw / cg
        ok &= ratio <= TARGET
        print(f"{mode:6} {cg:12.2f} {nw:9.2f} {ratio:6.2f}  {'met' if ratio <= TARGET else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
