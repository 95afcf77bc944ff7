"""scopecheck as users get it: a wheel installed into a fresh virtual environment, run from elsewhere.

The wheel is built with ``pip wheel --no-deps`` from this checkout and installed (with its
dependencies, from the package index or pip's cache) into a new venv without system
site-packages. Every command then runs from a temporary directory that holds nothing of the
repository: the shipped queries must come from the package itself, and every command that
``scopecheck --help`` lists must at least answer ``--help``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import FIXTURE_BUILD, ROOT

pytestmark = pytest.mark.slow

FIXTURE = FIXTURE_BUILD / "after-dwarf5"


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """bin/ of a fresh venv with the wheel of this checkout installed."""
    if not (FIXTURE / "kvm_nvhe.o").is_file():
        pytest.skip("fixture objects not built")
    tmp = tmp_path_factory.mktemp("install")
    wheels = tmp / "wheels"
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(ROOT)],
                       capture_output=True, text=True, timeout=900, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    (wheel,) = wheels.glob("scopecheck-*.whl")
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    r = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)],
                       capture_output=True, text=True, timeout=1800, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    return venv / "bin"


def _run(bindir: Path, cwd: Path, *args: str, timeout: float = 600):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{bindir}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run([str(bindir / "scopecheck"), *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout, env=env)


def test_installed_from_the_wheel_not_the_checkout(installed, tmp_path):
    r = subprocess.run([str(installed / "python"), "-c", "import scopecheck, sys; print(scopecheck.__file__)"],
                       capture_output=True, text=True, cwd=tmp_path, check=True)
    where = Path(r.stdout.strip()).resolve()
    assert ROOT not in where.parents, where
    assert "site-packages" in where.parts


def test_shipped_queries_are_package_data(installed, tmp_path):
    r = subprocess.run([str(installed / "python"), "-c",
                        "import json; from scopecheck.query import available; print(json.dumps(sorted(available())))"],
                       capture_output=True, text=True, cwd=tmp_path, check=True)
    shipped = json.loads(r.stdout)
    in_repo = sorted(p.stem for p in (ROOT / "scopecheck" / "queries").glob("*.toml"))
    assert shipped == in_repo and {"rfc-hyp-scope", "ctxt-only", "pkvm-hyp-vcpu"} <= set(shipped)


@pytest.mark.parametrize("qid", sorted(p.stem for p in (ROOT / "scopecheck" / "queries").glob("*.toml")))
def test_callgraph_with_each_shipped_query(installed, tmp_path, qid):
    r = _run(installed, tmp_path, "callgraph", str(FIXTURE), "--query", qid, "--format", "json", "--no-cache")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["query"]["id"] == qid
    assert d["mode"] == "source+binary"
    assert d["leaks"], f"{qid}: the fixture has marked leaks for every shipped query"


def test_size_and_report(installed, tmp_path):
    r = _run(installed, tmp_path, "size", str(FIXTURE / "kvm_nvhe.o"), "--format", "json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    sizes = {s["name"]: s["size"] for t in d["targets"] for s in t["structs"]}
    assert sizes["kvm_vcpu"] > 0
    r = _run(installed, tmp_path, "report", str(FIXTURE), "--out", "rep", "--quiet")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "rep" / "index.html").is_file()


def _commands(help_text: str) -> list[str]:
    block = help_text.split("Commands:", 1)[1]
    return [m.group(1) for m in re.finditer(r"^  ([a-z][a-z0-9-]*)\s", block, re.M)]


def test_every_command_answers_help(installed, tmp_path):
    r = _run(installed, tmp_path, "--help")
    assert r.returncode == 0, r.stderr
    cmds = _commands(r.stdout)
    assert {"size", "callgraph", "derive", "report", "diff", "boot", "kernel"} <= set(cmds), cmds
    for c in cmds:
        h = _run(installed, tmp_path, c, "--help")
        assert h.returncode == 0, (c, h.stderr)
        assert "unavailable" not in h.stdout, (c, h.stdout)
        assert "Usage:" in h.stdout, (c, h.stdout)
        if "Commands:" in h.stdout:  # a group (kernel): every subcommand too
            for sub in _commands(h.stdout):
                s = _run(installed, tmp_path, c, sub, "--help")
                assert s.returncode == 0 and "Usage:" in s.stdout, (c, sub, s.stderr)


def test_sdist_ships_the_queries(tmp_path):
    import tarfile

    r = subprocess.run([sys.executable, "-c", "import sys; from setuptools import build_meta; "
                        f"print(build_meta.build_sdist({str(tmp_path)!r}))"],
                       capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    (sdist,) = tmp_path.glob("scopecheck-*.tar.gz")
    names = {Path(n).name for n in tarfile.open(sdist).getnames() if "/scopecheck/queries/" in n}
    shipped = {p.name for p in (ROOT / "scopecheck" / "queries").iterdir() if p.is_file()}
    assert shipped <= names and "rfc-hyp-scope.toml" in names
