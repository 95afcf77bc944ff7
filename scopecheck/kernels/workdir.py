"""One patched copy of a kernel tree and one build directory, rebuilt incrementally.

``scopecheck series`` applies a series patch by patch to a copy of SRC and rebuilds
after each patch. The copy and its build directory live in ``cache_dir("series")``,
keyed by the source's identity, the config and the toolchain, and are kept: the first
series on a source pays for one full build, every later step and every later series on
the same source rebuilds only what its patches touch.

::

    from scopecheck.kernels.workdir import open_workdir
    with open_workdir("linux-source-6.1.tar.xz", "pkvm-tiny") as wd:
        wd.reset()                       # back to SRC (files earlier runs patched are restored)
        k = wd.build()                   # full build the first time, incremental after
        wd.apply(patch)                  # scopecheck.kernels.patches.Patch
        k = wd.build()

Reset: every file a patch is about to touch is first recorded in ``state.json``; a
reset copies those files back from SRC (with a new mtime, so make rebuilds them) and
deletes the ones SRC does not have. SRC itself is never written to.

ccache: when the ``ccache`` program is present every compile goes through it, masquerading
as the compiler on PATH as in ``kernel build`` (so the command lines are the same as there).

The first build: when the build cache holds ``kernel build``'s build of SRC with the same
config and compiler, the work directory's build starts as a copy of it
(:mod:`scopecheck.kernels.seed`): ``make`` then finds everything up to date, and after
every build ``debugedit`` rewrites the copied objects' paths in the DWARF of ``vmlinux`` and
``kvm_nvhe.o``. Otherwise the first build is a full one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional, Sequence

from scopecheck.errors import ScopecheckError
from scopecheck.paths import atomic_write_text, cache_dir

#: bump when the layout of a work directory changes
WORKDIR_VERSION = 2
STATE = "state.json"
SERIES_LOG = "scopecheck-series.log"


def _has_ccache() -> bool:
    return shutil.which("ccache") is not None


def _env(llvm: bool) -> dict[str, str]:
    env = dict(os.environ, LC_ALL="C", LANG="C", KBUILD_BUILD_USER="scopecheck",
               KBUILD_BUILD_HOST="scopecheck")
    env.pop("GCC_COLORS", None)
    for v in ("ARCH", "CROSS_COMPILE", "LLVM", "O", "KBUILD_OUTPUT", "CC", "KCONFIG_CONFIG"):
        env.pop(v, None)
    env.setdefault("CCACHE_DIR", str(cache_dir("ccache")))
    if _has_ccache():
        from scopecheck.kernels.build import _ccache_masquerade

        env["PATH"] = f"{_ccache_masquerade(llvm)}{os.pathsep}{env.get('PATH', '')}"
    return env


@dataclass
class StepBuild:
    """What one (re)build did."""

    kernel: object  # BuiltKernel
    seconds: float
    full: bool  # a full build (configure + everything) rather than an incremental make
    compiled: list[str] = field(default_factory=list)  # kbuild "CC ..." targets rebuilt


def _same_content(a: Path, b: Path) -> bool:
    try:
        return a.stat().st_size == b.stat().st_size and a.read_bytes() == b.read_bytes()
    except OSError:
        return False


class Workdir:
    def __init__(self, root: Path, source, config: str, llvm: bool, jobs: Optional[int], progress=None):
        self.root = root
        self.tree = root / "tree"
        self.build_dir = root / "build"
        self.source = source  # scopecheck.kernels.build.SourceTree
        self.config = config
        self.llvm = llvm
        self.jobs = jobs or os.cpu_count() or 1
        self.progress = progress
        self.ccache = _has_ccache()

    # ------------------------------------------------------------ state

    def _state(self) -> dict:
        try:
            d = json.loads((self.root / STATE).read_text())
            if d.get("version") == WORKDIR_VERSION:
                return d
        except (OSError, ValueError):
            pass
        return {}

    def _save_state(self, d: dict) -> None:
        atomic_write_text(self.root / STATE, json.dumps({**d, "version": WORKDIR_VERSION}, indent=1) + "\n")

    def _say(self, msg: str) -> None:
        if self.progress:
            self.progress(msg, None, None)

    # ------------------------------------------------------------ the tree

    def ensure_tree(self) -> None:
        """Copy SRC into ``tree`` (mtimes kept) unless a complete copy is there."""
        st = self._state()
        if st.get("tree_complete") and self.tree.is_dir():
            return
        shutil.rmtree(self.tree, ignore_errors=True)
        shutil.rmtree(self.build_dir, ignore_errors=True)
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".tree.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        self._say(f"copying {self.source.given} into the series work tree")
        src = self.source.dir
        if (src / ".git").exists() and shutil.which("rsync"):
            cmd = ["rsync", "-a", "--exclude=/.git", f"{src}/", f"{tmp}/"]
        else:
            cmd = ["cp", "-a", "--reflink=auto", str(src), str(tmp)]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
        if r.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            first = (r.stderr.strip().splitlines() or ["copy failed"])[0]
            raise ScopecheckError(f"cannot copy {src} to {tmp}: {first}")
        if (tmp / ".config").exists() or (tmp / "include" / "config").exists():
            subprocess.run(["make", "-s", "-C", str(tmp), "ARCH=arm64", "mrproper"], capture_output=True,
                           timeout=900)
        os.replace(tmp, self.tree)
        self._save_state({"tree_complete": True, "dirty": [], "source": self.source.given,
                          "identity": self.source.identity})

    def reset(self) -> list[str]:
        """Make ``tree`` equal to SRC again; returns the files restored or removed."""
        self.ensure_tree()
        st = self._state()
        dirty = sorted(set(st.get("dirty", [])))
        for rel in dirty:
            src, dst = self.source.dir / rel, self.tree / rel
            if src.is_file():
                if dst.is_file() and not dst.is_symlink() and _same_content(src, dst):
                    continue  # untouched mtime: make rebuilds it only if it is newer than its objects
                dst.parent.mkdir(parents=True, exist_ok=True)
                if dst.is_symlink() or dst.is_dir():
                    shutil.rmtree(dst) if dst.is_dir() and not dst.is_symlink() else dst.unlink()
                shutil.copy(src, dst)  # content and mode; the mtime is now, so make rebuilds it
            elif dst.is_file() or dst.is_symlink():
                dst.unlink()
        st["dirty"] = []
        self._save_state(st)
        return dirty

    def mark_dirty(self, files: Sequence[str]) -> None:
        """Record files a patch is about to change (before changing them)."""
        st = self._state()
        st["dirty"] = sorted(set(st.get("dirty", [])) | set(files))
        self._save_state(st)

    def apply(self, patch) -> None:
        """Apply a :class:`scopecheck.kernels.patches.Patch` to ``tree`` (PatchFailed if it does not)."""
        from scopecheck.kernels.patches import apply_patch

        self.mark_dirty(patch.all_paths)
        apply_patch(patch, self.tree, self.source.given)

    # ------------------------------------------------------------ building

    def build(self, label: str = "build") -> StepBuild:
        """The first time a copy of the cached build of SRC or a full build, an incremental make after."""
        from scopecheck.kernels.build import StaleSeed, build_kernel, load_build

        t0 = time.monotonic()
        done = load_build(self.build_dir)
        if done is None or Path(done.source_dir).resolve() != self.tree.resolve():
            shutil.rmtree(self.build_dir, ignore_errors=True)
            base = self._seed()
            k = None
            seeded = False
            if base is not None:
                try:
                    k = build_kernel(self.tree, self.build_dir, config=self.config, jobs=self.jobs, llvm=self.llvm,
                                     progress=self.progress, seeded_from=base)
                    st = self._state()
                    st["seeded_from"] = {"source_dir": str(base.source_dir), "out": str(base.out)}
                    self._save_state(st)
                    seeded = True
                except StaleSeed:
                    shutil.rmtree(self.build_dir, ignore_errors=True)
            if k is None:
                st = self._state()
                st.pop("seeded_from", None)
                self._save_state(st)
                k = build_kernel(self.tree, self.build_dir, config=self.config, jobs=self.jobs, llvm=self.llvm,
                                 progress=self.progress)
            return StepBuild(k, round(time.monotonic() - t0, 1), not seeded, list(k.recompiled))
        compiled = self._make(label)
        return StepBuild(done, round(time.monotonic() - t0, 1), False, compiled)

    def _seed(self):
        """Copy the cached build of SRC (same config and compiler) into ``build_dir``; that build, or None."""
        from scopecheck.kernels import build as kb

        why: list[str] = []
        base = kb.seed_from_cache(self.source.given, self.source, self.config, self.llvm, lambda: self.tree,
                                  self.build_dir, self.progress, why)
        for line in why:
            self._say(line)
        return base

    def _make(self, label: str) -> list[str]:
        from scopecheck.kernels import build as kb

        make_vars, _ = kb._toolchain(self.llvm)
        log = self.build_dir / SERIES_LOG
        run = kb._Runner(log, _env(self.llvm), self.progress)
        compiled: list[str] = []
        try:
            run.note(f"===== {label} ({time.strftime('%Y-%m-%d %H:%M:%S')})")
            make = ["make", "-C", str(self.tree), f"O={self.build_dir}", *make_vars]
            rc, lines = run.run(f"{label}: make", make + [f"-j{self.jobs}", "vmlinux", "Image"], self.tree,
                                check=False)
            if rc != 0:
                run.fail(f"{label}: build", lines)
            for line in lines:
                m = kb._KBUILD_LINE.match(line)
                if m and m.group(1) == "CC":
                    compiled.append(m.group(2).strip())
            script = self.tree / "scripts/clang-tools/gen_compile_commands.py"
            run.run(f"{label}: compile_commands.json",
                    [sys.executable, str(script), "-d", str(self.build_dir), "-o",
                     str(self.build_dir / "compile_commands.json")], self.build_dir)
            self._relocate()
        finally:
            run.close()
        return compiled

    def _relocate(self) -> None:
        """After a make in a seeded build directory: the kept objects' paths, rewritten in the DWARF."""
        from types import SimpleNamespace

        from scopecheck.kernels import seed

        origin = self._state().get("seeded_from")
        if not origin:
            return
        base = SimpleNamespace(source_dir=origin["source_dir"], out=origin["out"])
        files = [self.build_dir / "vmlinux", self.build_dir / "arch/arm64/kvm/hyp/nvhe/kvm_nvhe.o"]
        seed.relocate_debug_info(base, self.tree, self.build_dir, files)
        stale = seed.stale_paths(base, files)
        if stale:
            raise ScopecheckError(f"{', '.join(stale)} still name {origin['out']} after debugedit; "
                                  f"remove {self.root} to start the series work directory afresh")


def workdir_key(source, config: str, llvm: bool) -> str:
    """SRC's identity, the config (fragment text or FILE contents), the toolchain, ccache."""
    from scopecheck.kernels import build as kb

    if config in kb.CONFIG_NAMES:
        cfg = [config, kb.fragment_text(config if config == "pkvm-tiny" else "overlay", source.version)]
    else:
        cfg = ["file", hashlib.sha256(Path(config).read_bytes()).hexdigest(), kb.DEBUG_OVERLAY]
    parts = [WORKDIR_VERSION, kb.RECIPE_VERSION, source.identity, cfg, kb._toolchain(llvm)[1],
             list(kb.pahole_version() or ()), llvm, _has_ccache()]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:20]


@contextmanager
def open_workdir(src, config: str = "pkvm-tiny", *, llvm: bool = False, jobs: Optional[int] = None,
                 progress=None, source=None) -> Iterator[Workdir]:
    """The series work directory of SRC (locked for the duration: one series at a time per source)."""
    from scopecheck.kernels.build import _lock, resolve_source

    source = source or resolve_source(src, progress)
    key = workdir_key(source, config, llvm)
    base = cache_dir("series")
    name = f"linux-{source.version}-{key}"
    root = base / name
    root.mkdir(parents=True, exist_ok=True)
    with _lock(base / ".locks" / f"{name}.lock"):
        yield Workdir(root, source, config, llvm, jobs, progress)
