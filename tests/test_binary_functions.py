"""Hyp functions, inlined instances and call edges (scopecheck.binary.functions).

The fixture's sources say what must be found (``expect-fn:`` markers, see
fixtures/README.md); line numbers are read from the sources at test time.
"""

from __future__ import annotations

import re
import time

import pytest

from conftest import FIXTURE_BUILD, fixture_variants
from scopecheck.binary.functions import hyp_functions, read_symbols
from scopecheck.binary.elf import ElfImage

VARIANTS = fixture_variants()
SRC = FIXTURE_BUILD.parent / "src"
FN_MARK = re.compile(r"expect-fn:((?: [\w=-]+)+)")


def _definition_line(file: str, name: str) -> int:
    """The line defining C function ``name`` (or the asm label) in src/``file``."""
    pat = re.compile(rf"^{re.escape(name)}:" if file.endswith(".S") else rf"^[^;#/]*\b{re.escape(name)}\s*\(")
    for i, line in enumerate((SRC / file).read_text().splitlines(), 1):
        code = re.sub(r"/\*.*?\*/", "", line).rstrip()  # a call with a trailing marker comment is no definition
        if pat.search(code) and (file.endswith(".S") or not code.endswith(";")):
            return i
    raise AssertionError(f"{name} not defined in {file}")


def _markers() -> list[tuple[str, str, int, set[str]]]:
    """(file, function name, line, props) of every expect-fn marker."""
    out = []
    for p in sorted(SRC.iterdir()):
        if p.suffix not in (".c", ".h", ".S"):
            continue
        for i, line in enumerate(p.read_text().splitlines(), 1):
            m = FN_MARK.search(line)
            if not m:
                continue
            props = set(m.group(1).split())
            if p.suffix == ".S":
                name = line.split(":", 1)[0].strip()
            else:
                name = re.search(r"(\w+)\s*\(", line.split("/*")[0]).group(1)
            out.append((p.name, name, i, props))
    return out


@pytest.fixture(scope="module", params=VARIANTS)
def facts(request):
    return hyp_functions(FIXTURE_BUILD / request.param / "kvm_nvhe.o")


def _key(facts, name, file):
    fs = [f for f in facts.functions if f.name == name and f.decl_file.endswith("/" + file)]
    assert len(fs) == 1, (name, file, fs)
    return fs[0].key


def test_marked_functions_with_decl_line(facts):
    marks = _markers()
    assert len(marks) >= 20
    for file, name, line, props in marks:
        if "unused" in props or "inlined" in props:
            assert not [f for f in facts.functions if f.name == name], name
            continue
        fs = [f for f in facts.functions if f.name == name and f.decl_file.endswith("/" + file)]
        assert len(fs) == 1, (name, file)
        f = fs[0]
        assert f.address is not None and f.size > 0
        assert f.symbol == "__kvm_nvhe_" + name
        if "asm" in props:
            assert f.is_asm and f.decl_file == f"src/{file}"
            # as(1) line info starts at the first instruction after the label
            assert line <= f.decl_line <= line + 1
        else:
            assert not f.is_asm
            assert f.decl_line == _definition_line(file, name) == line
            assert f.cu_name == f"src/{file}"
            assert f.die_offset is not None


def test_static_and_external(facts):
    assert _key(facts, "__kvm_vcpu_run", "switch.c")
    (run,) = facts.named("__kvm_vcpu_run")
    assert run.external and not run.is_static
    (hh,) = facts.named("handle_host_hcall")
    assert hh.is_static


def test_same_named_statics_stay_apart(facts):
    dups = facts.named("__sync_state")
    assert sorted(f.decl_file for f in dups) == ["src/switch.c", "src/sysreg-sr.c"]
    k_sw = _key(facts, "__sync_state", "switch.c")
    k_sr = _key(facts, "__sync_state", "sysreg-sr.c")
    assert k_sw != k_sr
    assert k_sw[2] == _definition_line("switch.c", "__sync_state")
    assert k_sr[2] == _definition_line("sysreg-sr.c", "__sync_state")
    run = _key(facts, "__kvm_vcpu_run", "switch.c")
    save = _key(facts, "__sysreg_save_state_nvhe", "sysreg-sr.c")
    assert any(e.callee == k_sw for e in facts.edges_from(run))
    assert not any(e.callee == k_sr for e in facts.edges_from(run))
    assert any(e.callee == k_sr for e in facts.edges_from(save))
    assert len(facts.by_key()) == len(facts.functions)


def test_inlined_instances(facts):
    inl = [i for i in facts.inlined if i.callee_name == "kvm_skip_instr"]
    assert inl
    line = _definition_line("inline.h", "kvm_skip_instr")
    assert all(i.callee == ("kvm_skip_instr", "src/inline.h", line) for i in inl)
    callers = {i.caller[0] for i in inl}
    assert {"__kvm_adjust_pc", "kvm_hyp_handle_sysreg"} <= callers
    src = (SRC / "hyp-main.c").read_text().splitlines()
    for i in inl:
        assert i.depth >= 1 and i.ranges and i.call_line
        if i.caller[0] == "__kvm_adjust_pc":
            assert i.call_file == "src/hyp-main.c"
            assert "kvm_skip_instr(" in src[i.call_line - 1]
    locks = {i.callee_name for i in facts.inlined if i.caller[0] == "pkvm_load_hyp_vcpu"}
    assert {"hyp_spin_lock", "hyp_spin_unlock"} <= locks
    assert not [i for i in facts.inlined if i.callee_name == "vcpu_is_stopped"]  # unused
    edges = [e for e in facts.edges if e.kind == "inlined" and e.callee_name == "kvm_skip_instr"]
    assert len(edges) == len(inl) and all(e.line for e in edges)


def test_direct_call_edges(facts):
    run = _key(facts, "__kvm_vcpu_run", "switch.c")
    kinds = {e.callee[0]: e.kind for e in facts.edges_from(run) if e.callee}
    for callee in ("__sysreg_save_state_nvhe", "__activate_traps", "fixup_guest_exit", "__guest_enter"):
        assert kinds.get(callee) == "call_site", (callee, kinds)
    # a call into another file resolves to the definition, not the prototype in hyp.h
    e = next(e for e in facts.edges_from(run) if e.callee and e.callee[0] == "__sysreg_save_state_nvhe")
    assert e.callee == _key(facts, "__sysreg_save_state_nvhe", "sysreg-sr.c")
    assert e.address is not None
    ht = _key(facts, "handle_trap", "hyp-main.c")
    assert any(e.callee == _key(facts, "handle_host_hcall", "hyp-main.c") for e in facts.edges_from(ht))


def test_table_only_functions(facts):
    hh = _key(facts, "handle_host_hcall", "hyp-main.c")
    taken = [e for e in facts.edges if e.kind == "address_taken" and e.via == "host_hcall"]
    names = {e.callee[0] for e in taken}
    for file, name, _line, props in _markers():
        if "via=host_hcall" in props:
            assert name in names
        if "via=hyp_exit_handlers" in props:
            assert any(e.callee and e.callee[0] == name and e.via == "hyp_exit_handlers" for e in facts.edges)
    assert all(e.caller == hh and e.indirect and e.target_type == "hcall_t" for e in taken)
    # the reader of the table calls through a register: an indirect edge with no callee
    assert any(e.indirect and e.callee is None for e in facts.edges_from(hh))
    assert facts.unresolved_indirect()


def test_asm_entry_points_and_bl(facts):
    names = {f.name for f in facts.entry_points}
    assert {"__guest_enter", "__guest_exit", "__host_trap"} <= names
    ge = _key(facts, "__guest_exit", "entry.S")
    note = _key(facts, "__hyp_exit_note", "switch.c")
    assert any(e.kind == "bl" and e.callee == note for e in facts.edges_from(ge))
    ht = _key(facts, "__host_trap", "entry.S")
    trap = _key(facts, "handle_trap", "hyp-main.c")
    assert any(e.kind == "bl" and e.callee == trap and not e.indirect for e in facts.edges_from(ht))
    # __guest_enter's size covers __guest_exit's label: the code is split at the label
    (enter,) = facts.named("__guest_enter")
    (exit_,) = facts.named("__guest_exit")
    assert enter.address + enter.size == exit_.address


def test_reachability_through_table(facts):
    import networkx as nx

    g = facts.call_graph()
    path = nx.shortest_path(g, _key(facts, "__host_trap", "entry.S"), _key(facts, "__kvm_vcpu_run", "switch.c"))
    assert [k[0] for k in path] == ["__host_trap", "handle_trap", "handle_host_hcall", "handle___kvm_vcpu_run",
                                    "__kvm_vcpu_run"]
    assert "address_taken" in g[path[2]][path[3]]["kinds"]
    assert nx.has_path(g, _key(facts, "__kvm_vcpu_run", "switch.c"), _key(facts, "kvm_hyp_handle_wfx", "switch.c"))


def test_records_serialise(facts):
    d = facts.to_dict()
    assert len(d["functions"]) == len(facts.functions) and d["edges"] and d["inlined"]


def test_raw_symbols_match_pyelftools():
    from elftools.elf.elffile import ELFFile

    path = FIXTURE_BUILD / VARIANTS[0] / "kvm_nvhe.o"
    with ElfImage(path) as elf:
        ours = {(s.name, s.value, s.size) for s in read_symbols(elf)}
        pre = {s.name for s in read_symbols(elf, "__kvm_nvhe_")}
    with open(path, "rb") as f:
        theirs = {(s.name, s["st_value"], s["st_size"]) for s in ELFFile(f).get_section_by_name(".symtab").iter_symbols()
                  if s.name}
    assert ours == theirs
    assert pre == {n for n, _, _ in theirs if n.startswith("__kvm_nvhe_")}


@pytest.mark.kernel
def test_debian_61_vmlinux(vmlinux_61):
    import networkx as nx

    t = time.perf_counter()
    facts = hyp_functions(vmlinux_61)
    elapsed = time.perf_counter() - t
    assert elapsed < 30, elapsed
    cus = set(facts.cus)
    assert "arch/arm64/kvm/hyp/nvhe/switch.c" in cus and "arch/arm64/kvm/hyp/nvhe/hyp-main.c" in cus
    assert not any("/vhe/" in c for c in cus)  # the VHE hyp is ordinary kernel code
    assert 20 <= len(cus) <= 60
    by = {}
    for f in facts.functions:
        by.setdefault(f.name, []).append(f)
    for name in ("__kvm_vcpu_run", "handle_trap", "handle___kvm_vcpu_run"):
        (f,) = by[name]
        assert f.symbol == "__kvm_nvhe_" + name and not f.is_asm
        assert f.decl_file.startswith("arch/arm64/kvm/hyp/") and f.decl_line
    assert by["__kvm_vcpu_run"][0].decl_file == "arch/arm64/kvm/hyp/nvhe/switch.c"
    for name in ("__guest_enter", "__guest_exit", "__host_exit", "__kvm_hyp_host_vector", "__kvm_hyp_vector"):
        (f,) = by[name]
        assert f.is_asm and f.decl_file.endswith(".S"), f
    assert len(facts.functions) > 200 and len(facts.inlined) > 500
    # in 6.1 handle_host_hcall is inlined into handle_trap
    assert any(i.callee_name == "handle_host_hcall" and i.caller == by["handle_trap"][0].key
               and i.call_file == "arch/arm64/kvm/hyp/nvhe/hyp-main.c" and i.call_line for i in facts.inlined)
    g = facts.call_graph()
    run = by["__kvm_vcpu_run"][0].key
    path = nx.shortest_path(g, by["handle_trap"][0].key, run)
    assert by["handle___kvm_vcpu_run"][0].key in path
    # the host's trap lands in host.S, which calls handle_trap with bl
    assert nx.has_path(g, by["__kvm_hyp_host_vector"][0].key, run)
    taken = [e for e in facts.edges if e.kind == "address_taken" and e.via == "host_hcall"]
    assert len(taken) > 10 and all(e.target_type == "hcall_t" for e in taken)
    # __kvm_vcpu_run enters the guest through __guest_enter
    assert any(e.callee == by["__guest_enter"][0].key for e in facts.edges_from(run))
