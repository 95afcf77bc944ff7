"""Struct layouts from libclang's own type layout API, and byte ranges -> field paths.

The source door maps raw byte offsets (``(char *)vcpu + offsetof(...)``, a member's
address cast to another struct type, ``[x18, #CPU_XREG_OFFSET(2)]`` in hyp assembly) to
field paths. It must not read DWARF (that is the binary door), so it asks the compiler
front end it already has: ``Type.get_size`` / ``Cursor.get_field_offsetof`` give the
same :class:`~scopecheck.model.StructLayout` tree the binary door builds from DWARF, and
:mod:`scopecheck.layout` answers the questions on it.

Imported lazily (imports clang).
"""

from __future__ import annotations

import clang.cindex as ci

from scopecheck.model import Member, StructLayout, StructStats

TK = ci.TypeKind
_ARRAYS = (TK.CONSTANTARRAY, TK.INCOMPLETEARRAY, TK.VARIABLEARRAY, TK.DEPENDENTSIZEDARRAY)
MAX_DEPTH = 24


def _kind(t) -> str:
    k = t.kind
    if k == TK.RECORD:
        return "union" if t.get_declaration().kind == ci.CursorKind.UNION_DECL else "struct"
    if k in _ARRAYS:
        return "array"
    if k == TK.POINTER:
        return "pointer"
    if k == TK.ENUM:
        return "enum"
    if k in (TK.FUNCTIONPROTO, TK.FUNCTIONNOPROTO):
        return "func"
    if k == TK.VOID:
        return "void"
    return "base"


def _size(t) -> int | None:
    s = t.get_size()
    return s if s >= 0 else None


def _array(t) -> tuple[tuple[int | None, ...], object]:
    """(dims, innermost element type) of a (possibly nested) array type."""
    dims: list[int | None] = []
    while t.kind in _ARRAYS:
        n = t.element_count if t.kind == TK.CONSTANTARRAY else None
        dims.append(n if n is None or n >= 0 else None)
        t = t.element_type.get_canonical()
    return tuple(dims), t


def layout_of(t, name: str | None = None) -> StructLayout | None:
    """The layout of a struct/union type (None for anything else or an incomplete type)."""
    can = t.get_canonical()
    if can.kind != TK.RECORD or _size(can) is None:
        return None
    decl = can.get_declaration()
    members = _members(can, 0, "", 0, set())
    return StructLayout(name=name or decl.spelling, kind=_kind(can), size=can.get_size(), members=members,
                        stats=StructStats(nr_members=len(members), holes=0, sum_holes=0, padding=0))


def _members(rec, base: int, prefix: str, depth: int, open_: set) -> list[Member]:
    decl = rec.get_declaration()
    key = decl.hash
    if key in open_ or depth > MAX_DEPTH:
        return []
    open_ = open_ | {key}
    out: list[Member] = []
    anon = 0
    for f in decl.get_children():
        if f.kind == ci.CursorKind.FIELD_DECL:
            bits = f.get_field_offsetof()
            name = f.spelling or None
        elif f.kind in (ci.CursorKind.STRUCT_DECL, ci.CursorKind.UNION_DECL) and _anonymous_member(f):
            bits = _anon_offset(rec, f)  # an anonymous struct/union member: no FIELD_DECL in libclang
            name = None
        else:
            continue
        if bits is None or bits < 0:
            continue
        t = f.type
        can = t.get_canonical()
        if name is not None and ("(" in name or " " in name):
            name = None
        size = _size(can)
        bit_size = bit_offset = None
        off = base + bits // 8
        if f.is_bitfield():
            bit_size = f.get_bitfield_width()
            unit = size or 1
            off = base + (bits // (unit * 8)) * unit
            bit_offset = bits - (off - base) * 8
        if name is None:
            anon += 1
            path, child_prefix = f"{prefix}<anon{anon}>", prefix
        else:
            path = f"{prefix}{name}"
            child_prefix = f"{path}."
        m = Member(name=name, path=path, offset=off, size=size, type_name=t.spelling, kind=_kind(can),
                   bit_offset=bit_offset, bit_size=bit_size)
        if can.kind == TK.RECORD:
            m.members = _members(can, off, child_prefix, depth + 1, open_)
        elif can.kind in _ARRAYS:
            dims, elem = _array(can)
            m.array_dims = dims
            m.element_size = _size(elem)
            if elem.kind == TK.RECORD:
                m.members = _members(elem, off, f"{path}{'[]' * len(dims)}.", depth + 1, open_)
        out.append(m)
    return out


def _anonymous_member(d) -> bool:
    """An anonymous struct/union *member* (``union { ... };``), not the unnamed type of a named member."""
    return d.is_definition() and "(anonymous" in d.spelling


def _first_field(d, depth=0) -> str | None:
    for c in d.get_children():
        if c.kind == ci.CursorKind.FIELD_DECL and c.spelling:
            return c.spelling
        if c.kind in (ci.CursorKind.STRUCT_DECL, ci.CursorKind.UNION_DECL) and depth < 8 and _anonymous_member(c):
            n = _first_field(c, depth + 1)
            if n:
                return n
    return None


def _anon_offset(parent, d) -> int | None:
    """Bit offset of anonymous member ``d`` in record type ``parent`` (offsets look through anonymous members)."""
    n = _first_field(d)
    if n is None:
        return None
    outer, inner = parent.get_offset(n), d.type.get_offset(n)
    return outer - inner if outer >= 0 and inner >= 0 else None


# ---------------------------------------------------------------- byte ranges -> paths

def base_offset(layout: StructLayout, path: str) -> int | None:
    """Byte offset of ``path`` in the root (None for ``[*]`` indexes or unknown members)."""
    if not path:
        return 0
    if "[*]" in path:
        return None
    from scopecheck.layout import member

    try:
        return member(layout, path).offset
    except (KeyError, ValueError):
        return None


def paths_for_range(layout: StructLayout, off: int, size: int) -> list[str]:
    """Field paths that bytes [off, off+size) of the root cover.

    The deepest named member (or array element) holding the whole range, when the range
    is exactly that member or lies in a scalar; a range spanning several members (or
    union alternatives) gives each member it covers (:func:`scopecheck.layout.fields_at`).
    Raises ValueError outside the struct; ``[]`` for padding and holes.
    """
    if off < 0 or size <= 0 or off + size > layout.size:
        raise ValueError(f"[{off}, {off + size}) is outside struct {layout.name} ({layout.size} bytes)")
    path, members, shift = "", layout.members, 0
    while True:
        hits = [m for m in members
                if m.size and m.offset + shift <= off and off + size <= m.offset + shift + m.size]
        if len(hits) != 1:
            return _spread(layout, off, size)
        hit = hits[0]
        lo = hit.offset + shift
        cur = _spell(path, hit)
        exact = (lo, hit.size) == (off, size)
        if hit.array_dims and hit.element_size:
            i = (off - lo) // hit.element_size
            elo = lo + i * hit.element_size
            if off + size > elo + hit.element_size:
                return [cur] if exact else _spread(layout, off, size)
            cur += element_index(hit, i)
            if not hit.members or (elo, hit.element_size) == (off, size):
                return [cur]
            path, members, shift = cur, hit.members, shift + i * hit.element_size
            continue
        if hit.name is not None and (exact or not hit.members):
            return [cur]
        if not hit.members:
            return _spread(layout, off, size)
        path, members = cur, hit.members


def _spell(path: str, m: Member) -> str:
    if m.name is None:
        return path
    return f"{path}.{m.name}" if path else m.name


def element_index(m: Member, flat: int) -> str:
    """``[i][j]`` of the ``flat``-th element of array member ``m`` (C order)."""
    dims = [d or 1 for d in m.array_dims]
    idx = []
    for d in reversed(dims):
        idx.append(flat % d)
        flat //= d
    return "".join(f"[{i}]" for i in reversed(idx))


def _spread(layout: StructLayout, off: int, size: int) -> list[str]:
    from scopecheck.layout import fields_at

    return [p for p in fields_at(layout, off, size) if not p.startswith("<")]


def array_path(layout: StructLayout, off: int, stride: int | None = None) -> str | None:
    """``path[*]`` of the innermost array (of ``stride``-byte elements, when given) whose storage
    holds byte ``off``: the field a variable index reaches. None when there is none."""
    best = None
    members, shift, path = layout.members, 0, ""
    for _ in range(64):
        hits = [m for m in members if m.size and m.offset + shift <= off < m.offset + shift + m.size]
        if len(hits) != 1:
            return best
        hit = hits[0]
        cur = _spell(path, hit)
        if hit.array_dims and hit.element_size:
            inner = 1
            for d in hit.array_dims[1:]:
                inner *= d or 1
            if stride is None or stride in (hit.element_size, hit.element_size * inner):
                best = cur + "[*]" * len(hit.array_dims)
            if not hit.members:
                return best
            i = (off - hit.offset - shift) // hit.element_size
            path, members, shift = cur + element_index(hit, i), hit.members, shift + i * hit.element_size
            continue
        path, members = cur, hit.members
    return best
