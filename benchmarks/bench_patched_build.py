#!/usr/bin/env python3
"""Benchmark a patched kernel build: seeded from the cached build of the source vs from nothing.

`scopecheck kernel build SRC --patch P` without --out copies the cached build of SRC
(same config and compiler), lets make recompile what P touches and relocates the DWARF
with debugedit (scopecheck/kernels/seed.py). The peer is the same patched build into a
new --out directory, which is built from nothing (what every patched build cost before).

In one run, on Debian's linux-source-<series>, pkvm-tiny:
  * the unpatched build is made first (cached; not timed)
  * seeded: N patched builds, each of a patch that adds a new line to one hyp .c file
    (a nonce, so that every run is a new build and a real recompile), median
  * full: the same kind of patch built into a fresh --out directory (--full-runs, default 1)
and the ratio full / seeded. Each run's build (and its patched tree copy) is deleted after.

Usage: python benchmarks/bench_patched_build.py [--series 6.1] [--runs 3] [--full-runs 1]
Prints one JSON object on stdout; progress on stderr.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HYP_FILE = "arch/arm64/kvm/hyp/nvhe/switch.c"


def sc() -> list[str]:
    exe = Path(sys.executable).with_name("scopecheck")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "scopecheck"]


def log(msg: str) -> None:
    print(f"bench_patched_build: {msg}", file=sys.stderr, flush=True)


def build(args: list[str]) -> tuple[float, dict]:
    t = time.perf_counter()
    r = subprocess.run(sc() + ["kernel", "build", *args, "--format", "json", "--quiet"], capture_output=True,
                       text=True)
    wall = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"bench_patched_build: kernel build {' '.join(args)} exited {r.returncode}: "
                         f"{r.stderr.strip()[:400]}")
    return wall, json.loads(r.stdout)


def patch_file(tree: Path, work: Path) -> Path:
    """A -p1 patch adding one line (with a nonce) before the first line of HYP_FILE."""
    first = (tree / HYP_FILE).read_text().splitlines(keepends=True)[0]
    nonce = uuid.uuid4().hex[:12]
    p = work / f"nonce-{nonce}.patch"
    p.write_text(f"--- a/{HYP_FILE}\n+++ b/{HYP_FILE}\n@@ -1 +1,2 @@\n"
                 f"+/* bench_patched_build {nonce} */\n {first}")
    return p


def forget(k: dict) -> None:
    """Remove a benchmark build and its patched tree copy from the cache."""
    shutil.rmtree(k["out"], ignore_errors=True)
    if "/trees/" in k["source_dir"]:
        shutil.rmtree(k["source_dir"], ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--series", default="6.1")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--full-runs", type=int, default=1)
    a = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from scopecheck.kernels.debian import fetch_source

    tarball = fetch_source(a.series)
    log(f"the unpatched pkvm-tiny build of {tarball.name} (cached)")
    _, base = build([str(tarball)])
    tree = Path(base["source_dir"])
    work = Path(tempfile.mkdtemp(prefix="bench-patched-"))
    seeded, recompiled = [], []
    try:
        for i in range(a.runs):
            log(f"seeded patched build {i + 1}/{a.runs}")
            w, k = build([str(tarball), "--patch", str(patch_file(tree, work))])
            if k.get("seeded_from") != base["out"]:
                raise SystemExit(f"bench_patched_build: the patched build was not seeded from {base['out']}: "
                                 f"{k.get('notes')}")
            seeded.append(w)
            recompiled.append(next((n for n in k["notes"] if n.startswith("rebuilt incrementally")), ""))
            forget(k)
        full = []
        for i in range(a.full_runs):
            log(f"full patched build {i + 1}/{a.full_runs} (minutes)")
            w, k = build([str(tarball), "--patch", str(patch_file(tree, work)), "--out", str(work / f"full-{i}")])
            full.append(w)
            forget(k)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    s, f = statistics.median(seeded), statistics.median(full)
    print(json.dumps({"series": a.series, "patched_file": HYP_FILE,
                      "seeded_seconds": [round(x, 1) for x in seeded], "seeded_median": round(s, 1),
                      "full_seconds": [round(x, 1) for x in full], "full_median": round(f, 1),
                      "full_over_seeded": round(f / s, 1), "seeded_note": recompiled[0] if recompiled else ""},
                     indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
