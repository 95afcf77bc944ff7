#!/usr/bin/env python3
"""Benchmark `scopecheck size` against `pahole -C kvm_vcpu` on the same Debian 6.1 vmlinux.

Both peers run in this one process's session, alternating, so machine noise hits
both alike. Prints medians of N runs, the ratios to pahole, peak RSS, and whether
each target from the size issue is met:

  cold (no layout cache)   <= 1.0 x pahole
  warm (layout cache hit)  <= 0.5 x pahole
  peak RSS                 <= 1 GB

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
    tmp = tempfile.mkdtemp(prefix="scopecheck-bench-")
    env = dict(os.environ, SCOPECHECK_CACHE=tmp)
    cases = {
        "pahole -C kvm_vcpu": (["pahole", "-C", "kvm_vcpu", str(vml)], None),
        "scopecheck size --no-pahole (cold)": (sc + ["size", "--no-pahole", "--no-cache", str(vml)], env),
        "scopecheck size -s kvm_vcpu --no-pahole (cold)":
            (sc + ["size", "-s", "kvm_vcpu", "--no-pahole", "--no-cache", str(vml)], env),
        "scopecheck size (warm, pahole cached)": (sc + ["size", str(vml)], env),
        "scopecheck --help": (sc + ["--help"], env),
    }
    run(cases["scopecheck size (warm, pahole cached)"][0], env)  # fill the layout cache
    run(["pahole", "-C", "kvm_vcpu", str(vml)])                  # warm the page cache for both
    times: dict[str, list[float]] = {k: [] for k in cases}
    rss: dict[str, int] = {k: 0 for k in cases}
    for _ in range(a.runs):
        for name, (cmd, e) in cases.items():
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
    cold = statistics.median(times["scopecheck size --no-pahole (cold)"]) / base
    warm = statistics.median(times["scopecheck size (warm, pahole cached)"]) / base
    peak = max(rss.values()) / 1024
    verdict = lambda ok: "met" if ok else "MISSED"
    print(f"target cold <= 1.0x pahole: {cold:.2f}x {verdict(cold <= 1.0)}")
    print(f"target warm <= 0.5x pahole: {warm:.2f}x {verdict(warm <= 0.5)}")
    print(f"target peak RSS <= 1 GB:   {peak:.0f} MB {verdict(peak <= 1024)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
