"""Cross-build an arm64 kernel for analysis (``scopecheck kernel build``).

::

    from scopecheck.kernels.build import build_kernel, cached_build
    k = build_kernel("linux-source-6.1.tar.xz", "/tmp/out")        # pkvm-tiny config
    k = build_kernel(tree, out, config="defconfig", patches=["leak.patch"])
    k = cached_build(tarball, "pkvm-tiny", patches=())               # into the cache
    k.vmlinux, k.image, k.kvm_nvhe_o, k.compile_commands, k.config_path, k.log

``src`` is a kernel source directory (``Makefile``, ``Kconfig`` and
``arch/arm64/``, e.g. a git checkout) or a ``.tar.xz`` / ``.tar.gz`` tarball
such as Debian's ``linux-source-6.1.tar.xz`` (extracted once into
``cache_dir("sources")``, keyed by the tarball's SHA256).

The source tree is never written to: the build is out of tree
(``make O=<out>``, which also needs the tree to be clean, i.e. without a
``.config``), and ``patches`` are applied with ``patch -p1 --forward --batch --fuzz=0``
to a copy of the tree in ``cache_dir("trees")`` (keyed by the source's
identity and the patches' contents, reused).

Configs:

``pkvm-tiny``  ``make tinyconfig`` + the fragment ``scopecheck/data/configs/pkvm-tiny.config``
``defconfig``  ``make defconfig`` + :data:`DEBUG_OVERLAY` (KVM, full debug info, BTF).
FILE           a complete ``.config`` (e.g. a distribution's ``config-*``), copied to
               ``<out>/.config``, with only KVM and full debug info (any DWARF version) added.

The fragment/overlay is an intent, resolved against the tree's own Kconfig by
:mod:`scopecheck.kernels.kconfig` (kconfiglib in kbuild's environment):
missing dependencies are added, the DWARF version and BTF are chosen for this
tree, toolchain and pahole, and the result is merged with
``scripts/kconfig/merge_config.sh -m`` + ``make olddefconfig``. Afterwards
every option the resolver asked for is checked in ``<out>/.config`` (an option
that did not stick ends the build with an error naming it; BTF is optional:
when it fails to build, the kernel is rebuilt without it and
:attr:`BuiltKernel.notes` says so), and the resolver's prediction is compared
with what olddefconfig produced. :attr:`BuiltKernel.kconfig` records the
choices (``debug_info``, ``btf``, ``choices``, ``added``, ``dropped``).

With ``ccache`` installed the compiler runs through it (masquerading as the
compiler on PATH, so command lines and ``compile_commands.json`` are unchanged);
a build into a directory that holds a completed build of the same tree,
config and toolchain keeps its ``.config`` and lets ``make`` rebuild only
what changed.

The targets are ``vmlinux`` and ``Image`` (``kvm_nvhe.o`` is part of vmlinux
when ``CONFIG_KVM=y``); ``compile_commands.json`` is then written by the
kernel's own ``scripts/clang-tools/gen_compile_commands.py``. The whole
output of every step goes to ``<out>/scopecheck-build.log``; a failure raises
:class:`BuildFailed` quoting the first compiler error. ``<out>/scopecheck-build.json``
(written last) records the result; :func:`load_build` reads it back.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import importlib.resources
import json

from scopecheck import jsontext
import os
import re
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Sequence

from scopecheck.progress import StatusLine
from scopecheck.errors import InputError, ScopecheckError, ToolMissing
from scopecheck.paths import atomic_write_text, cache_dir

__all__ = [
    "BuiltKernel",
    "BuildFailed",
    "ConfigNotApplied",
    "PatchFailed",
    "SourceTree",
    "build_kernel",
    "cached_build",
    "build_key",
    "load_build",
    "resolve_source",
    "prepare_tree",
    "fragment_text",
    "CONFIG_NAMES",
    "DEBUG_OVERLAY",
]

#: progress(stage, done, total): stage is a short human string ("config: tinyconfig",
#: "build: CC arch/arm64/kvm/hyp/nvhe/switch.nvhe.o", ...); done counts the build
#: steps seen so far (None outside the build stage); total is always None (unknown).
Progress = Callable[[str, Optional[int], Optional[int]], None]

#: Bump when the way a kernel is built changes, so that cached builds are redone.
RECIPE_VERSION = 1
STAMP = "scopecheck-build.json"
LOG = "scopecheck-build.log"
STAMP_FORMAT = 1
CONFIG_NAMES = ("pkvm-tiny", "defconfig")
CROSS_COMPILE = "aarch64-linux-gnu-"
CROSS_GCC = CROSS_COMPILE + "gcc"
#: DEBUG_INFO_BTF with DWARF 5 needs pahole >= 1.21 (lib/Kconfig.debug); BTF at all >= 1.16.
PAHOLE_MIN_BTF = (1, 16)
PAHOLE_MIN_BTF_DWARF5 = (1, 21)
BTF_BEGIN = "# scopecheck:btf-begin"
BTF_END = "# scopecheck:btf-end"
#: Options that must be =y whatever the config: the artefacts depend on them.
ALWAYS_REQUIRED = ("CONFIG_ARM64", "CONFIG_KVM", "CONFIG_DEBUG_INFO")
BTF_OPTIONS = ("CONFIG_DEBUG_INFO_BTF", "CONFIG_BPF_SYSCALL")

#: Merged on top of ``defconfig`` and of a user's FILE: only what the analysis needs. The
#: debug-info and BTF sections are decided by the resolver (scopecheck.kernels.kconfig):
#: full debug info of the best DWARF version the tree and toolchain allow, BTF when possible.
DEBUG_OVERLAY = f"""\
# scopecheck: what the analysis needs, merged on top of defconfig / a user's .config
# --- kvm: the nVHE hyp is built with KVM ---
CONFIG_VIRTUALIZATION=y
CONFIG_KVM=y
# --- debug info: full (not reduced, not split); the version is resolved per tree ---
CONFIG_DEBUG_INFO=y
# --- keys: a distribution's config names key files that are not in the source tree ---
CONFIG_SYSTEM_TRUSTED_KEYS=""
CONFIG_SYSTEM_REVOCATION_KEYS=""
# --- btf: when the tree and pahole agree ---
{BTF_BEGIN}
CONFIG_BPF_SYSCALL=y
CONFIG_DEBUG_INFO_BTF=y
{BTF_END}
"""

_TARBALL_SUFFIXES = (".tar.xz", ".txz", ".tar.gz", ".tgz", ".tar.bz2", ".tar.zst", ".tar")


# --------------------------------------------------------------------------- errors


#: no make stage may run longer than this (a defconfig build on 2 cores takes about an hour)
STAGE_TIMEOUT = 3 * 60 * 60

class BuildFailed(ScopecheckError):
    """A make step failed; the message quotes the first compiler error and names the log."""

    def __init__(self, message: str, log: Optional[Path] = None, first_error: Optional[str] = None):
        super().__init__(message)
        self.log = log
        self.first_error = first_error


class ConfigNotApplied(ScopecheckError):
    """Options asked for did not end up in ``.config`` (unmet Kconfig dependencies)."""

    def __init__(self, message: str, missing: Sequence[str]):
        super().__init__(message)
        self.missing = tuple(missing)


class PatchFailed(InputError):
    """A ``--patch`` does not apply to the source tree."""


# --------------------------------------------------------------------------- result


@dataclass(frozen=True)
class BuiltKernel:
    out: Path
    vmlinux: Path
    image: Path
    kvm_nvhe_o: Path
    compile_commands: Path
    config_path: Path
    log: Path
    source_dir: Path
    config: str = "pkvm-tiny"  # "pkvm-tiny", "defconfig" or the FILE's path
    kernel_version: str = ""
    btf: bool = False
    llvm: bool = False
    patches: tuple[str, ...] = ()  # the patch files, as given
    original_source: str = ""  # SRC as given (directory or tarball)
    toolchain: str = ""  # first line of `<cc> --version`
    build_seconds: float = 0.0
    notes: tuple[str, ...] = field(default=())
    #: the Kconfig resolver's record: debug_info ("DWARF 5"/"DWARF 4"/...), btf, choices, added, dropped
    kconfig: dict = field(default_factory=dict)
    ccache: bool = False
    reused_config: bool = False  # an existing build directory's .config was kept (incremental rebuild)
    seeded_from: str = ""  # the build directory this one was copied from and rebuilt incrementally
    #: a seeded build: the kbuild "CC" targets make recompiled in the copy (empty otherwise)
    recompiled: tuple[str, ...] = ()

    @property
    def artefacts(self) -> dict[str, Path]:
        return {
            "vmlinux": self.vmlinux,
            "image": self.image,
            "kvm_nvhe_o": self.kvm_nvhe_o,
            "compile_commands": self.compile_commands,
        }

    def to_json(self) -> dict:
        d = asdict(self)
        out: dict = {"schema_version": 1}
        for k, v in d.items():
            if isinstance(v, Path):
                v = str(v)
            elif isinstance(v, tuple):
                v = list(v)
            out[k] = v
        return out

    @classmethod
    def from_json(cls, d: dict) -> "BuiltKernel":
        kw = {}
        for f in cls.__dataclass_fields__.values():
            if f.name not in d:
                continue
            v = d[f.name]
            if f.type in ("Path",):
                v = Path(v)
            elif isinstance(v, list):
                v = tuple(v)
            kw[f.name] = v
        return cls(**kw)


def load_build(out: os.PathLike | str) -> Optional[BuiltKernel]:
    """The :class:`BuiltKernel` recorded in ``<out>/scopecheck-build.json``, if complete."""
    stamp = Path(out) / STAMP
    try:
        d = json.loads(stamp.read_text())
    except (OSError, ValueError):
        return None
    if d.get("stamp_format") != STAMP_FORMAT:
        return None
    try:
        k = BuiltKernel.from_json(d)
    except TypeError:
        return None
    if not all(p.exists() for p in k.artefacts.values()):
        return None
    if not (k.source_dir / "Makefile").is_file():  # e.g. a patched copy removed from the cache
        return None
    if not k.kconfig:  # built before the Kconfig resolver: what its .config says
        try:
            cfg = _parse_config(k.config_path.read_text(errors="replace"))
        except OSError:
            cfg = {}
        di = debug_info_of(cfg)
        k = dataclasses.replace(k, kconfig={"debug_info": di, "btf": k.btf, "choices": [
            f"debug info: {di or 'none'}", f"BTF: {'yes' if k.btf else 'no'}"], "added": {}, "dropped": []})
    return k


# --------------------------------------------------------------------------- source


@dataclass(frozen=True)
class SourceTree:
    dir: Path  # the kernel tree (Makefile, Kconfig, arch/arm64)
    identity: str  # "tar:<sha256>", "git:<HEAD>:<dirty hash>" or "dir:<path>:<stat hash>"
    version: str  # from the Makefile, e.g. "6.1.192"
    given: str  # SRC as the user gave it


def _kernel_version(tree: Path) -> str:
    vals = {}
    try:
        with open(tree / "Makefile", errors="replace") as f:
            for _, line in zip(range(20), f):
                m = re.match(r"(VERSION|PATCHLEVEL|SUBLEVEL|EXTRAVERSION)\s*=\s*(\S*)", line)
                if m:
                    vals[m.group(1)] = m.group(2)
    except OSError:
        return ""
    if "VERSION" not in vals:
        return ""
    v = f"{vals['VERSION']}.{vals.get('PATCHLEVEL', '0')}"
    if vals.get("SUBLEVEL"):
        v += f".{vals['SUBLEVEL']}"
    return v + vals.get("EXTRAVERSION", "")


def _check_tree(tree: Path, given: str) -> None:
    missing = [n for n in ("Makefile", "Kconfig", "arch/arm64/Kconfig") if not (tree / n).is_file()]
    if missing or not _kernel_version(tree):
        what = f"no {missing[0]}" if missing else "its Makefile has no VERSION"
        raise InputError(f"{given}: not a Linux kernel source tree with arm64 support ({what})")


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _tarball_sha256(path: Path) -> str:
    """SHA256 of a tarball, memoised by (path, size, mtime) so a big tarball is hashed once."""
    st = path.stat()
    memo_key = hashlib.sha256(f"{path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()[:24]
    memo = cache_dir("sources") / ".sha256" / memo_key
    try:
        sha = memo.read_text().strip()
        if re.fullmatch(r"[0-9a-f]{64}", sha):
            return sha
    except OSError:
        pass
    sha = _sha256_file(path)
    atomic_write_text(memo, sha + "\n")
    return sha


@contextmanager
def _lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _find_tree(root: Path) -> Optional[Path]:
    if (root / "Makefile").is_file() and (root / "arch").is_dir():
        return root
    subs = [p for p in root.iterdir() if p.is_dir() and (p / "Makefile").is_file() and (p / "arch").is_dir()]
    return subs[0] if len(subs) == 1 else None


def _extract_tarball(path: Path, progress: Optional[Progress]) -> tuple[Path, str]:
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    sha = _tarball_sha256(path)
    name = path.name
    for suf in _TARBALL_SUFFIXES:
        if name.endswith(suf):
            name = name[: -len(suf)]
            break
    base = cache_dir("sources")
    dest = base / f"{name}-{sha[:16]}"
    stamp = dest / ".scopecheck-extracted"
    with _lock(base / ".locks" / f"{dest.name}.lock"):
        if stamp.is_file():
            tree = dest / stamp.read_text().strip()
            if (tree / "Makefile").is_file():
                return tree, sha
        if dest.exists():
            shutil.rmtree(dest)
        tmp = base / f".{dest.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        _need("tar", "tar")
        if progress:
            progress(f"extracting {path.name}", None, None)
        r = subprocess.run(["tar", "-xf", str(path), "-C", str(tmp)], capture_output=True, text=True,
                           timeout=1800)
        if r.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            first = (r.stderr.strip().splitlines() or ["tar failed"])[0]
            raise InputError(f"{path}: cannot extract: {first}")
        tree = _find_tree(tmp)
        if tree is None:
            shutil.rmtree(tmp, ignore_errors=True)
            raise InputError(f"{path}: the tarball holds no Linux kernel source tree")
        rel = os.path.relpath(tree, tmp)
        (tmp / ".scopecheck-extracted").write_text(rel + "\n")
        os.replace(tmp, dest)
        return dest / rel, sha


def _is_tarball(path: Path) -> bool:
    return path.is_file() and any(path.name.endswith(s) for s in _TARBALL_SUFFIXES)


def _git(tree: Path, *args: str) -> Optional[str]:
    if not shutil.which("git"):
        return None
    r = subprocess.run(["git", "-C", str(tree), *args], capture_output=True, timeout=300)
    return r.stdout.decode(errors="replace") if r.returncode == 0 else None


def _dir_identity(tree: Path) -> str:
    """Identity of a directory tree: git HEAD + uncommitted changes, or every file's size and mtime."""
    top = _git(tree, "rev-parse", "--show-toplevel")
    if top is not None and Path(top.strip()).resolve() == tree.resolve():
        head = (_git(tree, "rev-parse", "HEAD") or "").strip()
        h = hashlib.sha256()
        h.update((_git(tree, "status", "--porcelain", "--untracked-files=all") or "").encode())
        h.update((_git(tree, "diff", "HEAD", "--binary") or "").encode())
        return f"git:{head}:{h.hexdigest()[:16]}"
    h = hashlib.sha256()
    for root, dirs, files in os.walk(tree):
        dirs[:] = sorted(d for d in dirs if d != ".git")
        for fn in sorted(files):
            p = os.path.join(root, fn)
            try:
                st = os.lstat(p)
            except OSError:
                continue
            h.update(f"{os.path.relpath(p, tree)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return f"dir:{tree.resolve()}:{h.hexdigest()[:16]}"


def _precheck_source(src: os.PathLike | str) -> None:
    """The cheap checks of :func:`resolve_source` (no extraction, no hashing)."""
    p = Path(src).expanduser()
    if not p.exists():
        raise InputError(f"{src}: no such file or directory")
    if p.is_dir():
        _check_tree(p, str(src))
    elif not _is_tarball(p):
        raise InputError(f"{src}: not a kernel source directory or a .tar.xz/.tar.gz tarball")


def resolve_source(src: os.PathLike | str, progress: Optional[Progress] = None) -> SourceTree:
    """The kernel tree for SRC (a directory or a tarball, extracted into the cache once)."""
    given = str(src)
    p = Path(src).expanduser()
    if not p.exists():
        raise InputError(f"{given}: no such file or directory")
    if p.is_dir():
        tree = p.resolve()
        _check_tree(tree, given)
        identity = _dir_identity(tree)
    elif _is_tarball(p):
        tree, sha = _extract_tarball(p, progress)
        _check_tree(tree, given)
        identity = f"tar:{sha}"
    else:
        raise InputError(f"{given}: not a kernel source directory or a .tar.xz/.tar.gz tarball")
    return SourceTree(dir=tree, identity=identity, version=_kernel_version(tree), given=given)


def _check_clean(tree: Path, given: str) -> None:
    for n in (".config", "include/config/auto.conf", "include/generated/autoconf.h"):
        if (tree / n).exists():
            raise InputError(
                f"{given}: source tree is not clean ({n} exists), and out-of-tree builds need a clean "
                "tree; run 'make mrproper' there, or pass --patch/a tarball so scopecheck builds from a copy"
            )


def _patch_files(patches: Iterable[os.PathLike | str]) -> list[Path]:
    out = []
    for p in patches:
        path = Path(p).expanduser()
        if not path.is_file():
            raise InputError(f"{p}: no such patch file")
        out.append(path.resolve())
    return out


def _patch_failure_line(output: str) -> str:
    lines = [l.strip() for l in output.splitlines() if l.strip()]
    for pat in (r"FAILED|can't find file|No file to patch|malformed|Only garbage|Reversed",):
        for l in lines:
            if re.search(pat, l):
                return l
    return lines[-1] if lines else "patch failed"


#: Exact application (no fuzz): an analysis of "my tree with this series" must not analyse a guess.
_PATCH_ARGS = ("-p1", "--forward", "--batch", "--fuzz=0", "--no-backup-if-mismatch")


def _apply_patch(f: Path, tree: Path, given: str, dry_run_only: bool = False) -> None:
    """``patch -p1 --forward --batch`` (dry run first, so a failing patch changes nothing)."""
    cmd = ["patch", *_PATCH_ARGS, "-d", str(tree), "-i", str(f)]
    env = dict(os.environ, LC_ALL="C")
    r = subprocess.run(cmd[:1] + ["--dry-run"] + cmd[1:], capture_output=True, text=True, env=env,
                       timeout=300)
    if r.returncode == 0 and not dry_run_only:
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    if r.returncode != 0:
        try:  # name the first failing hunk (file and @@ header)
            from scopecheck.kernels.patches import describe_failure, read_patch

            msg = describe_failure(read_patch(f), given, r.stdout + r.stderr)
        except ScopecheckError:
            msg = f"patch {f} does not apply to {given}: {_patch_failure_line(r.stdout + r.stderr)}"
        raise PatchFailed(msg)


def prepare_tree(source: SourceTree, patches: Sequence[os.PathLike | str],
                 progress: Optional[Progress] = None) -> Path:
    """The tree to build: ``source.dir`` itself, or a patched copy in ``cache_dir("trees")``.

    The copy is keyed by the source identity and the patches' contents and
    reused; a patch that does not apply raises :class:`PatchFailed` and leaves
    nothing behind. ``source.dir`` is never written to.
    """
    files = _patch_files(patches)
    if not files:
        return source.dir
    _need("patch", "patch")
    h = hashlib.sha256(f"recipe{RECIPE_VERSION}\0{' '.join(_PATCH_ARGS)}\0{source.identity}\0".encode())
    for f in files:
        h.update(hashlib.sha256(f.read_bytes()).digest())
    key = h.hexdigest()[:20]
    base = cache_dir("trees")
    dest = base / f"linux-{source.version}-{key}"
    stamp = dest / ".scopecheck-patched"
    with _lock(base / ".locks" / f"{dest.name}.lock"):
        if stamp.is_file() and (dest / "Makefile").is_file():
            return dest
        # Fail fast (before copying ~1.5 GB) when the first patch does not apply;
        # --dry-run writes nothing into the tree.
        _apply_patch(files[0], source.dir, source.given, dry_run_only=True)
        shutil.rmtree(dest, ignore_errors=True)
        tmp = base / f".{dest.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            if progress:
                progress(f"copying {source.given} (to apply {len(files)} patch(es))", None, None)
            if (source.dir / ".git").exists() and shutil.which("rsync"):
                cmd = ["rsync", "-a", "--exclude=/.git", f"{source.dir}/", f"{tmp}/"]
            else:
                cmd = ["cp", "-a", "--reflink=auto", str(source.dir), str(tmp)]
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
            if r.returncode != 0:
                first = (r.stderr.strip().splitlines() or ["copy failed"])[0]
                raise ScopecheckError(f"cannot copy {source.dir} to {tmp}: {first}")
            # A tree copied from a user's in-tree build: make it fit for O= builds (the copy only).
            if (tmp / ".config").exists() or (tmp / "include" / "config").exists():
                subprocess.run(["make", "-s", "-C", str(tmp), "ARCH=arm64", "mrproper"], capture_output=True,
                               timeout=900)
            for f in files:
                if progress:
                    progress(f"applying {f.name}", None, None)
                _apply_patch(f, tmp, source.given)
            (tmp / ".scopecheck-patched").write_text(
                json.dumps({"source": source.given, "identity": source.identity,
                            "patches": [str(f) for f in files]}, indent=1) + "\n")
            os.replace(tmp, dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


# --------------------------------------------------------------------------- tools


def _need(program: str, package: str) -> str:
    path = shutil.which(program)
    if path is None:
        raise ToolMissing(program, package)
    return path


def _first_line(cmd: list[str]) -> str:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (r.stdout.strip().splitlines() or [""])[0]


def pahole_version() -> Optional[tuple[int, int]]:
    if not shutil.which("pahole"):
        return None
    m = re.search(r"v?(\d+)\.(\d+)", _first_line(["pahole", "--version"]))
    return (int(m.group(1)), int(m.group(2))) if m else None


def _toolchain(llvm: bool) -> tuple[list[str], str]:
    """make variables for the cross build and a version string; ToolMissing if a tool is absent."""
    for prog, pkg in (("make", "make"), ("flex", "flex"), ("bison", "bison"), ("bc", "bc"),
                      ("perl", "perl"), ("python3", "python3")):
        _need(prog, pkg)
    if llvm:
        _need("clang", "clang")
        _need("ld.lld", "lld")
        for prog in ("llvm-ar", "llvm-nm", "llvm-objcopy", "llvm-strip"):
            _need(prog, "llvm")
        return ["ARCH=arm64", "LLVM=1"], _first_line(["clang", "--version"])
    _need(CROSS_GCC, "gcc-aarch64-linux-gnu")
    _need(CROSS_COMPILE + "ld", "binutils-aarch64-linux-gnu")
    return [f"ARCH=arm64", f"CROSS_COMPILE={CROSS_COMPILE}"], _first_line([CROSS_GCC, "--version"])


def _btf_possible() -> tuple[bool, str]:
    v = pahole_version()
    if v is None:
        return False, "BTF disabled: pahole not found (install the Debian package 'dwarves')"
    if v < PAHOLE_MIN_BTF_DWARF5:
        return False, (f"BTF disabled: pahole {v[0]}.{v[1]} is too old for DEBUG_INFO_BTF with DWARF 5 "
                       f"(needs >= {PAHOLE_MIN_BTF_DWARF5[0]}.{PAHOLE_MIN_BTF_DWARF5[1]})")
    return True, ""


# --------------------------------------------------------------------------- config


def fragment_text(config: str, version: str = "") -> str:
    """The fragment merged for ``config`` (BTF section included): pkvm-tiny's, or the debug overlay.

    ``version`` (the tree's, ``6.12.118``): sections of pkvm-tiny marked ``# scopecheck:since X.Y``
    ... ``# scopecheck:end`` are kept only for trees of version X.Y or later (all of them
    when the version is not known).
    """
    if config != "pkvm-tiny":
        return DEBUG_OVERLAY
    text = importlib.resources.files("scopecheck").joinpath("data/configs/pkvm-tiny.config").read_text()
    have = _version_tuple(version)
    out, keep = [], True
    for line in text.splitlines(keepends=True):
        m = re.match(r"#\s*scopecheck:since\s+(\d+)\.(\d+)\s*$", line)
        if m:
            keep = have is None or have >= (int(m.group(1)), int(m.group(2)))
            continue
        if line.strip() == "# scopecheck:end":
            keep = True
            continue
        if keep:
            out.append(line)
    return "".join(out)


def _version_tuple(version: str) -> Optional[tuple[int, int]]:
    m = re.match(r"(\d+)\.(\d+)", version or "")
    return (int(m.group(1)), int(m.group(2))) if m else None


def _strip_btf(text: str) -> str:
    out, skip = [], False
    for line in text.splitlines(keepends=True):
        if line.strip() == BTF_BEGIN:
            skip = True
            continue
        if line.strip() == BTF_END:
            skip = False
            continue
        if not skip:
            out.append(line)
    return "".join(out) + "# CONFIG_DEBUG_INFO_BTF is not set\n"


def _parse_config(text: str) -> dict[str, str]:
    """CONFIG_X -> value ("y", "m", '"str"', "n" for 'is not set')."""
    vals = {}
    for line in text.splitlines():
        line = line.strip()
        m = re.match(r"(CONFIG_[A-Za-z0-9_]+)=(.*)$", line)
        if m:
            vals[m.group(1)] = m.group(2)
            continue
        m = re.match(r"# (CONFIG_[A-Za-z0-9_]+) is not set$", line)
        if m:
            vals[m.group(1)] = "n"
    return vals


def _unapplied(requested: dict[str, str], final: dict[str, str]) -> list[str]:
    bad = []
    for opt, want in requested.items():
        got = final.get(opt, "n")
        if want in ("y", "m"):
            if got != want:
                bad.append(f"{opt} (wanted {want}, got {'not set' if got == 'n' else got})")
        elif want == "n":
            if got in ("y", "m"):
                bad.append(f"{opt} (wanted not set, got {got})")
        # string/int values: not checked (they vanish when their symbol's deps are unmet)
    return bad


# --------------------------------------------------------------------------- running make

# "  CC      arch/arm64/kvm/hyp/nvhe/switch.nvhe.o", "  LD [M]  foo.o", "  BTF     .btf.vmlinux.bin.o"
_KBUILD_LINE = re.compile(r"^\s{2}([A-Z][A-Z0-9_-]{1,11})(?: \[M\])?\s+(\S.*)$")
_ERROR_PATTERNS = (
    re.compile(r"^\S+?:\d+:(?:\d+:)?\s+(?:fatal )?error:", re.I),  # file:line[:col]: error:
    re.compile(r"\berror:", re.I),
    re.compile(r"^(?:ld|\S*-ld|ld\.lld|pahole|FAILED|BTF)\b.*(?:fail|error|undefined)", re.I),
    re.compile(r"\*\*\*"),
)


def first_error(lines: Sequence[str]) -> Optional[str]:
    """The first line that looks like the cause of a failed build (compiler error first)."""
    for pat in _ERROR_PATTERNS:
        for line in lines:
            if pat.search(line):
                return line.strip()
    return None


class _Runner:
    """Runs commands with their output appended to the build log, reporting kbuild's step lines."""

    def __init__(self, log: Path, env: dict[str, str], progress: Optional[Progress]):
        self.log_path = log
        self.env = env
        self.progress = progress
        self.steps = 0
        self._log = open(log, "a", buffering=1, errors="replace")

    def close(self) -> None:
        self._log.close()

    def note(self, text: str) -> None:
        self._log.write(f"### scopecheck: {text}\n")

    def run(self, stage: str, cmd: list[str], cwd: Path, *, check: bool = True) -> tuple[int, list[str]]:
        self.note(f"[{stage}] $ (cd {cwd} && {' '.join(cmd)})")
        if self.progress:
            self.progress(stage, None, None)
        lines: list[str] = []
        try:
            p = subprocess.Popen(cmd, cwd=cwd, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, text=True, errors="replace", bufsize=1)
        except OSError as e:
            raise ScopecheckError(f"cannot run {cmd[0]}: {e.strerror}") from None
        import threading

        expired = threading.Event()

        def _expire() -> None:
            expired.set()
            p.kill()

        watchdog = threading.Timer(STAGE_TIMEOUT, _expire)
        watchdog.daemon = True
        watchdog.start()
        try:
            assert p.stdout is not None
            for line in p.stdout:
                self._log.write(line)
                lines.append(line.rstrip("\n"))
                m = _KBUILD_LINE.match(line)
                if m and self.progress:
                    self.steps += 1
                    self.progress(f"{stage}: {m.group(1)} {m.group(2).strip()}", self.steps, None)
            rc = p.wait()
        except BaseException:
            p.kill()
            p.wait()
            raise
        finally:
            watchdog.cancel()
        if expired.is_set():
            raise BuildFailed(f"kernel {stage} did not finish within {STAGE_TIMEOUT // 60} minutes "
                              f"(full log: {self.log_path})", log=self.log_path, first_error=None)
        self.note(f"[{stage}] exit status {rc}")
        if rc != 0 and check:
            self.fail(stage, lines)
        return rc, lines

    def fail(self, stage: str, lines: Sequence[str]):
        err = first_error(lines)
        what = f": {err[:400]}" if err else ""
        raise BuildFailed(f"kernel {stage} failed{what} (full log: {self.log_path})",
                          log=self.log_path, first_error=err)


def _btf_failure(lines: Sequence[str]) -> bool:
    text = "\n".join(lines[-200:])
    return bool(re.search(r"BTF|btf|pahole|resolve_btfids", text)) and not re.search(
        r"^\S+?\.[chS]:\d+:(?:\d+:)?\s+(?:fatal )?error:", text, re.M)


# --------------------------------------------------------------------------- build


def _configure(run: _Runner, tree: Path, out: Path, make: list[str], config: str,
               config_file: Optional[Path], btf: bool, btf_unavailable: str = "") -> dict:
    """Base config (tinyconfig / defconfig / FILE), resolved against the tree's Kconfig, olddefconfig.

    Returns the record of the resolver's choices (``BuiltKernel.kconfig``).
    """
    from scopecheck.kernels import kconfig as kc

    frag_src = fragment_text("pkvm-tiny" if config == "pkvm-tiny" else "overlay", _kernel_version(tree))
    frag_path = out / "scopecheck.fragment.config"
    if config == "pkvm-tiny":
        run.run("config: make tinyconfig", make + ["tinyconfig"], tree)
    elif config == "defconfig":
        run.run("config: make defconfig", make + ["defconfig"], tree)
    else:
        assert config_file is not None
        shutil.copyfile(config_file, out / ".config")
        run.note(f"copied {config_file} to {out / '.config'}")

    if run.progress:
        run.progress("config: resolving against the tree's Kconfig", None, None)
    make_vars = [a for a in make[1:] if "=" in a and not a.startswith("O=")]
    try:
        kconf = kc.load_kconfig(tree, kc.kbuild_env(tree, make_vars, run.env))
        res = kc.resolve(kconf, out / ".config", kc.intents_from_fragment(frag_src),
                         debug="prefer-dwarf5" if config in CONFIG_NAMES else "any",
                         btf=btf, btf_unavailable=btf_unavailable)
    except kc.Unresolvable as e:
        run.note(str(e))
        raise ConfigNotApplied(f"config {config}: {e}", e.missing) from None
    for c in res.choices:
        run.note(f"kconfig: {c}")
    frag_path.write_text(res.fragment_text())
    run.run("config: merge fragment",
            ["sh", str(tree / "scripts/kconfig/merge_config.sh"), "-m", "-O", str(out),
             str(out / ".config"), str(frag_path)], tree)
    run.run("config: make olddefconfig", make + ["olddefconfig"], tree)

    final = _parse_config((out / ".config").read_text(errors="replace"))
    mismatches = kc.verify(res, final)
    for m in mismatches:
        run.note(f"kconfig: resolver and olddefconfig disagree: {m}")
    requested = {f"CONFIG_{n}": v for n, v in res.assignments.items() if v in ("y", "n", "m")}
    for opt in ALWAYS_REQUIRED:
        requested.setdefault(opt, "y")
    optional = {o: requested.pop(o) for o in BTF_OPTIONS if o in requested}
    bad = _unapplied(requested, final)
    if bad:
        what = "pkvm-tiny fragment" if config == "pkvm-tiny" else f"{config} + debug overlay"
        run.note("options that did not stick: " + ", ".join(bad))
        raise ConfigNotApplied(
            f"config {what}: {len(bad)} option(s) did not end up in {out / '.config'} after olddefconfig "
            f"(unmet Kconfig dependencies?): {'; '.join(bad)}",
            [b.split()[0] for b in bad],
        )
    if res.btf and _unapplied(optional, final):
        raise _NoBTF("BTF disabled: " + "; ".join(_unapplied(optional, final)) + " after olddefconfig")
    rec = res.to_json()
    rec["debug_info"] = debug_info_of(final) or rec["debug_info"]
    rec["btf"] = final.get("CONFIG_DEBUG_INFO_BTF") == "y"
    rec["olddefconfig_disagrees"] = mismatches
    return rec


def debug_info_of(cfg: dict[str, str]) -> str:
    """The debug info a ``.config`` builds: "DWARF 5", "DWARF 4", "toolchain default" or "" (none)."""
    if cfg.get("CONFIG_DEBUG_INFO") != "y":
        return ""
    if cfg.get("CONFIG_DEBUG_INFO_DWARF5") == "y":
        return "DWARF 5"
    if cfg.get("CONFIG_DEBUG_INFO_DWARF4") == "y":
        return "DWARF 4"
    return "toolchain default"


def _previous_build(out: Path) -> Optional[dict]:
    """The stamp of a completed build already in ``out`` (for incremental rebuilds), if any."""
    try:
        d = json.loads((out / STAMP).read_text())
    except (OSError, ValueError):
        return None
    return d if isinstance(d, dict) and d.get("stamp_format") == STAMP_FORMAT else None


def _ccache_masquerade(llvm: bool) -> Path:
    """A directory whose ``aarch64-linux-gnu-gcc`` and ``gcc`` (kbuild's HOSTCC) / ``clang`` (both
    with LLVM=1) are links to ccache, for the front of PATH: the host tools every fresh build
    directory compiles (fixdep, kconfig's conf, modpost) are cache hits too.

    ccache in masquerade mode runs the real compiler found further down PATH. Unlike
    ``CC="ccache gcc"`` this leaves kbuild's command lines (``.cmd`` files,
    ``compile_commands.json``) exactly as without ccache, so turning ccache on or off never
    makes ``make`` rebuild everything, and the source door sees the compiler as usual.
    """
    real = Path(_need("ccache", "ccache")).resolve()
    d = cache_dir("ccache-bin")
    d.mkdir(parents=True, exist_ok=True)
    for name in ("clang",) if llvm else (CROSS_GCC, "gcc"):
        link = d / name
        try:
            if link.is_symlink() and Path(os.readlink(link)) == real:
                continue
            tmp = d / f".{name}.{os.getpid()}"
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(real)
            os.replace(tmp, link)
        except OSError as e:
            raise ScopecheckError(f"cannot set up ccache in {d}: {e.strerror}") from None
    return d


def _config_fingerprint(tree: Path, config: str, config_file: Optional[Path], make_vars: Sequence[str],
                        toolchain: str, btf: Optional[bool]) -> str:
    """What the ``.config`` of a build depends on (not the tree's file contents: hyp edits keep it)."""
    parts = [f"recipe{RECIPE_VERSION}", str(tree.resolve()), config, toolchain, str(btf),
             " ".join(make_vars),
             fragment_text("pkvm-tiny" if config == "pkvm-tiny" else "overlay", _kernel_version(tree)),
             str(pahole_version())]
    for rel in ("Makefile", "arch/arm64/Kconfig", "lib/Kconfig.debug", "arch/arm64/kvm/Kconfig"):
        try:
            st = (tree / rel).stat()
            parts.append(f"{rel}:{st.st_size}:{st.st_mtime_ns}")
        except OSError:
            parts.append(f"{rel}:-")
    if config_file is not None:
        parts.append(hashlib.sha256(config_file.read_bytes()).hexdigest())
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:20]


class _NoBTF(Exception):
    pass


class StaleSeed(ScopecheckError):
    """A seeded build whose debug info still names the build it was copied from."""


def build_kernel(
    src: os.PathLike | str,
    out: os.PathLike | str,
    config: str = "pkvm-tiny",
    jobs: Optional[int] = None,
    patches: Sequence[os.PathLike | str] = (),
    llvm: bool = False,
    progress: Optional[Progress] = None,
    *,
    btf: Optional[bool] = None,
    ccache: Optional[bool] = None,
    extra_make_vars: Sequence[str] = (),
    seeded_from: Optional[BuiltKernel] = None,
    extra_notes: Sequence[str] = (),
) -> BuiltKernel:
    """Cross-build arm64 ``vmlinux``, ``Image``, ``kvm_nvhe.o`` and ``compile_commands.json`` into ``out``.

    ``config``: "pkvm-tiny", "defconfig" or the path of a complete ``.config``,
    resolved against the tree's own Kconfig (:mod:`scopecheck.kernels.kconfig`).
    ``btf``: None = when pahole is new enough (falling back without BTF if it
    fails to build); False = never.
    ``ccache``: None = use ``ccache`` when installed (through a masquerade
    directory on PATH, so kbuild's command lines are the same either way);
    True/False = force.
    When ``out`` holds a completed build of the same tree, config and toolchain,
    its ``.config`` is kept and ``make`` rebuilds only what changed.
    ``extra_make_vars``: more ``VAR=value`` arguments for every make call.
    ``seeded_from``: ``out`` is a copy of that build made by
    :func:`scopecheck.kernels.seed.seed_out`; its ``.config`` is kept and the DWARF
    of what ``make`` did not recompile is relocated afterwards.
    ``extra_notes``: lines for the build's ``notes`` (e.g. why it could not be seeded).
    Raises :class:`ScopecheckError` subclasses (InputError, ToolMissing,
    PatchFailed, ConfigNotApplied, BuildFailed) with one-line messages.
    """
    t0 = time.monotonic()
    config_file: Optional[Path] = None
    if config not in CONFIG_NAMES:
        config_file = Path(config).expanduser()
        if not config_file.is_file():
            raise InputError(f"--config {config}: not 'pkvm-tiny', 'defconfig' or an existing .config file")
        config_file = config_file.resolve()
        config = str(config_file)
    _precheck_source(src)  # a bad SRC is named before a missing tool
    make_vars, toolchain = _toolchain(llvm)
    jobs = jobs or os.cpu_count() or 1
    if jobs < 1:
        raise InputError(f"--jobs {jobs}: must be at least 1")

    source = resolve_source(src, progress)
    _patch_files(patches)  # fail early on a missing patch file
    tree = prepare_tree(source, patches, progress)
    if tree == source.dir:
        _check_clean(tree, source.given)

    out = Path(out).expanduser().resolve()
    for t in {tree.resolve(), source.dir.resolve()}:
        if out == t or t in out.parents:
            raise InputError(f"--out {out}: inside the source tree {t}; scopecheck never writes into it")
    out.mkdir(parents=True, exist_ok=True)
    previous = _previous_build(out)
    if ccache is None:
        ccache = shutil.which("ccache") is not None
    elif ccache:
        _need("ccache", "ccache")
    fingerprint = _config_fingerprint(tree, config, config_file, make_vars, toolchain, btf)
    if seeded_from is not None and previous is not None and previous.get("config_fingerprint") == \
            _config_fingerprint(Path(seeded_from.source_dir), config, config_file, make_vars, toolchain, btf):
        previous["config_fingerprint"] = fingerprint  # the same config, in the copy of the tree
    reuse_config = (previous is not None and previous.get("config_fingerprint") == fingerprint
                    and (out / ".config").is_file() and bool(previous.get("kconfig")))
    (out / STAMP).unlink(missing_ok=True)
    log = out / LOG
    log.write_text("")

    notes: list[str] = list(extra_notes)
    recompiled: list[str] = []
    want_btf = btf is not False
    if want_btf:
        ok, why = _btf_possible()
        if not ok:
            want_btf = False
            notes.append(why)

    env = dict(os.environ, LC_ALL="C", LANG="C", KBUILD_BUILD_USER="scopecheck",
               KBUILD_BUILD_HOST="scopecheck")
    env.pop("GCC_COLORS", None)
    for v in ("ARCH", "CROSS_COMPILE", "LLVM", "O", "KBUILD_OUTPUT", "CC", "KCONFIG_CONFIG"):
        env.pop(v, None)
    if ccache:
        env["PATH"] = f"{_ccache_masquerade(llvm)}{os.pathsep}{env.get('PATH', '')}"
    make = ["make", "-C", str(tree), f"O={out}", *make_vars, *extra_make_vars]
    run = _Runner(log, env, progress)
    try:
        run.note(f"source {source.given} -> tree {tree} (linux {source.version}); config {config}; "
                 f"patches {[str(p) for p in patches]}; toolchain {toolchain}; jobs {jobs}; "
                 f"ccache {'yes' if ccache else 'no'}")
        for n in notes:
            run.note(n)
        kconfig_rec: dict = dict(previous.get("kconfig") or {}) if reuse_config and previous else {}
        if reuse_config:
            run.note(f"config: keeping {out / '.config'} of the previous build (same tree, config and toolchain)")
            if progress:
                progress("config: kept from the previous build", None, None)
        while True:
            if not reuse_config:
                try:
                    kconfig_rec = _configure(run, tree, out, make, config, config_file, want_btf,
                                             notes[0] if notes else "")
                except _NoBTF as e:
                    notes.append(str(e))
                    run.note(str(e))
                    want_btf = False
                    continue
            rc, lines = run.run("build", make + [f"-j{jobs}", "vmlinux", "Image"], tree, check=False)
            if rc == 0:
                if seeded_from is not None:
                    recompiled = [m.group(2).strip() for line in lines
                                  if (m := _KBUILD_LINE.match(line)) and m.group(1) == "CC"]
                    notes.append(f"rebuilt incrementally from a copy of {seeded_from.out} "
                                 f"({len(recompiled)} C file(s) recompiled; debug info relocated with debugedit)")
                break
            if want_btf and _btf_failure(lines) and (not reuse_config or kconfig_rec.get("btf")):
                reuse_config = False
                msg = f"BTF disabled: generating BTF failed ({first_error(lines) or 'see the log'}); rebuilt without it"
                notes.append(msg)
                run.note(msg)
                if progress:
                    progress("build: BTF failed, rebuilding without BTF", None, None)
                want_btf = False
                continue
            run.fail("build", lines)

        script = tree / "scripts/clang-tools/gen_compile_commands.py"
        if not script.is_file():
            raise ScopecheckError(f"{script} missing: this kernel is too old for compile_commands.json")
        cc = out / "compile_commands.json"
        run.run("compile_commands.json",
                [sys.executable, str(script), "-d", str(out), "-o", str(cc)], out)
    finally:
        run.close()

    src_link = out / "source"
    if not src_link.exists():
        if src_link.is_symlink():
            src_link.unlink()
        src_link.symlink_to(tree)

    final = _parse_config((out / ".config").read_text(errors="replace"))
    k = BuiltKernel(
        out=out,
        vmlinux=out / "vmlinux",
        image=out / "arch/arm64/boot/Image",
        kvm_nvhe_o=out / "arch/arm64/kvm/hyp/nvhe/kvm_nvhe.o",
        compile_commands=out / "compile_commands.json",
        config_path=out / ".config",
        log=log,
        source_dir=tree,
        config=config,
        kernel_version=source.version,
        btf=final.get("CONFIG_DEBUG_INFO_BTF") == "y",
        llvm=llvm,
        patches=tuple(str(Path(p).expanduser().resolve()) for p in patches),
        original_source=source.given,
        toolchain=toolchain,
        build_seconds=round(time.monotonic() - t0, 1),
        notes=tuple(notes),
        kconfig=kconfig_rec,
        ccache=bool(ccache),
        reused_config=reuse_config,
    )
    missing = [f"{name} ({path})" for name, path in k.artefacts.items() if not path.exists()]
    if missing:
        raise BuildFailed(f"kernel build finished but did not produce {', '.join(missing)} (full log: {log})", log=log)
    if seeded_from is not None:
        from scopecheck.kernels import seed

        dwarf = [k.vmlinux, k.kvm_nvhe_o]
        seed.relocate_debug_info(seeded_from, tree, out, dwarf)
        stale = seed.stale_paths(seeded_from, dwarf)
        if stale:
            raise StaleSeed(f"{', '.join(stale)} still name {seeded_from.out} after debugedit")
        k = dataclasses.replace(k, seeded_from=str(seeded_from.out), recompiled=tuple(recompiled))
    atomic_write_text(out / STAMP, json.dumps({**k.to_json(), "stamp_format": STAMP_FORMAT,
                                               "config_fingerprint": fingerprint}, indent=2) + "\n")
    if progress:
        progress(f"built linux {source.version} in {k.build_seconds:.0f} s", None, None)
    return k


def build_key(src: os.PathLike | str, config: str = "pkvm-tiny", patches: Sequence[os.PathLike | str] = (),
              llvm: bool = False, progress: Optional[Progress] = None) -> tuple[str, SourceTree]:
    """Cache key of a build: source identity, config text, patch contents, toolchain, recipe."""
    source = resolve_source(src, progress)
    _, toolchain = _toolchain(llvm)
    parts = {
        "recipe": RECIPE_VERSION,
        "source": source.identity,
        "toolchain": toolchain,
        "pahole": list(pahole_version() or ()),
        "llvm": llvm,
    }
    if config in CONFIG_NAMES:
        parts["config"] = [config, fragment_text(config if config == "pkvm-tiny" else "overlay", source.version)]
    else:
        p = Path(config).expanduser()
        if not p.is_file():
            raise InputError(f"--config {config}: not 'pkvm-tiny', 'defconfig' or an existing .config file")
        parts["config"] = ["file", hashlib.sha256(p.read_bytes()).hexdigest(), DEBUG_OVERLAY]
    parts["patches"] = [hashlib.sha256(f.read_bytes()).hexdigest() for f in _patch_files(patches)]
    key = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]
    return key, source


def cached_build(
    src: os.PathLike | str,
    config: str = "pkvm-tiny",
    patches: Sequence[os.PathLike | str] = (),
    *,
    jobs: Optional[int] = None,
    llvm: bool = False,
    progress: Optional[Progress] = None,
    ccache: Optional[bool] = None,
) -> BuiltKernel:
    """:func:`build_kernel` into ``cache_dir("builds")/<key>``, reusing a completed build.

    The key hashes the source identity (tarball SHA256, git HEAD + changes, or
    the files' sizes and mtimes), the config fragment's text (or the FILE's
    contents), the patches' contents and the toolchain version. A build is
    complete once ``scopecheck-build.json`` is written (last); concurrent
    callers wait on a lock.
    """
    out, source = cached_build_dir(src, config, patches, llvm, progress)
    with _lock(out.parent / ".locks" / f"{out.name}.lock"):
        done = load_build(out)
        if done is not None:
            return done
        seeded = None
        why: list[str] = []
        if patches and not out.exists():
            seeded = seed_from_cache(src, source, config, llvm, lambda: prepare_tree(source, patches, progress),
                                     out, progress, why)
            if why and progress:
                progress(why[0], None, None)
        if seeded is not None:
            try:
                return build_kernel(src, out, config=config, jobs=jobs, patches=patches, llvm=llvm,
                                    progress=progress, ccache=ccache, seeded_from=seeded)
            except StaleSeed as e:  # never hand out a build whose DWARF names another tree: build from nothing
                if progress:
                    progress(f"incremental build unusable ({e}); building from nothing", None, None)
                shutil.rmtree(out, ignore_errors=True)
        return build_kernel(src, out, config=config, jobs=jobs, patches=patches, llvm=llvm, progress=progress,
                            ccache=ccache, extra_notes=why)


def cached_build_dir(src: os.PathLike | str, config: str = "pkvm-tiny", patches: Sequence[os.PathLike | str] = (),
                     llvm: bool = False, progress: Optional[Progress] = None) -> tuple[Path, SourceTree]:
    """Where :func:`cached_build` puts (or finds) that build, and SRC resolved."""
    key, source = build_key(src, config, patches, llvm, progress)
    return cache_dir("builds") / f"{config if config in CONFIG_NAMES else 'file'}-{source.version}-{key}", source


def seed_from_cache(src, source: SourceTree, config: str, llvm: bool, tree: Callable[[], Path], out: Path,
                    progress: Optional[Progress] = None, why: Optional[list] = None) -> Optional[BuiltKernel]:
    """Copy the cached build of SRC itself (no patches, same config and compiler) into ``out``,
    rewritten for the tree ``tree()`` (a copy of SRC), to be rebuilt there incrementally.

    Returns that build (pass it to :func:`build_kernel` as ``seeded_from``), or None with
    nothing done: no such build in the cache, or no debugedit (:mod:`scopecheck.kernels.seed`).
    When there is such a build and it cannot be used, one line saying why is appended to ``why``.
    """
    from scopecheck.kernels import seed

    base_out, _ = cached_build_dir(src, config, (), llvm, progress)
    with _lock(base_out.parent / ".locks" / f"{base_out.name}.lock"):
        base = load_build(base_out)
        if base is None or Path(base.source_dir).resolve() != source.dir.resolve():
            return None
        if seed.debugedit() is None:
            if why is not None:
                why.append(f"built from nothing: the cache's build of SRC ({base.out}) could have been copied "
                           "and rebuilt incrementally, but debugedit (Debian package debugedit) is not installed")
            return None
        t = tree()
        if not seed.can_seed(base, t):
            return None
        seed.seed_out(base, t, out, progress)
    return base


# --------------------------------------------------------------------------- CLI helper


class StderrBuildProgress(StatusLine):
    """progress(stage, done, total): the current kbuild step on a terminal, one line per stage otherwise."""

    def __init__(self, quiet: bool = False):
        super().__init__(quiet, "preparing")
        self.t0 = time.monotonic()

    def plain(self, msg: str) -> str | None:
        return msg.split(":", 1)[0]

    def __call__(self, stage: str, done: Optional[int] = None, total: Optional[int] = None) -> None:
        if self.status is not None:
            steps = f" [{done} steps]" if done else ""
            stage = f"{stage[:100]}{steps} ({time.monotonic() - self.t0:.0f} s)"
        super().__call__(stage)


def print_result(k: BuiltKernel, as_json: bool) -> None:
    """The CLI's stdout: 'name: path' lines, or the JSON of :meth:`BuiltKernel.to_json`."""
    if as_json:
        print(jsontext.dumps(k.to_json()))
        return
    for name, path in (("vmlinux", k.vmlinux), ("image", k.image), ("kvm_nvhe_o", k.kvm_nvhe_o),
                       ("compile_commands", k.compile_commands), ("config", k.config_path),
                       ("log", k.log), ("source", k.source_dir)):
        print(f"{name}: {path}")
    for n in k.notes:
        print(f"scopecheck: note: {n}", file=sys.stderr)


def print_choices(k: BuiltKernel) -> None:
    """The Kconfig resolver's choices on stderr (``debug info: DWARF 5``, added dependencies, ...)."""
    for c in k.kconfig.get("choices", ()):
        print(f"scopecheck: {c}", file=sys.stderr)
    for m in k.kconfig.get("olddefconfig_disagrees", ()):
        print(f"scopecheck: note: the Kconfig resolver predicted otherwise: {m}", file=sys.stderr)
