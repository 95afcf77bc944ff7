"""Binary-only field accesses (scopecheck.binary.accesses).

Expected accesses come from the fixture's ``expect:`` markers (fixtures/README.md),
read at test time: every marker on a line of an out-of-line C function whose root
is one of the analysed root structs must be found in that function's machine code
(checked against ``aarch64-linux-gnu-objdump -dr`` of the committed objects), except
the few listed in KNOWN_MISSES with the reason the machine code hides them.
"""

from __future__ import annotations

import resource
import time
from collections import defaultdict

import pytest

from conftest import FIXTURE_BUILD, fixture_variants
from scopecheck.binary.accesses import binary_accesses
from scopecheck.binary.functions import hyp_functions
from test_fixtures import parse_markers

VARIANTS = fixture_variants()
SRC = FIXTURE_BUILD.parent / "src"

# function -> why its markers are not visible in the binary
KNOWN_MISSES = {
    # hyp_vcpu = &hyp_vcpus[idx]: the accesses go through a register computed from a
    # global array and an index (x5 + idx * 1936); DWARF places hyp_vcpu in x0 only
    # around the call, so no register is known to hold a pkvm_hyp_vcpu * at the loads.
    "pkvm_load_hyp_vcpu": "pointer computed from a global array index, no DWARF register location there",
    # rawaccess.c: source-only by nature (the source door sees them; the machine code hides them)
    "raw_read_xreg": "ldr x0, [x0, x1]: base + a register offset built from a variable index",
    "copy_ctxt": "*dst = *src of a 1040-byte struct compiles to a call to memcpy",
    # host-boundary.c: the flush's whole-context copy from the host vcpu is a call to memcpy
    "hb_flush_hyp_vcpu": "hyp_vcpu->vcpu.arch.ctxt = host_vcpu->arch.ctxt compiles to a call to memcpy",
    "hb_sync_hyp_vcpu": "host_vcpu->arch.ctxt = hyp_vcpu->vcpu.arch.ctxt compiles to a call to memcpy",
    "clear_vgic": "memset() of a member is a call to memset",
}

HYP_SCOPE_VCPU = ("arch.ctxt.", "arch.hyp_state.", "arch.fault.")
HYP_SCOPE_VCPU_EXACT = ("arch.hcr_el2", "arch.mdcr_el2", "arch.vsesr_el2", "arch.cflags", "arch.iflags",
                        "arch.sflags", "arch.ctxt", "arch.hyp_state", "arch.fault")


def in_scope(root: str, path: str) -> bool:
    if root == "pkvm_hyp_vcpu":
        if not path.startswith("vcpu.") and path != "vcpu":
            return True
        return in_scope("kvm_vcpu", path[5:])
    if root in ("kvm_cpu_context", "vcpu_hyp_state"):
        return True
    if root == "kvm_vcpu_arch":
        return in_scope("kvm_vcpu", "arch." + path)
    return path.startswith(HYP_SCOPE_VCPU) or path in HYP_SCOPE_VCPU_EXACT


@pytest.fixture(scope="module", params=VARIANTS)
def result(request):
    v = request.param
    path = FIXTURE_BUILD / v / "kvm_nvhe.o"
    facts = hyp_functions(path)
    acc, esc, stats = binary_accesses(path, facts)
    return v, facts, acc, esc, stats


def _markers(variant: str) -> list[dict]:
    lay = variant.split("-")[0]
    out = []
    for p in sorted(SRC.glob("*.c")):
        for m in parse_markers(p):
            if m["kind"] == "fn" or m.get("layout") not in (None, lay):
                continue
            out.append(m)
    return out


def _enclosing(facts, file: str, line: int):
    """The out-of-line C function of src/``file`` whose definition is the last one before ``line``."""
    cands = [f for f in facts.functions if not f.is_asm and f.decl_file == f"src/{file}" and f.decl_line <= line]
    return max(cands, key=lambda f: f.decl_line, default=None)


def _found(acc, fname: str) -> dict:
    """(root, path) -> set of access kinds, for accesses in ``fname`` or inlined into it."""
    out: dict = defaultdict(set)
    for a in acc:
        if a.function[0] == fname or (a.via or "").endswith(f"inlined-in:{fname}"):
            out[(a.root, a.path)].add(a.access)
    return out


def _kind_ok(want: str, have: set) -> bool:
    if "rw" in have:
        return True
    if want == "rw":
        return {"read", "write"} <= have
    return want in have


def test_records_are_binary(result):
    _v, _facts, acc, esc, stats = result
    assert acc and stats["functions"] >= 20 and stats["instructions"] > 200
    assert all(a.origin == "binary" and a.offset is not None and a.size for a in acc)
    assert all(a.access in ("read", "write", "rw") for a in acc)
    assert all(e.origin == "binary" for e in esc)
    assert not stats["unanalysed_functions"]


def test_markers_of_out_of_line_functions_are_found(result):
    v, facts, acc, _esc, stats = result
    roots = set(stats["roots"])
    checked, missed = 0, []
    for m in _markers(v):
        if m["kind"] != "access" or m["verdict"] == "dead" or m["root"] not in roots:
            continue
        fn = _enclosing(facts, m["file"], m["line"])
        assert fn is not None, m
        if fn.name in KNOWN_MISSES:
            continue
        found = _found(acc, fn.name)
        path = m["path"]
        want = m["access"]
        # a marker path is a source spelling: an enum index (sys_regs[SCTLR_EL1]) matches any
        # constant index; "[*]" is a variable index
        hits = [(k, kinds) for k, kinds in found.items()
                if k[0] == m["root"] and _same_path(path, k[1])]
        if not hits or not any(_kind_ok(want, kinds) for _k, kinds in hits):
            missed.append((fn.name, m["line"], f"{m['root']}:{path} {want}", sorted(found)))
        checked += 1
    assert checked >= 40
    assert not missed, missed


def _same_path(marker: str, found: str) -> bool:
    import re

    if marker == found:
        return True
    pat = re.escape(marker)
    pat = re.sub(r"\\\[[A-Z_][A-Z0-9_]*\\\]", r"\\[\\d+\\]", pat)  # enum-named index
    return re.fullmatch(pat, found) is not None


def test_enum_indexes_resolve_to_the_right_element(result):
    """sys_regs[SCTLR_EL1] etc.: the binary's constant index is the enum's value (offsets.h)."""
    v, _facts, acc, _esc, _stats = result
    offsets = {}
    for line in (FIXTURE_BUILD / v / "offsets.h").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0] == "#define":
            try:
                offsets[parts[1]] = int(parts[2])
            except ValueError:
                pass
    for a in acc:
        if a.root == "kvm_cpu_context" and a.path.startswith("sys_regs["):
            idx = int(a.path[9:-1])
            base = offsets.get("CTXT_SYS_REGS")
            if base is not None:
                assert a.offset == base + 8 * idx


def test_container_of_escalation(result):
    v, facts, acc, esc, _stats = result
    marks = [m for m in _markers(v) if m["kind"] == "escalation"]
    assert marks
    for m in marks:
        fn = _enclosing(facts, m["file"], m["line"])
        got = [e for e in esc if e.function[0] == fn.name]
        assert any(e.from_root == m["src"] and e.to_root == m["dst"] for e in got), (fn.name, esc)
    # the escalated access is mapped into the container, not reported out of the small root
    found = _found(acc, "__sysreg_restore_el2_return_state")
    assert ("kvm_vcpu", "arch.state_bits.pause") in found
    assert ("kvm_cpu_context", "regs.pstate") in found
    # no other function escalates
    assert {e.function[0] for e in esc} == {"__sysreg_restore_el2_return_state"}


def test_in_scope_functions_stay_in_scope(result):
    """Functions whose every marker is 'ok' have no binary access outside the RFC scope."""
    v, facts, acc, _esc, _stats = result
    verdicts: dict = defaultdict(set)
    for m in _markers(v):
        if m["kind"] == "access":
            fn = _enclosing(facts, m["file"], m["line"])
            verdicts[fn.name].add(m["verdict"])
    ok_only = {f for f, vs in verdicts.items() if vs == {"ok"}}
    assert {"__activate_traps", "__sysreg_save_state_nvhe", "handle_trap", "__kvm_adjust_pc"} <= ok_only
    bad = [(a.function[0], a.root, a.path) for a in acc
           if (a.function[0] in ok_only or any((a.via or "").endswith(f"inlined-in:{f}") for f in ok_only))
           and not in_scope(a.root, a.path)]
    assert not bad, bad
    # and functions with leak markers do leak in the binary too
    leaky = {f for f, vs in verdicts.items() if "leak" in vs} - set(KNOWN_MISSES)
    for f in ("kvm_hyp_handle_wfx", "sync_hyp_vcpu"):
        assert f in leaky
        assert any(not in_scope(r, p) for r, p in _found(acc, f)), f


def test_inlined_accesses_attributed_to_the_inline(result):
    """kvm_skip_instr (an __always_inline in inline.h) gets its own accesses, with the caller in via."""
    _v, _facts, acc, _esc, _stats = result
    skip = [a for a in acc if a.function[0] == "kvm_skip_instr"]
    assert skip
    assert all(a.file == "src/inline.h" and a.via and "inlined-in:" in a.via for a in skip)
    assert {a.path for a in skip} == {"arch.ctxt.regs.pc"}
    assert {a.access for a in skip} == {"read", "write"}
    hosts = {a.via.split("inlined-in:")[1] for a in skip}
    assert "__kvm_adjust_pc" in hosts


def test_pointer_member_load_starts_a_new_root(result):
    """hyp_vcpu->host_vcpu is a kvm_vcpu *: stores through it are kvm_vcpu accesses."""
    _v, _facts, acc, _esc, _stats = result
    found = _found(acc, "sync_hyp_vcpu")
    assert "write" in found[("kvm_vcpu", "arch.ctxt.regs.pc")]
    assert "read" in found[("pkvm_hyp_vcpu", "host_vcpu")]


# ---------------------------------------------------------------- Debian 6.1

@pytest.mark.kernel
def test_debian_61_vmlinux(vmlinux_61):
    t0 = time.perf_counter()
    facts = hyp_functions(vmlinux_61)
    t1 = time.perf_counter()
    acc, esc, stats = binary_accesses(vmlinux_61, facts)
    t2 = time.perf_counter()
    assert t2 - t1 < 10, stats["timings"]
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss < 1024 * 1024  # KiB: < 1 GB
    assert stats["functions"] >= 250 and not stats["unanalysed_functions"]
    assert "vcpu_hyp_state" not in stats["roots"] and "kvm_vcpu" in stats["roots"]

    run = _found(acc, "__kvm_vcpu_run")
    vcpu_paths = {p for (r, p) in run if r == "kvm_vcpu"}
    assert any(p.startswith("arch.ctxt.") for p in vcpu_paths), vcpu_paths
    outside = {p for p in vcpu_paths if not p.startswith("arch.ctxt.")}
    assert outside & {"arch.hcr_el2", "arch.mdcr_el2", "arch.iflags", "arch.cflags"} \
        or any(p.startswith("arch.fault.") for p in outside), vcpu_paths
    # the guest run loop in 6.1 really touches kvm_vcpu state beyond the RFC's scope (e.g. arch.fp_state)
    assert any(not in_scope("kvm_vcpu", p) for p in vcpu_paths), vcpu_paths
    # host context: the running vcpu is published in kvm_cpu_context.__hyp_running_vcpu
    assert ("kvm_cpu_context", "__hyp_running_vcpu") in run

    all_vcpu = {a.path for a in acc if a.root == "kvm_vcpu"}
    assert len(all_vcpu) >= 30
    assert any(p.startswith("arch.ctxt.regs.regs[") for p in all_vcpu)
    assert all(a.file and a.line for a in acc)
    assert not [e for e in esc if e.to_root == "kvm_vcpu" and e.from_root != "kvm_cpu_context"]
    # ctxt_to_vcpu(): container_of(ctxt, struct kvm_vcpu, arch.ctxt) is a visible "sub #0x100"
    assert any(e.from_root == "kvm_cpu_context" and e.to_root == "kvm_vcpu" and e.via == "sub" for e in esc), esc
