"""The ELF/DWARF fuzz run: lanes of (seed input, entry point), seeds, a process pool.

A case is ``(lane, seed)``; the lane names the seed group and the entry point, the seed
picks the input file within the group and the mutation (:func:`fuzz.elfmut.mutate`). Cases
run in-process through the library calls the CLI makes (``size_report`` and
``prove(binary_only=True)``, then the renderers), on ``--jobs`` worker processes.

    python tests/fuzz/runner.py --cases 20000            # a bigger run
    python tests/fuzz/runner.py --replay linked/size 1234  # one case, with its traceback
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `fuzz` and `build_cache` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from fuzz import corpus  # noqa: E402
from fuzz.elfmut import ElfMap, RefTable, mutate  # noqa: E402
from fuzz.harness import Tally, peak_rss_mb, run_case  # noqa: E402

BASE_SEED = 20240611
#: address-space cap per worker: a runaway allocation becomes MemoryError (a crash), not the OOM killer
AS_LIMIT = 6 << 30


@dataclass(frozen=True)
class Lane:
    name: str  # "<group>/<entry>"
    group: str
    entry: str  # size | prove
    share: float  # fraction of the ELF cases
    timeout: float  # per-case bound, seconds
    minimum: int = 0


LANES = (  # shares tuned so 10,000 cases fit CI (per-case cost: linked 12 ms, reloc 40 ms, prove 90 ms)
    Lane("linked/size", "linked", "size", 0.79, 15),
    Lane("reloc/size", "reloc", "size", 0.10, 30),
    Lane("reloc-big/size", "reloc-big", "size", 0.01, 30),
    Lane("linked/prove", "linked", "prove", 0.03, 30),
    Lane("real-linked/size", "real-linked", "size", 0.07, 30),
    Lane("real-linked/prove", "real-linked", "prove", 0.0003, 90, minimum=2),
    Lane("real/size", "real", "size", 0.0002, 120, minimum=2),
)


def plan(total: int, groups: dict[str, list], base_seed: int = BASE_SEED) -> list[tuple[str, int]]:
    """``total`` (lane, seed) cases; lanes without inputs give their share to linked/size."""
    live = [l for l in LANES if groups.get(l.group)]
    counts = {l.name: max(l.minimum, int(total * l.share)) for l in live}
    lost = total - sum(counts.values())
    fallback = "linked/size" if "linked/size" in counts else (live[0].name if live else None)
    if fallback is None:
        return []
    counts[fallback] = max(0, counts[fallback] + lost)
    cases = []
    for i, l in enumerate(live):
        cases += [(l.name, base_seed + i * 10_000_000 + k) for k in range(counts[l.name])]
    return cases


# ---------------------------------------------------------------- worker side

_W: dict = {}


def _init_worker(groups: dict, scratch: str) -> None:
    os.environ["SCOPECHECK_CACHE"] = os.path.join(scratch, "cache")
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        cap = AS_LIMIT if hard == resource.RLIM_INFINITY else min(AS_LIMIT, hard)
        resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    except (ValueError, OSError):
        pass
    _W.clear()
    _W.update(groups=groups, scratch=scratch, clean={})
    import scopecheck.size  # noqa: F401 - import before the clock starts
    import scopecheck.proof  # noqa: F401
    import scopecheck.output.size  # noqa: F401
    import scopecheck.output.proof  # noqa: F401


def _clean(path: str):
    c = _W["clean"].get(path)
    if c is None:
        data = Path(path).read_bytes()
        c = (data, ElfMap.parse(data), RefTable.build(path))
        _W["clean"][path] = c
    return c


def _entry(entry: str, path: str):
    if entry == "size":
        from scopecheck import targets
        from scopecheck.output import size as out
        from scopecheck.size import size_report

        def call():
            reps = [size_report(targets.resolve(path), pahole=False, use_cache=False)]
            out.table(reps)
            out.expanded(reps)
            out.to_json(reps)
    else:
        from scopecheck.output import proof as out
        from scopecheck.proof import prove

        def call():
            r = prove(path, binary_only=True, use_cache=False)
            out.text(r)
            out.to_json(r)
    return call


def lane(name: str) -> Lane:
    return next(l for l in LANES if l.name == name)


def case_input(lane_name: str, seed: int, groups: dict) -> tuple[object, bytes, str]:
    """(seed input, mutated bytes, mutation description) of one case."""
    l = lane(lane_name)
    items = groups[l.group]
    item = items[seed % len(items)]
    clean, emap, refs = _clean(item.path)
    data, desc = mutate(clean, emap, seed, refs)
    return item, data, desc


def run_chunk(chunk: list[tuple[str, int]]) -> Tally:
    t = Tally()
    groups, scratch = _W["groups"], _W["scratch"]
    for lane_name, seed in chunk:
        l = lane(lane_name)
        item, data, desc = case_input(lane_name, seed, groups)
        suffix = ".o" if not item.linked else ".elf"
        f = Path(scratch) / f"case-{os.getpid()}-{seed}{suffix}"
        f.write_bytes(data)
        try:
            o = run_case(_entry(l.entry, str(f)), l.timeout)
        finally:
            f.unlink(missing_ok=True)
        t.add(lane_name, seed, f"{item.name}: {desc}", o)
    t.peak_rss_mb = peak_rss_mb()
    return t


# ---------------------------------------------------------------- driver

def run(total: int, *, jobs: int = 2, scratch: Path | None = None, real: Path | None = None,
        base_seed: int = BASE_SEED, chunk: int = 40, log=print) -> Tally:
    import multiprocessing as mp

    own = scratch is None
    scratch = Path(tempfile.mkdtemp(prefix="scopecheck-fuzz-")) if own else Path(scratch)
    groups = corpus.seeds(scratch, real)
    cases = plan(total, groups, base_seed)
    # the slow lanes first, so the pool finishes together
    order = {l.name: i for i, l in enumerate(sorted(LANES, key=lambda l: -l.timeout))}
    cases.sort(key=lambda c: order[c[0]])
    chunks = [cases[i: i + chunk] for i in range(0, len(cases), chunk)]
    heavy = [c for c in chunks if lane(c[0][0]).timeout >= 60]
    chunks = [[x] for c in heavy for x in c] + [c for c in chunks if lane(c[0][0]).timeout < 60]
    t0 = time.perf_counter()
    total_t = Tally()
    with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("fork"),
                             initializer=_init_worker, initargs=(groups, str(scratch))) as ex:
        for part in ex.map(run_chunk, chunks):
            total_t.merge(part)
            for f in part.failures:
                log(f.line())
    total_t.seconds = time.perf_counter() - t0
    if own:
        import shutil

        shutil.rmtree(scratch, ignore_errors=True)
    return total_t


def replay(lane_name: str, seed: int, real: Path | None = None) -> None:
    scratch = Path(tempfile.mkdtemp(prefix="scopecheck-fuzz-replay-"))
    groups = corpus.seeds(scratch, real)
    _init_worker(groups, str(scratch))
    item, data, desc = case_input(lane_name, seed, groups)
    f = scratch / f"case-{seed}{'.elf' if item.linked else '.o'}"
    f.write_bytes(data)
    print(f"lane={lane_name} seed={seed} input={item.name} mutation={desc}\nfile: {f}")
    o = run_case(_entry(lane(lane_name).entry, str(f)), lane(lane_name).timeout, debug=True)
    print(f"{o.status} (exit {o.exit_code}) in {o.elapsed:.2f} s: {o.detail}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=int(os.environ.get("SCOPECHECK_FUZZ_CASES", "7000")))
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--seed", type=int, default=BASE_SEED)
    ap.add_argument("--no-real", action="store_true", help="skip the pkvm-tiny 6.1 kvm_nvhe.o")
    ap.add_argument("--replay", nargs=2, metavar=("LANE", "SEED"))
    a = ap.parse_args(argv)
    real = None if a.no_real else corpus.real_nvhe_object()
    if a.replay:
        replay(a.replay[0], int(a.replay[1]), real)
        return 0
    t = run(a.cases, jobs=a.jobs, real=real, base_seed=a.seed)
    print(f"lanes: {', '.join(f'{k} {v}' for k, v in sorted(t.by_lane.items()))}; "
          f"exit 0: {t.ok}, exit 2: {t.errors}; {t.seconds:.0f} s")
    print(t.summary())
    return 1 if t.crashes or t.hangs else 0


if __name__ == "__main__":
    sys.exit(main())
