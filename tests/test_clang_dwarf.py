"""Clang-built code: DWARF 5 as clang writes it (strx/addrx forms, .debug_str_offsets, .debug_addr).

The mini hyp is built with clang --target=aarch64-linux-gnu at test time, linked the way Linux
links kvm_nvhe.o (ld -r, objcopy --prefix-symbols=__kvm_nvhe_) and also as a linked image (the
vmlinux path of the reader), and must give pahole's sizes and a working proof.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from conftest import ROOT, run_cli
from scopecheck.binary import pahole

SRC = ROOT / "fixtures" / "mini_hyp" / "src"
pytestmark = pytest.mark.skipif(shutil.which("clang") is None or shutil.which("aarch64-linux-gnu-ld") is None,
                                reason="clang (Debian package clang) or aarch64 binutils not installed")
FLAGS = ["--target=aarch64-linux-gnu", "-march=armv8.4-a+ras", "-std=gnu11", "-O2", "-g", "-gdwarf-5", "-nostdinc", "-ffreestanding",
         "-fno-builtin", "-fno-pic", "-fno-common", "-fno-stack-protector", "-mgeneral-regs-only",
         "-fno-asynchronous-unwind-tables", "-fno-unwind-tables", "-w"]


@pytest.fixture(scope="module")
def clang_hyp(tmp_path_factory):
    out = tmp_path_factory.mktemp("clang-hyp")
    inc = ["-I", str(SRC), "-I", str(ROOT / "fixtures/mini_hyp/build/before-dwarf5")]
    objs, cmds = [], []
    for c in sorted(SRC.glob("*.c")) + sorted(SRC.glob("*.S")):
        if c.name == "offsets.c":
            continue
        o = out / (c.stem + ".o")
        args = ["clang", *FLAGS, *inc, "-c", str(c), "-o", str(o)]
        subprocess.run(args, check=True, timeout=120)
        objs.append(str(o))
        cmds.append({"directory": str(out), "file": str(c), "arguments": args, "output": str(o)})
    subprocess.run(["aarch64-linux-gnu-ld", "-r", "-o", str(out / "hyp.tmp.o"), *objs], check=True, timeout=60)
    subprocess.run(["aarch64-linux-gnu-objcopy", "--prefix-symbols=__kvm_nvhe_", str(out / "hyp.tmp.o"),
                    str(out / "kvm_nvhe.o")], check=True, timeout=60)
    subprocess.run(["aarch64-linux-gnu-ld", "-e", "0", "--noinhibit-exec", "-o", str(out / "linked.elf"),
                    str(out / "kvm_nvhe.o")], check=True, timeout=60, capture_output=True)
    (out / "compile_commands.json").write_text(json.dumps(cmds))
    return out


def _uses_strx(path) -> bool:
    from elftools.elf.elffile import ELFFile

    with open(path, "rb") as f:
        dw = ELFFile(f).get_dwarf_info()
        cu = next(dw.iter_CUs())
        top = cu.get_top_DIE()
        return top.attributes["DW_AT_producer"].form.startswith("DW_FORM_strx") and \
            b"clang" in top.attributes["DW_AT_producer"].value


@pytest.mark.parametrize("name", ["kvm_nvhe.o", "linked.elf"])
def test_clang_sizes_equal_pahole(clang_hyp, name):
    path = clang_hyp / name
    assert _uses_strx(path), "expected clang's DW_FORM_strx names"
    r = run_cli("size", "--format", "json", "--no-cache", "--no-pahole", str(path))
    assert r.returncode == 0, r.stderr
    structs = {s["name"]: s for s in json.loads(r.stdout)["targets"][0]["structs"]}
    assert {"kvm_vcpu", "kvm_vcpu_arch", "kvm_cpu_context"} <= set(structs)
    oracle = pahole.run(path, list(structs))
    for n, s in structs.items():
        assert oracle[n] is not None and oracle[n].size == s["size"], n
    # the same C, the same ABI: clang's layout equals gcc's (the committed before-dwarf5 fixture)
    gcc = run_cli("size", "--format", "json", "--no-pahole",
                  str(ROOT / "fixtures/mini_hyp/build/before-dwarf5/kvm_nvhe.o"))
    gsz = {s["name"]: s["size"] for s in json.loads(gcc.stdout)["targets"][0]["structs"]}
    assert {n: s["size"] for n, s in structs.items() if n in gsz} == {n: gsz[n] for n in structs if n in gsz}


def test_clang_proof(clang_hyp):
    r = run_cli("callgraph", "--format", "json", "--no-cache", str(clang_hyp))
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["mode"] == "source+binary" and d["stats"]["functions"] > 10
    fields = {l["field"] for l in d["leaks"]}
    assert "arch.mp_state" in fields and not any(f.startswith("arch.ctxt") for f in fields)
    b = run_cli("callgraph", "--format", "json", "--no-cache", "--binary-only", str(clang_hyp / "kvm_nvhe.o"))
    assert b.returncode == 0, b.stderr
    assert json.loads(b.stdout)["stats"]["functions"] > 10
