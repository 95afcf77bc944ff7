"""The layout library: struct name -> member tree; (struct, offset, size) -> field paths.

Usable without the CLI::

    from scopecheck.layout import load_layouts, fields_at
    lay = load_layouts("vmlinux", ["kvm_vcpu"])["kvm_vcpu"]
    fields_at(lay, 0x7a0, 8)      # ['arch.ctxt.regs.pc'] (for example)
    member(lay, "arch.ctxt.regs.pc").offset

Layouts come from DWARF (:mod:`scopecheck.binary.types`) and are cached per
ELF build-id (:mod:`scopecheck.layout_cache`).
"""

from __future__ import annotations

import re
from os import PathLike
from typing import Iterable

from scopecheck.errors import InputError
from scopecheck.model import Member, StructLayout

DEFAULT_STRUCTS = ("kvm_vcpu", "kvm_vcpu_arch", "kvm_cpu_context", "vcpu_hyp_state", "pkvm_hyp_vcpu")
#: structs that must exist for a KVM arm64 image; the rest are reported only when present
REQUIRED_STRUCTS = ("kvm_vcpu", "kvm_vcpu_arch", "kvm_cpu_context")


def load_layouts(path: str | PathLike, names: Iterable[str] = DEFAULT_STRUCTS, *,
                 use_cache: bool = True) -> dict[str, StructLayout | None]:
    """Read the named struct layouts from an ELF file (None for names it lacks)."""
    from scopecheck.binary.elf import ElfImage
    from scopecheck import layout_cache

    names = list(dict.fromkeys(names))
    with ElfImage(path) as elf:
        elf.require_dwarf()
        cache = layout_cache.LayoutCache.for_elf(elf) if use_cache and layout_cache.enabled() else None
        found: dict[str, StructLayout | None] = {}
        missing = []
        for n in names:
            if cache is not None and n in cache.layouts:
                found[n] = cache.layouts[n]
            else:
                missing.append(n)
        if missing:
            from scopecheck.binary.types import read_layouts

            fresh = read_layouts(elf, missing)
            found.update(fresh)
            if cache is not None:
                cache.layouts.update(fresh)
                cache.save()
        return {n: found[n] for n in names}


def member(layout: StructLayout, path: str) -> Member:
    """The member at ``path`` (``arch.ctxt.regs.pc``; indexes allowed: ``arch.ctxt.sys_regs[3]``).

    An indexed path gives a new Member (kind ``element``) with the element's own
    offset and size; members inside array elements get their real offset.
    """
    members = layout.members
    shift = 0
    found: Member | None = None
    walked: list[str] = []
    for name, indexes in _split_path(path):
        cand = _lookup(members, name)
        walked.append(name)
        if cand is None:
            raise KeyError(f"struct {layout.name} has no member {'.'.join(walked)}")
        found = cand
        if shift:
            found = _shifted(cand, shift, ".".join(walked))
        if indexes:
            if not cand.array_dims or cand.element_size is None:
                raise KeyError(f"{layout.name}.{'.'.join(walked)} is not an array")
            if len(indexes) > len(cand.array_dims):
                raise KeyError(f"too many indexes for {'.'.join(walked)}")
            flat = 0
            for dim, i in zip(cand.array_dims, indexes):
                if dim is not None and not 0 <= i < dim:
                    raise KeyError(f"index {i} out of range for {'.'.join(walked)}[{dim}]")
                flat = flat * (dim or 1) + i
            inner = 1
            for d in cand.array_dims[len(indexes):]:
                inner *= d or 0
            stride = cand.element_size * inner
            shift += flat * stride
            walked[-1] += "".join(f"[{i}]" for i in indexes)
            found = Member(name=cand.name, path=".".join(walked), offset=cand.offset + shift, size=stride,
                           type_name=cand.type_name.split("[", 1)[0], kind="element",
                           members=cand.members)
        members = cand.members
    if found is None:
        raise KeyError(f"empty member path for struct {layout.name}")
    return found


def _shifted(m: Member, shift: int, path: str) -> Member:
    return Member(name=m.name, path=path, offset=m.offset + shift, size=m.size, type_name=m.type_name,
                  kind=m.kind, bit_offset=m.bit_offset, bit_size=m.bit_size, array_dims=m.array_dims,
                  element_size=m.element_size, members=m.members)


def _split_path(path: str) -> list[tuple[str, list[int]]]:
    out = []
    for part in path.split("."):
        m = re.fullmatch(r"([A-Za-z_<][\w<>]*)((?:\[\d*\])*)", part)
        if not m:
            raise KeyError(f"bad member path {path!r}")
        idx = [int(x) for x in re.findall(r"\[(\d+)\]", m.group(2))]
        out.append((m.group(1), idx))
    return out


def _lookup(members: list[Member], name: str) -> Member | None:
    for m in members:
        if m.name == name or (m.name is None and m.path.endswith(name)):
            return m
    for m in members:  # members of anonymous structs/unions are reached by their own name
        if m.name is None:
            inner = _lookup(m.members, name)
            if inner is not None:
                return inner
    return None


def fields_at(layout: StructLayout, offset: int, size: int = 1) -> list[str]:
    """The most specific field paths that bytes [offset, offset+size) of the struct cover.

    Array elements are named with their index (``arch.ctxt.sys_regs[12]``); union
    alternatives are all returned. Bytes that fall in a hole or padding give ``<hole>``
    / ``<padding>`` entries; an offset outside the struct raises ValueError.
    """
    if offset < 0 or size <= 0 or offset + size > layout.size:
        raise ValueError(f"[{offset}, {offset + size}) is outside struct {layout.name} ({layout.size} bytes)")
    out: list[str] = []
    _cover(layout.members, offset, offset + size, 0, {}, out)
    if not out:
        last_end = max((m.offset + (m.size or 0) for m in layout.members), default=0)
        out.append("<padding>" if offset >= last_end else "<hole>")
    return list(dict.fromkeys(out))


def _cover(members: list[Member], lo: int, hi: int, shift: int, idx: dict, out: list[str]) -> None:
    for m in members:
        m_lo = m.offset + shift
        m_hi = m_lo + (m.size or 0)
        if m.size == 0 and m.array_dims:  # flexible array member: everything past its start
            m_hi = max(hi, m_lo)
        if not (m_lo < hi and lo < m_hi):
            continue
        if m.array_dims and m.element_size:
            # which elements are covered?
            first = max(lo - m_lo, 0) // m.element_size
            last = (min(hi, m_hi) - m_lo - 1) // m.element_size
            for i in range(first, last + 1):
                base = m_lo + i * m.element_size
                label = _index_label(m, i)
                if m.members:
                    sub: list[str] = []
                    _cover(m.members, lo, hi, shift + i * m.element_size, idx, sub)
                    out.extend(s.replace(f"{m.path}{'[]' * len(m.array_dims)}", label, 1) for s in sub)
                    if not sub:
                        out.append(label)
                else:
                    out.append(label)
                if base >= hi:
                    break
        elif m.members:
            before = len(out)
            _cover(m.members, lo, hi, shift, idx, out)
            if len(out) == before and m.name is not None:
                out.append(m.path)
        else:
            out.append(m.path)


def _index_label(m: Member, flat: int) -> str:
    dims = [d or 1 for d in m.array_dims]
    idxs = []
    for d in reversed(dims):
        idxs.append(flat % d)
        flat //= d
    return m.path + "".join(f"[{i}]" for i in reversed(idxs))


def expand(layout: StructLayout) -> list[tuple[int, Member]]:
    """(depth, member) pairs for a pahole -E style tree."""
    out: list[tuple[int, Member]] = []

    def rec(ms: list[Member], depth: int) -> None:
        for m in ms:
            out.append((depth, m))
            rec(m.members, depth + 1)

    rec(layout.members, 0)
    return out


def require(layouts: dict[str, StructLayout | None], name: str, where: str) -> StructLayout:
    lay = layouts.get(name)
    if lay is None:
        raise InputError(f"{where}: struct {name} not found in DWARF")
    return lay
