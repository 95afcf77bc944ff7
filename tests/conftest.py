"""Shared test fixtures.

Real Debian arm64 kernels are downloaded once into the scopecheck cache
($SCOPECHECK_CACHE or ~/.cache/scopecheck) and shared by every test and run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURE_BUILD = ROOT / "fixtures" / "mini_hyp" / "build"
sys.path.insert(0, str(Path(__file__).resolve().parent))
# the suite proves many copies of the kernel trees (mutations, series): its warm working set is
# larger than one user's, so its caches may hold more than the default (a user's setting wins;
# test_cache.py tests the limit itself)
os.environ.setdefault("SCOPECHECK_CACHE_MAX_MB", "8192")


def fixture_variants() -> list[str]:
    return sorted(p.name for p in FIXTURE_BUILD.iterdir() if (p / "kvm_nvhe.o").is_file()) \
        if FIXTURE_BUILD.is_dir() else []


def run_cli(*args: str, env: dict | None = None, timeout: float = 600, cwd: Path | None = None):
    """Run ``python -m scopecheck ARGS`` as a user would; returns CompletedProcess (text)."""
    e = dict(os.environ)
    if env:
        e.update(env)
    return subprocess.run([sys.executable, "-m", "scopecheck", *args], capture_output=True, text=True,
                          timeout=timeout, env=e, cwd=cwd or ROOT)


@pytest.fixture(scope="session")
def vmlinux_61() -> Path:
    from kernel_cache import debian_vmlinux

    return debian_vmlinux("6.1")


@pytest.fixture(scope="session")
def vmlinux_612() -> Path:
    from kernel_cache import debian_vmlinux

    return debian_vmlinux("6.12")


# ---------------------------------------------------------------- the longest files first
# pytest-xdist hands whole files to workers in collection order: the few files that run for
# minutes (real builds, 10,000 fuzz cases, kernel configs) start first, so that the short ones
# fill in around them instead of one long file starting last.
_LONG_FILES = ("test_fuzz.py", "test_series.py", "test_kconfig_resolve.py", "test_kernel_build.py",
               "test_install.py", "test_mutations.py", "test_narrow.py", "test_boundary_612.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(_LONG_FILES)}
    items.sort(key=lambda it: rank.get(it.path.name, len(rank)))  # stable: order within a file kept


# ---------------------------------------------------------------- summary lines
# A test that has a line for the session summary (the fuzz tally) records it with
# record_property("summary_line", ...): the report reaches this process from a pytest-xdist
# worker too, where a print would be lost.
_SUMMARY: list[str] = []


def pytest_runtest_logreport(report):
    if report.when == "call":
        _SUMMARY.extend(v for k, v in report.user_properties if k == "summary_line")


def pytest_terminal_summary(terminalreporter):
    for line in _SUMMARY:
        terminalreporter.write_line(line)
