"""``scopecheck derive``: the minimal hyp state the RFC wanted, computed from the footprint.

Every kvm_vcpu field hyp touches outside kvm_cpu_context becomes a member of a derived
``struct vcpu_hyp_state`` (at the granularity of kvm_vcpu_arch's direct members, or
kvm_vcpu's for fields outside arch), ordered by alignment to minimise padding.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from scopecheck.model import Member, StructLayout


@dataclass(slots=True)
class DerivedMember:
    name: str
    path: str  # in kvm_vcpu
    type_name: str
    size: int
    align: int
    offset: int = 0
    touched: list[str] = field(default_factory=list)  # the touched paths it covers
    functions: list[str] = field(default_factory=list)
    access: str = "read"


@dataclass(slots=True)
class Derived:
    members: list[DerivedMember]
    size: int
    align: int
    kvm_vcpu: int
    kvm_cpu_context: int
    source: str

    @property
    def total(self) -> int:
        return self.kvm_cpu_context + self.size

    @property
    def pct(self) -> float:
        return 100.0 * self.total / self.kvm_vcpu if self.kvm_vcpu else 0.0

    def to_dict(self) -> dict:
        return {"schema_version": 1, "source": self.source, "size": self.size, "align": self.align,
                "kvm_vcpu": self.kvm_vcpu, "kvm_cpu_context": self.kvm_cpu_context,
                "reduced_scope": self.total, "reduced_pct_of_kvm_vcpu": round(self.pct, 2),
                "members": [{"name": m.name, "path": m.path, "type": m.type_name, "size": m.size,
                             "align": m.align, "offset": m.offset, "access": m.access,
                             "touched": m.touched, "functions": m.functions} for m in self.members]}


def _align_of(m: Member) -> int:
    """Natural alignment: the largest power of two <= 16 dividing every leaf's size."""
    leaves = [x for x in _leaves(m)] or [m]
    a = 1
    for x in leaves:
        s = x.element_size if x.array_dims and x.element_size else (x.size or 1)
        s = 1 << (min(s, 16).bit_length() - 1) if s else 1
        a = max(a, s)
    return a


def _leaves(m: Member):
    if not m.members:
        yield m
        return
    for c in m.members:
        yield from _leaves(c)


def _strip_index(path: str) -> str:
    import re

    return re.sub(r"\[[^\]]*\]", "", path)


def _member_name(path: str) -> str:
    p = path[5:] if path.startswith("arch.") else path
    return p.replace(".", "_")


def derive(footprint: dict, vcpu: StructLayout, ctxt: StructLayout, source: str = "") -> Derived:
    from scopecheck.layout import member

    # the touched fields outside kvm_cpu_context, at the granularity hyp uses them: whole
    # arrays, bit-fields by their containing struct, nothing covered twice
    touched: dict[str, list] = {}
    for e in footprint.values():
        if e["root"] != "kvm_vcpu":
            continue
        path = _strip_index(e["path"])
        if not path or path == "arch" or path == "arch.ctxt" or path.startswith("arch.ctxt."):
            continue
        try:
            m = member(vcpu, path)
        except KeyError:
            continue
        if m.bit_size is not None and "." in path:
            path = path.rsplit(".", 1)[0]
        touched.setdefault(path, []).append(e)
    keep = [p for p in touched if not any(p != q and (p.startswith(q + ".")) for q in touched)]
    groups: dict[str, DerivedMember] = {}
    for gp in keep:
        m = member(vcpu, gp)
        d = groups[gp] = DerivedMember(name=_member_name(gp), path=gp, type_name=m.type_name,
                                       size=m.size or 0, align=_align_of(m))
        for q, entries in touched.items():
            if q == gp or q.startswith(gp + "."):
                for e in entries:
                    d.touched.append(e["path"])
                    d.functions = sorted(set(d.functions) | set(e["functions"]))
                    acc = {d.access, e["access"]}
                    d.access = "rw" if ("rw" in acc or {"read", "write"} <= acc) else \
                        ("write" if "write" in acc else "read")
    members = sorted(groups.values(), key=lambda d: (-d.align, -d.size, d.path))
    off, align = 0, 1
    for d in members:
        off = (off + d.align - 1) // d.align * d.align
        d.offset = off
        off += d.size
        align = max(align, d.align)
    size = (off + align - 1) // align * align if members else 0
    return Derived(members=members, size=size, align=align, kvm_vcpu=vcpu.size, kvm_cpu_context=ctxt.size,
                   source=source)


def to_c(d: Derived) -> str:
    from scopecheck.output.size import c_declarator

    lines = [f"/* Derived by scopecheck from {d.source}: the kvm_vcpu fields nVHE hyp touches",
             " * outside struct kvm_cpu_context, ordered by alignment to minimise padding. */",
             "struct vcpu_hyp_state {"]
    for m in d.members:
        if m.type_name in ("struct", "union", "enum"):  # an anonymous type: keep its size visible
            decl = f"{m.type_name} {{ /* anonymous, {m.size} B */ }} {m.name};"
        else:
            decl = c_declarator(m.type_name, m.name) + ";"
        who = ", ".join(m.functions[:3]) + (f" +{len(m.functions) - 3}" if len(m.functions) > 3 else "")
        lines.append(f"\t{decl:<40} /* {m.offset:5d} {m.size:5d}  {m.path} ({m.access}: {who}) */".expandtabs(8))
    lines.append(f"}};\t/* size: {d.size}, members: {len(d.members)} */".expandtabs(8))
    lines.append(f"/* kvm_cpu_context {d.kvm_cpu_context} B + vcpu_hyp_state {d.size} B = {d.total} B, "
                 f"{d.pct:.1f}% of kvm_vcpu ({d.kvm_vcpu} B) */")
    return "\n".join(lines) + "\n"
