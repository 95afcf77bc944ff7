"""A build directory seeded from a completed build of the same source, rebuilt incrementally.

A patched kernel (``kernel build SRC --patch P``, a mutation, a narrowed tree) differs
from SRC's own build in a handful of files. Building it from nothing costs minutes
(ccache cannot help: every command line names the patched copy's path, so every
lookup misses). Seeding costs seconds: the base build directory is copied (mtimes
kept), the absolute paths of the base tree and build directory in kbuild's text
files (``.*.cmd``, ``Makefile``, ``auto.conf.cmd``, the build stamp) are rewritten to
the new ones, and ``make`` then recompiles only what the patches touched.

Objects ``make`` did not recompile still carry the base's paths in their DWARF.
After the build :func:`relocate_debug_info` rewrites them in the artefacts
scopecheck reads (``vmlinux``, ``kvm_nvhe.o``) with ``debugedit`` (Debian package
``debugedit``, the tool rpm uses for the same job), and :func:`stale_paths` checks
that no byte of the base's paths is left: the result reads exactly like a build
from nothing. Without ``debugedit`` nothing is seeded (a full build, as before).

::

    from scopecheck.kernels.seed import can_seed, seed_out, relocate_debug_info
    if can_seed(base, tree):
        seed_out(base, tree, out)          # then make in out rebuilds what changed
        relocate_debug_info(base, tree, out, [out / "vmlinux"])
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Iterable, Sequence

from scopecheck.errors import ScopecheckError

#: files larger than this are build products (objects, archives, images), never kbuild text
_TEXT_MAX = 8 << 20


def debugedit() -> str | None:
    return shutil.which("debugedit")


def can_seed(base, tree: Path) -> bool:
    """``base`` (a BuiltKernel) is a complete build whose tree ``tree`` copies, and debugedit is here."""
    if debugedit() is None or base is None:
        return False
    return base.out.is_dir() and Path(base.source_dir).is_dir() and Path(base.source_dir).resolve() != tree.resolve()


def _pairs(base, tree: Path, out: Path) -> list[tuple[bytes, bytes]]:
    old_tree, old_out = str(Path(base.source_dir).resolve()), str(Path(base.out).resolve())
    return [(old_tree.encode(), str(tree.resolve()).encode()), (old_out.encode(), str(out.resolve()).encode())]


def _rewrite_text(path: Path, pairs: Sequence[tuple[bytes, bytes]]) -> bool:
    try:
        st = path.stat()
        if st.st_size > _TEXT_MAX:
            return False
        data = path.read_bytes()
    except OSError:
        return False
    if b"\0" in data[:8192] or not any(old in data for old, _ in pairs):
        return False
    for old, new in pairs:
        data = data.replace(old, new)
    path.write_bytes(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # make judges by mtime: keep it
    return True


def seed_out(base, tree: Path, out: Path, progress=None) -> int:
    """Copy ``base.out`` to ``out`` (which must not exist) with its paths rewritten; returns files rewritten."""
    out = Path(out)
    if out.exists():
        raise ScopecheckError(f"cannot seed {out}: it exists")
    tmp = out.parent / f".{out.name}.seed-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    if progress:
        progress(f"copying the build of {base.original_source or base.source_dir} to rebuild incrementally",
                 None, None)
    r = subprocess.run(["cp", "-a", "--reflink=auto", str(base.out), str(tmp)], capture_output=True, text=True,
                       timeout=1800)
    if r.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        first = (r.stderr.strip().splitlines() or ["copy failed"])[0]
        raise ScopecheckError(f"cannot copy {base.out} to {tmp}: {first}")
    try:
        pairs = _pairs(base, tree, out)
        n = 0
        for dirpath, _dirs, files in os.walk(tmp):
            for name in files:
                p = Path(dirpath, name)
                if p.is_symlink():
                    target = os.readlink(p).encode()
                    for old, new in pairs:
                        if target == old or target.startswith(old + b"/"):
                            p.unlink()
                            p.symlink_to(os.fsdecode(new + target[len(old):]))
                            break
                    continue
                n += _rewrite_text(p, pairs)
        link = tmp / "source"
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(tree)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return n


def relocate_debug_info(base, tree: Path, out: Path, files: Iterable[Path]) -> None:
    """Rewrite the base's tree and build paths in the DWARF of ``files`` (debugedit, in place)."""
    tool = debugedit()
    if tool is None:
        raise ScopecheckError("debugedit is not installed (Debian package debugedit)")
    for f in files:
        for old, new in _pairs(base, tree, out):
            r = subprocess.run([tool, "-b", os.fsdecode(old), "-d", os.fsdecode(new), str(f)],
                               capture_output=True, text=True, timeout=600)
            if r.returncode != 0:
                first = (r.stderr.strip().splitlines() or [f"exit status {r.returncode}"])[0]
                raise ScopecheckError(f"debugedit {f}: {first}")


def stale_paths(base, files: Iterable[Path]) -> list[str]:
    """The files among ``files`` that still contain the base's tree or build path."""
    olds = [str(Path(base.source_dir).resolve()).encode(), str(Path(base.out).resolve()).encode()]
    bad = []
    for f in files:
        data = Path(f).read_bytes()
        if any(o in data for o in olds):
            bad.append(str(f))
    return bad
