#!/usr/bin/env python3
"""Benchmark `scopecheck series`: a 3-patch series on Debian's linux-source-6.1 (pkvm-tiny).

The series is the test suite's leak series (tests/series_patches.py: a harmless check, a
vcpu_id read, its removal; every patch touches one hyp .c file, nvhe/switch.c), written
with a fresh nonce so that every patch is new to ccache and to the per-TU source cache.
Prints, per step, the seconds spent applying, building and analysing, against the first
step (the base: SRC as it is; a full build the first time a work directory is used,
else a reset and an incremental make).

Target: every patch step (one hyp .c file) <= 90 s build + analysis on 2 cores.

Usage: python benchmarks/bench_series.py [--cold] [--jobs N]
  --cold   a new, empty cache for the work directory, ccache and the source facts (the base
           is then a full pkvm-tiny build; removed afterwards)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

TARGET_S = 90.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cold", action="store_true", help="a new work directory: the base is a full build")
    ap.add_argument("--jobs", "-j", type=int, default=None)
    args = ap.parse_args()

    import series_patches as sp
    from scopecheck.kernels.build import resolve_source
    from scopecheck.kernels.debian import fetch_source
    from scopecheck.kernels.patches import read_patches
    from scopecheck.series import run_series

    tarball = fetch_source("6.1")
    source = resolve_source(tarball)
    cold_cache = None
    if args.cold:  # everything after the extracted source starts empty: work dir, ccache, TU cache
        cold_cache = tempfile.mkdtemp(prefix="scopecheck-bench-series-")
        os.environ["SCOPECHECK_CACHE"] = cold_cache
    with tempfile.TemporaryDirectory() as d:
        patches = read_patches(sp.leak_series(source.dir, Path(d), uuid.uuid4().hex[:12]))
        t0 = time.monotonic()
        r = run_series(tarball, patches, jobs=args.jobs, source=source)
        wall = time.monotonic() - t0
    if cold_cache:
        import shutil

        shutil.rmtree(cold_cache, ignore_errors=True)
    base = r.base
    print(f"scopecheck series: linux {r.kernel} pkvm-tiny, {len(r.patch_steps)} patches "
          f"(one hyp .c file each), {os.cpu_count()} CPUs, wall {wall:.0f} s")
    print(f"{'step':<6}{'patch':<52}{'apply s':>8}{'build s':>9}{'analysis s':>11}{'total s':>9}"
          f"{'vs first':>10}  compiled")
    worst = 0.0
    for s in r.steps:
        name = "(base, full build)" if s.index == 0 and s.full_build else (
            "(base)" if s.index == 0 else s.patch.subject)
        ratio = s.seconds / base.seconds if base.seconds else float("nan")
        print(f"{s.index:<6}{name[:50]:<52}{s.apply_seconds:>8.1f}{s.build_seconds:>9.1f}"
              f"{s.analysis_seconds:>11.1f}{s.seconds:>9.1f}{ratio:>9.2f}x  {len(s.compiled)} TU(s)"
              f" {s.state.tus_parsed if s.state else '-'} parsed")
        if s.index:
            worst = max(worst, s.build_seconds + s.analysis_seconds)
    ok = worst <= TARGET_S and all(s.ok for s in r.steps)
    print(f"slowest patch step: {worst:.1f} s build + analysis (target <= {TARGET_S:.0f} s): "
          f"{'OK' if ok else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
