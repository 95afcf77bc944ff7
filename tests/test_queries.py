"""Every query in scopecheck/queries/ against its annotated C test source (semgrep-rules style).

scopecheck/queries/ID.c marks lines with ``ruleid: ID`` (must be reported) and ``ok: ID`` (must
not be). The test cross-compiles it with the mini hyp's headers into a kvm_nvhe.o the
way Linux makes one (ld -r, objcopy --prefix-symbols=__kvm_nvhe_), writes a
compile_commands.json, runs the proof, and compares the reported lines.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT
from scopecheck.query import available, load_query

QUERIES = sorted(available())
CC = "aarch64-linux-gnu-gcc"
FLAGS = ["-std=gnu11", "-O2", "-g", "-gdwarf-5", "-nostdinc", "-ffreestanding", "-fno-builtin", "-fno-pic",
         "-fno-pie", "-fno-common", "-fno-stack-protector", "-mgeneral-regs-only",
         "-mbranch-protection=none", "-fno-asynchronous-unwind-tables", "-fno-unwind-tables"]


def markers(src: Path, qid: str) -> tuple[set[int], set[int]]:
    must, must_not = set(), set()
    for n, line in enumerate(src.read_text().splitlines(), 1):
        if line.lstrip().startswith(("*", "/*")):
            continue  # the explanatory header comment
        if re.search(rf"\bruleid: {re.escape(qid)}\b", line):
            must.add(n)
        elif re.search(rf"\bok: {re.escape(qid)}\b", line):
            must_not.add(n)
    return must, must_not


def build(src: Path, out: Path) -> Path:
    if shutil.which(CC) is None:
        pytest.skip(f"{CC} not installed (Debian package gcc-aarch64-linux-gnu)")
    inc = ROOT / "fixtures" / "mini_hyp" / "src"
    obj = out / (src.stem + ".o")
    args = [CC, *FLAGS, f"-I{inc}", "-c", str(src), "-o", str(obj)]
    subprocess.run(args, check=True, cwd=out)
    tmp = out / "hyp.tmp.o"
    subprocess.run(["aarch64-linux-gnu-ld", "-r", "-o", str(tmp), str(obj)], check=True)
    subprocess.run(["aarch64-linux-gnu-objcopy", "--prefix-symbols=__kvm_nvhe_", str(tmp),
                    str(out / "kvm_nvhe.o")], check=True)
    (out / "compile_commands.json").write_text(json.dumps(
        [{"directory": str(out), "file": str(src), "arguments": args, "output": str(obj)}]))
    return out


def test_every_query_has_a_test_source():
    assert {"rfc-hyp-scope", "ctxt-only", "pkvm-hyp-vcpu"} <= set(QUERIES)
    for q in QUERIES:
        src = ROOT / "scopecheck" / "queries" / f"{q}.c"
        assert src.is_file(), f"queries/{q}.toml has no annotated test source queries/{q}.c"
        must, must_not = markers(src, q)
        assert must and must_not, f"{src} needs both ruleid: and ok: lines"
        assert load_query(q).id == q


@pytest.mark.parametrize("qid", QUERIES)
def test_query_reports_exactly_the_marked_lines(qid, tmp_path):
    from scopecheck.proof import prove

    src = ROOT / "scopecheck" / "queries" / f"{qid}.c"
    must, must_not = markers(src, qid)
    d = build(src, tmp_path)
    r = prove(d, query=qid, use_cache=False)
    assert r.mode == "source+binary"
    reported = {l.line for l in r.leaks if l.file and Path(l.file).name == src.name}
    assert must <= reported, f"{qid}: not reported: lines {sorted(must - reported)}"
    assert not (reported & must_not), f"{qid}: wrongly reported: lines {sorted(reported & must_not)}"
    assert reported <= must, f"{qid}: unmarked lines reported: {sorted(reported - must)}"
