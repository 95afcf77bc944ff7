"""Find struct definitions in DWARF and turn them into :mod:`scopecheck.model` layouts.

Finding ``struct kvm_vcpu`` in a vmlinux without walking its ~2,300 compile
units: the struct's name is a string in .debug_str; the name attribute of its
DIE holds that string's offset. We search .debug_info's raw bytes for the offset
(a C-speed scan of the memory map), find the unit that holds each hit, and ask
pyelftools to parse just the DIE there. Only the DIEs of the requested types and
their member types are ever parsed. Where that cannot work (relocatable objects,
names in .debug_str_offsets, compressed sections) we walk unit top levels instead.
"""

from __future__ import annotations

import bisect
import os
import struct
from typing import Iterable

from scopecheck.binary.dwarf import children, cu_offsets, one_line, open_dwarf, skim_children, uses_windows
from scopecheck.binary.elf import ElfImage
from scopecheck.errors import InputError
from scopecheck.model import Member, StructLayout, StructStats

_AGGREGATE = ("DW_TAG_structure_type", "DW_TAG_union_type")
_AGGREGATE_TAGS = frozenset(_AGGREGATE)
_SKIP = ("DW_TAG_typedef", "DW_TAG_const_type", "DW_TAG_volatile_type",
         "DW_TAG_restrict_type", "DW_TAG_atomic_type", "DW_TAG_immutable_type")


def _name(die) -> str | None:
    a = die.attributes.get("DW_AT_name")
    if a is None:
        return None
    v = a.value
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


_STRUCT_CHILDREN = ("DW_TAG_member", "DW_TAG_structure_type", "DW_TAG_union_type", "DW_TAG_enumeration_type",
                    "DW_TAG_typedef", "DW_TAG_variant_part")


def _children_parse(die) -> bool:
    """True when ``die``'s children decode as a C struct's (a DIE found by scanning bytes may be a
    misparse: bytes that happen to decode as a struct named so, with garbage or other DIEs after)."""
    try:
        kids = list(die.iter_children())
    except Exception:
        return False
    if kids and not die.attributes["DW_AT_byte_size"].value:
        return False
    return all(k.tag in _STRUCT_CHILDREN for k in kids)


def _is_definition(die, name: str) -> bool:
    return (die.tag in _AGGREGATE and "DW_AT_declaration" not in die.attributes
            and "DW_AT_byte_size" in die.attributes and _name(die) == name)


class StructFinder:
    """Locate struct/union definitions by name in one ELF's DWARF."""

    def __init__(self, elf: ElfImage):
        self.elf = elf
        self.dwarf = open_dwarf(elf)
        self._cu_offsets: list[int] | None = None
        self._walk = None  # this reader's walk over the units (_find_by_walk), resumed by each lookup
        self._gcc: bool | None = None

    # -- unit lookup --
    def _cu_for(self, offset: int):
        if self._cu_offsets is None:
            self._cu_offsets = cu_offsets(self.elf, self.dwarf)
        i = bisect.bisect_right(self._cu_offsets, offset) - 1
        if i < 0:
            return None
        return self.dwarf.get_CU_at(self._cu_offsets[i])

    def find(self, name: str):
        """The DIE defining ``struct name`` (or union), or None.

        What a lookup found (the DIE's offset, or that there is none) is remembered per file for
        the process: the proof asks for the same structs in several places."""
        shared = _WALKS.setdefault(_file_id(self.elf.path), {"found": {}, "order": None})
        found = shared["found"]
        if name in found:
            off = found[name]
            try:
                return None if off is None else self._cu_for(off).get_DIE_from_refaddr(off)
            except Exception as e:
                raise InputError(f"{self.elf.path}: unreadable DWARF ({one_line(e)})") from None
        die = self._find_near(name, found) or self._find(name)
        found[name] = None if die is None else die.offset
        return die

    def _find_near(self, name: str, found: dict):
        """The definition in the unit of a struct found before, if that unit has one: the vcpu
        structs' unit defines ``struct kvm`` too, whose name a linker may have merged into the
        tail of other strings (then every tail is a candidate, each a scan of .debug_info)."""
        near = next((off for off in found.values() if off is not None), None)
        if near is None:
            return None
        shared = _WALKS[_file_id(self.elf.path)]
        try:
            cu = self._cu_for(near)
            aggs = shared.setdefault("units", {}).get(cu.cu_offset)
            if aggs is None:
                aggs = shared["units"][cu.cu_offset] = {}
                for n, die in _defined_aggregates(cu):
                    aggs.setdefault(n, die.offset)
            off = aggs.get(name)
            return None if off is None else cu.get_DIE_from_refaddr(off)
        except Exception as e:
            raise InputError(f"{self.elf.path}: unreadable DWARF ({one_line(e)})") from None

    def _find(self, name: str):
        if uses_windows(self.elf):
            die = self._find_by_string(name)
            if die is not None:
                return die
            if ".debug_str_offsets" not in self.elf.sections or not self._named_anywhere(name):
                return None  # the name is in no unit's strp, strx or inline string
        return self._find_by_walk(name)

    def _named_anywhere(self, name: str) -> bool:
        """False when no DIE can be named ``name``: the string is neither in .debug_str (strp
        and strx names) nor inline in .debug_info (DW_FORM_string)."""
        m, target = self.elf.map, name.encode() + b"\0"
        for sec in (".debug_str", ".debug_info"):
            s = self.elf.sections.get(sec)
            if s is None:
                continue
            lo, hi = s.offset, s.offset + s.size
            pos = m.find(target, lo, hi)
            while pos >= 0:
                if pos == lo or m[pos - 1] == 0 or sec == ".debug_info":
                    return True
                pos = m.find(target, pos + 1, hi)
        return False

    def _find_by_string(self, name: str):
        from elftools.dwarf.die import DIE

        elf = self.elf
        info = elf.sections[".debug_info"]
        m = elf.map
        needles: list[bytes] = []
        strsec = elf.sections.get(".debug_str")
        target = name.encode() + b"\0"
        if strsec is not None:
            lo, hi = strsec.offset, strsec.offset + strsec.size
            pos = m.find(target, lo, hi)
            tails = []  # the name as the tail of a longer string (a linker may merge "kvm" into "is_kvm")
            while pos >= 0:
                (needles if pos == lo or m[pos - 1] == 0 else tails).append(struct.pack("<I", pos - lo))
                pos = m.find(target, pos + 1, hi)
            needles.extend(tails)  # whole strings first: "kvm" is the tail of hundreds of names
        if len(name) <= 4 or not self._gcc_only():
            # DW_FORM_string: the name inline in the DIE. GCC inlines only names that
            # are no longer than a .debug_str offset, so for it this scan is skipped.
            needles.append(target)
        lo, hi = info.offset, info.offset + info.size
        for needle in needles:
            inline = needle is target
            pos = m.find(needle, lo, hi)
            tries = 0
            while pos >= 0 and tries < 4096:
                tries += 1
                attr_off = pos - lo
                cu = self._cu_for(attr_off)
                if cu is not None:
                    for back in range(1, 8):
                        start = attr_off - back
                        if start <= cu.cu_die_offset - 1:
                            break
                        if not self._aggregate_abbrev(cu, m, info.offset + start):
                            continue  # not where a struct's DIE starts: no garbage decoded
                        try:
                            die = DIE(cu=cu, stream=cu.dwarfinfo.debug_info_sec.stream,
                                      offset=start)
                        except Exception:
                            continue
                        a = die.attributes.get("DW_AT_name")
                        if a is None or a.offset != attr_off:
                            continue
                        if (inline and a.form != "DW_FORM_string") or (
                                not inline and a.form not in ("DW_FORM_strp", "DW_FORM_GNU_strp_alt")):
                            continue
                        if _is_definition(die, name):
                            found = cu._get_cached_DIE(start)
                            if _children_parse(found):
                                return found
                            # bytes that decode as a DIE whose name sits at this offset, yet are
                            # not one (its children run into garbage): keep looking
                            continue
                        break
                pos = m.find(needle, pos + 1, hi)
        return None

    def _aggregate_abbrev(self, cu, m, at: int) -> bool:
        """True when the ULEB128 at file offset ``at`` is an abbreviation code of ``cu`` for a
        struct or union (so decoding a DIE there is worth it: a wrong start would decode
        garbage, possibly a block form millions of bytes long)."""
        code, shift = 0, 0
        for i in range(5):
            if at + i >= len(m):
                return False
            b = m[at + i]
            code |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        else:
            return False
        if code == 0:
            return False
        try:  # the unit's table is read raw (dwarf.fast_abbreviations): no pyelftools decode here
            return cu.get_abbrev_table().get_abbrev(code)["tag"] in _AGGREGATE
        except KeyError:  # no such code in this unit's table (a table that does not decode fails the read)
            return False

    def _gcc_only(self) -> bool:
        """True when the first and last units come from GCC or GNU as (a kernel is built by one compiler)."""
        if self._gcc is None:
            try:
                if self._cu_offsets is None:
                    self._cu_offsets = cu_offsets(self.elf, self.dwarf)
                prods = []
                for off in {self._cu_offsets[0], self._cu_offsets[-1]}:
                    top = self.dwarf.get_CU_at(off).get_top_DIE()
                    a = top.attributes.get("DW_AT_producer")
                    prods.append(a.value if a is not None and isinstance(a.value, bytes) else b"")
                self._gcc = all(p.startswith((b"GNU C", b"GNU AS")) for p in prods)  # as(1) units hold no structs
            except Exception:
                self._gcc = False
        return self._gcc

    def _find_by_walk(self, name: str):
        """Walk the units' top levels for the definition (a clang DWARF 5 kernel names its
        structs by string index, which no byte scan finds). Units of kvm code come first: they
        all define the vcpu structs, so a lookup usually ends within the first few units; the
        walk stops there and a later lookup goes on from where it stopped. What a walk found
        (and the units' order) is remembered for the file, for the next reader of it in this
        process (the proof reads layouts several times)."""
        shared = _WALKS.setdefault(_file_id(self.elf.path), {"found": {}, "order": None})
        found = shared["found"]
        if self._walk is None:
            self._walk = self._aggregates(shared)
        try:
            for n, die in self._walk:
                found.setdefault(n, die.offset)
                if n == name:
                    return die
        except InputError:
            raise
        except Exception as e:
            raise InputError(f"{self.elf.path}: unreadable DWARF ({one_line(e)})") from None
        return None

    def _aggregates(self, shared: dict):
        """(name, DIE) of each struct or union defined at a unit's top level, kvm units first."""
        if shared["order"] is None:
            def kvm_first(cu):
                a = cu.get_top_DIE().attributes.get("DW_AT_name")
                v = a.value if a is not None else b""
                return 0 if isinstance(v, bytes) and b"/kvm/" in v else 1

            # stable: unit order within each group
            shared["order"] = [cu.cu_offset for cu in sorted(self.dwarf.iter_CUs(), key=kvm_first)]
        for off in shared["order"]:
            yield from _defined_aggregates(self.dwarf.get_CU_at(off))


def _defined_aggregates(cu):
    """(name, DIE) of each named struct or union defined (not declared) at ``cu``'s top level."""
    for die in skim_children(cu.get_top_DIE(), _AGGREGATE_TAGS):
        if "DW_AT_declaration" not in die.attributes and "DW_AT_byte_size" in die.attributes:
            n = _name(die)
            if n:
                yield n, die


#: file identity -> {"order": unit offsets, kvm units first, "found": struct name -> DIE offset}
_WALKS: dict = {}


def _file_id(path) -> tuple:
    try:
        st = os.stat(path)
        return (os.path.realpath(path), st.st_size, st.st_mtime_ns)
    except OSError:
        return (str(path),)


# ---------------------------------------------------------------- layouts

def _type_die(die):
    if "DW_AT_type" not in die.attributes:
        return None
    return die.get_DIE_from_attribute("DW_AT_type")


def _strip(die):
    """Follow typedefs and qualifiers to the concrete type."""
    seen = 0
    while die is not None and die.tag in _SKIP and seen < 64:
        die = _type_die(die)
        seen += 1
    return die


def type_name(die, depth: int = 0) -> str:
    if die is None:
        return "void"
    if depth > 16:
        return "..."
    tag = die.tag
    n = _name(die)
    if tag == "DW_TAG_base_type" or tag == "DW_TAG_typedef":
        return n or "?"
    if tag == "DW_TAG_structure_type":
        return f"struct {n}" if n else "struct"
    if tag == "DW_TAG_union_type":
        return f"union {n}" if n else "union"
    if tag == "DW_TAG_enumeration_type":
        return f"enum {n}" if n else "enum"
    if tag == "DW_TAG_pointer_type":
        t = _type_die(die)
        if t is not None and t.tag == "DW_TAG_subroutine_type":
            return f"{type_name(_type_die(t), depth + 1)} (*)()"
        return f"{type_name(t, depth + 1)} *"
    if tag in ("DW_TAG_const_type", "DW_TAG_volatile_type", "DW_TAG_restrict_type", "DW_TAG_atomic_type"):
        q = tag[7:-5]
        return f"{q} {type_name(_type_die(die), depth + 1)}"
    if tag == "DW_TAG_array_type":
        dims = "".join(f"[{d if d is not None else ''}]" for d in _array_dims(die))
        return f"{type_name(_type_die(die), depth + 1)}{dims}"
    if tag == "DW_TAG_subroutine_type":
        return "fn()"
    return tag[7:]


def _array_dims(die) -> list[int | None]:
    dims = []
    for sub in children(die):
        if sub.tag != "DW_TAG_subrange_type":
            continue
        a = sub.attributes
        if "DW_AT_count" in a and isinstance(a["DW_AT_count"].value, int):
            dims.append(a["DW_AT_count"].value)
        elif "DW_AT_upper_bound" in a and isinstance(a["DW_AT_upper_bound"].value, int):
            lo = a["DW_AT_lower_bound"].value if "DW_AT_lower_bound" in a else 0
            dims.append(a["DW_AT_upper_bound"].value - lo + 1)
        else:
            dims.append(None)  # flexible array member
    return dims or [None]


def type_size(die, address_size: int = 8, depth: int = 0) -> int | None:
    die = _strip(die)
    if die is None or depth > 32:  # deeper nests of arrays are type cycles in corrupt DWARF
        return None
    a = die.attributes
    if "DW_AT_byte_size" in a and isinstance(a["DW_AT_byte_size"].value, int):
        return a["DW_AT_byte_size"].value
    if die.tag == "DW_TAG_pointer_type":
        return address_size
    if die.tag == "DW_TAG_array_type":
        es = type_size(_type_die(die), address_size, depth + 1)
        if es is None:
            return None
        n = 1
        for d in _array_dims(die):
            if d is None:
                return 0
            n *= d
        return es * n
    return None


def _member_location(die) -> int:
    a = die.attributes.get("DW_AT_data_member_location")
    if a is None:
        return 0
    v = a.value
    if isinstance(v, int):
        return v
    # DWARF 2/3 location expression: DW_OP_plus_uconst ULEB
    if isinstance(v, (list, bytes)) and len(v) >= 2 and v[0] == 0x23:
        r, shift = 0, 0
        for b in v[1:]:
            r |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        return r
    return 0


_KIND = {
    "DW_TAG_structure_type": "struct", "DW_TAG_union_type": "union", "DW_TAG_array_type": "array",
    "DW_TAG_pointer_type": "pointer", "DW_TAG_base_type": "base", "DW_TAG_enumeration_type": "enum",
    "DW_TAG_subroutine_type": "func",
}


class LayoutBuilder:
    """Build :class:`StructLayout` records from struct DIEs, expanding nested aggregates."""

    #: far more nested members than a real struct has (Debian 6.1's kvm_vcpu: 370): corrupt DWARF
    MAX_MEMBERS = 20_000

    def __init__(self, address_size: int = 8, max_depth: int = 24):
        self.address_size = address_size
        self.max_depth = max_depth
        self._open: set[int] = set()  # aggregates being expanded: a struct cannot contain itself
        self._count = 0

    def build(self, die) -> StructLayout:
        name = _name(die) or "<anon>"
        size = die.attributes["DW_AT_byte_size"].value
        self._open, self._count = set(), 0
        members = self._members(die, base=0, prefix="", depth=0)
        decl_file, decl_line = _decl(die)
        return StructLayout(
            name=name, kind="union" if die.tag == "DW_TAG_union_type" else "struct",
            size=size, members=members, stats=compute_stats(die.tag, size, members),
            decl_file=decl_file, decl_line=decl_line)

    def _members(self, agg, base: int, prefix: str, depth: int) -> list[Member]:
        if agg.offset in self._open:
            raise ValueError(f"type cycle: {type_name(agg)} (DIE {agg.offset:#x}) contains itself")
        self._open.add(agg.offset)
        try:
            return self._members_of(agg, base, prefix, depth)
        finally:
            self._open.discard(agg.offset)

    def _members_of(self, agg, base: int, prefix: str, depth: int) -> list[Member]:
        out: list[Member] = []
        anon = 0
        for child in children(agg):
            if child.tag != "DW_TAG_member":
                continue
            self._count += 1
            if self._count > self.MAX_MEMBERS:
                raise ValueError(f"more than {self.MAX_MEMBERS} nested members (shared or cyclic types)")
            name = _name(child)
            tdie = _type_die(child)
            concrete = _strip(tdie)
            tsize = type_size(tdie, self.address_size)
            loc = _member_location(child)
            bit_size = bit_offset = None
            a = child.attributes
            if "DW_AT_bit_size" in a:
                bit_size = a["DW_AT_bit_size"].value
                unit = tsize or 1
                if "DW_AT_data_bit_offset" in a:  # DWARF 4+/5: bits from the struct start
                    dbo = a["DW_AT_data_bit_offset"].value
                    loc = (dbo // (unit * 8)) * unit
                    bit_offset = dbo - loc * 8
                elif "DW_AT_bit_offset" in a:  # DWARF 2/3 style: counted from the MSB of the unit
                    storage = a["DW_AT_byte_size"].value if "DW_AT_byte_size" in a else unit
                    bit_offset = storage * 8 - a["DW_AT_bit_offset"].value - bit_size
                else:
                    bit_offset = 0
            if name is None:
                anon += 1
                path = f"{prefix}<anon{anon}>"
                child_prefix = prefix  # members of an anonymous aggregate are named as in C
            else:
                path = f"{prefix}{name}"
                child_prefix = f"{path}."
            kind = _KIND.get(concrete.tag, "unknown") if concrete is not None else "void"
            m = Member(name=name, path=path, offset=base + loc, size=tsize,
                       type_name=type_name(tdie), kind=kind, bit_offset=bit_offset, bit_size=bit_size)
            if depth < self.max_depth and concrete is not None:
                if concrete.tag in _AGGREGATE and "DW_AT_declaration" not in concrete.attributes:
                    m.members = self._members(concrete, base + loc, child_prefix, depth + 1)
                elif concrete.tag == "DW_TAG_array_type":
                    m.array_dims = tuple(_array_dims(concrete))
                    elem = _type_die(concrete)
                    m.element_size = type_size(elem, self.address_size)
                    ec = _strip(elem)
                    if ec is not None and ec.tag in _AGGREGATE and "DW_AT_declaration" not in ec.attributes:
                        brackets = "[]" * len(m.array_dims)
                        m.members = self._members(ec, base + loc, f"{path}{brackets}.", depth + 1)
            out.append(m)
        return out


def _decl(die) -> tuple[str | None, int | None]:
    a = die.attributes
    line = a["DW_AT_decl_line"].value if "DW_AT_decl_line" in a else None
    file = None
    if "DW_AT_decl_file" in a:
        try:
            lp = die.dwarfinfo.line_program_for_CU(die.cu)
            idx = a["DW_AT_decl_file"].value
            entries = lp["file_entry"]
            ver = lp["version"]
            fe = entries[idx] if ver >= 5 else entries[idx - 1]
            fname = fe.name.decode() if isinstance(fe.name, bytes) else str(fe.name)
            dirs = lp["include_directory"]
            d = dirs[fe.dir_index] if ver >= 5 else (dirs[fe.dir_index - 1] if fe.dir_index else b"")
            d = d.decode() if isinstance(d, bytes) else str(d)
            file = f"{d}/{fname}" if d and not fname.startswith("/") else fname
        except Exception:
            file = None
    return file, line


def compute_stats(tag: str, size: int, members: list[Member]) -> StructStats:
    """Holes and padding among direct members, counted the way pahole counts them."""
    holes = sum_holes = 0
    end = 0
    if tag == "DW_TAG_union_type":
        end = max((m.offset + (m.size or 0) for m in members), default=0)
    else:
        for m in sorted(members, key=lambda m: (m.offset, m.bit_offset or 0)):
            if m.offset > end:
                holes += 1
                sum_holes += m.offset - end
            end = max(end, m.offset + (m.size or 0))
    padding = max(size - end, 0) if members else 0
    return StructStats(nr_members=len(members), holes=holes, sum_holes=sum_holes,
                       padding=padding, cachelines=(size + 63) // 64)


def read_layouts(elf: ElfImage, names: Iterable[str]) -> dict[str, StructLayout | None]:
    """Layouts of the named structs (None where the ELF has no definition)."""
    finder = StructFinder(elf)
    builder = LayoutBuilder()
    out: dict[str, StructLayout | None] = {}
    for n in names:
        try:
            die = finder.find(n)
            out[n] = builder.build(die) if die is not None else None
        except InputError:
            raise
        except Exception as e:
            raise InputError(f"{elf.path}: unreadable DWARF for struct {n} ({one_line(e)})") from None
    return out
