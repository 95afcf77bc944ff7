"""Give pyelftools a DWARFInfo over a memory-mapped ELF without copying sections.

pyelftools' ``ELFFile.get_dwarf_info()`` copies every debug section into a
BytesIO (hundreds of MB for a vmlinux). For linked images with plain sections we
hand it :class:`~scopecheck.binary.elf.SectionStream` windows instead. Relocatable
objects (.o, whose DWARF needs relocations applied) and compressed sections take
pyelftools' own path: they are small, or rare.
"""

from __future__ import annotations

import struct

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


def uses_windows(elf: ElfImage) -> bool:
    """True when DWARF can be read in place (linked image, uncompressed sections)."""
    return not elf.is_relocatable and not elf.compressed_debug()


def open_dwarf(elf: ElfImage):
    """A pyelftools ``DWARFInfo`` for ``elf``; raises InputError without DWARF."""
    elf.require_dwarf()
    if ".debug_info.dwo" in elf.sections:
        raise InputError(f"{elf.path}: split DWARF (.dwo) is not supported; build without -gsplit-dwarf")
    try:
        if uses_windows(elf):
            return _windowed_dwarf(elf)
        return _pyelftools_dwarf(elf)
    except InputError:
        raise
    except Exception as e:  # pyelftools raises many kinds on corrupt input
        raise InputError(f"{elf.path}: unreadable DWARF ({type(e).__name__}: {e})") from None


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

    f = open(elf.path, "rb")
    elf._keepalive = f  # closed with the process; the DWARFInfo holds copies
    return ELFFile(f).get_dwarf_info(relocate_dwarf_sections=True, follow_links=False)


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
