"""Open and validate an arm64 ELF file with DWARF, cheaply.

A Debian dbg vmlinux is ~270 MB. Nothing here reads a whole section: the file
is memory-mapped and DWARF sections are handed to pyelftools as windows on the
map (see :class:`SectionStream`), so only the bytes a query touches are read.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from scopecheck.errors import InputError

EM_AARCH64 = 183
EM_X86_64 = 62
_MACHINES = {3: "i386", 8: "MIPS", 20: "PowerPC", 21: "PowerPC64", 22: "s390", 40: "ARM (32-bit)",
             62: "x86-64", 183: "AArch64", 243: "RISC-V"}
SHF_COMPRESSED = 0x800
SHT_NOBITS = 8
SHT_NOTE = 7


@dataclass(frozen=True, slots=True)
class SectionInfo:
    name: str
    offset: int
    size: int
    flags: int
    type: int
    addr: int


class SectionStream:
    """A read-only file-like window [base, base+size) on a memory map.

    pyelftools only needs read/seek/tell; offsets are section-relative.
    """

    __slots__ = ("_map", "_base", "_size", "_pos")

    def __init__(self, mapping: mmap.mmap, base: int, size: int):
        self._map = mapping
        self._base = base
        self._size = size
        self._pos = 0

    def read(self, n: int = -1) -> bytes:
        pos = self._pos
        if n is None or n < 0:
            end = self._size
        else:
            end = pos + n  # pyelftools reads a byte at a time: no min() call
            if end > self._size:
                end = self._size
        if end <= pos:
            return b""
        self._pos = end
        base = self._base
        return self._map[base + pos: base + end]

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence == 0:
            self._pos = offset
        elif whence == 1:
            self._pos += offset
        else:
            self._pos = self._size + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def getvalue(self) -> bytes:
        return self._map[self._base: self._base + self._size]


class ElfImage:
    """An opened, validated aarch64 ELF: a vmlinux, a kvm_nvhe.o, a fixture object."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        #: the pyelftools DWARFInfo binary.dwarf.open_dwarf made for this image (kept, so that
        #: the readers of one run share the DIEs pyelftools has parsed), or None
        self.dwarf_info = None
        p = self.path
        from scopecheck.paths import check_input_file

        check_input_file(p, what="ELF file")  # before open: a FIFO or /dev/zero must not block
        try:
            self._file = open(p, "rb")
        except OSError as e:
            raise InputError(f"{p}: cannot open: {e.strerror}") from None
        st = os.fstat(self._file.fileno())
        self.file_size = st.st_size
        self.mtime_ns = st.st_mtime_ns
        if self.file_size < 64:
            self.close()
            raise InputError(f"{p}: not an ELF file (only {self.file_size} bytes)")
        self.map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            self._parse_header()
        except InputError:
            self.close()
            raise

    # -- header and sections, parsed directly (fast, and strict about bounds) --
    def _parse_header(self) -> None:
        m, p = self.map, self.path
        if m[:4] != b"\x7fELF":
            raise InputError(f"{p}: not an ELF file")
        if m[4] != 2:
            raise InputError(f"{p}: 32-bit ELF; scopecheck reads arm64 (AArch64) kernels")
        if m[5] != 1:
            raise InputError(f"{p}: big-endian ELF; scopecheck reads little-endian arm64 kernels")
        (e_type, e_machine, _v, _entry, _phoff, e_shoff, _flags, _ehsize, _phentsize, _phnum,
         e_shentsize, e_shnum, e_shstrndx) = struct.unpack_from("<HHIQQQIHHHHHH", m, 16)
        if e_machine != EM_AARCH64:
            arch = _MACHINES.get(e_machine, f"machine {e_machine}")
            raise InputError(f"{p}: {arch} ELF, not AArch64; scopecheck reads arm64 kernels")
        self.e_type = e_type  # 1 REL (.o), 2 EXEC (vmlinux), 3 DYN
        if e_shoff == 0 or e_shnum == 0:
            raise InputError(f"{p}: ELF has no section headers (stripped or corrupt)")
        if e_shentsize != 64:
            raise InputError(f"{p}: corrupt ELF header (section header size {e_shentsize})")
        if e_shoff + e_shnum * 64 > self.file_size:
            raise InputError(f"{p}: truncated ELF (section headers lie past the end of the file)")
        raw = []
        for i in range(e_shnum):
            (sh_name, sh_type, sh_flags, sh_addr, sh_offset, sh_size, _link, _info, _align,
             _entsize) = struct.unpack_from("<IIQQQQIIQQ", m, e_shoff + i * 64)
            raw.append((sh_name, sh_type, sh_flags, sh_addr, sh_offset, sh_size))
        if e_shstrndx >= e_shnum:
            raise InputError(f"{p}: corrupt ELF (bad section name table index)")
        _, _, _, _, stroff, strsize = raw[e_shstrndx]
        if stroff + strsize > self.file_size:
            raise InputError(f"{p}: truncated ELF (section names lie past the end of the file)")
        self.sections: dict[str, SectionInfo] = {}
        for sh_name, sh_type, sh_flags, sh_addr, sh_offset, sh_size in raw:
            if sh_name >= strsize:
                raise InputError(f"{p}: corrupt ELF (bad section name offset)")
            end = m.find(b"\0", stroff + sh_name, stroff + strsize)
            name = m[stroff + sh_name: end if end >= 0 else stroff + strsize].decode("latin-1")
            if sh_type != SHT_NOBITS and sh_offset + sh_size > self.file_size:
                raise InputError(f"{p}: truncated ELF (section {name} lies past the end of the file)")
            self.sections.setdefault(name, SectionInfo(name, sh_offset, sh_size, sh_flags, sh_type, sh_addr))

    @property
    def is_relocatable(self) -> bool:
        return self.e_type == 1

    def section(self, name: str) -> SectionInfo | None:
        return self.sections.get(name)

    def section_bytes(self, name: str) -> memoryview | None:
        s = self.sections.get(name)
        if s is None or s.type == SHT_NOBITS:
            return None
        return memoryview(self.map)[s.offset: s.offset + s.size]

    def has_dwarf(self) -> bool:
        return ".debug_info" in self.sections or ".zdebug_info" in self.sections

    def require_dwarf(self) -> None:
        if ".debug_info.dwo" in self.sections:
            raise InputError(f"{self.path}: a split DWARF .dwo file, which scopecheck does not read; "
                             "build without -gsplit-dwarf (CONFIG_DEBUG_INFO_SPLIT=n)")
        if ".debug_info" in self.sections or ".zdebug_info" in self.sections:
            return
        if ".gnu_debuglink" in self.sections:
            raise InputError(f"{self.path}: no DWARF here, only a .gnu_debuglink to a separate debug file; "
                             "pass the debug file (Debian: linux-image-<abi>-dbg's vmlinux)")
        if ".BTF" in self.sections:
            raise InputError(f"{self.path}: no DWARF (.debug_info) in this ELF, only BTF; "
                             "pass the dbg vmlinux or a build with CONFIG_DEBUG_INFO")
        raise InputError(f"{self.path}: no DWARF (.debug_info) in this ELF; build with CONFIG_DEBUG_INFO")

    @property
    def build_id(self) -> str | None:
        """The GNU build-id note (vmlinux keeps it in ``.notes``), as hex."""
        for s in self.sections.values():
            if s.type != SHT_NOTE:
                continue
            off, end = s.offset, s.offset + s.size
            while off + 12 <= end:
                namesz, descsz, ntype = struct.unpack_from("<III", self.map, off)
                name_off = off + 12
                desc_off = name_off + ((namesz + 3) & ~3)
                nxt = desc_off + ((descsz + 3) & ~3)
                if nxt > end:
                    break
                if ntype == 3 and self.map[name_off: name_off + namesz] == b"GNU\0":
                    return self.map[desc_off: desc_off + descsz].hex()
                off = nxt
        return None

    def compressed_debug(self) -> bool:
        """Any compressed DWARF section (then DWARF is decompressed into memory, not read in place)."""
        return ".zdebug_info" in self.sections or any(
            s.flags & SHF_COMPRESSED for n, s in self.sections.items() if n.startswith(".debug_"))

    def close(self) -> None:
        self.dwarf_info = None
        m = getattr(self, "map", None)
        if m is not None:
            try:
                m.close()
            except BufferError:
                pass  # a memoryview is still alive; the GC closes it
        f = getattr(self, "_file", None)
        if f is not None:
            f.close()

    def __enter__(self) -> "ElfImage":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
