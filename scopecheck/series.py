"""``scopecheck series``: a patch series judged patch by patch, with the first regression named.

::

    from scopecheck.series import run_series
    from scopecheck.kernels.patches import read_patches
    r = run_series("linux-source-6.1.tar.xz", read_patches(["0001-a.patch", "0002-b.patch"]))
    r.first_regression, [s.new_leaks for s in r.steps]

SRC as it is is the *base*: analysed in the build cache's build of SRC when ``kernel build``
made one (same config and compiler), else built once in the work directory. Then the
patches are applied one at a time to one copy of SRC (:mod:`scopecheck.kernels.workdir`)
and the build directory is rebuilt incrementally after each. After every build the same analysis runs: struct
sizes from DWARF (:mod:`scopecheck.size`), the scope proof (:func:`scopecheck.proof.prove`,
whose source facts are cached per translation unit and keyed by the contents of the
file and of every header it includes, so only the units a patch changed are parsed
again), and, where :mod:`scopecheck.narrow` is installed, the narrowable functions.
Each step is compared with the last state that built: ``new_leaks`` and
``removed_leaks`` (by leak fingerprint: query, function, file, field, kind; not the
line, which unrelated edits move), fields newly touched or no longer touched, struct
size changes.

Each step's analysis is kept (``cache_dir("series")/steps``), keyed by SRC's identity, the
config, the compiler, the query, scopecheck's code and the diffs of the patches applied so
far. A later series that reaches the same tree (a rerun, v2 of a series whose first patches
did not change, the same series as an mbox) reuses it: the patch is still applied, nothing
is built or analysed for that step (``reused: "analysis"``), and the next step that is built
catches up on everything applied since the last build. ``use_cache=False`` neither reads nor
keeps these analyses.

A step fails when its patch does not apply or the kernel does not build; the series
stops there (:class:`SeriesFailed`, exit 2) unless ``keep_going``, which records the
failure and applies the next patch on top of the tree as it is.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

from scopecheck.errors import InputError, ScopecheckError

SCHEMA_VERSION = 1
SIZE_STRUCTS = ("kvm_vcpu", "kvm_cpu_context")
#: bump when :class:`Snapshot` or what goes into a step's key changes
STEP_CACHE_VERSION = 1

Progress = Callable[[str, Optional[int], Optional[int]], None]


class SeriesFailed(ScopecheckError):
    """A step failed (patch does not apply, build fails) without keep_going; ``result`` holds the steps so far."""

    def __init__(self, message: str, result: "SeriesResult"):
        super().__init__(message)
        self.result = result


# ---------------------------------------------------------------- one analysed state

@dataclass
class Snapshot:
    """The analysis of one state of the tree (the base, or the tree after a patch)."""

    leaks: dict  # fingerprint -> leak dict (Leak.to_dict()); one per function, file, field and kind
    leak_count: int  # leaks as callgraph counts them (one per access site)
    footprint: dict  # "root:path" -> {"bytes", "access"}
    sizes: dict  # struct -> bytes
    touched_bytes: Optional[int]
    leak_bytes: Optional[int]
    narrowable: Optional[set]  # function names narrow says can take a narrower type; None: not available
    narrow_note: Optional[str]
    tus_parsed: int
    tus_cached: int
    history_row: dict
    mode: str


def _narrowable(proof, use_cache: bool = True) -> tuple[Optional[set], Optional[str]]:
    """Functions ``scopecheck narrow`` says could take a narrower type than kvm_vcpu, or (None, why not).

    Keyed ``function (file)``: static functions of one name in two files stay apart.
    """
    try:
        from scopecheck.narrow import narrow  # built separately; optional here
    except ImportError:
        return None, "scopecheck narrow is not available in this installation"
    try:
        res = narrow(proof=proof, use_cache=use_cache)
    except ScopecheckError as e:
        return None, f"narrow: {e}"
    except TypeError as e:  # an older or newer narrow() this code does not know
        return None, f"scopecheck narrow has another interface ({e})"
    out = set()
    for f in getattr(res, "functions", None) or []:
        get = f.get if isinstance(f, dict) else (lambda k, _f=f: getattr(_f, k, None))
        if get("can_take"):
            out.add(f"{get('function')} ({get('file')})")
    return out, None


def analyse(build_dir: Path, query: str, *, use_cache: bool = True, progress=None) -> Snapshot:
    """Size, scope proof (and narrow) of one build directory's hyp object."""
    from scopecheck import targets as tg
    from scopecheck.history import row_from
    from scopecheck.proof import NVHE_DIR, prove
    from scopecheck.report import from_results
    from scopecheck.size import size_report
    from scopecheck.source.clang_facts import STATS

    nvhe = Path(build_dir) / NVHE_DIR / "kvm_nvhe.o"
    target = nvhe if nvhe.is_file() else Path(build_dir)
    parsed0, hits0 = STATS["parsed"], STATS["cache_hits"]
    step = (lambda msg: progress(f"analysis: {msg}", None, None)) if progress else None
    proof = prove(target, None, query, use_cache=use_cache, progress=step)
    size = size_report(tg.resolve(proof.inputs.elf), None, pahole=False, use_cache=use_cache)
    data = from_results(proof, size)
    h = data.headline
    leaks = {l.fingerprint: l.to_dict() for l in proof.leaks}
    fp = {k: {"bytes": e.get("size"), "access": e.get("access")} for k, e in proof.footprint.items()}
    narrowable, note = _narrowable(proof, use_cache)
    return Snapshot(leaks=leaks, leak_count=len(proof.leaks), footprint=fp, sizes={n: lay.size for n, lay in size.layouts.items()},
                    touched_bytes=h.get("touched_bytes"), leak_bytes=h.get("leak_bytes"), narrowable=narrowable,
                    narrow_note=note, tus_parsed=STATS["parsed"] - parsed0, tus_cached=STATS["cache_hits"] - hits0,
                    history_row=row_from(data), mode=proof.mode)


# ---------------------------------------------------------------- analyses kept between runs

def step_key(workdir_key: str, query, applied: Sequence) -> str:
    """The key of the tree SRC + ``applied`` (the patches applied so far, in order) under ``query``:
    the work directory's key (SRC's identity, config, compiler), the query's whole definition,
    each patch's diff and scopecheck's code (:func:`scopecheck.cache.key`)."""
    from scopecheck import cache

    return cache.key("series-step", STEP_CACHE_VERSION, workdir_key, repr(query), [p.sha256 for p in applied])


def _snapshot_path(key: str) -> Path:
    from scopecheck.paths import cache_dir

    return cache_dir("series") / "steps" / f"{key}.json"


def load_snapshot(key: str) -> Optional[Snapshot]:
    """The kept analysis of that tree, or None (none kept, or unreadable: then it is analysed again)."""
    import dataclasses
    import json

    p = _snapshot_path(key)
    try:
        d = json.loads(p.read_text())
        if d.pop("step_cache_version", None) != STEP_CACHE_VERSION:
            return None
        if d.get("narrowable") is not None:
            d["narrowable"] = set(d["narrowable"])
        snap = Snapshot(**d)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, AttributeError) as e:  # AttributeError: JSON that is not an object
        from scopecheck import cache

        cache.report_bad(p, str(e))
        return None
    from scopecheck import cache

    cache.touch(p)
    row = dict(snap.history_row)
    row["timestamp"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return dataclasses.replace(snap, tus_parsed=0, tus_cached=0, history_row=row)


def save_snapshot(key: str, snap: Snapshot) -> None:
    import dataclasses
    import json

    from scopecheck import cache
    from scopecheck.paths import atomic_write_text

    d = dataclasses.asdict(snap)
    if d["narrowable"] is not None:
        d["narrowable"] = sorted(d["narrowable"])
    p = _snapshot_path(key)
    atomic_write_text(p, json.dumps({"step_cache_version": STEP_CACHE_VERSION, **d}) + "\n")
    cache.prune(p.parent)


def _cached_base(src, source, config: str, llvm: bool, progress):
    """The build cache's build of SRC itself (same config and compiler), or None."""
    from scopecheck.kernels.build import cached_build_dir, load_build

    out, _ = cached_build_dir(src, config, (), llvm, progress)
    k = load_build(out)
    if k is None or Path(k.source_dir).resolve() != source.dir.resolve():
        return None
    return k


# ---------------------------------------------------------------- steps and the result

@dataclass
class Step:
    index: int  # 0 = the base (SRC as it is), 1.. the patches
    patch: Optional[object]  # scopecheck.kernels.patches.Patch (None for the base)
    status: str = "ok"  # ok | patch-failed | build-failed
    error: Optional[str] = None
    full_build: bool = False
    compiled: list = field(default_factory=list)
    apply_seconds: float = 0.0
    build_seconds: float = 0.0
    analysis_seconds: float = 0.0
    state: Optional[Snapshot] = None
    before: Optional[Snapshot] = None  # the last state that built, before this step
    #: None: built and analysed in this run; "build": the base is the build cache's build of SRC,
    #: analysed as it is; "analysis": an earlier series analysed the same tree (same SRC, config,
    #: compiler, query, scopecheck and patches up to here) and its analysis is reused, nothing built
    reused: Optional[str] = None

    @property
    def seconds(self) -> float:
        return round(self.apply_seconds + self.build_seconds + self.analysis_seconds, 1)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def _diff(self, attr: str) -> list:
        if self.state is None or self.before is None:
            return []
        a, b = getattr(self.before, attr), getattr(self.state, attr)
        return [b[k] for k in b if k not in a]

    @property
    def new_leaks(self) -> list[dict]:
        return self._diff("leaks")

    @property
    def removed_leaks(self) -> list[dict]:
        if self.state is None or self.before is None:
            return []
        return [v for k, v in self.before.leaks.items() if k not in self.state.leaks]

    @property
    def newly_touched(self) -> list[str]:
        if self.state is None or self.before is None:
            return []
        return sorted(set(self.state.footprint) - set(self.before.footprint))

    @property
    def no_longer_touched(self) -> list[str]:
        if self.state is None or self.before is None:
            return []
        return sorted(set(self.before.footprint) - set(self.state.footprint))

    def size_change(self) -> dict:
        if self.state is None:
            return {}
        out = {}
        for n in SIZE_STRUCTS:
            after = self.state.sizes.get(n)
            before = self.before.sizes.get(n) if self.before is not None else None
            out[n] = {"before": before, "after": after,
                      "change": (after - before) if after is not None and before is not None else None}
        return out

    def narrow_change(self) -> dict:
        if self.state is None:
            return {}
        if self.state.narrowable is None:
            return {"available": False, "reason": self.state.narrow_note}
        after = self.state.narrowable
        before = self.before.narrowable if self.before is not None else None
        d = {"available": True, "narrowable": len(after)}
        if before is not None:
            d.update(change=len(after) - len(before), added=sorted(after - before), removed=sorted(before - after))
        return d


@dataclass
class SeriesResult:
    source: str
    kernel: str
    config: str
    query: str
    workdir: str
    steps: list  # [Step], steps[0] is the base
    notes: list = field(default_factory=list)

    @property
    def base(self) -> Step:
        return self.steps[0]

    @property
    def patch_steps(self) -> list[Step]:
        return self.steps[1:]

    @property
    def first_regression(self) -> Optional[Step]:
        return next((s for s in self.patch_steps if s.new_leaks), None)

    @property
    def failures(self) -> list[Step]:
        return [s for s in self.steps if not s.ok]


# ---------------------------------------------------------------- running a series

def run_series(src, patches: Sequence, *, config: str = "pkvm-tiny", query: str = "rfc-hyp-scope",
               llvm: bool = False, jobs: Optional[int] = None, keep_going: bool = False,
               use_cache: bool = True, progress: Optional[Progress] = None, source=None,
               notes: Sequence[str] = ()) -> SeriesResult:
    """Build and analyse SRC, then each patch on top (see the module doc); SeriesFailed on a failed step."""
    from scopecheck.kernels.build import BuildFailed, PatchFailed, _precheck_source, resolve_source
    from scopecheck.kernels.workdir import open_workdir, workdir_key
    from scopecheck.query import load_query

    if not patches:
        raise InputError("series: no patches (give PATCH files, --mbox FILE or --range A..B)")
    q = load_query(query)  # a bad --query fails before the long work
    if source is None:
        _precheck_source(src)
        source = resolve_source(src, progress)
    say = (lambda msg: progress(msg, None, None)) if progress else (lambda msg: None)
    with open_workdir(src, config, llvm=llvm, jobs=jobs, progress=progress, source=source) as wd:
        result = SeriesResult(source=source.given, kernel=source.version, config=config, query=query,
                              workdir=str(wd.root), steps=[], notes=list(notes))
        if wd.ccache:
            result.notes.append("compiler: through ccache")
        restored = wd.reset()
        if restored:
            say(f"restored {len(restored)} file(s) an earlier series had patched")
        wkey = workdir_key(source, config, llvm)
        base = Step(0, None)
        t = time.monotonic()
        cached = _cached_base(src, source, config, llvm, progress)
        if cached is not None:  # SRC as it is is built already: analysed there, nothing built here
            from scopecheck.kernels.build import _lock

            base.reused = "build"
            result.notes.append(f"base: the build cache's build of SRC ({cached.out})")
            with _lock(Path(cached.out).parent / ".locks" / f"{Path(cached.out).name}.lock"):
                base.state = analyse(cached.out, query, use_cache=use_cache, progress=progress)
        else:
            b = wd.build("base")  # a failing base build is an error of SRC: BuildFailed, exit 2
            base.build_seconds, base.full_build, base.compiled = round(time.monotonic() - t, 1), b.full, b.compiled
            t = time.monotonic()
            base.state = analyse(wd.build_dir, query, use_cache=use_cache, progress=progress)
        base.analysis_seconds = round(time.monotonic() - t, 1)
        result.steps.append(base)
        last = base.state
        applied: list = []  # the patches applied so far (a patch that did not apply is not)
        n = len(patches)
        for i, patch in enumerate(patches, 1):
            st = Step(i, patch, before=last)
            result.steps.append(st)
            say(f"[{i}/{n}] applying {patch.name}")
            t = time.monotonic()
            try:
                wd.apply(patch)
            except PatchFailed as e:
                st.apply_seconds = round(time.monotonic() - t, 1)
                st.status, st.error = "patch-failed", str(e)
                if keep_going:
                    continue
                raise SeriesFailed(f"step {i}/{n}: {e}", result) from None
            st.apply_seconds = round(time.monotonic() - t, 1)
            applied.append(patch)
            key = step_key(wkey, q, applied)
            kept = load_snapshot(key) if use_cache else None
            if kept is not None:  # this very tree was analysed before: the next build catches up
                say(f"[{i}/{n}] analysed before (same SRC, config, compiler, query and patches): reused")
                st.state, st.reused = kept, "analysis"
                last = kept
                continue
            say(f"[{i}/{n}] building")
            t = time.monotonic()
            try:
                b = wd.build(f"step {i} ({patch.name})")
            except BuildFailed as e:
                st.build_seconds = round(time.monotonic() - t, 1)
                st.status = "build-failed"
                first = e.first_error or str(e)
                st.error = f"{patch.label}: build fails: {first}"
                if keep_going:
                    continue
                raise SeriesFailed(f"step {i}/{n}: {st.error} (full log: {e.log})", result) from None
            st.build_seconds, st.full_build, st.compiled = round(time.monotonic() - t, 1), b.full, b.compiled
            say(f"[{i}/{n}] analysing")
            t = time.monotonic()
            st.state = analyse(wd.build_dir, query, use_cache=use_cache, progress=progress)
            st.analysis_seconds = round(time.monotonic() - t, 1)
            if use_cache:
                save_snapshot(key, st.state)
            last = st.state
    return result


# ---------------------------------------------------------------- --range A..B

def range_series(src, rng: str, progress: Optional[Progress] = None) -> tuple[Path, list, list[str]]:
    """(the tree at A, the patches of the commits in A..B, notes) for ``--range A..B`` in a git SRC."""
    from scopecheck.kernels.patches import read_mbox
    from scopecheck.paths import atomic_write_bytes, cache_dir

    repo = Path(src).expanduser()
    if shutil.which("git") is None:
        from scopecheck.errors import ToolMissing

        raise ToolMissing("git", "git")
    if not repo.is_dir():
        raise InputError(f"{src}: --range needs SRC to be a git repository (a directory)")

    def git(*args: str, binary: bool = False):
        r = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, timeout=1800)
        if r.returncode != 0:
            err = (r.stderr.decode(errors="replace").strip().splitlines() or ["git failed"])[0]
            raise InputError(f"{src}: git {args[0]}: {err}")
        return r.stdout if binary else r.stdout.decode(errors="replace").strip()

    top = subprocess.run(["git", "-C", str(repo), "rev-parse", "--show-toplevel"], capture_output=True, text=True)
    if top.returncode != 0:
        raise InputError(f"{src}: --range needs SRC to be a git repository")
    m = re.fullmatch(r"([^.\s][^\s]*?)\.\.([^.\s][^\s]*)", rng.strip())
    if not m or "..." in rng:
        raise InputError(f"--range {rng}: expected A..B (two revisions)")
    def rev(name: str) -> str:
        r = subprocess.run(["git", "-C", str(repo), "rev-parse", "--verify", "--quiet", f"{name}^{{commit}}"],
                           capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise InputError(f"--range {rng}: {name}: unknown revision in {src}")
        return r.stdout.strip()

    a, b = rev(m.group(1)), rev(m.group(2))
    commits = git("rev-list", "--reverse", "--no-merges", f"{a}..{b}").split()
    if not commits:
        raise InputError(f"--range {rng}: no commits between {m.group(1)} and {m.group(2)}")
    notes = []
    merges = git("rev-list", "--merges", f"{a}..{b}").split()
    if merges:
        notes.append(f"--range {rng}: {len(merges)} merge commit(s) skipped (git format-patch does)")
    mbox = git("format-patch", "--stdout", "--numbered", "--no-signature", f"{a}..{b}", binary=True)
    box = cache_dir("patches") / f"range-{a[:12]}-{b[:12]}.mbox"
    atomic_write_bytes(box, mbox)
    patches = read_mbox(box)
    for p, c in zip(patches, commits):
        p.name = f"{c[:12]}"
    # the tree at A: SRC itself when it is checked out at A and clean, else an export of A
    head = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no")
    if Path(top.stdout.strip()).resolve() == repo.resolve() and head == a and not dirty:
        return repo, patches, notes
    dest = cache_dir("sources") / f"git-{a[:16]}"
    stamp = dest / ".scopecheck-extracted"
    if not stamp.is_file():
        if progress:
            progress(f"exporting {m.group(1)} from {src}", None, None)
        tmp = dest.with_name(dest.name + f".tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        tar = git("archive", "--format=tar", a, binary=True)
        r = subprocess.run(["tar", "-x", "-C", str(tmp)], input=tar, capture_output=True, timeout=1800)
        if r.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            raise ScopecheckError(f"cannot export {a} from {src}: {r.stderr.decode(errors='replace')[:200]}")
        (tmp / ".scopecheck-extracted").write_text(".\n")
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(tmp, dest)
    return dest, patches, notes
