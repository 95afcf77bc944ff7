"""Real Debian arm64 kernels for tests, fetched once into the shared cache.

The cache is ``$SCOPECHECK_CACHE`` (else ``~/.cache/scopecheck``), shared by
all tests and kept across runs; a warm fetch costs well under a second.
Wrap these in fixtures, e.g.::

    from kernel_cache import debian_vmlinux

    @pytest.fixture(scope="session")
    def vmlinux_61():
        return debian_vmlinux("6.1")

A machine that cannot fetch at all (no apt/dpkg, arm64 architecture not
added) skips the test; any other failure (mirror down, checksum) is an error.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from scopecheck.errors import ToolMissing
from scopecheck.kernels.debian import ArchitectureMissing, FetchedKernel, fetch

SERIES = ("6.1", "6.12")


def _fetch(series: str, image: bool) -> FetchedKernel:
    try:
        return fetch(f"debian:{series}", image=image)
    except (ToolMissing, ArchitectureMissing) as e:
        pytest.skip(f"cannot fetch Debian kernels here: {e}")


@functools.cache
def debian_kernel(series: str) -> FetchedKernel:
    """dbg vmlinux + uncompressed Image + config of the current ABI of ``series``."""
    return _fetch(series, image=True)


@functools.cache
def debian_vmlinux(series: str) -> Path:
    """The dbg vmlinux (aarch64 ELF with DWARF) of the current ABI of ``series`` ("6.1", "6.12")."""
    return _fetch(series, image=False).vmlinux


def debian_image(series: str) -> Path:
    """The uncompressed arm64 ``Image`` of ``series``."""
    return debian_kernel(series).image


def debian_config(series: str) -> Path:
    """The kernel ``config`` of ``series``."""
    return debian_kernel(series).config
