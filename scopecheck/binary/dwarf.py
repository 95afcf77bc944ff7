"""Give pyelftools a DWARFInfo over a memory-mapped ELF without copying sections.

pyelftools' ``ELFFile.get_dwarf_info()`` copies every debug section into a
BytesIO (hundreds of MB for a vmlinux). For linked images with plain sections we
hand it :class:`~scopecheck.binary.elf.SectionStream` windows instead. Relocatable
objects (.o, whose DWARF needs relocations applied) and compressed sections take
pyelftools' own path: they are small, or rare.
"""

from __future__ import annotations

import struct
from contextlib import contextmanager

from scopecheck.binary.elf import SHT_NOBITS, ElfImage, SectionStream
from scopecheck.errors import InputError

_SECTIONS = {
    "debug_info_sec": ".debug_info",
    "debug_aranges_sec": ".debug_aranges",
    "debug_abbrev_sec": ".debug_abbrev",
    "debug_frame_sec": ".debug_frame",
    "eh_frame_sec": None,
    "debug_str_sec": ".debug_str",
    "debug_loc_sec": ".debug_loc",
    "debug_ranges_sec": ".debug_ranges",
    "debug_line_sec": ".debug_line",
    "debug_pubtypes_sec": ".debug_pubtypes",
    "debug_pubnames_sec": ".debug_pubnames",
    "debug_addr_sec": ".debug_addr",
    "debug_str_offsets_sec": ".debug_str_offsets",
    "debug_line_str_sec": ".debug_line_str",
    "debug_loclists_sec": ".debug_loclists",
    "debug_rnglists_sec": ".debug_rnglists",
    "debug_sup_sec": ".debug_sup",
    "gnu_debugaltlink_sec": ".gnu_debugaltlink",
    "debug_types_sec": ".debug_types",
}


def _corrupt_dwarf_errors() -> tuple[type[BaseException], ...]:
    """What pyelftools raises on corrupt input: its ELFError family, DWARFError, and whatever
    its parsers trip over (short reads, unknown forms or abbrev codes, zero line ranges, deep
    recursion)."""
    from elftools.common.exceptions import DWARFError, ELFError

    return (ELFError, DWARFError, struct.error, KeyError, IndexError, ValueError, ZeroDivisionError, OverflowError,
            AssertionError, EOFError, RecursionError)


def one_line(e: BaseException, limit: int = 200) -> str:
    """``Type: message`` on one line (pyelftools messages may hold newlines), shortened."""
    msg = " ".join(str(e).split())
    if len(msg) > limit:
        msg = msg[: limit - 3] + "..."
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


@contextmanager
def reading_dwarf(path, what: str = "DWARF"):
    """Turn pyelftools' exceptions on corrupt DWARF into one-line InputErrors naming ``path``."""
    try:
        yield
    except InputError:
        raise
    except _corrupt_dwarf_errors() as e:
        raise InputError(f"{path}: unreadable {what} ({one_line(e)})") from None


def children(die):
    """``die.iter_children()``, but never backwards: a corrupt DW_AT_sibling that points at or
    before the current child makes pyelftools' iterator loop forever."""
    last = die.offset
    for c in die.iter_children():
        if c.offset <= last:
            raise ValueError(f"children of DIE {die.offset:#x} loop back to {c.offset:#x} (corrupt DW_AT_sibling)")
        last = c.offset
        yield c


# -- skimming: the children of a DIE with the tags asked for, the others skipped undecoded --

_FIXED_FORMS = {
    **dict.fromkeys(("DW_FORM_data1", "DW_FORM_ref1", "DW_FORM_flag", "DW_FORM_strx1", "DW_FORM_addrx1"), 1),
    **dict.fromkeys(("DW_FORM_data2", "DW_FORM_ref2", "DW_FORM_strx2", "DW_FORM_addrx2"), 2),
    **dict.fromkeys(("DW_FORM_strx3", "DW_FORM_addrx3"), 3),
    **dict.fromkeys(("DW_FORM_data4", "DW_FORM_ref4", "DW_FORM_strx4", "DW_FORM_addrx4", "DW_FORM_ref_sup4"), 4),
    **dict.fromkeys(("DW_FORM_data8", "DW_FORM_ref8", "DW_FORM_ref_sig8", "DW_FORM_ref_sup8"), 8),
    "DW_FORM_data16": 16,
    **dict.fromkeys(("DW_FORM_flag_present", "DW_FORM_implicit_const"), 0),
}
_OFFSET_FORMS = frozenset(("DW_FORM_strp", "DW_FORM_sec_offset", "DW_FORM_line_strp", "DW_FORM_GNU_ref_alt",
                           "DW_FORM_GNU_strp_alt", "DW_FORM_strp_sup"))
_LEB_FORMS = frozenset(("DW_FORM_udata", "DW_FORM_sdata", "DW_FORM_ref_udata", "DW_FORM_strx", "DW_FORM_addrx",
                        "DW_FORM_loclistx", "DW_FORM_rnglistx", "DW_FORM_GNU_addr_index",
                        "DW_FORM_GNU_str_index"))
_BLOCK_FORMS = {"DW_FORM_block1": 1, "DW_FORM_block2": 2, "DW_FORM_block4": 4, "DW_FORM_block": 0,
                "DW_FORM_exprloc": 0}
_CU_REF_FORMS = frozenset(("DW_FORM_ref1", "DW_FORM_ref2", "DW_FORM_ref4", "DW_FORM_ref8", "DW_FORM_ref_udata"))
# steps of a plan: (FIXED, n) (LEB, 0) (STRING, 0) (BLOCK, length size or 0 for ULEB) (INDIRECT, 0),
# and (SIBLING, form) for a DW_AT_sibling whose value is wanted
_FIXED, _LEB, _STRING, _BLOCK, _INDIRECT, _SIBLING = range(6)


def read_uleb(data, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError("LEB128 longer than 64 bits")


def _form_step(form: str, addr_size: int, offset_size: int, version: int) -> tuple[int, int]:
    if form in _FIXED_FORMS:
        return _FIXED, _FIXED_FORMS[form]
    if form == "DW_FORM_addr":
        return _FIXED, addr_size
    if form in _OFFSET_FORMS:
        return _FIXED, offset_size
    if form == "DW_FORM_ref_addr":
        return _FIXED, addr_size if version == 2 else offset_size
    if form in _LEB_FORMS:
        return _LEB, 0
    if form == "DW_FORM_string":
        return _STRING, 0
    if form in _BLOCK_FORMS:
        return _BLOCK, _BLOCK_FORMS[form]
    if form == "DW_FORM_indirect":
        return _INDIRECT, 0
    raise ValueError(f"unknown DWARF form {form}")


class _Skimmer:
    """One unit's abbreviations compiled to byte-skipping plans over the unit's bytes."""

    def __init__(self, cu):
        self.cu = cu
        self.addr_size = cu["address_size"]
        self.offset_size = 8 if cu.structs.dwarf_format == 64 else 4
        self.version = cu["version"]
        self.table = cu.get_abbrev_table()
        self.plans: dict[int, tuple] = {}
        stream = cu.get_top_DIE().stream
        stream.seek(cu.cu_offset)
        self.base = cu.cu_offset
        self.data = stream.read(cu.size)
        if len(self.data) != cu.size:
            raise ValueError(f"unit {cu.cu_offset:#x} is cut short")

    def plan(self, code: int) -> tuple:
        p = self.plans.get(code)
        if p is None:
            decl = self.table.get_abbrev(code)  # KeyError: no such code (corrupt)
            steps: list = []
            for spec in decl["attr_spec"]:
                if spec.name == "DW_AT_sibling" and spec.form in _CU_REF_FORMS:
                    steps.append((_SIBLING, spec.form))
                    continue
                kind, n = _form_step(spec.form, self.addr_size, self.offset_size, self.version)
                if kind == _FIXED and steps and steps[-1][0] == _FIXED:
                    steps[-1] = (_FIXED, steps[-1][1] + n)
                elif not (kind == _FIXED and n == 0):
                    steps.append((kind, n))
            p = self.plans[code] = (decl["tag"], decl.has_children(), tuple(steps))
        return p

    def _value(self, form: str, pos: int) -> tuple[int, int]:
        if form == "DW_FORM_ref_udata":
            return read_uleb(self.data, pos)
        n = _FIXED_FORMS[form]
        return int.from_bytes(self.data[pos:pos + n], "little"), pos + n

    def entry(self, off: int) -> tuple[str | None, bool, int, int | None]:
        """(tag or None for a null entry, has children, offset after its attributes, its sibling's
        offset or None) of the entry at section offset ``off``."""
        data, pos = self.data, off - self.base
        code, pos = read_uleb(data, pos)
        if code == 0:
            return None, False, pos + self.base, None
        tag, has_children, steps = self.plan(code)
        sibling = None
        for kind, n in steps:
            if kind == _FIXED:
                pos += n
            elif kind == _LEB:
                while data[pos] & 0x80:
                    pos += 1
                pos += 1
            elif kind == _SIBLING:
                v, pos = self._value(n, pos)
                sibling = self.base + v
            elif kind == _STRING:
                pos = data.index(b"\0", pos) + 1
            elif kind == _BLOCK:
                if n:
                    length = int.from_bytes(data[pos:pos + n], "little")
                    pos += n
                else:
                    length, pos = read_uleb(data, pos)
                pos += length
            else:  # DW_FORM_indirect: the form is written in front of the value
                from elftools.dwarf.enums import ENUM_DW_FORM

                fcode, pos = read_uleb(data, pos)
                form = next((k for k, v in ENUM_DW_FORM.items() if v == fcode), None)
                if form is None or form == "DW_FORM_indirect":
                    raise ValueError(f"bad indirect form {fcode}")
                k2, n2 = _form_step(form, self.addr_size, self.offset_size, self.version)
                if k2 != _FIXED:
                    raise ValueError(f"indirect form {form} is not skimmed")
                pos += n2
        if pos > len(data):
            raise ValueError(f"entry at {off:#x} runs past its unit")
        return tag, has_children, pos + self.base, sibling

    def end_of_subtree(self, after: int) -> int:
        """The offset after the children list that starts at ``after`` (nested lists included)."""
        depth, pos, end = 1, after, self.base + len(self.data)
        while depth:
            if pos >= end:
                raise ValueError(f"children at {after:#x} run past their unit")
            tag, has_children, nxt, sibling = self.entry(pos)
            if tag is None:
                depth -= 1
            elif has_children:
                if sibling is not None and sibling > pos:
                    nxt = sibling
                else:
                    depth += 1
            pos = nxt
        return pos


def skim_children(die, tags: frozenset):
    """The children of ``die`` whose tag is in ``tags``, as pyelftools DIEs; the other children
    (most of a kernel unit's top level: types, declarations) are skipped by their abbreviation's
    forms without being decoded. Raises ValueError on entries that do not decode."""
    if not die.has_children:
        return
    cu = die.cu
    sk = _Skimmer(cu)
    pos, end = die.offset + die.size, cu.cu_offset + cu.size
    while pos < end:
        tag, has_children, nxt, sibling = sk.entry(pos)
        if tag is None:
            return
        if tag in tags:
            yield cu.get_DIE_from_refaddr(pos)
        if has_children:
            if sibling is not None:
                if sibling <= pos:
                    raise ValueError(f"DIE {pos:#x}: DW_AT_sibling points back to {sibling:#x}")
                nxt = sibling
            else:
                nxt = sk.end_of_subtree(nxt)
        pos = nxt


# -- abbreviation tables read raw --

def read_sleb(data, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return (value - (1 << shift) if b & 0x40 else value), pos
        if shift > 63:
            raise ValueError("LEB128 longer than 64 bits")


def fast_abbreviations(dwarf) -> None:
    """Have ``dwarf`` read abbreviation tables with a raw decoder.

    pyelftools decodes a table a byte at a time through construct; a clang kernel has one table
    per unit and every unit touched pays for its whole table (milliseconds each). The tables made
    here are pyelftools' own AbbrevTable/AbbrevDecl objects with the same contents (names from
    its enums, unknown codes as integers, as its parser gives them). A table the raw decoder
    cannot read is left to pyelftools, which reports it as it always did."""
    from elftools.construct.lib.container import Container
    from elftools.dwarf.abbrevtable import AbbrevDecl, AbbrevTable
    from elftools.dwarf.enums import ENUM_DW_AT, ENUM_DW_FORM, ENUM_DW_TAG

    sec = dwarf.debug_abbrev_sec
    cache = getattr(dwarf, "_abbrevtable_cache", None)
    if sec is None or not isinstance(cache, dict) or not hasattr(sec.stream, "getvalue"):
        return
    tags, attrs, forms = ({v: k for k, v in enum.items() if isinstance(v, int)}
                          for enum in (ENUM_DW_TAG, ENUM_DW_AT, ENUM_DW_FORM))
    implicit = ENUM_DW_FORM["DW_FORM_implicit_const"]
    pyelftools_table = dwarf.get_abbrev_table
    data: list = []

    class LazyTable(AbbrevTable):
        """Declarations kept as integers until asked for (a unit uses a few of its ~120)."""

        def get_abbrev(self, code: int):
            d = self._abbrev_map[code]
            if type(d) is tuple:
                tag, children, specs = d
                d = self._abbrev_map[code] = AbbrevDecl(code, Container(
                    tag=tags.get(tag, tag), children_flag="DW_CHILDREN_yes" if children else "DW_CHILDREN_no",
                    attr_spec=[Container(name=attrs.get(a, a), form=forms.get(f, f), value=v) for a, f, v in specs]))
            return d

    def table(offset: int):
        t = cache.get(offset)
        if t is not None:
            return t
        if not data:
            data.append(sec.stream.getvalue())
        m, pos, decls = data[0], offset, {}
        try:
            while True:
                code, pos = read_uleb(m, pos)
                if code == 0:
                    break
                tag, pos = read_uleb(m, pos)
                children = m[pos]
                pos += 1
                if children > 1:
                    raise ValueError("bad DW_CHILDREN value")
                specs = []
                while True:
                    attr, pos = read_uleb(m, pos)
                    form, pos = read_uleb(m, pos)
                    if attr == 0 and form == 0:
                        break
                    value = None
                    if form == implicit:
                        value, pos = read_sleb(m, pos)
                    specs.append((attr, form, value))
                decls[code] = (tag, children, specs)
        except (IndexError, ValueError):
            return pyelftools_table(offset)  # pyelftools decides (and raises) on what does not decode
        t = LazyTable.__new__(LazyTable)
        t.structs, t.stream, t.offset, t._abbrev_map = dwarf.structs, sec.stream, offset, decls
        cache[offset] = t
        return t

    dwarf.get_abbrev_table = table


def line_program(dwarf, cu):
    """``dwarf.line_program_for_CU(cu)``; a corrupt header's AttributeError or NotImplementedError
    (pyelftools resolving DWARF 5 entry formats) becomes a ValueError, a corrupt-input error."""
    try:
        return dwarf.line_program_for_CU(cu)
    except (AttributeError, NotImplementedError) as e:
        raise ValueError(f"corrupt line program header of unit {cu.cu_offset:#x} ({one_line(e)})") from None


def uses_windows(elf: ElfImage) -> bool:
    """True when DWARF can be read in place (linked image, uncompressed sections)."""
    return not elf.is_relocatable and not elf.compressed_debug()


def open_dwarf(elf: ElfImage):
    """A pyelftools ``DWARFInfo`` for ``elf`` (one per image: later calls give the same one, whose
    parsed DIEs are kept); raises InputError without DWARF."""
    if elf.dwarf_info is not None:
        return elf.dwarf_info
    elf.require_dwarf()
    if elf.is_relocatable and ".zdebug_info" in elf.sections:
        # pyelftools would apply .rela.zdebug_* to the compressed bytes
        raise InputError(f"{elf.path}: legacy .zdebug_* compressed DWARF in an object is not supported; "
                         "use -gz=zlib or zstd, or objcopy --decompress-debug-sections")
    try:
        dwarf = _windowed_dwarf(elf) if uses_windows(elf) else _pyelftools_dwarf(elf)
        fast_abbreviations(dwarf)
        _refuse_skeleton(elf, dwarf)
        elf.dwarf_info = dwarf
        return dwarf
    except InputError:
        raise
    except Exception as e:  # pyelftools raises many kinds on corrupt input
        raise InputError(f"{elf.path}: unreadable DWARF ({one_line(e)})") from None


def _refuse_skeleton(elf: ElfImage, dwarf) -> None:
    """A -gsplit-dwarf build (CONFIG_DEBUG_INFO_SPLIT) keeps only skeleton units here; the types
    are in .dwo files, which scopecheck does not read."""
    cu = next(dwarf.iter_CUs(), None)
    if cu is None:
        return
    attrs = cu.get_top_DIE().attributes
    a = attrs.get("DW_AT_dwo_name") or attrs.get("DW_AT_GNU_dwo_name")
    if a is not None:
        name = a.value.decode("utf-8", "replace") if isinstance(a.value, bytes) else str(a.value)
        raise InputError(f"{elf.path}: split DWARF (the types are in {name}, a .dwo file scopecheck does not "
                         "read); build without -gsplit-dwarf (CONFIG_DEBUG_INFO_SPLIT=n)")


def _windowed_dwarf(elf: ElfImage):
    from elftools.dwarf.dwarfinfo import DebugSectionDescriptor, DwarfConfig, DWARFInfo

    kwargs = {}
    for arg, name in _SECTIONS.items():
        s = elf.sections.get(name) if name else None
        if s is None or s.type == SHT_NOBITS:
            kwargs[arg] = None
            continue
        kwargs[arg] = DebugSectionDescriptor(
            stream=SectionStream(elf.map, s.offset, s.size),
            name=name, global_offset=s.offset, size=s.size, address=s.addr)
    cfg = DwarfConfig(little_endian=True, machine_arch="AArch64", default_address_size=8)
    return DWARFInfo(config=cfg, **kwargs)


def _pyelftools_dwarf(elf: ElfImage):
    from elftools.elf.elffile import ELFFile

    class _ELFFile(ELFFile):
        """pyelftools decompresses zlib (SHF_COMPRESSED) sections itself; zstd ones are ours. The
        relocations of an AArch64 object's DWARF are applied by :func:`apply_aarch64_rela` (pyelftools
        does the same one relocation at a time, about 50 us each: 15 s for a kvm_nvhe.o of 6.1)."""

        def _read_dwarf_section(self, section, relocate_dwarf_sections):
            if section.compressed and section._compression_type == ELFCOMPRESS_ZSTD:
                data = _zstd_section_data(elf, section)
                section.data = lambda: data
            if relocate_dwarf_sections and self.elfclass == 64 and self.little_endian \
                    and self["e_machine"] == "EM_AARCH64" and not self.has_phantom_bytes():
                from io import BytesIO

                from elftools.elf.relocation import RelocationHandler

                desc = super()._read_dwarf_section(section, False)
                rel = RelocationHandler(self).find_relocations_for_section(section)
                if rel is None:
                    return desc
                if rel["sh_type"] == "SHT_RELA" and rel["sh_entsize"] == 24:
                    symtab = self.get_section(rel["sh_link"])
                    data = bytearray(desc.stream.getvalue())
                    if symtab["sh_type"] == "SHT_SYMTAB" and apply_aarch64_rela(data, rel.data(), symtab.data()):
                        return desc._replace(stream=BytesIO(bytes(data)))
                # anything else (a REL section, an unknown type, an offset out of range):
                # pyelftools decides, and raises on what it cannot apply
            return super()._read_dwarf_section(section, relocate_dwarf_sections)

    f = open(elf.path, "rb")
    elf._keepalive = f  # closed with the process; the DWARFInfo holds copies
    return _ELFFile(f).get_dwarf_info(relocate_dwarf_sections=True, follow_links=False)


#: AArch64 relocation types found in DWARF sections (ELF for the Arm 64-bit Architecture)
R_AARCH64_ABS64, R_AARCH64_ABS32, R_AARCH64_PREL32 = 257, 258, 261


def apply_aarch64_rela(data: bytearray, rela: bytes, symtab: bytes) -> bool:
    """Apply an ELF64 little-endian ``.rela`` section (``rela``: its bytes; ``symtab``: the bytes
    of the symbol table it links to) to ``data``, the section it relocates, in place, as
    pyelftools' RelocationHandler does (S + A, S + A - P; wrapped to the field's width).

    Returns False, with ``data`` possibly half done, on anything else: a type other than
    ABS64, ABS32 or PREL32, a symbol index past the table, an offset past the section, a
    section whose size is not a whole number of entries. The caller then starts again from
    the unrelocated bytes with pyelftools, which decides (and raises) on such input.
    """
    if len(rela) % 24 or len(symtab) % 24:
        return False
    values = [v for _n, _i, _o, _x, v, _s in struct.iter_unpack("<IBBHQQ", symtab)]
    nsym, size = len(values), len(data)
    pack_q, pack_i = struct.Struct("<Q").pack_into, struct.Struct("<I").pack_into
    for off, info, addend in struct.iter_unpack("<QQq", rela):
        sym, typ = info >> 32, info & 0xFFFFFFFF
        if sym >= nsym:
            return False
        v = values[sym] + addend
        if typ == R_AARCH64_ABS64:
            if off + 8 > size:
                return False
            pack_q(data, off, v & 0xFFFFFFFFFFFFFFFF)
        elif typ == R_AARCH64_ABS32:
            if off + 4 > size:
                return False
            pack_i(data, off, v & 0xFFFFFFFF)
        elif typ == R_AARCH64_PREL32:
            if off + 4 > size:
                return False
            pack_i(data, off, (v - off) & 0xFFFFFFFF)
        else:
            return False
    return True


def section_bytes(elf: ElfImage, name: str) -> bytes | memoryview | None:
    """A DWARF section's bytes, decompressed when it is SHF_COMPRESSED (zlib or zstd)."""
    import zlib

    from scopecheck.binary.elf import SHF_COMPRESSED

    s = elf.sections.get(name)
    if s is None or s.type == SHT_NOBITS:
        return None
    if not s.flags & SHF_COMPRESSED:
        return elf.section_bytes(name)
    if s.size < _CHDR64:
        raise InputError(f"{elf.path}: corrupt compressed section {name}")
    ch_type, _res, want, _align = struct.unpack_from("<IIQQ", elf.map, s.offset)
    raw = elf.map[s.offset + _CHDR64: s.offset + s.size]
    if ch_type == ELFCOMPRESS_ZSTD:
        return _zstd_bytes(elf, name, raw, want)
    if ch_type != 1:
        raise InputError(f"{elf.path}: section {name} uses unknown compression type {ch_type}")
    try:
        out = zlib.decompressobj().decompress(raw, min(want + 1, 1 << 40))
    except (zlib.error, ValueError, OverflowError) as e:
        raise InputError(f"{elf.path}: corrupt compressed section {name} ({one_line(e)})") from None
    if len(out) != want:
        raise InputError(f"{elf.path}: compressed section {name} holds {len(out)} bytes, its header says {want}")
    return out


ELFCOMPRESS_ZSTD = 2
_CHDR64 = 24  # Elf64_Chdr: ch_type, ch_reserved, ch_size, ch_addralign


def _zstd_section_data(elf: ElfImage, section) -> bytes:
    """The decompressed bytes of a zstd SHF_COMPRESSED section (CONFIG_DEBUG_INFO_COMPRESSED_ZSTD).

    Reads at most ``ch_size`` bytes (the size the section header promises), in chunks, so a
    corrupt header cannot make us allocate more than the frame really holds.
    """
    off, size = section["sh_offset"], section["sh_size"]
    if size < _CHDR64 or off + size > elf.file_size:
        raise InputError(f"{elf.path}: corrupt zstd-compressed section {section.name}")
    return _zstd_bytes(elf, section.name, elf.map[off + _CHDR64: off + size], section.data_size)


def _zstd_bytes(elf: ElfImage, name: str, raw: bytes, want: int) -> bytes:
    import io

    import zstandard

    src = io.BytesIO(raw)
    out = bytearray()
    try:
        with zstandard.ZstdDecompressor().stream_reader(src, read_across_frames=True) as r:
            while len(out) <= want:
                chunk = r.read(min(1 << 20, want + 1 - len(out)))
                if not chunk:
                    break
                out += chunk
    except zstandard.ZstdError as e:
        raise InputError(f"{elf.path}: corrupt zstd-compressed section {name} ({one_line(e)})") from None
    if len(out) != want:
        raise InputError(f"{elf.path}: zstd-compressed section {name} holds {len(out)} bytes, "
                         f"its header says {want}")
    return bytes(out)


def cu_offsets(elf: ElfImage, dwarf) -> list[int]:
    """Offsets of every unit header in .debug_info, from the unit lengths alone."""
    s = dwarf.debug_info_sec
    if uses_windows(elf):
        buf, base, size = elf.map, elf.sections[".debug_info"].offset, s.size
    else:
        buf, base, size = s.stream.getvalue(), 0, s.size
    out = []
    off = 0
    while off + 4 <= size:
        (length,) = struct.unpack_from("<I", buf, base + off)
        out.append(off)
        if length == 0xFFFFFFFF:
            if off + 12 > size:
                break
            (length,) = struct.unpack_from("<Q", buf, base + off + 4)
            off += 12 + length
        else:
            off += 4 + length
        if length == 0:
            break
    return out
