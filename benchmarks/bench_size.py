#!/usr/bin/env python3
"""Benchmark `scopecheck size` as users run it (pahole cross-check on, the default) against
`pahole -C kvm_vcpu` on the same Debian 6.1 vmlinux.

All cases run in this one process's session, alternating, so machine noise hits
them alike. Prints medians of N runs, the ratios to pahole, peak RSS, and whether
each target is met:

  default command, cold (empty cache: DWARF read and pahole run concurrently)  <= 1.0 x pahole
  default command, warm (layouts and pahole's answer cached per build-id)      <= 0.5 x pahole
  peak RSS                                                                      <= 1 GB

scopecheck's modules are byte-compiled first (a pip install does that), so no run pays
for compiling them even where PYTHONDONTWRITEBYTECODE is set.

Usage: python benchmarks/bench_size.py [VMLINUX] [--runs N]
Without VMLINUX, Debian's 6.1 cloud-arm64 dbg vmlinux is fetched into the cache.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def scopecheck_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("scopecheck")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("scopecheck")
    return [found] if found else [sys.executable, "-m", "scopecheck"]


def run(cmd: list[str], env: dict | None = None) -> tuple[float, int]:
    """Wall seconds and peak RSS (KiB) of one run of ``cmd``."""
    t = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t
    p.returncode = os.waitstatus_to_exitcode(status)
    err = p.stderr.read().decode(errors="replace")
    p.stderr.close()
    if p.returncode not in (0,):
        raise SystemExit(f"benchmark: {' '.join(cmd)} exited {p.returncode}: {err.strip()}")
    return wall, ru.ru_maxrss


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("vmlinux", nargs="?")
    ap.add_argument("--runs", type=int, default=7)
    a = ap.parse_args()
    if shutil.which("pahole") is None:
        raise SystemExit("benchmark: pahole not installed (Debian package dwarves)")
    if a.vmlinux:
        vml = Path(a.vmlinux)
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        from scopecheck.kernels.debian import fetch_vmlinux

        vml = fetch_vmlinux("debian:6.1")
    sc = scopecheck_cmd()
    import compileall

    import scopecheck

    compileall.compile_dir(str(Path(scopecheck.__file__).parent), quiet=1)
    tmp = tempfile.mkdtemp(prefix="scopecheck-bench-")
    env = dict(os.environ, SCOPECHECK_CACHE=str(Path(tmp) / "warm"))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    COLD, WARM = "scopecheck size (default; cold: empty cache)", "scopecheck size (default; warm)"
    cases = {
        "pahole -C kvm_vcpu": (["pahole", "-C", "kvm_vcpu", str(vml)], None),
        COLD: (sc + ["size", str(vml)], None),  # a new empty cache for every run (below)
        WARM: (sc + ["size", str(vml)], env),
        "scopecheck size --no-pahole --no-cache": (sc + ["size", "--no-pahole", "--no-cache", str(vml)], env),
        "scopecheck --help": (sc + ["--help"], env),
    }
    run(cases[WARM][0], env)                      # fill the cache
    run(["pahole", "-C", "kvm_vcpu", str(vml)])   # warm the page cache for all
    times: dict[str, list[float]] = {k: [] for k in cases}
    rss: dict[str, int] = {k: 0 for k in cases}
    for i in range(a.runs):
        for name, (cmd, e) in cases.items():
            if name == COLD:
                e = dict(env, SCOPECHECK_CACHE=str(Path(tmp) / f"cold-{i}"))
            w, r = run(cmd, e)
            times[name].append(w)
            rss[name] = max(rss[name], r)
    shutil.rmtree(tmp, ignore_errors=True)
    base = statistics.median(times["pahole -C kvm_vcpu"])
    print(f"vmlinux: {vml} ({vml.stat().st_size / 1e6:.0f} MB), {a.runs} runs each, medians")
    print(f"{'case':48} {'median s':>9} {'x pahole':>9} {'peak RSS':>10}")
    for name in cases:
        med = statistics.median(times[name])
        print(f"{name:48} {med:9.3f} {med / base:9.2f} {rss[name] / 1024:8.0f} MB")
    cold = statistics.median(times[COLD]) / base
    warm = statistics.median(times[WARM]) / base
    peak = max(rss.values()) / 1024
    verdict = lambda ok: "met" if ok else "MISSED"
    print(f"target default cold <= 1.0x pahole: {cold:.2f}x {verdict(cold <= 1.0)}")
    print(f"target default warm <= 0.5x pahole: {warm:.2f}x {verdict(warm <= 0.5)}")
    print(f"target peak RSS <= 1 GB:   {peak:.0f} MB {verdict(peak <= 1024)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
