#!/usr/bin/env python3
"""Benchmark the scope proof (`scopecheck callgraph`) and compare with a Coccinelle field query.

In one run, medians of N:
  * binary-only call graph + proof of Debian's 6.1 dbg vmlinux, cold (--no-cache)  target <= 3 s
  * full proof (source + binary) of the 6.1 pkvm-tiny build, cold (--no-cache)      target <= 20 s
  * the same, warm (caches filled)                                                  target <= 2 s
  * full proof of the 6.12 pkvm-tiny build, cold and warm                            warm target <= 3 s
  * the floor: libclang parsing the same hyp translation units (same arguments, same worker
    processes) and doing nothing else, run just before the cold proof in each round; printed:
    proof-cold / floor, the median of the rounds' ratios (target <= 1.5x)
  * what reconciling the two doors costs: the time in reconcile() and binary_provenance() as a
    share of a cold 6.1 proof (in one process, the library's prove())                 target <= 20%
  * spatch (Debian package coccinelle) with a simple kvm_vcpu field query over the same
    hyp .c files: time, and how many distinct kvm_vcpu fields each tool finds.

Usage: python benchmarks/bench_callgraph.py [--runs N] [--vmlinux V] [--build DIR] [--build-612 DIR]
Without --vmlinux / --build / --build-612, Debian's 6.1 vmlinux is fetched and pkvm-tiny is built
from linux-source-6.1 and -6.12 (cached).
spatch is optional: without it that row is skipped (apt-get install coccinelle).

scopecheck's modules are byte-compiled first (a pip install does that), so no run pays for
compiling them even where PYTHONDONTWRITEBYTECODE is set (the floor imports scopecheck too).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COCCI = """@r@
struct kvm_vcpu *v;
identifier f;
@@
(
v->arch.f
|
v->f
)

@script:python@
f << r.f;
@@
print("FIELD", f)
"""


def sc() -> list[str]:
    exe = Path(sys.executable).with_name("scopecheck")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "scopecheck"]


#: what every run gets: the environment without PYTHONDONTWRITEBYTECODE (a pip install
#: compiles the modules; so does :func:`main` before the first run)
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def timed(cmd, env=None) -> tuple[float, str]:
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env or ENV)
    wall = time.perf_counter() - t
    if r.returncode not in (0, 1):
        raise SystemExit(f"benchmark: {' '.join(map(str, cmd))} exited {r.returncode}: {r.stderr.strip()[:400]}")
    return wall, r.stdout


FLOOR = """
import concurrent.futures as cf, multiprocessing as mp, os, sys
from pathlib import Path
import clang.cindex as ci
from scopecheck.proof import resolve_inputs, _is_hyp_source
from scopecheck.source import compdb as cdb
from scopecheck.source.compdb import clang_args

inp = resolve_inputs(sys.argv[1])
text = inp.compdb.read_text(errors="replace")
kernel = "__KVM_NVHE_HYPERVISOR__" in text or "/kvm/hyp/nvhe/" in text
keep = (lambda f, raw: "__KVM_NVHE_HYPERVISOR__" in raw or "/kvm/hyp/nvhe/" in f) if kernel else None
cmds = [c for c in cdb.load(inp.compdb, source_root=inp.source_root, keep=keep)
        if _is_hyp_source(c, kernel) and str(c.file).endswith(".c")]

def parse(c):
    ci.Index.create().parse(c.file, args=clang_args(c), options=0)
    return 1

with cf.ProcessPoolExecutor(max_workers=min(os.cpu_count() or 1, len(cmds)),
                            mp_context=mp.get_context("fork")) as ex:
    print(sum(ex.map(parse, cmds)), "translation units parsed")
"""


RECONCILE = """
import sys, time
import scopecheck.reconcile as r
from scopecheck.proof import prove
spent = [0.0]
for name in ("reconcile", "binary_provenance"):
    def timed(*a, _f=getattr(r, name), **k):
        t = time.perf_counter()
        try:
            return _f(*a, **k)
        finally:
            spent[0] += time.perf_counter() - t
    setattr(r, name, timed)
t = time.perf_counter()
prove(sys.argv[1], use_cache=False)
print(spent[0] / (time.perf_counter() - t))
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--vmlinux")
    ap.add_argument("--build")
    ap.add_argument("--build-612", dest="build_612")
    a = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "tests"))
    import compileall

    import scopecheck

    compileall.compile_dir(str(Path(scopecheck.__file__).parent), quiet=1)
    if a.vmlinux:
        vml = Path(a.vmlinux)
    else:
        from scopecheck.kernels.debian import fetch_vmlinux

        vml = fetch_vmlinux("debian:6.1")
    if a.build:
        build = Path(a.build)
    else:
        from build_cache import pkvm_tiny_61

        build = pkvm_tiny_61().out
    if a.build_612:
        build_612 = Path(a.build_612)
    else:
        from build_cache import build as build_series

        build_612 = build_series("6.12").out
    rows: dict[str, list[float]] = {}
    outs: dict[str, str] = {}
    # the floor runs just before the cold proof in each round: the ratio is taken per round, so
    # that a machine whose speed drifts between rounds compares like with like
    cases = {
        "binary-only, Debian 6.1 vmlinux, cold": sc() + ["callgraph", "--no-cache", "--format", "json", str(vml)],
        "floor: libclang parses the same hyp TUs, nothing else": [sys.executable, "-c", FLOOR, str(build)],
        "source+binary, 6.1 pkvm-tiny, cold": sc() + ["callgraph", "--no-cache", "--format", "json", str(build)],
        "source+binary, 6.1 pkvm-tiny, warm": sc() + ["callgraph", "--format", "json", str(build)],
        "source+binary, 6.12 pkvm-tiny, cold": sc() + ["callgraph", "--no-cache", "--format", "json", str(build_612)],
        "source+binary, 6.12 pkvm-tiny, warm": sc() + ["callgraph", "--format", "json", str(build_612)],
    }
    timed(cases["source+binary, 6.1 pkvm-tiny, warm"])  # fill the caches
    timed(cases["source+binary, 6.12 pkvm-tiny, warm"])
    spatch = shutil.which("spatch")
    src = (build / "source").resolve()
    hyp_c = sorted((src / "arch/arm64/kvm/hyp/nvhe").glob("*.c"))
    cocci = Path(tempfile.mkdtemp()) / "fields.cocci"
    cocci.write_text(COCCI)
    if spatch:
        cases["spatch kvm_vcpu field query (same hyp .c files)"] = [
            spatch, "--sp-file", str(cocci), "--very-quiet", "--no-includes",
            "-I", str(src / "arch/arm64/include"), "-I", str(src / "include"), *map(str, hyp_c)]
    for _ in range(a.runs):
        for name, cmd in cases.items():
            w, out = timed(cmd)
            rows.setdefault(name, []).append(w)
            outs[name] = out
    shares = [float(timed([sys.executable, "-c", RECONCILE, str(build)])[1]) for _ in range(a.runs)]
    targets = {"binary-only, Debian 6.1 vmlinux, cold": 3.0, "source+binary, 6.1 pkvm-tiny, cold": 20.0,
               "source+binary, 6.1 pkvm-tiny, warm": 2.0, "source+binary, 6.12 pkvm-tiny, warm": 3.0}
    ours = json.loads(outs["source+binary, 6.1 pkvm-tiny, warm"])
    ours_fields = {f["path"].split(".")[0] if not f["path"].startswith("arch.") else
                   ".".join(f["path"].split(".")[:2]) for f in ours["footprint"] if f["root"] == "kvm_vcpu"}
    print(f"vmlinux {vml}\nbuild {build}\nbuild 6.12 {build_612}\n{a.runs} runs each, medians")
    peer = statistics.median(rows[next(iter(k for k in cases if k.startswith("spatch")))]) if spatch else None
    print(f"{'case':52} {'median s':>9} {'target':>8} {'x spatch':>9}")
    for name, ts in rows.items():
        med = statistics.median(ts)
        t = targets.get(name)
        verdict = "" if t is None else (f"<= {t:.0f} s " + ("met" if med <= t else "MISSED"))
        ratio = f"{med / peer:9.2f}" if peer else "        -"
        print(f"{name:52} {med:9.2f} {verdict:>8} {ratio}")
    floors = rows["floor: libclang parses the same hyp TUs, nothing else"]
    colds = rows["source+binary, 6.1 pkvm-tiny, cold"]
    paired = statistics.median(c / f for c, f in zip(colds, floors))
    print(f"proof cold / floor: {paired:.2f}x, median of the {len(colds)} rounds' ratios "
          f"(target <= 1.5x: {'met' if paired <= 1.5 else 'MISSED'}); per round: "
          f"{', '.join(f'{c / f:.2f}' for c, f in zip(colds, floors))}; ratio of the medians: "
          f"{statistics.median(colds) / statistics.median(floors):.2f}x")
    share = statistics.median(shares)
    print(f"reconciliation: {100 * share:.1f}% of a cold 6.1 proof, median of {len(shares)} "
          f"(target <= 20%: {'met' if share <= 0.2 else 'MISSED'})")
    print(f"distinct kvm_vcpu fields (top level / arch.X), scopecheck source+binary: {len(ours_fields)}; "
          f"all field paths: {sum(1 for f in ours['footprint'] if f['root'] == 'kvm_vcpu')}")
    if spatch:
        sp = {m for m in re.findall(r"^FIELD (\w+)", outs[next(k for k in cases if k.startswith('spatch'))], re.M)}
        print(f"distinct kvm_vcpu fields found by the spatch query: {len(sp)}")
    else:
        print("spatch not installed: apt-get install coccinelle to compare")
    return 0


if __name__ == "__main__":
    sys.exit(main())
