#!/usr/bin/env python3
"""Benchmark an incremental rebuild + re-analysis after a one-file change in hyp code.

What a pKVM developer does all day: edit one file under arch/arm64/kvm/hyp/nvhe/,
rebuild, re-run the analysis. In one run, on a private copy of Debian's
linux-source-<series> (the cached source is never touched):

  * cold build of pkvm-tiny into a new build directory (ccache on, when installed)
  * the floor: `kernel build` again with nothing changed (config kept, make finds nothing to do)
  * edit:  one hyp .c gets a new line (a real change: ccache misses it), then
           `scopecheck kernel build` + `scopecheck callgraph`                target <= 60 s on 2 cores
  * touch: the same file's mtime only (ccache hits), rebuild + callgraph

medians of --runs N, and each one's ratio to the floor.

Usage: python benchmarks/bench_rebuild.py [--series 6.1] [--llvm] [--runs 3] [--work DIR] [--keep]
       python benchmarks/bench_rebuild.py --tree T --out O   (an existing tree copy and build directory)
       python benchmarks/bench_rebuild.py --shadow [BUILD]   (root; no cold build, see below)
Prints one JSON object on stdout; progress on stderr.

--shadow: start from a completed build directory BUILD (default: the cached pkvm-tiny
build of --series, as the tests build it). kbuild's command lines name the tree and the
build directory by absolute path, so a copy elsewhere would rebuild everything; instead
the tree and BUILD are copied and each command runs in a private mount namespace
(``unshare -m``) with the copies bind-mounted over the originals. The cache is never
written to (the copies are), and SCOPECHECK_CACHE points at the work directory.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HYP_FILE = "arch/arm64/kvm/hyp/nvhe/switch.c"
TARGET_SECONDS = 60.0


def sc() -> list[str]:
    exe = Path(sys.executable).with_name("scopecheck")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "scopecheck"]


def log(msg: str) -> None:
    print(f"bench_rebuild: {msg}", file=sys.stderr, flush=True)


SHADOW: list[tuple[Path, Path]] = []  # (copy, original) bind mounts for every command
ENV: dict = dict(os.environ)


def run(cmd: list[str], ok=(0,)) -> tuple[float, str]:
    if SHADOW:
        mounts = " && ".join(f"mount --bind '{c}' '{o}' && test -e '{o}/.scopecheck-bench-copy'"
                             for c, o in SHADOW)
        cmd = ["unshare", "-m", "--propagation", "private", "sh", "-c", f'{mounts} && exec "$@"', "sh", *cmd]
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=ENV)
    wall = time.perf_counter() - t
    if r.returncode not in ok:
        raise SystemExit(f"bench_rebuild: {' '.join(map(str, cmd))} exited {r.returncode}: "
                         f"{r.stderr.strip()[-600:]}")
    return wall, r.stdout


def build(tree: Path, out: Path, llvm: bool) -> tuple[float, dict]:
    cmd = [*sc(), "kernel", "build", str(tree), "--out", str(out), "--format", "json", "-q"]
    if llvm:
        cmd.append("--llvm")
    wall, stdout = run(cmd)
    return wall, json.loads(stdout)


def analyse(out: Path) -> float:
    wall, _ = run([*sc(), "callgraph", str(out), "--format", "json", "--quiet"], ok=(0, 1))
    return wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--series", default="6.1")
    ap.add_argument("--llvm", action="store_true", help="build with clang/LLVM (LLVM=1)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--work", type=Path, help="where the tree copy and build directory go [a temp dir]")
    ap.add_argument("--tree", type=Path, help="an existing (writable) kernel tree copy")
    ap.add_argument("--out", type=Path, help="its existing build directory")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--shadow", nargs="?", const="cached", metavar="BUILD",
                    help="rebuild a copy of an existing build directory in place (see above)")
    ap.add_argument("--tree-copy", type=Path, help="with --shadow: an existing copy of BUILD's tree to use")
    a = ap.parse_args()

    result: dict = {"schema_version": 1, "series": a.series, "llvm": a.llvm, "cores": os.cpu_count(),
                    "ccache": shutil.which("ccache") is not None, "hyp_file": HYP_FILE,
                    "target_seconds": TARGET_SECONDS}
    work = None
    if a.shadow:
        from scopecheck.kernels.build import cached_build, load_build
        from scopecheck.kernels.debian import fetch_source

        k = (cached_build(fetch_source(a.series), "pkvm-tiny", llvm=a.llvm) if a.shadow == "cached"
             else load_build(a.shadow))
        if k is None:
            raise SystemExit(f"bench_rebuild: {a.shadow}: no completed build there")
        work = Path(tempfile.mkdtemp(prefix="scopecheck-bench-rebuild-", dir=a.work))
        tree, out = (a.tree_copy.resolve() if a.tree_copy else work / "linux"), work / "out"
        t = time.perf_counter()
        if not a.tree_copy:
            log(f"copying {k.source_dir}")
            subprocess.run(["cp", "-a", "--reflink=auto", str(k.source_dir), str(tree)], check=True)
        log(f"copying {k.out}")
        subprocess.run(["cp", "-a", "--reflink=auto", str(k.out), str(out)], check=True)
        result["copy_seconds"] = round(time.perf_counter() - t, 1)
        for d in (tree, out):
            (d / ".scopecheck-bench-copy").write_text("")
        SHADOW[:] = [(tree, Path(k.source_dir)), (out, Path(k.out))]
        ENV["SCOPECHECK_CACHE"] = str(work / "cache")
        result["shadow_of"] = str(k.out)
        result["cold_build_seconds_recorded"] = k.build_seconds
        tree_seen, out_seen = Path(k.source_dir), Path(k.out)  # the paths the commands see
        log("first rebuild (the cached build predates this code: its config is redone once)")
        wall, kk = build(tree_seen, out_seen, a.llvm)
        result["first_rebuild_seconds"] = round(wall, 1)
        result["kconfig"] = kk.get("kconfig", {})
        result["ccache_used"] = kk.get("ccache")
    elif a.tree and a.out:
        tree, out = a.tree.resolve(), a.out.resolve()
    else:
        from scopecheck.kernels.build import resolve_source
        from scopecheck.kernels.debian import fetch_source

        work = Path(tempfile.mkdtemp(prefix="scopecheck-bench-rebuild-", dir=a.work))
        src = resolve_source(fetch_source(a.series)).dir
        tree, out = work / "linux", work / "out"
        log(f"copying {src} to {tree}")
        t = time.perf_counter()
        subprocess.run(["cp", "-a", "--reflink=auto", str(src), str(tree)], check=True)
        result["copy_seconds"] = round(time.perf_counter() - t, 1)
        log("cold build (this takes a while)")
        wall, k = build(tree, out, a.llvm)
        result["cold_build_seconds"] = round(wall, 1)
        result["kconfig"] = k.get("kconfig", {})
        result["ccache_used"] = k.get("ccache")
    if not a.shadow:
        tree_seen, out_seen = tree, out
    try:
        log("first analysis (fills the analysis caches)")
        result["first_callgraph_seconds"] = round(analyse(out_seen), 1)
        hyp = tree / HYP_FILE
        original = hyp.read_text()
        floor, edit_b, edit_a, touch_b, touch_a = [], [], [], [], []
        for i in range(a.runs):
            log(f"run {i + 1}/{a.runs}: floor (nothing changed)")
            wall, k = build(tree_seen, out_seen, a.llvm)
            assert k.get("reused_config"), "the build directory's config was not kept"
            floor.append(wall)
            log(f"run {i + 1}/{a.runs}: edit {HYP_FILE}")
            hyp.write_text(original + f"\n/* scopecheck bench_rebuild edit {time.time_ns()} */\n")
            wall, _ = build(tree_seen, out_seen, a.llvm)
            edit_b.append(wall)
            edit_a.append(analyse(out_seen))
            log(f"run {i + 1}/{a.runs}: touch {HYP_FILE}")
            os.utime(hyp)
            wall, _ = build(tree_seen, out_seen, a.llvm)
            touch_b.append(wall)
            touch_a.append(analyse(out_seen))
        hyp.write_text(original)

        def med(xs):
            return round(statistics.median(xs), 1)

        f = med(floor)
        result.update({
            "runs": a.runs,
            "floor_rebuild_seconds": f,
            "edit_rebuild_seconds": med(edit_b),
            "edit_callgraph_seconds": med(edit_a),
            "edit_total_seconds": med([b + c for b, c in zip(edit_b, edit_a)]),
            "touch_rebuild_seconds": med(touch_b),
            "touch_callgraph_seconds": med(touch_a),
            "touch_total_seconds": med([b + c for b, c in zip(touch_b, touch_a)]),
            "edit_rebuild_vs_floor": round(med(edit_b) / f, 2) if f else None,
            "touch_rebuild_vs_floor": round(med(touch_b) / f, 2) if f else None,
        })
        result["within_target"] = result["edit_total_seconds"] <= TARGET_SECONDS
        load = os.getloadavg()
        result["load_average"] = [round(x, 1) for x in load]
    finally:
        if work is not None and not a.keep:
            shutil.rmtree(work, ignore_errors=True)
        elif work is not None:
            log(f"kept {work}")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
