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
    """A pyelftools ``DWARFInfo`` for ``elf``; raises InputError without DWARF."""
    elf.require_dwarf()
    if elf.is_relocatable and ".zdebug_info" in elf.sections:
        # pyelftools would apply .rela.zdebug_* to the compressed bytes
        raise InputError(f"{elf.path}: legacy .zdebug_* compressed DWARF in an object is not supported; "
                         "use -gz=zlib or zstd, or objcopy --decompress-debug-sections")
    try:
        dwarf = _windowed_dwarf(elf) if uses_windows(elf) else _pyelftools_dwarf(elf)
        _refuse_skeleton(elf, dwarf)
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
        """pyelftools decompresses zlib (SHF_COMPRESSED) sections itself; zstd ones are ours."""

        def _read_dwarf_section(self, section, relocate_dwarf_sections):
            if section.compressed and section._compression_type == ELFCOMPRESS_ZSTD:
                data = _zstd_section_data(elf, section)
                section.data = lambda: data
            return super()._read_dwarf_section(section, relocate_dwarf_sections)

    f = open(elf.path, "rb")
    elf._keepalive = f  # closed with the process; the DWARFInfo holds copies
    return _ELFFile(f).get_dwarf_info(relocate_dwarf_sections=True, follow_links=False)


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
