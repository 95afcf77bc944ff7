"""The source door's byte-level blind spots, closed or made visible (fixtures/mini_hyp/src/rawaccess.c,
guest-regs.S, asm-macros.h).

* C: pointer arithmetic from a root pointer, a member's address cast to another struct type,
  whole-struct copies, memcpy/memset of members, offsetof() as an inline-asm operand: each is a
  field access mapped by byte range with libclang's own layout (checked against DWARF here);
* assembly: each .S preprocessed with its own compile command, assembler macros expanded,
  registers followed; what cannot be followed is an ``Unanalysed`` record.

Lines marked ``unanalysed: KIND`` must carry an Unanalysed record of that kind.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

pytest.importorskip("clang.cindex")

from scopecheck.layout import load_layouts  # noqa: E402
from scopecheck.source import load  # noqa: E402
from scopecheck.source import asm_pp  # noqa: E402
from scopecheck.source.compdb import CompileCommand  # noqa: E402
from test_fixtures import VARIANTS  # noqa: E402
from test_source_facts import BUILD, MINI, ROOTS, SRC, facts  # noqa: E402

UNANALYSED = re.compile(r"/\*\s*unanalysed:\s*([\w-]+)\s*\*/")


def _by_line(accesses, file: str) -> dict:
    out: dict = {}
    for a in accesses:
        if Path(a.file).name == file:
            out.setdefault(a.line, []).append(a)
    return out


def _line_of(file: str, needle: str) -> int:
    for n, line in enumerate((SRC / file).read_text().splitlines(), 1):
        if needle in line:
            return n
    raise AssertionError(f"{needle!r} not in {file}")


@pytest.mark.parametrize("variant", VARIANTS)
def test_unanalysed_markers(variant):
    f, *_ = facts(variant)
    have = {(Path(u.file).name, u.line, u.kind) for u in f.unanalysed}
    want = []
    for p in sorted(SRC.iterdir()):
        if p.suffix not in (".c", ".h", ".S"):
            continue
        for n, line in enumerate(p.read_text().splitlines(), 1):
            want += [(p.name, n, m) for m in UNANALYSED.findall(line)]
    assert {w[2] for w in want} >= {"pointer-arith", "asm-macro"}
    assert set(want) <= have, sorted(set(want) - have)
    # and nothing else in the fixture is left unanalysed
    assert {(fl, ln) for fl, ln, _ in have} == {(fl, ln) for fl, ln, _ in want}


@pytest.mark.parametrize("variant", ["before-dwarf5", "after-dwarf4"])
def test_pointer_arithmetic_and_casts(variant):
    f, *_ = facts(variant)
    acc = _by_line(f.accesses, "rawaccess.c")
    pc = acc[_line_of("rawaccess.c", "arch.ctxt.regs.pc));")]
    assert [(a.root, a.path, a.access, a.size) for a in pc] == [("kvm_vcpu", "arch.ctxt.regs.pc", "read", 8)]
    # the byte offset is the compiler's (offsets.h is gcc's own offsetof)
    assert pc[0].offset == _offsets_h(variant)["VCPU_CTXT_PC"]
    mp = acc[_line_of("rawaccess.c", "vcpu_field_ptr(vcpu, u32, arch.mp_state)")]
    assert [(a.path, a.via) for a in mp] == [("arch.mp_state", "vcpu_field_ptr")]  # the macro is named
    irq = acc[_line_of("rawaccess.c", "t[1] = v;")]  # integer arithmetic, then indexing; anonymous struct
    assert [(a.path, a.access, a.size) for a in irq] == [("arch.timer_irq", "write", 4)]
    xreg = acc[_line_of("rawaccess.c", "return regs[n];")]  # variable index of the element size
    assert [(a.path, a.offset) for a in xreg] == [("arch.ctxt.regs.regs[*]", None)]
    used = acc[_line_of("rawaccess.c", "struct lr_view *)")]  # a member's address as another struct
    assert [(a.path, a.access) for a in used] == [("arch.vgic_cpu.used_lrs", "read")]
    ps = acc[_line_of("rawaccess.c", "struct pc_pstate *)")]
    assert [(a.path, a.access) for a in ps] == [("arch.ctxt.regs.pstate", "write")]


@pytest.mark.parametrize("variant", ["before-dwarf4", "after-dwarf5"])
def test_copies_memset_memcpy_and_asm_operands(variant):
    f, *_ = facts(variant)
    acc = _by_line(f.accesses, "rawaccess.c")
    copy = acc[_line_of("rawaccess.c", "*dst = *src;")]
    members = {"regs", "spsr_abt", "spsr_und", "spsr_irq", "spsr_fiq", "fp_regs", "sys_regs", "__hyp_running_vcpu"}
    assert {a.path for a in copy if a.access == "write"} == members
    assert {a.path for a in copy if a.access == "read"} == members
    assert all(a.root == "kvm_cpu_context" and a.size for a in copy)
    assert sum(a.size for a in copy if a.access == "write") <= _offsets_h(variant)["CPU_CONTEXT_SIZE"]
    ms = [a for a in acc[_line_of("rawaccess.c", "memset(&vcpu->arch.vgic_cpu")] if a.access != "addr"]
    assert [(a.path, a.access, a.via) for a in ms] == [("arch.vgic_cpu", "write", "memset")]
    assert ms[0].size == 84  # one access of the whole member, its full size
    mc = [a for a in acc[_line_of("rawaccess.c", "__builtin_memcpy(&v")] if a.access != "addr"]
    assert [(a.path, a.access, a.size, a.via) for a in mc] == [("arch.cntvoff", "read", 8, "__builtin_memcpy")]
    asm = acc[_line_of("rawaccess.c", 'asm volatile("ldr %0')]
    assert [(a.path, a.access, a.via) for a in asm] == [("arch.cntvoff", "read", "asm")]


def _offsets_h(variant: str) -> dict[str, int]:
    out = {}
    for line in (BUILD / variant / "offsets.h").read_text().splitlines():
        m = re.match(r"#define (\w+) (-?\d+) ", line)
        if m:
            out[m.group(1)] = int(m.group(2))
    return out


@pytest.mark.parametrize("variant", ["before-dwarf5", "after-dwarf5"])
def test_clang_layout_is_the_dwarf_layout(variant):
    import clang.cindex as ci

    from scopecheck.source.clang_layout import layout_of
    from scopecheck.source.compdb import clang_args

    cmd = next(c for c in load(BUILD / variant) if c.file.endswith("rawaccess.c"))
    tu = ci.Index.create().parse(cmd.file, args=clang_args(cmd))
    types = {c.spelling: c.type for c in tu.cursor.get_children()
             if c.kind == ci.CursorKind.STRUCT_DECL and c.is_definition()}
    names = ["kvm_vcpu", "kvm_cpu_context", "pkvm_hyp_vcpu", "kvm_host_data"]
    dwarf = load_layouts(BUILD / variant / "kvm_nvhe.o", names, use_cache=False)

    def rows(lay):
        return [(m.path, m.offset, m.size, m.array_dims, m.element_size, m.bit_offset, m.bit_size)
                for m in lay.walk()]

    for n in names:
        mine = layout_of(types[n], n)
        assert mine.size == dwarf[n].size
        assert rows(mine) == rows(dwarf[n]), n


def test_paths_for_range():
    import clang.cindex as ci

    from scopecheck.source.clang_layout import array_path, layout_of, paths_for_range
    from scopecheck.source.compdb import clang_args
    from scopecheck.source.raw_access import cover, member_at

    cmd = next(c for c in load(BUILD / "before-dwarf5") if c.file.endswith("rawaccess.c"))
    tu = ci.Index.create().parse(cmd.file, args=clang_args(cmd))
    t = next(c.type for c in tu.cursor.get_children() if c.spelling == "kvm_vcpu" and c.is_definition())
    lay = layout_of(t, "kvm_vcpu")
    o = _offsets_h("before-dwarf5")
    assert paths_for_range(lay, o["VCPU_CTXT_PC"], 8) == ["arch.ctxt.regs.pc"]
    assert paths_for_range(lay, o["VCPU_CONTEXT"], o["CPU_CONTEXT_SIZE"]) == ["arch.ctxt"]
    assert paths_for_range(lay, o["VCPU_LR_PRIO_1_2"], 2) == ["arch.vgic_cpu.lr_prio[1][2]"]
    # an anonymous union: every alternative the bytes are
    assert paths_for_range(lay, o["VCPU_PVTIME_HI"], 4) == ["arch.pvtime_raw", "arch.pvtime_hi"]
    assert cover(lay, o["VCPU_CTXT_X0"] + 8, 16) == ["arch.ctxt.regs.regs[1]", "arch.ctxt.regs.regs[2]"]
    assert cover(lay, 0, lay.size)[:3] == ["kvm", "cpu", "vcpu_id"]
    assert array_path(lay, o["VCPU_CTXT_X19"], 8) == "arch.ctxt.regs.regs[*]"
    assert array_path(lay, o["VCPU_CTXT_X19"], 1) is None  # char-sized steps are no index into u64[]
    assert member_at(lay, o["VCPU_CONTEXT"], "kvm_cpu_context") == "arch.ctxt"
    with pytest.raises(ValueError):
        paths_for_range(lay, lay.size - 4, 8)


# ---------------------------------------------------------------- assembly through cpp


@pytest.mark.parametrize("variant", ["before-dwarf4", "after-dwarf5"])
def test_preprocessed_asm_on_the_fixture(variant):
    f, asm, *_ = facts(variant)
    gr = _by_line(asm, "guest-regs.S")
    o = _offsets_h(variant)
    ldp = gr[_line_of("guest-regs.S", "#CPU_XREG_OFFSET(2)]")]
    assert [(a.path, a.offset, a.size, a.via) for a in ldp] == [
        ("arch.ctxt.regs.regs[2]", o["VCPU_CONTEXT"] + 16, 8, "CPU_USER_PT_REGS"),
        ("arch.ctxt.regs.regs[3]", o["VCPU_CONTEXT"] + 24, 8, "CPU_USER_PT_REGS")]
    save = gr[_line_of("guest-regs.S", "save_pair x18")]  # an assembler macro, expanded where it is used
    assert [(a.path, a.access, a.via) for a in save] == [("arch.ctxt.regs.regs[4]", "write", "save_pair"),
                                                         ("arch.ctxt.regs.regs[5]", "write", "save_pair")]
    assert all(a.function[0] == "__raw_enter" and a.origin == "asm" for a in asm if a.file == "src/guest-regs.S")
    u = [x for x in f.unanalysed if x.kind == "asm-macro"]
    assert [(Path(x.file).name, x.function[0]) for x in u] == [("guest-regs.S", "__raw_enter")]
    assert "save_if_enabled" in u[0].detail and "MINI_HYP_SAVE_ENABLED" in u[0].detail


def _asm(tmp_path, body: str, header: str = "", extra_args=()) -> asm_pp.Result:
    inc = tmp_path / "inc"
    inc.mkdir(exist_ok=True)
    (inc / "asm-offsets.h").write_text(
        "#define CPU_USER_PT_REGS 0 /* offsetof(struct kvm_cpu_context, regs) */\n"
        "#define VCPU_CONTEXT 64 /* offsetof(struct kvm_vcpu, arch.ctxt) */\n"
        "#define VCPU_FLAGS 8 /* offsetof(struct kvm_vcpu, flags) */\n")
    (inc / "macros.h").write_text(header)
    s = tmp_path / "t.S"
    s.write_text('#include "asm-offsets.h"\n#include "macros.h"\n' + body)
    c = tmp_path / "t.c"
    c.write_text("typedef unsigned long u64;\n"
                 "struct user_pt_regs { u64 regs[31]; u64 sp; };\n"
                 "struct kvm_cpu_context { struct user_pt_regs regs; u64 x; };\n"
                 "struct kvm_vcpu { u64 a; u64 flags; u64 pad[6]; struct { struct kvm_cpu_context ctxt; } arch; };\n"
                 "struct kvm_cpu_context host_ctxt;\n"
                 "u64 __enter(struct kvm_vcpu *vcpu, struct kvm_cpu_context *host);\n")
    gcc = "aarch64-linux-gnu-gcc"
    if not any((Path(d) / gcc).exists() for d in os.environ.get("PATH", "").split(os.pathsep)):
        pytest.skip(f"{gcc} not installed")
    s_cmd = CompileCommand(file=str(s), directory=str(tmp_path),
                           arguments=(gcc, "-Wp,-MMD,t.d", "-D__ASSEMBLY__", "-Iinc", *extra_args, "-c", "t.S",
                                      "-o", "t.o"))
    c_cmd = CompileCommand(file=str(c), directory=str(tmp_path), arguments=("gcc", "-c", "t.c"))
    return asm_pp.asm_facts([s_cmd], inc / "asm-offsets.h", c_cmd, source_root=tmp_path, cache=False)


def test_asm_macros_registers_and_prototypes(tmp_path):
    hdr = ("#define CPU_XREG_OFFSET(x) (CPU_USER_PT_REGS + 8 * (x))\n"
           ".macro save_regs ctxt, first=0, last:req\n"
           "  .irp n, \\first, \\last\n"
           "  str x\\n, [\\ctxt, #CPU_XREG_OFFSET(\\n)]\n"
           "  .endr\n"
           ".endm\n"
           ".macro maybe ctxt, kind\n"
           "  .ifc \\kind, load\n"
           "  ldr x3, [\\ctxt, #CPU_XREG_OFFSET(3)]\n"
           "  .else\n"
           "  str x3, [\\ctxt, #CPU_XREG_OFFSET(3)]\n"
           "  .endif\n"
           ".endm\n")
    body = ("\t.text\n\t.globl __enter\n__enter:\n"
            "\tldr x2, [x0, #16]\n"                      # x0: struct kvm_vcpu * by the C prototype
            "\tadd x9, x0, #VCPU_CONTEXT\n"
            "\tsave_regs x9, 1, 2\n"
            "\tmaybe x9, load\n"
            "\tmaybe x9, store\n"
            "\t.rept 2\n\tldr x4, [x1]\n\t.endr\n"    # x1: struct kvm_cpu_context *
            "\tsave_regs x9\n"                          # a :req argument missing
            "\tadrp x5, host_ctxt\n\tadd x5, x5, :lo12:host_ctxt\n\tstr xzr, [x5, #CPU_XREG_OFFSET(7)]\n"
            "\tldr x6, [x0, x2]\n"                      # a register offset from a root pointer
            "\tbl somewhere\n\tldr x7, [x0, #16]\n"     # after a call x0 is unknown
            "\tret\n")
    r = _asm(tmp_path, body, hdr)
    assert not r.diagnostics
    got = [(a.line, a.root, a.path, a.access, a.via) for a in r.accesses if a.access != "addr"]
    assert got == [
        (6, "kvm_vcpu", "pad[0]", "read", None),
        (8, "kvm_vcpu", "arch.ctxt.regs.regs[1]", "write", "save_regs"),
        (8, "kvm_vcpu", "arch.ctxt.regs.regs[2]", "write", "save_regs"),
        (9, "kvm_vcpu", "arch.ctxt.regs.regs[3]", "read", "maybe"),
        (10, "kvm_vcpu", "arch.ctxt.regs.regs[3]", "write", "maybe"),
        (12, "kvm_cpu_context", "regs.regs[0]", "read", None),
        (12, "kvm_cpu_context", "regs.regs[0]", "read", None),
        (17, "kvm_cpu_context", "regs.regs[7]", "write", "CPU_USER_PT_REGS"),
    ]
    assert {a.function for a in r.accesses} == {("__enter", "t.S", 5)}
    kinds = sorted((u.kind, u.line) for u in r.unanalysed)
    assert kinds == [("asm-macro", 14), ("pointer-arith", 18)]


def test_cpp_command_and_shadow_header(tmp_path):
    cmd = CompileCommand(file=str(tmp_path / "x.S"), directory=str(tmp_path),
                         arguments=("gcc", "-Wp,-MMD,a/.x.o.d", "-nostdinc", "-I", "inc", "-Igen", "-D__ASSEMBLY__",
                                    "-c", "-o", "x.o", "x.S"))
    argv = asm_pp.cpp_command(cmd, "/shadow")
    assert argv[:2] == ["gcc", "-I/shadow"] and argv[-2:] == ["-E", cmd.file]
    assert not {"-c", "-o", "x.o", "x.S", "-Wp,-MMD,a/.x.o.d"} & set(argv)
    assert {"-nostdinc", "-D__ASSEMBLY__", "-Igen"} <= set(argv)
    (tmp_path / "gen" / "generated").mkdir(parents=True)
    hdr = tmp_path / "gen" / "generated" / "asm-offsets.h"
    assert asm_pp.shadow_name(cmd, str(hdr)) == "generated/asm-offsets.h"
    text = asm_pp.shadow_header("#define VCPU_CONTEXT 2048 /* offsetof(struct kvm_vcpu, arch.ctxt) */\n"
                                "#define VCPU_SIZE 9000 /* sizeof(struct kvm_vcpu) */\n")
    assert "(__scopecheck_c_VCPU_CONTEXT + 2048)" in text and "#define VCPU_SIZE 9000 " in text
    assert asm_pp.immediate("#(__scopecheck_c_A + 2048 + 8 * (3))", {"A": ("r", "p", 2048)}) == (2072, "A")
    assert asm_pp.evaluate("(1 << 3) | 0x10") == 24 and asm_pp.evaluate("sym + 1") is None
    assert asm_pp.evaluate("9**9**9") is None


def test_kbuild_cmd_files(tmp_path):
    d = tmp_path / "arch/arm64/kvm/hyp/nvhe"
    d.mkdir(parents=True)
    (d / ".host.nvhe.o.cmd").write_text(
        "savedcmd_arch/arm64/kvm/hyp/nvhe/host.nvhe.o := aarch64-linux-gnu-gcc -Wp,-MMD,x.d -D__ASSEMBLY__ "
        "-I./include -c -o arch/arm64/kvm/hyp/nvhe/host.nvhe.o /src/arch/arm64/kvm/hyp/nvhe/host.S\n\n"
        "source_arch/arm64/kvm/hyp/nvhe/host.nvhe.o := /src/arch/arm64/kvm/hyp/nvhe/host.S\n")
    (d / ".switch.nvhe.o.cmd").write_text("cmd_x := gcc -c -o switch.nvhe.o switch.c\n")
    (tmp_path / "arch/arm64/kvm/hyp/.entry.o.cmd").write_text("cmd_y := gcc -c -o entry.o /src/entry.S\n")
    cmds = asm_pp.kbuild_asm_commands(tmp_path, pattern=".*.nvhe.o.cmd")
    assert [(c.file, c.directory) for c in cmds] == [("/src/arch/arm64/kvm/hyp/nvhe/host.S", str(tmp_path))]
    assert cmds[0].arguments[0] == "aarch64-linux-gnu-gcc" and cmds[0].arguments[-1].endswith("host.S")


def test_preprocessor_failure_is_reported_not_silent(tmp_path):
    s = tmp_path / "bad.S"
    s.write_text('#include "missing.h"\n')
    cmd = CompileCommand(file=str(s), directory=str(tmp_path), arguments=("aarch64-linux-gnu-gcc", "-c", "bad.S"))
    if not any((Path(d) / "aarch64-linux-gnu-gcc").exists() for d in os.environ.get("PATH", "").split(os.pathsep)):
        pytest.skip("aarch64-linux-gnu-gcc not installed")
    r = asm_pp.asm_facts([cmd], None, None, source_root=tmp_path, cache=False)
    assert r.diagnostics and "missing.h" in r.diagnostics[0]
    assert [(u.kind, u.file) for u in r.unanalysed] == [("asm-file", "bad.S")]
    nope = CompileCommand(file=str(s), directory=str(tmp_path), arguments=("no-such-compiler-here", "-c", "bad.S"))
    r = asm_pp.asm_facts([nope], None, None, source_root=tmp_path, cache=False)
    assert "not found" in r.diagnostics[0] and r.unanalysed[0].kind == "asm-file"


def test_asm_cache_warm_run(tmp_path, monkeypatch):
    monkeypatch.setenv("SCOPECHECK_CACHE", str(tmp_path / "cache"))
    cmds = load(BUILD / "after-dwarf5")
    s = [c for c in cmds if c.is_asm]
    sw = next(c for c in cmds if c.file.endswith("switch.c"))
    cold = asm_pp.asm_facts(s, BUILD / "after-dwarf5" / "offsets.h", sw, roots=ROOTS, source_root=MINI)
    assert cold.accesses and list((tmp_path / "cache" / "asm").glob("*.index.json"))

    def boom(*a, **k):
        raise AssertionError("preprocessed again on a warm run")

    monkeypatch.setattr(asm_pp, "preprocess", boom)
    warm = asm_pp.asm_facts(s, BUILD / "after-dwarf5" / "offsets.h", sw, roots=ROOTS, source_root=MINI)
    assert warm.accesses == cold.accesses and warm.unanalysed == cold.unanalysed
    json.loads(next((tmp_path / "cache" / "asm").glob("*.index.json")).read_text())


@pytest.mark.parametrize("variant", ["before-dwarf5", "after-dwarf4"])
def test_asm_accesses_agree_with_the_assembled_objects(variant):
    """Cross-check with the machine code: at every line the preprocessed-assembly reading reports
    loads/stores of a root, the assembler's line table (``objdump -d -l``) has as many register
    transfers of the same direction (ldp/stp: two), macro expansions included."""
    import shutil
    import subprocess

    tool = "aarch64-linux-gnu-objdump"
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} not installed")
    f, asm, *_ = facts(variant)
    for s in ("entry.S", "guest-regs.S"):
        obj = BUILD / variant / (s[:-2] + ".o")
        out = subprocess.run([tool, "-d", "-l", str(obj)], capture_output=True, text=True, check=True).stdout
        machine: dict = {}
        line = None
        for row in out.splitlines():
            m = re.match(r"^\S*src/" + re.escape(s) + r":(\d+)", row)
            if m:
                line = int(m.group(1))
                continue
            m = re.match(r"^\s+[0-9a-f]+:\s+[0-9a-f]{8}\s+(\w+)\s+(.*)$", row)
            if m and line is not None and "[" in m.group(2) and "[sp" not in m.group(2):
                op = m.group(1)
                kind = "read" if op.startswith("ld") else "write" if op.startswith("st") else None
                if kind:
                    machine.setdefault((line, kind), 0)
                    machine[(line, kind)] += 2 if op in ("ldp", "stp") else 1
        mine: dict = {}
        for a in asm:
            if a.file == f"src/{s}" and a.access in ("read", "write"):
                mine[(a.line, a.access)] = mine.get((a.line, a.access), 0) + 1
        assert mine and mine == {k: v for k, v in machine.items() if k in mine}, (s, mine, machine)
        # and every load/store the machine code has on a line we report from is accounted for
        lines = {ln for ln, _ in mine}
        assert {k for k in machine if k[0] in lines} == set(mine), (s, mine, machine)
        # a load/store we report nothing for is listed as unanalysed (the .if-guarded macro body)
        listed = {u.line for u in f.unanalysed if u.file == f"src/{s}"}
        assert {ln for ln, _ in machine} <= lines | listed, (s, sorted(machine), sorted(lines | listed))


def test_asm_reader_survives_mangled_input():
    """Random edits of macro-heavy assembly: no exception, bounded time (unparsable lines are listed)."""
    import random

    base = ("# 1 \"t.S\"\n.macro m a, b=1, c:req, d:vararg\n ldr \\a, [\\c, #(__scopecheck_c_X + 8)]\n"
            " .if \\b\n m \\a, 0, \\c\n .endif\n.endm\n .globl f\nf:\n m x1, 1, x2\n .rept 3\n"
            " ldp x1, x2, [x3, #16]!\n .endr\n .irp n, 1, 2\n str x\\n, [x0, #\\n]\n .endr\n"
            " adrp x5, sym\n add x5, x5, :lo12:sym\n ldr x6, [x5, x7, lsl #3]\n")
    pieces = list("[]#,.\\()x0123:!; \n") + [".if ", ".endm\n", ".macro z\n", ".rept 99999\n", ".endr\n"]
    rnd = random.Random(11)
    for _ in range(40):
        s = list(base)
        for _ in range(rnd.randint(1, 20)):
            j = rnd.randrange(len(s))
            op = rnd.random()
            if op < 0.4:
                del s[j]
            elif op < 0.8:
                s.insert(j, rnd.choice(pieces))
            else:
                s[j:j] = s[rnd.randrange(len(s)):][:30]
        res = asm_pp.Result()
        asm_pp.analyse_file("".join(s), "", "t.S", {"X": ("kvm_vcpu", "a", 8)}, {}, {"sym": "kvm_vcpu"},
                            {"f": {"x0": "kvm_vcpu"}}, res, lambda x: x)


def test_proof_without_the_compiler_says_so_and_keeps_nothing_of_it(tmp_path):
    """No cross compiler on PATH: the hyp .S files cannot be preprocessed. The proof lists each as
    unanalysed evidence with a diagnostic (it once fell back to the regex reading silently and lost
    ~200 asm accesses), and the failed run is not cached for the next run, which has the compiler."""
    import json
    import sys

    from build_cache import pkvm_tiny_61
    from conftest import run_cli

    out = pkvm_tiny_61().out
    env = {"SCOPECHECK_CACHE": str(tmp_path / "cache"), "PATH": str(Path(sys.executable).parent)}
    r = run_cli("callgraph", str(out), "--format", "json", "--quiet", env=env, timeout=900)
    assert r.returncode in (0, 1), r.stderr
    bare = json.loads(r.stdout)
    assert bare["evidence"]["unanalysed_kinds"].get("asm-file", 0) >= 1
    assert any("not found" in d for d in bare["diagnostics"]), bare["diagnostics"][:3]
    env["PATH"] = os.environ["PATH"]
    r = run_cli("callgraph", str(out), "--format", "json", "--quiet", env=env, timeout=900)
    full = json.loads(r.stdout)
    assert "asm-file" not in full["evidence"]["unanalysed_kinds"]
    assert full["evidence"]["counts"]["source_only"] > bare["evidence"]["counts"]["source_only"]
