"""binary/dwarf.skim_children: a unit's top level read by abbreviation plans must yield exactly the
children pyelftools' own walk yields with the tags asked for, in the same order, on real DWARF:
the committed GCC fixtures (DWARF 4 and 5, with DW_AT_sibling), clang's DWARF 5 (no DW_AT_sibling,
strx/addrx/rnglistx forms) and a pkvm-tiny vmlinux's hyp units."""

from __future__ import annotations

import shutil

import pytest

from conftest import ROOT
from scopecheck.binary.dwarf import open_dwarf, skim_children
from scopecheck.binary.elf import ElfImage

BUILD = ROOT / "fixtures" / "mini_hyp" / "build"
TAGS = [frozenset({"DW_TAG_subprogram", "DW_TAG_variable"}),
        frozenset({"DW_TAG_structure_type", "DW_TAG_union_type"}),
        frozenset({"DW_TAG_typedef", "DW_TAG_base_type", "DW_TAG_pointer_type"})]


def _compare(path, unit_filter=lambda name: True, limit=None) -> int:
    """Units compared; asserts skim == pyelftools for every tag set."""
    n = 0
    with ElfImage(path) as elf:
        dw = open_dwarf(elf)
        for cu in dw.iter_CUs():
            top = cu.get_top_DIE()
            a = top.attributes.get("DW_AT_name")
            if not unit_filter(a.value if a is not None else b""):
                continue
            for tags in TAGS:
                want = [d.offset for d in top.iter_children() if d.tag in tags]
                got = [d.offset for d in skim_children(top, tags)]
                assert got == want, (path, cu.cu_offset, sorted(tags))
                assert all(d.tag in tags for d in skim_children(top, tags))
            n += 1
            if limit is not None and n >= limit:
                break
    return n


@pytest.mark.parametrize("variant", ["before-dwarf4", "before-dwarf5", "after-dwarf4", "after-dwarf5"])
def test_skim_matches_pyelftools_on_gcc_fixtures(variant):
    objs = sorted((BUILD / variant).glob("*.o"))
    assert objs
    assert sum(_compare(o) for o in objs) >= len(objs)


@pytest.mark.skipif(shutil.which("clang") is None or shutil.which("aarch64-linux-gnu-ld") is None,
                    reason="clang (Debian package clang) or aarch64 binutils not installed")
def test_skim_matches_pyelftools_on_clang_dwarf5(tmp_path):
    import subprocess

    from test_clang_dwarf import FLAGS, SRC

    src = SRC / "switch.c"
    o = tmp_path / "switch.o"
    subprocess.run(["clang", *FLAGS, "-I", str(SRC), "-I", str(BUILD / "before-dwarf5"), "-c", str(src), "-o", str(o)],
                   check=True, timeout=120)
    assert _compare(o) == 1


def test_skim_matches_pyelftools_on_a_kernel():
    """The hyp units of the 6.1 pkvm-tiny vmlinux (GCC, DWARF 5, thousands of entries each)."""
    from build_cache import pkvm_tiny_61

    n = _compare(pkvm_tiny_61().vmlinux, lambda name: b"/kvm/hyp/nvhe/" in name, limit=4)
    assert n == 4


def _tables_agree(path, limit=None) -> int:
    """fast_abbreviations' tables equal pyelftools' own parse, declaration by declaration."""
    from elftools.dwarf.abbrevtable import AbbrevTable

    n = 0
    with ElfImage(path) as elf:
        dw = open_dwarf(elf)  # fast tables installed
        for cu in dw.iter_CUs():
            off = cu["debug_abbrev_offset"]
            fast = dw.get_abbrev_table(off)
            slow = AbbrevTable(structs=dw.structs, stream=dw.debug_abbrev_sec.stream, offset=off)
            assert set(fast._abbrev_map) == set(slow._abbrev_map)
            for code in slow._abbrev_map:
                a, b = fast.get_abbrev(code), slow.get_abbrev(code)
                assert (a["tag"], a.has_children()) == (b["tag"], b.has_children()), (path, off, code)
                assert [(s.name, s.form, s.value) for s in a["attr_spec"]] == \
                    [(s.name, s.form, getattr(s, "value", None)) for s in b["attr_spec"]], (path, off, code)
            n += 1
            if limit is not None and n >= limit:
                break
    return n


def test_fast_abbreviation_tables_equal_pyelftools():
    objs = sorted(BUILD.glob("*/*.o"))
    assert sum(_tables_agree(o) for o in objs) >= len(objs)
    from build_cache import pkvm_tiny_61

    assert _tables_agree(pkvm_tiny_61().vmlinux, limit=300) == 300
