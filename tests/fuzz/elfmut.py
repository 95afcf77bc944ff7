"""Seeded mutations of an ELF64 little-endian file with DWARF.

Every mutation is a pure function of (the clean bytes, a ``random.Random(seed)``): the
same seed gives the same bytes and the same description, so a failure is replayed from
its seed alone. The clean file is parsed once (:class:`ElfMap`) to aim mutations at the
ELF header, the section header table and named sections (.debug_info, .debug_abbrev,
.debug_line, .debug_str_offsets, ...); :class:`RefTable` lists the DW_AT_type references
inside the structs scopecheck reads, so that rewiring them makes type cycles and
dangling references.
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass, field

INTERESTING = (0, 1, 2, 3, 4, 7, 8, 0x10, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0x10000,
               0x7FFFFFFF, 0x80000000, 0xFFFFFFF0, 0xFFFFFFFF, 0x100000000, 2**63 - 1, 2**64 - 1)
DEBUG_REGIONS = (".debug_info", ".debug_abbrev", ".debug_line", ".debug_str_offsets", ".debug_str",
                 ".debug_line_str", ".debug_aranges", ".debug_rnglists", ".debug_loclists", ".debug_ranges",
                 ".debug_addr", ".rela.debug_info", ".rela.debug_line", ".symtab", ".strtab")
SHF_COMPRESSED = 0x800


@dataclass(frozen=True)
class Sec:
    index: int
    name: str
    type: int
    flags: int
    offset: int
    size: int
    hdr: int  # file offset of its section header
    name_off: int  # file offset of its name in .shstrtab


@dataclass
class ElfMap:
    size: int
    shoff: int
    shnum: int
    shstrndx: int
    sections: list[Sec]
    by_name: dict[str, Sec] = field(default_factory=dict)

    @classmethod
    def parse(cls, data: bytes) -> "ElfMap":
        (_t, _m, _v, _e, _ph, shoff, _f, _eh, _pe, _pn, _se, shnum, shstrndx) = struct.unpack_from(
            "<HHIQQQIHHHHHH", data, 16)
        raw = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * 64) for i in range(shnum)]
        stroff = raw[shstrndx][4]
        secs = []
        for i, r in enumerate(raw):
            end = data.index(b"\0", stroff + r[0])
            name = data[stroff + r[0]: end].decode("latin-1")
            secs.append(Sec(i, name, r[1], r[2], r[4], r[5], shoff + i * 64, stroff + r[0]))
        m = cls(len(data), shoff, shnum, shstrndx, secs)
        m.by_name = {s.name: s for s in secs if s.name}
        return m

    def region(self, name: str) -> tuple[int, int] | None:
        if name == "<elf header>":
            return 0, 64
        if name == "<section table>":
            return self.shoff, self.shnum * 64
        if name == "<file>":
            return 0, self.size
        s = self.by_name.get(name)
        if s is None or s.type == 8 or s.size == 0:
            return None
        return s.offset, s.size


@dataclass
class RefTable:
    """DW_AT_type references (DW_FORM_ref4) reachable from the structs the size report reads."""

    info_offset: int  # file offset of .debug_info
    refs: list[tuple[int, int, int]]  # (section offset of the 4-byte value, cu offset, die offset)
    dies: dict[int, list[int]]  # cu offset -> die offsets (CU-relative) seen in it
    aggregates: dict[int, list[int]]  # cu offset -> struct/union die offsets (CU-relative)

    @classmethod
    def build(cls, path, names=("kvm_vcpu", "kvm_vcpu_arch", "kvm_cpu_context", "vcpu_hyp_state"),
              limit: int = 4000) -> "RefTable | None":
        from scopecheck.binary.elf import ElfImage
        from scopecheck.binary.types import StructFinder

        try:
            with ElfImage(path) as elf:
                info = elf.sections.get(".debug_info")
                if info is None or elf.compressed_debug():
                    return None
                finder = StructFinder(elf)
                refs, dies, aggs = [], {}, {}
                seen = set()
                todo = [d for d in (finder.find(n) for n in names) if d is not None]
                while todo and len(seen) < limit:
                    die = todo.pop()
                    if die.offset in seen:
                        continue
                    seen.add(die.offset)
                    cu = die.cu
                    rel = die.offset - cu.cu_offset
                    dies.setdefault(cu.cu_offset, []).append(rel)
                    if die.tag in ("DW_TAG_structure_type", "DW_TAG_union_type"):
                        aggs.setdefault(cu.cu_offset, []).append(rel)
                    a = die.attributes.get("DW_AT_type")
                    if a is not None and a.form == "DW_FORM_ref4":
                        refs.append((a.offset, cu.cu_offset, die.offset))
                        todo.append(die.get_DIE_from_attribute("DW_AT_type"))
                    todo.extend(die.iter_children())
                return cls(info.offset, refs, dies, aggs)
        except Exception:
            return None


def _pack(width: int, v: int) -> bytes:
    return (v & ((1 << (8 * width)) - 1)).to_bytes(width, "little")


def _put(buf: bytearray, off: int, raw: bytes) -> None:
    if 0 <= off and off + len(raw) <= len(buf):
        buf[off: off + len(raw)] = raw


def _interesting(rng: random.Random, m: ElfMap) -> int:
    v = rng.choice(INTERESTING + (m.size, m.size + 1, m.size - 1))
    return v if rng.random() < 0.8 else rng.getrandbits(rng.choice((8, 16, 32, 64)))


def _pick_region(rng: random.Random, m: ElfMap) -> tuple[str, int, int]:
    names = ["<elf header>", "<section table>", "<file>", *[n for n in DEBUG_REGIONS if m.region(n)]]
    weights = [2, 3, 1] + [6 if n in (".debug_info", ".debug_abbrev") else 3 for n in names[3:]]
    n = rng.choices(names, weights)[0]
    off, size = m.region(n)
    return n, off, size


# ---------------------------------------------------------------- operators

def op_truncate(buf, m, rng, refs):
    how = rng.random()
    if how < 0.4 and m.sections:
        s = rng.choice(m.sections)
        cut = max(0, min(len(buf), s.offset + rng.randint(-8, max(8, s.size))))
    elif how < 0.5:
        cut = rng.randint(0, 80)
    else:
        cut = rng.randint(0, len(buf))
    del buf[cut:]
    return f"truncate to {cut}"


def op_bitflip(buf, m, rng, refs):
    name, off, size = _pick_region(rng, m)
    n = rng.choice((1, 1, 1, 2, 3, 4, 8, 16))
    where = []
    for _ in range(n):
        pos = off + rng.randrange(size)
        bit = rng.randrange(8)
        if pos < len(buf):
            buf[pos] ^= 1 << bit
            where.append(f"{pos - off:#x}.{bit}")
    return f"bitflip {name} {','.join(where[:4])}{'...' if len(where) > 4 else ''}"


def op_byteset(buf, m, rng, refs):
    name, off, size = _pick_region(rng, m)
    w = rng.choice((1, 2, 4, 8))
    pos = off + rng.randrange(max(1, size - w + 1))
    v = _interesting(rng, m)
    _put(buf, pos, _pack(w, v))
    return f"set {name}+{pos - off:#x} u{8 * w}={v:#x}"


_HDR_FIELDS = {  # name: (offset, width)
    "class": (4, 1), "data": (5, 1), "version": (6, 1), "e_type": (16, 2), "e_machine": (18, 2),
    "e_shoff": (40, 8), "e_ehsize": (52, 2), "e_shentsize": (58, 2), "e_shnum": (60, 2),
    "e_shstrndx": (62, 2),
}


def op_header(buf, m, rng, refs):
    f = rng.choice(list(_HDR_FIELDS))
    off, w = _HDR_FIELDS[f]
    if f == "class":
        v = rng.choice((0, 1, 3, 0xFF))  # ELFCLASS32, bad
    elif f == "data":
        v = rng.choice((0, 2, 3))  # big-endian, bad
    elif f == "e_machine":
        v = rng.choice((0, 3, 40, 62, 243, 0xB6, 0xFFFF))
    elif f == "e_type":
        v = rng.choice((0, 1, 2, 3, 4, 0xFFFF))
    elif f == "e_shnum":
        v = rng.choice((0, 1, m.shnum - 1, m.shnum + 1, 0xFFFF))
    elif f == "e_shstrndx":
        v = rng.choice((0, 1, m.shnum - 1, m.shnum, 0xFFFF, rng.randrange(m.shnum)))
    else:
        v = _interesting(rng, m)
    _put(buf, off, _pack(w, v))
    return f"header {f}={v:#x}"


_SH_FIELDS = {"sh_name": (0, 4), "sh_type": (4, 4), "sh_flags": (8, 8), "sh_addr": (16, 8),
              "sh_offset": (24, 8), "sh_size": (32, 8), "sh_link": (40, 4), "sh_info": (44, 4),
              "sh_addralign": (48, 8), "sh_entsize": (56, 8)}


def _pick_section(rng, m):
    debug = [s for s in m.sections if s.name.startswith((".debug", ".rela.debug", ".symtab", ".strtab"))]
    return rng.choice(debug if debug and rng.random() < 0.8 else m.sections)


def op_section_header(buf, m, rng, refs):
    s = _pick_section(rng, m)
    f = rng.choice(list(_SH_FIELDS))
    off, w = _SH_FIELDS[f]
    if f == "sh_size":
        v = rng.choice((0, 1, s.size - 1, s.size + 1, s.size // 2, m.size, 2**32, 2**63, 2**64 - 1))
    elif f == "sh_offset":
        v = rng.choice((0, s.offset + 1, m.size, m.size - 1, 2**63, rng.randrange(m.size)))
    elif f == "sh_type":
        v = rng.choice((0, 1, 2, 3, 4, 7, 8, 9, 0x6FFFFFF6, 0xFFFFFFFF))
    elif f == "sh_flags":
        v = s.flags ^ rng.choice((SHF_COMPRESSED, 0x2, 0x4, 0x40))
    else:
        v = _interesting(rng, m)
    _put(buf, s.hdr + off, _pack(w, max(v, 0)))
    return f"section {s.name} {f}={max(v, 0):#x}"


def op_missing_section(buf, m, rng, refs):
    cands = [s for s in m.sections if s.name.startswith((".debug", ".rela.debug", ".symtab", ".strtab",
                                                          ".shstrtab", ".hyp.text", ".text", ".notes"))]
    s = rng.choice(cands)
    how = rng.random()
    if how < 0.5:  # rename: the section is gone by name
        _put(buf, s.name_off + 1, b"X")
        return f"missing {s.name} (renamed)"
    if how < 0.75:
        _put(buf, s.hdr + 4, _pack(4, 0))  # SHT_NULL
        return f"missing {s.name} (SHT_NULL)"
    _put(buf, s.hdr + 4, _pack(4, 8))  # SHT_NOBITS: no bytes in the file
    return f"missing {s.name} (SHT_NOBITS)"


def _units(buf: bytearray, off: int, size: int) -> list[int]:
    out, pos = [], 0
    while pos + 4 <= size and len(out) < 10000:
        (ln,) = struct.unpack_from("<I", buf, off + pos)
        out.append(pos)
        if ln == 0 or ln >= 0xFFFFFFF0:
            break
        pos += 4 + ln
    return out


def op_unit_header(buf, m, rng, refs):
    name = rng.choice([n for n in (".debug_info", ".debug_line", ".debug_aranges", ".debug_str_offsets",
                                   ".debug_rnglists", ".debug_loclists") if m.region(n)])
    off, size = m.region(name)
    size = min(size, len(buf) - off)
    units = _units(buf, off, size) if size >= 4 else []
    if not units:
        return f"unit {name}: none"
    u = off + rng.choice(units)
    field_ = rng.choice(("unit_length", "version", "unit_type/addr", "abbrev/next"))
    if field_ == "unit_length":
        v = rng.choice((0, 1, 2, 0xFFFFFFFF, 0xFFFFFFF0, 0x7FFFFFFF, size, size + 1, rng.randrange(size + 16)))
        _put(buf, u, _pack(4, v))
    elif field_ == "version":
        v = rng.choice((0, 1, 2, 3, 4, 5, 6, 0xFFFF))
        _put(buf, u + 4, _pack(2, v))
    elif field_ == "unit_type/addr":
        v = rng.choice((0, 1, 2, 3, 4, 5, 6, 0x80, 0xFF))
        _put(buf, u + 6, _pack(1, v))
        _put(buf, u + 7, _pack(1, rng.choice((0, 1, 4, 8, 0xFF))))
    else:
        v = _interesting(rng, m)
        _put(buf, u + 8, _pack(4, v))
    return f"unit {name}@{u - off:#x} {field_}={v:#x}"


def op_ref_rewire(buf, m, rng, refs):
    if refs is None or not refs.refs:
        return op_byteset(buf, m, rng, refs)
    pos, cu, die = rng.choice(refs.refs)
    rel = die - cu
    how = rng.random()
    if how < 0.25:
        v, what = rel, "itself"
    elif how < 0.55 and refs.aggregates.get(cu):
        v, what = rng.choice(refs.aggregates[cu]), "a struct (cycle)"
    elif how < 0.75:
        v, what = rng.choice(refs.dies[cu]), "another DIE"
    elif how < 0.9:
        v, what = rel + rng.choice((1, 2, 3, -1)), "mid-DIE"
    else:
        v, what = rng.choice((0, 1, 0xFFFFFFFF, 0x7FFFFFFF, m.size)), "out of range"
    _put(buf, refs.info_offset + pos, _pack(4, v))
    return f"ref DIE {die:#x} DW_AT_type -> {v & 0xFFFFFFFF:#x} ({what})"


def op_splice(buf, m, rng, refs):
    name, off, size = _pick_region(rng, m)
    if size < 8:
        return op_bitflip(buf, m, rng, refs)
    n = rng.randint(1, min(64, size // 2))
    src = off + rng.randrange(size - n)
    dst = off + rng.randrange(size - n)
    buf[dst: dst + n] = buf[src: src + n]
    return f"splice {name} {n}B {src - off:#x}->{dst - off:#x}"


OPERATORS = (
    (op_truncate, 5), (op_bitflip, 28), (op_byteset, 14), (op_header, 8), (op_section_header, 12),
    (op_missing_section, 7), (op_unit_header, 8), (op_ref_rewire, 12), (op_splice, 6),
)


def mutate(clean: bytes, m: ElfMap, seed: int, refs: RefTable | None = None) -> tuple[bytes, str]:
    """(mutated bytes, description) for ``seed``; 1-3 stacked operators."""
    rng = random.Random(seed)
    buf = bytearray(clean)
    ops, weights = zip(*OPERATORS)
    n = rng.choices((1, 2, 3), (70, 20, 10))[0]
    desc = []
    for _ in range(n):
        op = rng.choices(ops, weights)[0]
        desc.append(op(buf, m, rng, refs))
    return bytes(buf), "; ".join(desc)
