"""callgraph SARIF checked by the reference validator: Microsoft's SARIF Multitool (`validate`).

The Multitool (npm ``@microsoft/sarif-multitool``, installed by scripts/install-deps.sh) checks
the SARIF 2.1.0 JSON schema and its own SARIF rules, and, with ``--rule-kind Gh``, what GitHub
code scanning requires. Every result at level error or warning fails the test; notes (advice
such as "provide version control provenance") do not.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import FIXTURE_BUILD, run_cli

_NATIVE = Path("@microsoft/sarif-multitool/node_modules/@microsoft/sarif-multitool-linux/Sarif.Multitool")


def multitool() -> str:
    """The Multitool's native binary (the npm wrapper passes arguments through a shell, which splits
    ``--level "Error;Warning"`` at the semicolon)."""
    npm = shutil.which("npm")
    if npm is not None:
        root = subprocess.run([npm, "root", "-g"], capture_output=True, text=True, timeout=60).stdout.strip()
        exe = Path(root) / _NATIVE
        if exe.is_file():
            return str(exe)
    pytest.skip("SARIF Multitool not installed (scripts/install-deps.sh: npm install -g @microsoft/sarif-multitool)")


def validate(sarif: Path, tmp_path: Path) -> list[dict]:
    """The Multitool's findings (errors and warnings) on ``sarif``."""
    out = tmp_path / "validation.sarif"
    r = subprocess.run([multitool(), "validate", str(sarif), "--output", str(out),
                        "--level", "Error;Warning", "--rule-kind", "Sarif;Gh"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and out.is_file(), r.stdout + r.stderr
    runs = json.loads(out.read_text())["runs"]
    return [{"rule": x["ruleId"], "level": x.get("level", "warning"), "message": x.get("message")}
            for run in runs for x in run.get("results", [])]


def test_the_validator_finds_errors(tmp_path):
    """A check that cannot fail checks nothing: a damaged log must give errors."""
    r = run_cli("callgraph", str(FIXTURE_BUILD / "after-dwarf5"), "--format", "sarif")
    d = json.loads(r.stdout)
    del d["runs"][0]["tool"]["driver"]["name"]
    d["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["region"]["startLine"] = 0
    bad = tmp_path / "bad.sarif"
    bad.write_text(json.dumps(d))
    found = validate(bad, tmp_path)
    assert any(f["level"] == "error" for f in found), found


@pytest.mark.parametrize("variant", ["after-dwarf5", "before-dwarf5"])
def test_fixture_sarif_is_valid(variant, tmp_path):
    sarif = tmp_path / "callgraph.sarif"
    r = run_cli("callgraph", str(FIXTURE_BUILD / variant), "--format", "sarif", "--output", str(sarif))
    assert r.returncode == 0, r.stderr
    assert json.loads(sarif.read_text())["runs"][0]["results"], "the fixture has leaks: results to check"
    assert validate(sarif, tmp_path) == []


@pytest.mark.kernel
@pytest.mark.slow
def test_pkvm_tiny_61_sarif_is_valid(tmp_path):
    from build_cache import pkvm_tiny_61

    k = pkvm_tiny_61()
    sarif = tmp_path / "callgraph.sarif"
    r = run_cli("callgraph", str(k.vmlinux.parent), "--format", "sarif", "--output", str(sarif), timeout=3600)
    assert r.returncode == 0, r.stderr
    assert json.loads(sarif.read_text())["runs"][0]["results"]
    assert validate(sarif, tmp_path) == []
