"""Accesses a syntactic walk cannot name by members: byte offsets from a root pointer.

The source walker (:mod:`.walker`) follows ``p->m`` / ``e.m`` / ``e[i]`` by name. This
module covers what it reaches by *bytes* instead:

* pointer arithmetic from a root pointer (``(char *)vcpu + offsetof(struct kvm_vcpu, x)``,
  ``(unsigned long)vcpu + 8``, indexing the result) and a member's address cast to
  another struct type (``((struct view *)&vcpu->arch.vgic_cpu)->used``): the walker
  tracks a byte ``delta`` from a known field and asks here which fields the bytes are;
* whole-struct copies of a root (``*dst = *src``) and ``memcpy``/``memset`` of members
  (one access of the whole member, its full size);
* ``offsetof(struct kvm_vcpu, ...)`` used as an inline-asm operand.

Byte ranges become field paths with libclang's own layout of the root
(:mod:`.clang_layout`); what cannot be mapped becomes an
:class:`~scopecheck.model_code.Unanalysed` record (``pointer-arith``,
``unmapped-offset``, ``memcpy-size``, ...), never silence.

Imported lazily (imports clang).
"""

from __future__ import annotations

import re

import clang.cindex as ci

from scopecheck.model import Member, StructLayout
from scopecheck.source import clangext as cx
from scopecheck.source.clang_layout import element_index as _index

K = ci.CursorKind

#: name -> (index of the destination pointer, index of the source pointer or None, index of the size)
MEM_FUNCTIONS = {
    "memcpy": (0, 1, 2), "memmove": (0, 1, 2), "memset": (0, None, 2),
    "__memcpy": (0, 1, 2), "__memmove": (0, 1, 2), "__memset": (0, None, 2),
    "__builtin_memcpy": (0, 1, 2), "__builtin_memmove": (0, 1, 2), "__builtin_memset": (0, None, 2),
    "__builtin___memcpy_chk": (0, 1, 2), "__builtin___memmove_chk": (0, 1, 2),
    "__builtin___memset_chk": (0, None, 2),
    "__underlying_memcpy": (0, 1, 2), "__underlying_memmove": (0, 1, 2), "__underlying_memset": (0, None, 2),
}


def offsetof_parts(c) -> tuple[str, str] | None:
    """(struct name, member designator) of an ``offsetof`` / ``__builtin_offsetof`` expression, else None.

    libclang exposes OffsetOfExpr as an UNEXPOSED_EXPR whose children are the TYPE_REF of
    the struct, then a MEMBER_REF per member and an expression per array index.
    """
    s = c
    for _ in range(8):
        if s.kind not in cx.PASS_THROUGH:
            break
        kids = cx.children(s)
        if len(kids) == 1:
            s = kids[0]
            continue
        break
    if s.kind != K.UNEXPOSED_EXPR:
        return None
    kids = cx.children(s)
    if len(kids) < 2 or kids[0].kind != K.TYPE_REF or kids[1].kind != K.MEMBER_REF:
        return None
    names = cx.record_names(kids[0].type)
    if not names:
        return None
    path = ""
    for k in kids[1:]:
        if k.kind == K.MEMBER_REF:
            path = f"{path}.{k.spelling}" if path else k.spelling
        elif k.kind.is_expression():
            n = cx.eval_int(k)
            path += f"[{n}]" if n is not None else "[*]"
        else:
            return None
    return names[-1], path


_LOAD = re.compile(r"\b(ld[a-z]*|prfm)\b")
_STORE = re.compile(r"\b(st[a-z]*)\b")


def asm_template(stmt, tu) -> str | None:
    """The template string of an inline-asm statement (string literals before the first ':'), or None."""
    try:
        toks = list(tu.get_tokens(extent=stmt.extent))
    except Exception:  # noqa: BLE001 - a range libclang cannot tokenize
        return None
    parts = []
    started = False
    for t in toks:
        if t.spelling == "(":
            started = True
            continue
        if not started:
            continue
        if t.spelling == ":" or t.spelling == ")":
            break
        if t.kind == ci.TokenKind.LITERAL and t.spelling.startswith('"'):
            parts.append(t.spelling[1:-1])
        else:
            return None  # a macro or a computed template: not followed
    return "".join(parts) if parts else None


def asm_kind(template: str | None) -> str:
    """read / write / rw for the memory instructions of an asm template; "rw" when it is not known."""
    if template is None:
        return "rw"
    t = template.lower()
    ld, st = bool(_LOAD.search(t)), bool(_STORE.search(t))
    if ld and st:
        return "rw"
    if ld:
        return "read"
    if st:
        return "write"
    return "addr"


def type_matches(m: Member, name: str) -> bool:
    t = re.sub(r"\b(const|volatile|struct|union)\b", "", m.type_name).strip()
    return t == name


def member_at(layout: StructLayout, off: int, name: str) -> str | None:
    """The path of the member (or array element) of type ``name`` starting at byte ``off``, if any."""
    path, members, shift = "", layout.members, 0
    for _ in range(64):
        nxt = None
        for m in members:
            lo = m.offset + shift
            if not (m.size and lo <= off < lo + m.size):
                continue
            cur = f"{path}.{m.name}" if path and m.name else (m.name or path)
            if m.array_dims and m.element_size:
                i = (off - lo) // m.element_size
                idx = _index(m, i)
                elem = m.type_name.split("[", 1)[0].strip()
                if (off - lo) % m.element_size == 0 and _bare(elem) == name:
                    return cur + idx
                if m.members:
                    nxt = (cur + idx, m.members, shift + i * m.element_size)
                    break
                continue
            if lo == off and m.name is not None and type_matches(m, name):
                return cur
            if m.members:
                nxt = (cur, m.members, shift)
                break
        if nxt is None:
            return None
        path, members, shift = nxt
    return None


def _bare(t: str) -> str:
    return re.sub(r"\b(const|volatile|struct|union)\b", "", t).strip()


def cover(layout: StructLayout, off: int, size: int) -> list[str]:
    """Paths of the shallowest members that bytes [off, off+size) cover, one per member.

    A member entirely inside the range is named once (``arch.vgic_cpu``, not each of its
    leaves); a member only partly covered is descended into. The whole root gives its
    top-level members. Raises ValueError outside the struct.
    """
    if off < 0 or size <= 0 or off + size > layout.size:
        raise ValueError(f"[{off}, {off + size}) is outside struct {layout.name} ({layout.size} bytes)")
    from scopecheck.source.clang_layout import paths_for_range

    inner = paths_for_range(layout, off, size)
    if len(inner) == 1:
        return inner
    out: list[str] = []
    _cover(layout.members, off, off + size, 0, "", out)
    return list(dict.fromkeys(out))


def _cover(members, lo: int, hi: int, shift: int, path: str, out: list) -> None:
    for m in members:
        m_lo = m.offset + shift
        m_hi = m_lo + (m.size or 0)
        if not (m_lo < hi and lo < m_hi):
            continue
        cur = f"{path}.{m.name}" if path and m.name else (m.name or path)
        if lo <= m_lo and m_hi <= hi and m.name is not None:
            out.append(cur)
            continue
        if m.array_dims and m.element_size:
            first = max(lo - m_lo, 0) // m.element_size
            last = (min(hi, m_hi) - m_lo - 1) // m.element_size
            for i in range(first, last + 1):
                e_lo = m_lo + i * m.element_size
                label = cur + _index(m, i)
                if (lo <= e_lo and e_lo + m.element_size <= hi) or not m.members:
                    out.append(label)
                else:
                    _cover(m.members, lo, hi, shift + i * m.element_size, label, out)
        elif m.members:
            _cover(m.members, lo, hi, shift, cur, out)
        elif m.name is not None:
            out.append(cur)
