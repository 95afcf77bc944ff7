"""The layout library against the compiler's own ground truth.

fixtures/build.sh compiles offsets.c (like the kernel's asm-offsets.c) and writes
offsets.h: ``#define NAME value /* offsetof(struct S, path) */``. Those numbers come
from the compiler's offsetof/sizeof, not from DWARF, so they check our reading.
"""

from __future__ import annotations

import re
import shutil

import pytest

from conftest import FIXTURE_BUILD, fixture_variants
from scopecheck.binary import pahole
from scopecheck.layout import expand, fields_at, load_layouts, member
from scopecheck.model import StructLayout

_OFFSETOF = re.compile(r"#define (\w+) (\d+) /\* offsetof\(struct (\w+), ([\w.\[\]]+)\) \*/")
_SIZEOF = re.compile(r"#define (\w+) (\d+) /\* sizeof\(struct (\w+)\) \*/")

VARIANTS = fixture_variants()
pytestmark = pytest.mark.skipif(not VARIANTS, reason="fixture objects not built")


def _offsets(variant):
    text = (FIXTURE_BUILD / variant / "offsets.h").read_text()
    offs = [(s, p, int(v)) for _, v, s, p in _OFFSETOF.findall(text)]
    sizes = {s: int(v) for _, v, s in _SIZEOF.findall(text)}
    return offs, sizes


@pytest.fixture(scope="module", params=VARIANTS)
def variant(request):
    return request.param


def _layouts(variant, names):
    return load_layouts(FIXTURE_BUILD / variant / "kvm_nvhe.o", names, use_cache=False)


def test_offsets_match_compiler(variant):
    offs, sizes = _offsets(variant)
    assert len(offs) >= 15
    structs = sorted({s for s, _, _ in offs} | set(sizes))
    lay = _layouts(variant, structs)
    checked = 0
    for s, path, value in offs:
        if re.search(r"\[[A-Za-z_]", path):
            continue  # index by enum name: the value is not in the path
        m = member(lay[s], path)
        assert m.offset == value, f"{variant}: offsetof({s}, {path}) = {value}, DWARF says {m.offset}"
        covered = fields_at(lay[s], value, 1)
        assert any(c == path or c.startswith(path + ".") or c.startswith(path + "[") for c in covered), \
            (path, covered)
        checked += 1
    assert checked >= 15
    for s, v in sizes.items():
        if lay[s] is None:
            # "before" declares vcpu_hyp_state but no hyp code uses it, so GCC emits no DWARF for it
            assert s == "vcpu_hyp_state" and variant.startswith("before"), s
            continue
        assert lay[s].size == v, f"sizeof(struct {s})"


def test_fields_at_indexes_arrays(variant):
    vcpu = _layouts(variant, ["kvm_vcpu"])["kvm_vcpu"]
    regs = member(vcpu, "arch.ctxt.regs.regs")
    assert regs.array_dims == (31,) and regs.element_size == 8
    assert fields_at(vcpu, regs.offset + 19 * 8, 8) == ["arch.ctxt.regs.regs[19]"]
    # a range across two elements names both
    assert fields_at(vcpu, regs.offset + 8, 16) == ["arch.ctxt.regs.regs[1]", "arch.ctxt.regs.regs[2]"]
    assert member(vcpu, "arch.ctxt.regs.regs[30]").offset == regs.offset + 240
    with pytest.raises(KeyError):
        member(vcpu, "arch.ctxt.regs.regs[31]")
    with pytest.raises(KeyError):
        member(vcpu, "arch.no_such_field")
    with pytest.raises(ValueError):
        fields_at(vcpu, vcpu.size, 1)


def test_tree_is_consistent(variant):
    """Every member lies inside its parent, and children are ordered by offset (unions excepted)."""
    vcpu = _layouts(variant, ["kvm_vcpu"])["kvm_vcpu"]

    def check(parent_lo, parent_hi, members, is_union):
        last = parent_lo
        for m in members:
            assert parent_lo <= m.offset, m.path
            if m.size is not None and not (m.size == 0 and m.array_dims):
                assert m.offset + m.size <= parent_hi, m.path
            if not is_union and m.bit_size is None:
                assert m.offset >= last, m.path
                last = m.offset
            if m.members:
                hi = m.offset + (m.element_size if m.array_dims else (m.size or 0))
                check(m.offset, hi, m.members, m.kind == "union")

    check(0, vcpu.size, vcpu.members, False)
    kinds = {m.kind for _, m in expand(vcpu)}
    assert {"struct", "array", "pointer", "base"} <= kinds
    assert any(m.bit_size for m in vcpu.walk()), "fixture has bitfields"
    assert any(m.name is None for m in vcpu.walk()), "fixture has anonymous members"


def test_json_round_trip(variant):
    vcpu = _layouts(variant, ["kvm_vcpu"])["kvm_vcpu"]
    again = StructLayout.from_dict(vcpu.to_dict())
    assert again == vcpu


@pytest.mark.skipif(shutil.which("pahole") is None, reason="pahole (dwarves) not installed")
def test_stats_equal_pahole(variant):
    obj = FIXTURE_BUILD / variant / "kvm_nvhe.o"
    names = ["kvm_vcpu", "kvm_vcpu_arch", "kvm_cpu_context", "vcpu_hyp_state", "pkvm_hyp_vcpu",
             "user_pt_regs", "kvm_vcpu_fault_info"]
    lay = {n: v for n, v in _layouts(variant, names).items() if v is not None}
    assert {"kvm_vcpu", "kvm_vcpu_arch", "kvm_cpu_context"} <= set(lay)
    assert ("vcpu_hyp_state" in lay) == variant.startswith("after")
    oracle = pahole.run(obj, list(lay))
    for n, l in lay.items():
        p = oracle[n]
        assert p is not None, n
        assert (l.size, l.stats.nr_members, l.stats.holes, l.stats.sum_holes, l.stats.padding) == \
               (p.size, p.nr_members, p.holes, p.sum_holes, p.padding), n
