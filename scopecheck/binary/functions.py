"""Hyp functions, inlined instances and call edges of an nVHE hyp, from DWARF, symbols and code.

:func:`hyp_functions` reads a vmlinux (only its nVHE hyp part) or a ``kvm_nvhe.o``
and returns :class:`~scopecheck.model_code.HypFacts`:

* out-of-line functions: DWARF subprograms with code in the hyp's compile units,
  and assembly symbols in hyp text that have no subprogram (vectors,
  ``__guest_enter``, host entry, ...);
* every ``DW_TAG_inlined_subroutine`` (nested ones too), with call file and line;
* call edges: DWARF call sites (``DW_TAG_call_site``, ``DW_TAG_GNU_call_site``),
  inlining, and disassembly (capstone) of ``bl`` / ``b`` / ``blr`` / ``br`` where
  DWARF has no call site for the instruction (assembly, and what DWARF misses);
  ``address_taken`` edges for functions stored in tables (``host_hcall[]``) from
  the functions whose code reads the table.

Finding the hyp in a vmlinux without walking its ~2,300 units: the hyp text is
``[__hyp_idmap_text_start, __hyp_idmap_text_end)`` and
``[__hyp_text_start, __hyp_text_end)`` (or the span of the ``__kvm_nvhe_`` text
symbols); ``.debug_aranges`` (parsed raw) names the units with code there. Only
those units' DIE trees are walked, and in them only subprograms, lexical blocks
and inlined instances (type DIEs are skipped by their sibling links). The symbol
table is parsed raw over the memory map.
"""

from __future__ import annotations

import bisect
import os
import struct
import time
from dataclasses import dataclass

from scopecheck.binary import disasm
from scopecheck.binary.dwarf import (children, cu_offsets, line_program, open_dwarf, reading_dwarf,
                                     skim_children)
from scopecheck.binary.elf import SHT_NOBITS, ElfImage
from scopecheck.errors import InputError
from scopecheck.model_code import CallEdge, HypFacts, HypFunction, InlinedInstance, Unanalysed

PREFIX = "__kvm_nvhe_"
SHF_EXECINSTR = 0x4
SHT_RELA = 4
STT_NOTYPE, STT_OBJECT, STT_FUNC, STT_SECTION = 0, 1, 2, 3
STB_LOCAL = 0
SHN_UNDEF = 0

R_AARCH64_ABS64 = 257
R_AARCH64_JUMP26 = 282
R_AARCH64_CALL26 = 283
R_AARCH64_RELATIVE = 1027
_R_ADDR = {274, 275, 276, 277, 278, 284, 285, 286, 299}  # adr, adrp, add :lo12:, ldst :lo12:

_CALL_SITE = ("DW_TAG_call_site", "DW_TAG_GNU_call_site")
_CU_LEVEL_TAGS = frozenset(("DW_TAG_subprogram", "DW_TAG_variable"))  # what walk_cu reads of a unit's top level
# mapping symbols, local labels, linker-script section markers (not functions)
_MARKERS = ("$", ".L", "__hyp_section_", "__start_", "__stop_", "__hyp_idmap_text_", "__hyp_text_")


# ---------------------------------------------------------------- raw ELF tables

@dataclass(slots=True)
class Sym:
    name: str  # as in .strtab (with any __kvm_nvhe_ prefix)
    value: int
    size: int
    type: int
    bind: int
    shndx: int

    @property
    def plain(self) -> str:
        return self.name[len(PREFIX):] if self.name.startswith(PREFIX) else self.name


@dataclass(slots=True)
class _Shdr:
    index: int
    name: str
    type: int
    flags: int
    addr: int
    offset: int
    size: int
    link: int
    info: int



def _int(attr) -> int | None:
    """An attribute's value when it is an integer; None when absent or of a corrupt form."""
    v = getattr(attr, "value", None)
    return v if isinstance(v, int) and not isinstance(v, bool) else None

def section_headers(elf: ElfImage) -> list[_Shdr]:
    """Every section header, by index (ElfImage keeps them by name only)."""
    m = elf.map
    e_shoff = struct.unpack_from("<Q", m, 40)[0]
    e_shnum, e_shstrndx = struct.unpack_from("<HH", m, 60)
    raw = [struct.unpack_from("<IIQQQQIIQQ", m, e_shoff + i * 64) for i in range(e_shnum)]
    stroff = raw[e_shstrndx][4]
    out = []
    for i, (nm, typ, flags, addr, off, size, link, info, _a, _e) in enumerate(raw):
        end = m.find(b"\0", stroff + nm)
        out.append(_Shdr(i, m[stroff + nm:end].decode("latin-1"), typ, flags, addr, off, size, link, info))
    return out


def read_symbols(elf: ElfImage, prefix: str | None = None, extra: tuple[str, ...] = ()) -> list[Sym]:
    """Symbols of .symtab, parsed raw. With ``prefix``: only names starting with it, plus ``extra`` names."""
    symtab, strtab = elf.sections.get(".symtab"), elf.sections.get(".strtab")
    if symtab is None or strtab is None:
        raise InputError(f"{elf.path}: no symbol table (.symtab); pass an unstripped vmlinux or object")
    m = elf.map
    sbase, send = strtab.offset, strtab.offset + strtab.size
    wanted: set[int] | None = None
    if prefix is not None:
        wanted = set()
        needle = prefix.encode()
        pos = m.find(needle, sbase, send)
        while pos >= 0:
            if m[pos - 1] == 0:
                wanted.add(pos - sbase)
            pos = m.find(needle, pos + 1, send)
        for x in extra:  # the linker may store a name as the tail of a longer one
            n = x.encode() + b"\0"
            pos = m.find(n, sbase, send)
            while pos >= 0:
                wanted.add(pos - sbase)
                pos = m.find(n, pos + 1, send)
    out = []
    view = memoryview(m)[symtab.offset: symtab.offset + symtab.size - symtab.size % 24]
    try:
        for st_name, st_info, _other, st_shndx, st_value, st_size in struct.iter_unpack("<IBBHQQ", view):
            if wanted is not None and st_name not in wanted:
                continue
            if st_name == 0:
                continue
            end = m.find(b"\0", sbase + st_name, send)
            name = m[sbase + st_name: end].decode("latin-1")
            if prefix is not None and not name.startswith(prefix) and name not in extra:
                continue
            out.append(Sym(name, st_value, st_size, st_info & 0xF, st_info >> 4, st_shndx))
    finally:
        view.release()
    return out


def _rela(elf: ElfImage, sh: _Shdr):
    """(r_offset, type, sym_index, addend) of one SHT_RELA section."""
    view = memoryview(elf.map)[sh.offset: sh.offset + sh.size - sh.size % 24]
    try:
        return [(off, info & 0xFFFFFFFF, info >> 32, add) for off, info, add in struct.iter_unpack("<QQq", view)]
    finally:
        view.release()


def read_aranges(elf: ElfImage) -> dict[int, list[tuple[int, int]]]:
    """.debug_aranges parsed raw: unit offset in .debug_info -> [(lo, hi), ...]."""
    from scopecheck.binary.dwarf import section_bytes

    m = section_bytes(elf, ".debug_aranges")  # decompressed if need be
    if m is None:
        return {}
    base, off, end = 0, 0, len(m)
    out: dict[int, list[tuple[int, int]]] = {}
    while off + 16 <= end:
        (length,) = struct.unpack_from("<I", m, off)
        hdr = 4
        if length == 0xFFFFFFFF:
            (length,) = struct.unpack_from("<Q", m, off + 4)
            hdr = 12
            (_ver,) = struct.unpack_from("<H", m, off + hdr)
            (cu_off,) = struct.unpack_from("<Q", m, off + hdr + 2)
            p = off + hdr + 10
        else:
            (_ver,) = struct.unpack_from("<H", m, off + hdr)
            (cu_off,) = struct.unpack_from("<I", m, off + hdr + 2)
            p = off + hdr + 6
        asz, _seg = m[p], m[p + 1]
        p += 2
        unit_end = off + hdr + length
        if asz != 8:
            off = unit_end
            continue
        p = base + (((p - base) + 15) & ~15)
        rs = out.setdefault(cu_off, [])
        while p + 16 <= unit_end:
            a, n = struct.unpack_from("<QQ", m, p)
            p += 16
            if a == 0 and n == 0:
                break
            rs.append((a, a + n))
        off = unit_end
    return out


# ---------------------------------------------------------------- helpers

def _strip_dir(path: str, comp_dir: str) -> str:
    c = comp_dir.rstrip("/")
    if c and c != "." and path.startswith(c + "/"):
        return path[len(c) + 1:]
    return path


def _s(v) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


def _overlaps(ranges, lo: int, hi: int) -> bool:
    return any(a < hi and lo < b for a, b in ranges)


class _Intervals:
    """Sorted non-overlapping intervals -> payload, for address lookup."""

    def __init__(self, items):
        items = sorted(items, key=lambda t: (t[0], -t[1]))
        self.starts = [t[0] for t in items]
        self.items = items

    def find(self, addr: int):
        i = bisect.bisect_right(self.starts, addr) - 1
        while i >= 0:
            lo, hi, payload = self.items[i]
            if lo <= addr < hi:
                return payload
            if addr - lo > 1 << 24:
                return None
            i -= 1
        return None


# ---------------------------------------------------------------- DWARF

class _DwarfWalker:
    def __init__(self, elf: ElfImage, dwarf):
        self.elf = elf
        self.dwarf = dwarf
        self._files: dict[int, list] = {}
        self._info: dict[int, tuple] = {}
        self._rl = None
        self.functions: list[HypFunction] = []
        self.inlined: list[InlinedInstance] = []
        self.unanalysed: list[Unanalysed] = []
        self.edges: list[CallEdge] = []
        self.variables: dict[str, object] = {}  # top-level variable name -> DIE
        self.asm_cus: list[tuple[str, object]] = []  # (name, cu) of as(1) units
        self.cu_ranges: list[tuple[int, int, tuple]] = []  # (lo, hi, (cu name, cu))
        self.abstract: dict[tuple[int, str], object] = {}  # (cu offset, name) -> subprogram without code
        self.cu_names: list[str] = []
        self.rel_comp_dirs: set[str] = set()

    def src_rel(self, path: str, comp_dir: str) -> str:
        """``path`` relative to the compilation (or source) root when it lies under it.

        Debian builds C units with a relative comp_dir (``debian/build/...``) and names
        relative to the source tree, but as(1) units with absolute names and an absolute
        comp_dir: the source root is that comp_dir less the C units' relative one.
        """
        p = _strip_dir(path, comp_dir)
        if p.startswith("/") and comp_dir.startswith("/"):
            for r in self.rel_comp_dirs:
                if comp_dir.rstrip("/").endswith("/" + r):
                    root = comp_dir.rstrip("/")[: -len(r) - 1]
                    p = _strip_dir(p, root)
                    break
        return p

    # -- names of files --
    def _comp_dir(self, cu) -> str:
        a = cu.get_top_DIE().attributes.get("DW_AT_comp_dir")
        return _s(a.value) if a is not None else ""

    def rel(self, path: str, comp_dir: str) -> str:
        path = os.path.normpath(path)
        if comp_dir and comp_dir not in (".", "/") and path.startswith(comp_dir.rstrip("/") + "/"):
            path = path[len(comp_dir.rstrip("/")) + 1:]
        return path

    def files(self, cu) -> list:
        off = cu.cu_offset
        t = self._files.get(off)
        if t is not None:
            return t
        t = []
        lp = line_program(self.dwarf, cu)
        if lp is not None:
            comp = self._comp_dir(cu)
            h = lp.header
            ver = h["version"]
            # a corrupt (or DWARF 5 without the entry formats) header leaves these None
            dirs = [_s(d) for d in h["include_directory"] or ()]
            for fe in h["file_entry"] or ():
                name = _s(fe.name)
                di = fe.dir_index if isinstance(fe.dir_index, int) else 0
                if ver >= 5:
                    d = dirs[di] if 0 < di < len(dirs) else ""
                else:
                    d = dirs[di - 1] if 0 < di <= len(dirs) else ""
                p = name if name.startswith("/") or not d else f"{d}/{name}"
                t.append(self.rel(p, comp))
            if ver < 5:
                t.insert(0, None)
        self._files[off] = t
        return t

    def file_name(self, cu, idx) -> str | None:
        if not isinstance(idx, int) or isinstance(idx, bool):
            return None
        t = self.files(cu)
        return t[idx] if 0 <= idx < len(t) else None

    # -- function identity --
    def info(self, die) -> tuple:
        """(name, decl_file, decl_line, external, declaration) following origins/specifications."""
        off = die.offset
        r = self._info.get(off)
        if r is not None:
            return r
        self._info[off] = (None, None, None, False, False)  # cycle guard
        a = die.attributes
        name = _s(a["DW_AT_name"].value) if "DW_AT_name" in a else None
        f = a.get("DW_AT_decl_file")
        dfile = self.file_name(die.cu, f.value) if f is not None else None
        ln = a.get("DW_AT_decl_line")
        dline = _int(ln)
        ext = "DW_AT_external" in a
        decl = "DW_AT_declaration" in a
        for ref in ("DW_AT_abstract_origin", "DW_AT_specification"):
            if ref in a and (name is None or dfile is None or not ext):
                try:
                    o = die.get_DIE_from_attribute(ref)
                except Exception:
                    continue
                on, of, ol, oe, _od = self.info(o)
                if name is None:
                    name = on
                if dfile is None:
                    dfile, dline = of, ol
                ext = ext or oe
        r = (name or "<anon>", dfile, dline, ext, decl)
        self._info[off] = r
        return r

    def key(self, die) -> tuple:
        n, f, l, _e, _d = self.info(die)
        return (n, f, l)

    # -- addresses --
    def ranges(self, die) -> tuple:
        a = die.attributes
        lo = a.get("DW_AT_low_pc")
        if lo is not None:
            h = a.get("DW_AT_high_pc")
            if not isinstance(lo.value, int) or (h is not None and not isinstance(h.value, int)):
                return ()  # a corrupt form (a block where an address belongs)
            if h is None:
                return ((lo.value, lo.value + 1),)
            hi = h.value if h.form == "DW_FORM_addr" else lo.value + h.value
            return ((lo.value, hi),)
        r = a.get("DW_AT_ranges")
        if r is None:
            return ()  # (a DW_FORM_rnglistx index comes translated to its list's offset by pyelftools)
        if self._rl is None:
            self._rl = self.dwarf.range_lists()
        if self._rl is None:
            return ()
        top = die.cu.get_top_DIE().attributes.get("DW_AT_low_pc")
        base = _int(top) or 0
        out = []
        try:
            entries = self._rl.get_range_list_at_offset(r.value, cu=die.cu)
        except Exception:
            return ()
        for e in entries:
            if hasattr(e, "base_address"):
                base = e.base_address
                continue
            if getattr(e, "is_absolute", False):
                lo_, hi_ = e.begin_offset, e.end_offset
            else:
                lo_, hi_ = base + e.begin_offset, base + e.end_offset
            if hi_ > lo_:
                out.append((lo_, hi_))
        return tuple(out)

    # -- the walk --
    def walk_cu(self, cu, ranges=None) -> None:
        top = cu.get_top_DIE()
        a = top.attributes
        comp = self._comp_dir(cu)
        if comp and not comp.startswith("/"):
            self.rel_comp_dirs.add(comp.rstrip("/"))
        cu_name = self.src_rel(_s(a["DW_AT_name"].value), comp) if "DW_AT_name" in a else None
        self.cu_names.append(cu_name)
        self.cu_ranges.extend((lo, hi, (cu_name, cu)) for lo, hi in (ranges or self.ranges(top)))
        producer = _s(a["DW_AT_producer"].value) if "DW_AT_producer" in a else ""
        if producer.startswith("GNU AS") or not top.has_children:
            self.asm_cus.append((cu_name, cu))
            return
        for die in skim_children(top, _CU_LEVEL_TAGS):
            tag = die.tag
            if tag == "DW_TAG_subprogram":
                self._subprogram(die, cu_name)
            elif tag == "DW_TAG_variable":
                n = die.attributes.get("DW_AT_name")
                if n is not None:
                    self.variables.setdefault(_s(n.value), die)

    def _subprogram(self, die, cu_name) -> None:
        a = die.attributes
        if "DW_AT_declaration" in a:
            return
        if "DW_AT_low_pc" not in a and "DW_AT_ranges" not in a:
            n = a.get("DW_AT_name")  # abstract instance (inline, or out-of-line without a concrete DIE)
            if n is not None:
                self.abstract.setdefault((die.cu.cu_offset, _s(n.value)), die)
            return
        rs = self.ranges(die)
        if not rs:
            form = a["DW_AT_ranges"].form if "DW_AT_ranges" in a else a["DW_AT_low_pc"].form
            name, dfile, dline, _ext, _ = self.info(die)
            self.unanalysed.append(Unanalysed("no-ranges", (name, dfile, dline), dfile, dline, None,
                                              f"code ranges not read ({form})", "binary"))
            return
        name, dfile, dline, ext, _ = self.info(die)
        lo = rs[0][0]
        fn = HypFunction(name=name, symbol=None, address=lo, size=sum(h - l for l, h in rs), decl_file=dfile,
                         decl_line=dline, cu_name=cu_name, is_asm=False, external=ext, die_offset=die.offset,
                         ranges=rs)
        self.functions.append(fn)
        if die.has_children:
            self._body(die, fn.key, 0, None)

    def _body(self, die, fkey, depth, parent) -> None:
        for ch in children(die):
            tag = ch.tag
            if tag == "DW_TAG_inlined_subroutine":
                okey = self.key(ch)
                a = ch.attributes
                cf = a.get("DW_AT_call_file")
                cl = a.get("DW_AT_call_line")
                cfile = self.file_name(ch.cu, cf.value) if cf is not None else None
                cline = _int(cl)
                rs = self.ranges(ch)
                self.inlined.append(InlinedInstance(callee=okey, caller=fkey, parent=parent, call_file=cfile,
                                                    call_line=cline, ranges=rs, depth=depth + 1,
                                                    die_offset=ch.offset))
                self.edges.append(CallEdge(caller=fkey, callee=okey, kind="inlined", file=cfile, line=cline,
                                           address=min((r[0] for r in rs), default=None), callee_name=okey[0],
                                           inline_caller=parent))
                if ch.has_children:
                    self._body(ch, fkey, depth + 1, okey)
            elif tag == "DW_TAG_lexical_block":
                if ch.has_children:
                    self._body(ch, fkey, depth, parent)
            elif tag in _CALL_SITE:
                self._call_site(ch, fkey, parent)

    def _call_site(self, die, fkey, parent) -> None:
        a = die.attributes
        origin = None
        for k in ("DW_AT_call_origin", "DW_AT_abstract_origin"):
            if k in a:
                try:
                    origin = die.get_DIE_from_attribute(k)
                except Exception:
                    origin = None
                break
        pc = a.get("DW_AT_call_return_pc") or a.get("DW_AT_low_pc")
        pcv = _int(pc)
        addr = pcv - 4 if pcv is not None else None
        tail = "DW_AT_call_tail_call" in a or "DW_AT_GNU_tail_call" in a
        indirect = "DW_AT_call_target" in a or "DW_AT_GNU_call_site_target" in a or origin is None
        cf, cl = a.get("DW_AT_call_file"), a.get("DW_AT_call_line")
        callee = self.key(origin) if origin is not None else None
        self.edges.append(CallEdge(
            caller=fkey, callee=callee, kind="tail_call" if tail else "call_site",
            indirect=indirect and callee is None,
            file=self.file_name(die.cu, cf.value) if cf is not None else None,
            line=_int(cl), address=addr,
            callee_name=callee[0] if callee else None, inline_caller=parent))

    def line_of(self, cu, addr: int) -> int | None:
        lp = line_program(self.dwarf, cu)
        if lp is None:
            return None
        for e in lp.get_entries():
            st = e.state
            if st is not None and st.address == addr and not st.end_sequence:
                return st.line
        return None

    def element_type(self, var_name: str) -> str | None:
        """The element type name of an array variable (``hcall_t`` for ``host_hcall``)."""
        die = self.variables.get(var_name)
        if die is None:
            return None
        try:
            from scopecheck.binary.types import type_name

            seen = 0
            t = die.get_DIE_from_attribute("DW_AT_type") if "DW_AT_type" in die.attributes else None
            while t is not None and seen < 16:
                seen += 1
                if t.tag in ("DW_TAG_const_type", "DW_TAG_volatile_type"):
                    t = t.get_DIE_from_attribute("DW_AT_type") if "DW_AT_type" in t.attributes else None
                    continue
                if t.tag == "DW_TAG_array_type":
                    t = t.get_DIE_from_attribute("DW_AT_type") if "DW_AT_type" in t.attributes else None
                    while t is not None and t.tag in ("DW_TAG_const_type", "DW_TAG_volatile_type"):
                        t = t.get_DIE_from_attribute("DW_AT_type") if "DW_AT_type" in t.attributes else None
                    return type_name(t)
                return type_name(t)
        except Exception:
            return None
        return None


# ---------------------------------------------------------------- the facts

def _hyp_text_ranges(elf: ElfImage, syms: list[Sym], shdrs: list[_Shdr]) -> list[tuple[int, int]]:
    if elf.is_relocatable:
        return [(0, sh.size) for sh in shdrs if sh.flags & SHF_EXECINSTR and sh.type != SHT_NOBITS]
    by = {s.name: s.value for s in syms if not s.name.startswith(PREFIX)}
    out = []
    for a, b in (("__hyp_idmap_text_start", "__hyp_idmap_text_end"), ("__hyp_text_start", "__hyp_text_end")):
        if a in by and b in by and by[b] > by[a]:
            out.append((by[a], by[b]))
    if not out:
        execs = {sh.index for sh in shdrs if sh.flags & SHF_EXECINSTR}
        vals = [(s.value, s.value + max(s.size, 4)) for s in syms
                if s.name.startswith(PREFIX) and s.shndx in execs and s.type in (STT_FUNC, STT_NOTYPE)]
        if vals:
            out.append((min(v[0] for v in vals), max(v[1] for v in vals)))
    return out


def _code_syms(elf, syms, shdrs, text_ranges) -> list[Sym]:
    """Function and label symbols in hyp text (no mapping symbols, no section markers)."""
    execs = {sh.index for sh in shdrs if sh.flags & SHF_EXECINSTR and sh.type != SHT_NOBITS}
    out = []
    for s in syms:
        if s.type not in (STT_FUNC, STT_NOTYPE) or s.shndx not in execs:
            continue
        p = s.plain
        if p.startswith(_MARKERS) or not p or p.endswith(("_start", "_end")) and s.type == STT_NOTYPE \
                and p.startswith(("__hyp", "__start_", "__stop_")):
            continue
        if not elf.is_relocatable and not any(lo <= s.value < hi for lo, hi in text_ranges):
            continue
        if elf.is_relocatable and not s.name.startswith(PREFIX) and any(x.name.startswith(PREFIX) for x in syms[:50]):
            continue
        out.append(s)
    return out


def _code_reader(elf: ElfImage, shdrs: list[_Shdr]):
    if elf.is_relocatable:
        texts = [sh for sh in shdrs if sh.flags & SHF_EXECINSTR and sh.type != SHT_NOBITS]
        sh = max(texts, key=lambda s: s.size) if texts else None

        def read(lo, hi):
            if sh is None or lo < 0 or hi > sh.size:
                return b""
            return elf.map[sh.offset + lo: sh.offset + hi]
        return read
    execs = [sh for sh in shdrs if sh.flags & SHF_EXECINSTR and sh.type != SHT_NOBITS and sh.addr]

    def read(lo, hi):
        for sh in execs:
            if sh.addr <= lo and hi <= sh.addr + sh.size:
                return elf.map[sh.offset + lo - sh.addr: sh.offset + hi - sh.addr]
        return b""
    return read


def hyp_functions(elf: ElfImage | str | os.PathLike) -> HypFacts:
    """The hyp's functions, inlined instances and call edges (see the module doc)."""
    own = not isinstance(elf, ElfImage)
    if own:
        elf = ElfImage(elf)
    try:
        with reading_dwarf(elf.path, "DWARF or symbols of the hyp functions"):
            return _facts(elf)
    finally:
        if own:
            elf.close()


def _facts(elf: ElfImage) -> HypFacts:
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    shdrs = section_headers(elf)
    if elf.is_relocatable:
        syms = read_symbols(elf)
    else:
        syms = read_symbols(elf, PREFIX, extra=("__hyp_idmap_text_start", "__hyp_idmap_text_end",
                                                 "__hyp_text_start", "__hyp_text_end"))
    text_ranges = _hyp_text_ranges(elf, syms, shdrs)
    timings["symbols"] = time.perf_counter() - t0

    # -- which units --
    t = time.perf_counter()
    dwarf = open_dwarf(elf)
    walker = _DwarfWalker(elf, dwarf)
    if elf.is_relocatable:
        cus = list(dwarf.iter_CUs())
        ar = {}
    else:
        if not text_ranges:
            raise InputError(f"{elf.path}: no nVHE hyp here (no __kvm_nvhe_ text symbols)")
        ar = read_aranges(elf)
        # clang writes no .debug_aranges for C units (only -gdwarf-aranges would): a unit the
        # table lacks is placed by its own top DIE's ranges (GCC's kernels list every unit)
        for off in cu_offsets(elf, dwarf):
            if off not in ar:
                ar[off] = walker.ranges(dwarf.get_CU_at(off).get_top_DIE())
        offs = sorted(off for off, rs in ar.items() if any(_overlaps(rs, lo, hi) for lo, hi in text_ranges))
        cus = [dwarf.get_CU_at(o) for o in offs]
    timings["find_units"] = time.perf_counter() - t

    t = time.perf_counter()
    for cu in cus:  # relative comp_dirs first: they locate the source root of as(1) units
        comp = walker._comp_dir(cu)
        if comp and not comp.startswith("/"):
            walker.rel_comp_dirs.add(comp.rstrip("/"))
    for cu in cus:
        walker.walk_cu(cu, None if elf.is_relocatable else ar.get(cu.cu_offset))
    timings["dwarf_walk"] = time.perf_counter() - t

    # -- functions: DWARF + symbols --
    t = time.perf_counter()
    code_syms = _code_syms(elf, syms, shdrs, text_ranges)
    by_addr: dict[int, list[Sym]] = {}
    for s in code_syms:
        by_addr.setdefault(s.value, []).append(s)
    functions = walker.functions
    dwarf_addrs = set()
    for fn in functions:
        cands = by_addr.get(fn.address, [])
        exact = [s for s in cands if s.plain == fn.name]
        pick = exact or [s for s in cands if s.plain.startswith(fn.name + ".")] or cands
        if pick:
            fn.symbol = pick[0].name
        dwarf_addrs.add(fn.address)
    starts = sorted(by_addr)
    cu_at = _Intervals(walker.cu_ranges)
    aliases: dict[str, int] = {}  # other names of assembly functions (SYM_FUNC_ALIAS, __pi_ twins)
    for i, addr in enumerate(starts):
        if addr in dwarf_addrs:
            continue
        ss = by_addr[addr]
        s = next((x for x in ss if x.type == STT_FUNC and x.bind != STB_LOCAL), None) or \
            next((x for x in ss if x.type == STT_FUNC), None) or \
            next((x for x in ss if x.bind != STB_LOCAL), None) or ss[0]
        end = starts[i + 1] if i + 1 < len(starts) else None
        if s.size:
            end = min(end, addr + s.size) if end is not None else addr + s.size
        if end is None:
            end = next((hi for lo, hi in text_ranges if lo <= addr < hi), addr + 4)
        hit = cu_at.find(addr)
        cu_name = hit[0] if hit else None
        ab = walker.abstract.get((hit[1].cu_offset, s.plain)) if hit else None
        if ab is not None:  # C code that DWARF describes only abstractly
            n, dfile, dline, ext, _ = walker.info(ab)
            functions.append(HypFunction(name=n, symbol=s.name, address=addr, size=end - addr, decl_file=dfile,
                                         decl_line=dline, cu_name=cu_name, is_asm=False, external=ext,
                                         die_offset=ab.offset, ranges=((addr, end),)))
            continue
        for x in ss:
            aliases.setdefault(x.plain, addr)
        line = walker.line_of(hit[1], addr) if hit else None
        dfile = os.path.normpath(cu_name) if cu_name else None
        functions.append(HypFunction(name=s.plain, symbol=s.name, address=addr, size=end - addr,
                                     decl_file=dfile, decl_line=line, cu_name=cu_name, is_asm=True,
                                     external=s.bind != STB_LOCAL, die_offset=None, ranges=((addr, end),)))
    timings["symbols_match"] = time.perf_counter() - t

    # -- resolve external declarations to definitions --
    defined = {f.key for f in functions}
    ext_by_name: dict[str, tuple] = {}
    for f in functions:
        if f.external or f.is_asm:
            ext_by_name.setdefault(f.name, f.key)
    by_start = {f.address: f.key for f in functions if f.is_asm}
    for n, addr in aliases.items():
        if addr in by_start:
            ext_by_name.setdefault(n, by_start[addr])
    for e in walker.edges:
        if e.callee is not None and e.callee not in defined and e.kind != "inlined":
            n = e.callee[0]
            k = ext_by_name.get(n)
            if k is None and n.startswith("__builtin_"):  # GCC names memset calls __builtin_memset
                k = ext_by_name.get(n[10:]) or ext_by_name.get("__" + n[10:])
            if k is not None:
                e.callee = k

    # -- disassembly --
    t = time.perf_counter()
    edges = walker.edges
    _disasm_edges(elf, shdrs, syms, functions, edges, text_ranges, walker)
    timings["disasm"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0
    return HypFacts(path=str(elf.path), functions=functions, inlined=walker.inlined, edges=edges,
                    cus=walker.cu_names, timings=timings, unanalysed=walker.unanalysed)


def _disasm_edges(elf, shdrs, syms, functions, edges, text_ranges, walker) -> None:
    intervals = _Intervals([(lo, hi, f) for f in functions for lo, hi in f.ranges])
    starts = {f.address: f for f in functions if f.address is not None}
    covered = set()
    for e in edges:
        if e.kind in ("call_site", "tail_call") and e.address is not None:
            covered.add(e.address)
            covered.add(e.address + 4)
    read = _code_reader(elf, shdrs)
    rel = elf.is_relocatable

    # relocations (objects): by the place they patch in the code section
    text_relocs: dict[int, tuple] = {}
    data_ptrs: list[tuple[int, int, int]] = []  # (section index, offset, function address)
    sym_list: list[Sym] = []
    shdr_by_index = {sh.index: sh for sh in shdrs}
    code_sec = None
    if rel:
        sym_list = read_symbols_indexed(elf)
        texts = [sh for sh in shdrs if sh.flags & SHF_EXECINSTR and sh.type != SHT_NOBITS]
        code_sec = max(texts, key=lambda s: s.size).index if texts else None
        for sh in shdrs:
            if sh.type != SHT_RELA:
                continue
            target = shdr_by_index.get(sh.info)
            if target is None or target.name.startswith(".debug"):
                continue
            for off, typ, si, add in _rela(elf, sh):
                s = sym_list[si] if si < len(sym_list) else None
                if s is None:
                    continue
                if sh.info == code_sec:
                    text_relocs[off] = (typ, s, add)
                elif typ == R_AARCH64_ABS64 and s.shndx == code_sec:
                    data_ptrs.append((sh.info, off, s.value + add))

    # data symbols (tables)
    data_syms = []
    for s in (sym_list if rel else syms):
        if s.type in (STT_OBJECT, STT_NOTYPE) and s.shndx != SHN_UNDEF and s.shndx < 0xFF00 and s.name:
            sh = shdr_by_index.get(s.shndx)
            if sh is None or sh.flags & SHF_EXECINSTR or not (s.name.startswith(PREFIX) or rel):
                continue
            if s.plain.startswith(("$", "__hyp_section_")):
                continue
            data_syms.append(s)
    if rel:
        tables = {}
        for sidx in {d[0] for d in data_ptrs}:
            tables[sidx] = _Intervals([(s.value, s.value + max(s.size, 1), s) for s in data_syms if s.shndx == sidx])
    else:
        tables = _Intervals([(s.value, s.value + max(s.size, 1), s) for s in data_syms])

    # function pointers stored in hyp data: (table symbol, slot address, function)
    stored: list[tuple[Sym, int, HypFunction]] = []
    if rel:
        for sidx, off, faddr in data_ptrs:
            f = starts.get(faddr)
            tsym = tables[sidx].find(off)
            if f is not None and tsym is not None:
                stored.append((tsym, off, f))
    else:
        seen = set()
        rd = elf.sections.get(".rela.dyn")
        if rd is not None and data_syms:
            lo = min(s.value for s in data_syms)
            hi = max(s.value + s.size for s in data_syms)
            view = memoryview(elf.map)[rd.offset: rd.offset + rd.size - rd.size % 24]
            try:
                for off, info, add in struct.iter_unpack("<QQq", view):
                    if lo <= off < hi and (info & 0xFFFFFFFF) == R_AARCH64_RELATIVE:
                        f = starts.get(add & 0xFFFFFFFFFFFFFFFF)
                        if f is not None:
                            tsym = tables.find(off)
                            if tsym is not None:
                                stored.append((tsym, off, f))
                                seen.add(off)
            finally:
                view.release()
        for s in data_syms:  # applied values, when the image carries them
            for sh in shdrs:
                if sh.type != SHT_NOBITS and sh.addr and sh.addr <= s.value < sh.addr + sh.size \
                        and not sh.flags & SHF_EXECINSTR:
                    n = min(s.size, sh.addr + sh.size - s.value) // 8
                    base = sh.offset + s.value - sh.addr
                    for j in range(n):
                        (v,) = struct.unpack_from("<Q", elf.map, base + 8 * j)
                        f = starts.get(v)
                        if f is not None and s.value + 8 * j not in seen:
                            stored.append((s, s.value + 8 * j, f))
                    break

    table_readers: dict[str, set] = {}
    direct_taken: list[tuple[HypFunction, int, HypFunction]] = []

    def note_ref(fn, insn, target_addr, sym=None):
        if sym is None:
            f = starts.get(target_addr)
            if f is not None and f is not fn:
                direct_taken.append((fn, insn, f))
                return
            tsym = tables.find(target_addr) if not rel else None
        else:
            tsym = sym
        if tsym is not None:
            table_readers.setdefault(tsym.name, set()).add(fn.key)

    for fn in functions:
        for lo, hi in fn.ranges:
            code = read(lo, hi)
            if not code:
                continue
            branches, refs = disasm.scan(code, lo, track_addresses=not rel)
            for b in branches:
                if b.address in covered:
                    continue
                if b.kind in ("blr", "br"):
                    edges.append(CallEdge(caller=fn.key, callee=None, kind="blr" if b.kind == "blr" else "b",
                                          indirect=True, address=b.address, via=b.reg))
                    continue
                target = b.target
                callee_name = None
                r = text_relocs.get(b.address) if rel else None
                if r is not None:
                    typ, s, add = r
                    if s.shndx == code_sec:
                        target = s.value + add
                    else:
                        target = None
                        callee_name = s.plain
                if target is not None:
                    f = intervals.find(target)
                    if f is fn:
                        continue  # internal branch
                    if f is None and b.kind == "b":
                        continue
                    if f is not None:
                        if b.kind == "b" and target != f.address and not f.is_asm and not fn.is_asm:
                            continue
                        edges.append(CallEdge(caller=fn.key, callee=f.key, kind=b.kind, address=b.address,
                                              callee_name=f.name))
                        continue
                edges.append(CallEdge(caller=fn.key, callee=None, kind=b.kind, address=b.address,
                                      callee_name=callee_name))
            for ref in refs:
                note_ref(fn, ref.address, ref.target)
            if rel:
                for off, (typ, s, add) in text_relocs.items():
                    if lo <= off < hi and typ in _R_ADDR:
                        if s.shndx == code_sec:
                            note_ref(fn, off, s.value + add)
                        elif s.shndx in tables:
                            tsym = tables[s.shndx].find(s.value + add) if s.type == STT_SECTION else s
                            if tsym is not None:
                                table_readers.setdefault(tsym.name, set()).add(fn.key)
                        elif s.type != STT_SECTION:
                            table_readers.setdefault(s.name, set()).add(fn.key)

    seen_edges = set()
    for fn, insn, f in direct_taken:
        k = (fn.key, f.key, None)
        if k not in seen_edges:
            seen_edges.add(k)
            edges.append(CallEdge(caller=fn.key, callee=f.key, kind="address_taken", indirect=True, address=insn,
                                  callee_name=f.name))
    ttypes: dict[str, str | None] = {}
    for tsym, slot, f in stored:
        if tsym.name not in ttypes:
            ttypes[tsym.name] = walker.element_type(tsym.plain)
        readers = table_readers.get(tsym.name) or {None}
        for rk in sorted(readers, key=lambda k: (k is None, str(k))):
            k = (rk, f.key, tsym.name)
            if k in seen_edges:
                continue
            seen_edges.add(k)
            edges.append(CallEdge(caller=rk, callee=f.key, kind="address_taken", indirect=True,
                                  target_type=ttypes[tsym.name], address=slot, callee_name=f.name,
                                  via=tsym.plain))


def read_symbols_indexed(elf: ElfImage) -> list[Sym]:
    """All symbols by their index (relocations name symbols by index), index 0 included."""
    symtab, strtab = elf.sections[".symtab"], elf.sections[".strtab"]
    m = elf.map
    sbase = strtab.offset
    out = []
    for i in range(symtab.size // 24):
        st_name, st_info, _o, st_shndx, st_value, st_size = struct.unpack_from("<IBBHQQ", m, symtab.offset + 24 * i)
        end = m.find(b"\0", sbase + st_name)
        out.append(Sym(m[sbase + st_name:end].decode("latin-1"), st_value, st_size, st_info & 0xF, st_info >> 4,
                       st_shndx))
    return out
