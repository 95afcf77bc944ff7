"""Kernels built from source for tests, built once into the shared cache.

Builds live in ``cache_dir("builds")`` ($SCOPECHECK_CACHE or
~/.cache/scopecheck), keyed by source version, config fragment, patches and
toolchain, and are reused across tests and runs: the first pkvm-tiny build
from Debian's linux-source-6.1 takes a few minutes on 2 cores, later calls
well under a second. Wrap these in session fixtures, e.g.::

    from build_cache import pkvm_tiny_61

    @pytest.fixture(scope="session")
    def tiny61():
        return pkvm_tiny_61()          # BuiltKernel: .vmlinux, .kvm_nvhe_o, ...

A machine without the cross compiler (or apt to fetch the source) skips
the test; any other failure is an error.
"""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Sequence

import pytest

from scopecheck.errors import ToolMissing
from scopecheck.kernels.build import BuiltKernel, SourceTree, load_build, resolve_source


@functools.cache
def debian_source_tarball(series: str = "6.1") -> Path:
    """Debian's ``linux-source-<series>.tar.xz`` (fetched once into the cache)."""
    from scopecheck.kernels.debian import fetch_source

    try:
        return fetch_source(series)
    except ToolMissing as e:
        pytest.skip(f"cannot fetch Debian's kernel source here: {e}")


@functools.cache
def debian_source_tree(series: str = "6.1") -> SourceTree:
    """The extracted tree of :func:`debian_source_tarball` (in the cache; never modify it)."""
    return resolve_source(debian_source_tarball(series))


def require_cross_compiler() -> None:
    if shutil.which("aarch64-linux-gnu-gcc") is None:
        pytest.skip("aarch64-linux-gnu-gcc not installed (Debian package gcc-aarch64-linux-gnu)")


def require_llvm() -> None:
    """clang, ld.lld and the llvm binutils for LLVM=1 (Debian packages clang, lld, llvm)."""
    from scopecheck.kernels.build import _toolchain

    try:
        _toolchain(True)
    except ToolMissing as e:
        pytest.skip(f"cannot build with LLVM=1 here: {e}")


@functools.cache
def _build(series: str, config: str, patches: tuple[str, ...], llvm: bool = False) -> BuiltKernel:
    """Build through the CLI, as a user would (`scopecheck kernel build SRC` without --out uses the cache)."""
    require_llvm() if llvm else require_cross_compiler()
    if patches:  # the unpatched build first: a patched one is an incremental copy of it (kernels/seed.py)
        _build(series, config, (), llvm)
    args = [sys.executable, "-m", "scopecheck", "kernel", "build", str(debian_source_tarball(series)),
            "--config", config, "--format", "json"]
    if llvm:
        args.append("--llvm")
    for p in patches:
        args += ["--patch", p]
    r = subprocess.run(args, stdout=subprocess.PIPE, stderr=None, text=True, timeout=3600)
    if r.returncode != 0:
        raise RuntimeError(f"scopecheck kernel build failed (exit {r.returncode}); see stderr above")
    k = load_build(json.loads(r.stdout)["out"])
    assert k is not None, "kernel build printed a directory without a completed build"
    return k


def pkvm_tiny_61(patches: Sequence[str | Path] = (), llvm: bool = False) -> BuiltKernel:
    """pkvm-tiny built from Debian's linux-source-6.1 (optionally with ``patches`` applied to a copy).

    A patched build is a copy of the unpatched one that ``make`` rebuilds incrementally.
    """
    return _build("6.1", "pkvm-tiny", tuple(str(p) for p in patches), llvm)


def build(series: str, config: str = "pkvm-tiny", patches: Sequence[str | Path] = (),
          llvm: bool = False) -> BuiltKernel:
    """Any config ("pkvm-tiny", "defconfig", a .config path) from Debian's linux-source-<series>.

    ``llvm=True``: built with clang and lld (``kernel build --llvm``); one build per
    series and compiler, shared by every test through the cache.
    """
    return _build(series, config, tuple(str(p) for p in patches), llvm)
