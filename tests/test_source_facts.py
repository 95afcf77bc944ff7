"""The source door on the mini-hyp fixture: libclang facts and asm-offsets uses against the markers.

Root convention (fixtures/README.md): the root is the outermost struct the accessed object
is known to lie in within the function. The source door follows that for its ``roots``
(kvm_vcpu, kvm_vcpu_arch, kvm_cpu_context, pkvm_hyp_vcpu, vcpu_hyp_state by default) and
for structs reached from them through a loaded pointer (``vcpu->kvm`` -> root ``kvm``).
The fixture also marks accesses rooted at a global (``kvm_host_data``) and at an inline
helper's own parameter (``hyp_spinlock_t``), so these tests add both to the roots.

Enum indexes: the source door writes constant indexes as numbers (``sys_regs[17]``, as
the binary door will); a marker's ``[TPIDR_EL1]`` is turned into its value first.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("clang.cindex")

from scopecheck.errors import ScopecheckError  # noqa: E402
from scopecheck.source import (DEFAULT_ROOTS, STATS, asm_accesses, clang_args, enum_constants,  # noqa: E402
                               load, parse_asm_offsets, source_facts)
from scopecheck.source.asm_pp import asm_facts  # noqa: E402
from scopecheck.source.compdb import CompileCommand  # noqa: E402
from test_fixtures import VARIANTS, layout, parse_markers  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MINI = REPO / "fixtures" / "mini_hyp"
SRC = MINI / "src"
BUILD = MINI / "build"
ROOTS = DEFAULT_ROOTS + ("kvm_host_data", "hyp_spinlock_t")

_FACTS: dict = {}


def facts(variant: str):
    if variant not in _FACTS:
        cmds = load(BUILD / variant)
        t0 = time.perf_counter()
        f = source_facts(cmds, roots=ROOTS, cache=False)
        c_time = time.perf_counter() - t0
        sw = next(c for c in cmds if c.file.endswith("switch.c"))
        enums = enum_constants(sw)
        res = asm_facts([c for c in cmds if c.is_asm], BUILD / variant / "offsets.h", sw, roots=ROOTS,
                        source_root=MINI, cache=False)
        assert not res.diagnostics, res.diagnostics
        asm = res.accesses
        f.unanalysed.extend(res.unanalysed)
        _FACTS[variant] = (f, asm, enums, c_time)
    return _FACTS[variant]


def markers() -> list[dict]:
    return [m for p in sorted(SRC.iterdir()) if p.suffix in {".c", ".h", ".S"} for m in parse_markers(p)]


def for_variant(ms, variant):
    return [m for m in ms if m.get("layout") in (None, layout(variant))]


def want_path(path: str, enums: dict) -> str:
    return re.sub(r"\[([A-Za-z_]\w*)\]", lambda m: f"[{enums[m.group(1)]}]", path)


# ---------------------------------------------------------------- markers


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_access_marker_is_found(variant):
    f, asm, enums, _ = facts(variant)
    assert not f.diagnostics
    have = {(Path(a.file).name, a.line, a.root, a.path, a.access) for a in f.accesses + asm}
    # an access marked binary-only is the machine code's alone (the source walk cannot see it)
    ms = [m for m in for_variant(markers(), variant) if m["kind"] == "access" and m["root"]
          and "expect-evidence: binary-only" not in m["text"]]
    missing = [m["text"].strip() + f"  [{m['root']}:{m['path']} {m['access']}]" for m in ms
               if (m["file"], m["line"], m["root"], want_path(m["path"], enums), m["access"]) not in have]
    assert not missing, f"{len(ms) - len(missing)}/{len(ms)} markers found; missing:\n" + "\n".join(missing)
    assert len(ms) > 60


@pytest.mark.parametrize("variant", ["before-dwarf5", "after-dwarf5"])
def test_marker_kinds_and_sources(variant):
    f, asm, enums, _ = facts(variant)
    by_line = {(Path(a.file).name, a.line, a.root, a.path): a for a in f.accesses}
    # the never-called static inline is still found in source
    dead = by_line[("inline.h", 56, "kvm_vcpu", "arch.mp_state")]
    assert dead.function[0] == "vcpu_is_stopped"
    fn = next(x for x in f.functions if x.name == "vcpu_is_stopped")
    assert fn.is_inline and fn.is_static and fn.file == "src/inline.h"
    # macros are named, on the line where they are expanded
    tp = by_line[("switch.c", 58, "kvm_vcpu", f"arch.ctxt.sys_regs[{enums['TPIDR_EL1']}]")]
    assert tp.via == "__vcpu_sys_reg" and tp.access == "read"
    assert by_line[("switch.c", 58, "kvm_vcpu", "arch.ctxt.regs.regs[*]")].via == "vcpu_gp_regs"
    assert by_line[("inline.h", 50, "kvm_vcpu", "arch.ctxt.regs.pc")].access == "rw"
    # the alias pointer keeps the outer root and is named
    wfx = by_line[("switch.c", 79, "kvm_vcpu", "arch.mp_state")]
    assert wfx.access == "write" and wfx.via == "a"
    # a pointer loaded from memory starts a new root
    assert ("switch.c", 69, "kvm", "arch.mmu.vttbr") in by_line
    assert ("switch.c", 69, "kvm_vcpu", "kvm") in by_line
    # embedding: rooted at pkvm_hyp_vcpu
    assert ("pkvm.c", 18, "pkvm_hyp_vcpu", "vcpu.arch.ctxt.regs.pc") in by_line
    # &x is "addr", not a load
    assert by_line[("switch.c", 117, "kvm_vcpu", "arch.ctxt")].access == "addr"
    # functions live in their own file with positions
    assert all(a.col and a.file for a in f.accesses)


@pytest.mark.parametrize("variant", VARIANTS)
def test_escalation_marker(variant):
    f, *_ = facts(variant)
    ms = [m for m in markers() if m["kind"] == "escalation"]
    assert ms
    for m in ms:
        frm, to = re.search(r"(\w+)->(\w+)", m["text"].split("escalation", 1)[1]).groups()
        hits = [e for e in f.escalations if Path(e.file).name == m["file"] and e.line == m["line"]]
        assert [(e.from_root, e.to_root, e.via) for e in hits] == [(frm, to, "container_of")]
    assert len(f.escalations) == len(ms)  # no false escalations


@pytest.mark.parametrize("variant", ["before-dwarf4", "after-dwarf4"])
def test_tables_indirect_calls_and_static_dups(variant):
    f, *_ = facts(variant)
    fns = {}
    for fn in f.functions:
        fns.setdefault(fn.name, []).append(fn)
    # handlers only reachable through a table: address taken, where = the table
    for m in markers():
        if m["kind"] == "fn" and m["via"]:
            at = [a for a in f.address_taken if a.function == m["function"]]
            assert [a.where for a in at] == [m["via"]], m["function"]
            assert at[0].type == fns[m["function"]][0].type
    # the indirect call through host_hcall[] has the handlers' type
    call = next(c for c in f.calls if c.indirect and c.via == "host_hcall[]")
    handlers = {fns[a.function][0].type for a in f.address_taken if a.where == "host_hcall"}
    assert handlers == {call.target_type} == {"void (struct kvm_cpu_context *)"}
    exit_call = next(c for c in f.calls if c.indirect and c.via == "hyp_exit_handlers[]")
    assert exit_call.target_type == fns["kvm_hyp_handle_wfx"][0].type
    # same-named statics stay apart
    dups = fns["__sync_state"]
    assert sorted(d.file for d in dups) == ["src/switch.c", "src/sysreg-sr.c"]
    keys = {d.key for d in dups}
    roots = {k: {a.root for a in f.accesses if a.function == k} for k in keys}
    assert roots[next(k for k in keys if "switch" in k[1])] >= {"kvm_vcpu", "kvm_guest_debug_arch"}
    assert roots[next(k for k in keys if "sysreg" in k[1])] == {"kvm_cpu_context"}
    # direct calls, static inlines deduplicated across translation units
    assert any(c.callee == "__sysreg_restore_state_nvhe" and c.caller[0] == "__kvm_vcpu_run" for c in f.calls)
    assert len(fns["hyp_spin_lock"]) == 1 and len(fns["kvm_skip_instr"]) == 1


@pytest.mark.parametrize("variant", VARIANTS)
def test_asm_offsets(variant):
    consts = parse_asm_offsets(BUILD / variant / "offsets.h")
    assert consts["VCPU_CTXT_PC"] == ("kvm_vcpu", "arch.ctxt.regs.pc", 336)
    assert "VCPU_SIZE" not in consts  # sizeof lines are skipped
    assert consts["VCPU_LR_PRIO_1_2"][1] == "arch.vgic_cpu.lr_prio[1][2]"
    _, asm, _, _ = facts(variant)
    pc = [a for a in asm if a.path == "arch.ctxt.regs.pc"]
    assert {(a.access, a.function[0], a.via) for a in pc} == {("read", "__guest_enter", "VCPU_CTXT_PC"),
                                                              ("write", "__guest_exit", "VCPU_CTXT_PC")}
    assert all(a.origin == "asm" and a.file in ("src/entry.S", "src/guest-regs.S") for a in asm)
    run = next(a for a in asm if a.path.endswith("__hyp_running_vcpu"))
    assert (run.root, run.path, run.offset) == ("kvm_host_data", "host_ctxt.__hyp_running_vcpu",
                                                consts["CPU_CTXT_HYP_RUNNING"][2])


def test_asm_macro_constant(tmp_path):
    hdr = tmp_path / "asm-offsets.h"
    hdr.write_text("#define CPU_USER_PT_REGS 0 /* offsetof(struct kvm_cpu_context, regs) */\n"
                   "#define CPU_SIZE 64 /* sizeof(struct kvm_cpu_context) */\n")
    s = tmp_path / "host.S"
    s.write_text("#define CPU_XREG_OFFSET(x)\t(CPU_USER_PT_REGS + 8*x)\n"
                 "SYM_FUNC_START(__host_exit)\n"
                 "\tldp\tx2, x3, [x29, #CPU_XREG_OFFSET(2)]\n"
                 "\tret\n")
    acc = asm_accesses([s], parse_asm_offsets(hdr))
    assert [(a.root, a.path, a.access, a.offset, a.via, a.function[0], a.line) for a in acc] == \
        [("kvm_cpu_context", "regs", "read", 16, "CPU_XREG_OFFSET(2)", "__host_exit", 3)]


# ---------------------------------------------------------------- compile_commands.json


def test_compdb_forms_and_args(tmp_path):
    cmds = load(BUILD / "after-dwarf5")
    sw = next(c for c in cmds if c.file.endswith("src/switch.c"))
    assert sw.directory == str(MINI) and Path(sw.file).is_file()
    args = clang_args(sw)
    assert args[:2] == ["-std=gnu11", "-nostdinc"]
    assert ["-I", str(SRC)] == args[2:4] and "-DMINI_HYP_AFTER" in args
    assert args[-3:] == ["--target=aarch64-linux-gnu", "-ferror-limit=0", "-Wno-everything"]
    assert not any(a in args for a in ("-O2", "-c", "-o", "-Werror", sw.file))
    # the "command" form, joined and separate option values
    (tmp_path / "compile_commands.json").write_text(json.dumps([{
        "directory": str(tmp_path), "file": "a.c",
        "command": "gcc -Iinc -I /abs -include x.h -D A=1 -DB='\"s\"' -U C -isystem sys -Os -c a.c -o a.o"}]))
    c = load(tmp_path)[0]
    assert c.file == str(tmp_path / "a.c")
    assert clang_args(c)[:-3] == ["-I", str(tmp_path / "inc"), "-I", "/abs", "-include", str(tmp_path / "x.h"),
                                  "-DA=1", '-DB="s"', "-UC", "-isystem", str(tmp_path / "sys")]


@pytest.mark.parametrize("content, msg", [
    ("{not json", "not valid JSON"),
    ('{"a": 1}', "expected a JSON list"),
    ('[{"file": "a.c", "arguments": ["gcc"]}]', "no 'directory'"),
    ('[{"directory": ".", "file": "a.c"}]', "neither an 'arguments' list nor a 'command'"),
    ('[3]', "not an object"),
])
def test_compdb_malformed(tmp_path, content, msg):
    p = tmp_path / "compile_commands.json"
    p.write_text(content)
    with pytest.raises(ScopecheckError, match=re.escape(msg)):
        load(p)


def test_compdb_missing(tmp_path):
    with pytest.raises(ScopecheckError, match="no compile_commands.json"):
        load(tmp_path)


def test_parse_errors_are_diagnostics(tmp_path):
    (tmp_path / "bad.c").write_text("struct kvm_vcpu { int x; };\nint f(struct kvm_vcpu *v) { return v->y; }\n")
    cmds = [CompileCommand(file=str(tmp_path / "bad.c"), directory=str(tmp_path), arguments=("gcc",)),
            CompileCommand(file=str(tmp_path / "missing.c"), directory=str(tmp_path), arguments=("gcc",))]
    f = source_facts(cmds, cache=False)
    assert any(d.startswith("bad.c:2: ") and "y" in d for d in f.diagnostics)
    assert any(d.startswith("missing.c") for d in f.diagnostics)
    assert [fn.name for fn in f.functions] == ["f"]


def test_import_is_light():
    code = ("import sys, scopecheck.source; "
            "print('clang' in sys.modules or 'clang.cindex' in sys.modules, 'scopecheck.binary' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.split() == ["False", "False"]


# ---------------------------------------------------------------- cache


def _copy_fixture(tmp_path, variant="after-dwarf5") -> Path:
    dst = tmp_path / "mini_hyp"
    shutil.copytree(SRC, dst / "src")
    (dst / "build" / variant).mkdir(parents=True)
    for n in ("compile_commands.json", "offsets.h"):
        shutil.copy(BUILD / variant / n, dst / "build" / variant / n)
    return dst / "build" / variant


def test_cache_warm_run_and_header_change(tmp_path, monkeypatch):
    monkeypatch.setenv("SCOPECHECK_CACHE", str(tmp_path / "cache"))
    cmds = load(_copy_fixture(tmp_path))
    n_c = sum(1 for c in cmds if c.file.endswith(".c"))
    before = STATS.copy()
    cold = source_facts(cmds, roots=ROOTS)
    assert STATS["parsed"] - before["parsed"] == n_c
    before = STATS.copy()
    warm = source_facts(cmds, roots=ROOTS)
    assert STATS["parsed"] == before["parsed"] and STATS["cache_hits"] - before["cache_hits"] == n_c
    assert warm == cold
    # an included header changes: the translation units including it are parsed again
    inline = tmp_path / "mini_hyp" / "src" / "inline.h"
    inline.write_text(inline.read_text().replace("vcpu_gp_regs(vcpu)->pc += 4;", "vcpu_gp_regs(vcpu)->pc += 8;"))
    before = STATS.copy()
    again = source_facts(cmds, roots=ROOTS)
    reparsed = STATS["parsed"] - before["parsed"]
    assert reparsed == n_c - 1  # offsets.c does not include inline.h
    assert again.accesses == cold.accesses
    # a new scopecheck (another code fingerprint) never reads what this one cached
    from scopecheck import cache

    monkeypatch.setattr(cache, "code_fingerprint", lambda: "another-scopecheck")
    before = STATS.copy()
    assert source_facts(cmds, roots=ROOTS).accesses == again.accesses
    assert STATS["parsed"] - before["parsed"] == n_c
    monkeypatch.undo()
    monkeypatch.setenv("SCOPECHECK_CACHE", str(tmp_path / "cache"))
    # corrupt whole-program entries alone (one per state above): the per-TU entries answer,
    # nothing is parsed
    wholes = list((tmp_path / "cache" / "source").glob("*.whole.msgpack"))
    assert len(wholes) == 3
    for p in wholes:
        p.write_text("{corrupt")
    before = STATS.copy()
    assert source_facts(cmds, roots=ROOTS) == cold
    assert STATS["parsed"] == before["parsed"]
    # a corrupt cache file is ignored and rewritten
    entries = list((tmp_path / "cache" / "source").glob("*.facts.msgpack"))
    assert entries and not list((tmp_path / "cache" / "source").glob("*.pickle"))
    for p in entries + list((tmp_path / "cache" / "source").glob("*.whole.msgpack")):
        p.write_text("{corrupt")
    before = STATS.copy()
    assert source_facts(cmds, roots=ROOTS) == cold
    assert STATS["parsed"] - before["parsed"] == n_c
    before = STATS.copy()
    source_facts(cmds, roots=ROOTS)
    assert STATS["parsed"] == before["parsed"]


def test_files_filter_and_progress(tmp_path, monkeypatch):
    monkeypatch.setenv("SCOPECHECK_CACHE", str(tmp_path / "cache"))
    seen = []
    f = source_facts(load(BUILD / "before-dwarf5"), files=["src/sysreg-sr.c"], progress=seen.append)
    assert [Path(x).name for x in f.files] == ["sysreg-sr.c"] and len(seen) == 1
    assert {fn.file for fn in f.functions} >= {"src/sysreg-sr.c", "src/inline.h"}


def test_timing():
    _, _, _, t = facts("before-dwarf5")
    assert t < 10
