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


# ---------------------------------------------------------------- relocations of an object's DWARF

_DEBUG = ("debug_info_sec", "debug_abbrev_sec", "debug_line_sec", "debug_str_sec", "debug_loc_sec",
          "debug_ranges_sec", "debug_rnglists_sec", "debug_loclists_sec", "debug_addr_sec",
          "debug_str_offsets_sec", "debug_line_str_sec", "debug_frame_sec", "debug_aranges_sec")


def _relocated_equal(path) -> int:
    """Every DWARF section of an AArch64 object, relocated by apply_aarch64_rela, equals the bytes
    pyelftools' own RelocationHandler gives; returns the sections compared."""
    from elftools.elf.elffile import ELFFile

    from scopecheck.binary.dwarf import _pyelftools_dwarf

    with ElfImage(path) as elf:
        assert elf.is_relocatable
        ours = _pyelftools_dwarf(elf)
    with open(path, "rb") as f:
        ref = ELFFile(f).get_dwarf_info(relocate_dwarf_sections=True, follow_links=False)
        n = 0
        for name in _DEBUG:
            a, b = getattr(ours, name, None), getattr(ref, name, None)
            assert (a is None) == (b is None), (path, name)
            if a is not None:
                assert a.stream.getvalue() == b.stream.getvalue(), (path, name)
                n += 1
    return n


def test_object_relocations_equal_pyelftools():
    """GCC DWARF 4 and 5 fixtures (ABS64 and ABS32 into .debug_*) and two of 6.1 pkvm-tiny's hyp
    objects (thousands of relocations each; kvm_nvhe.o itself has tens of thousands, for which
    pyelftools takes seconds and apply_aarch64_rela milliseconds)."""
    from build_cache import pkvm_tiny_61
    from scopecheck.proof import NVHE_DIR

    objs = sorted(BUILD.glob("*/*.o"))
    assert objs and all(_relocated_equal(o) >= 4 for o in objs)
    for name in ("switch.nvhe.o", "hyp-main.nvhe.o"):
        assert _relocated_equal(pkvm_tiny_61().out / NVHE_DIR / name) >= 8


def test_unknown_relocation_is_left_to_pyelftools(tmp_path):
    """A relocation type apply_aarch64_rela does not know: it refuses, pyelftools decides and raises,
    and open_dwarf turns that into one InputError."""
    import struct

    from elftools.elf.elffile import ELFFile

    from scopecheck.binary.dwarf import apply_aarch64_rela
    from scopecheck.errors import InputError

    src = BUILD / "after-dwarf5" / "kvm_nvhe.o"
    data = bytearray(src.read_bytes())
    with open(src, "rb") as f:
        e = ELFFile(f)
        rela = e.get_section_by_name(".rela.debug_info")
        symtab = e.get_section(rela["sh_link"]).data()
        start, end = rela["sh_offset"], rela["sh_offset"] + rela["sh_size"]
        section = e.get_section_by_name(".debug_info").data()
    r_info = struct.unpack_from("<Q", data, start + 8)[0]  # the first entry's r_info
    assert r_info & 0xFFFFFFFF in (257, 258)
    assert apply_aarch64_rela(bytearray(section), bytes(data[start:end]), symtab) is True
    struct.pack_into("<Q", data, start + 8, (r_info & ~0xFFFFFFFF) | 1024)
    assert apply_aarch64_rela(bytearray(section), bytes(data[start:end]), symtab) is False
    bad = tmp_path / "kvm_nvhe.o"
    bad.write_bytes(bytes(data))
    with ElfImage(bad) as elf, pytest.raises(InputError, match="unreadable DWARF"):
        open_dwarf(elf)
