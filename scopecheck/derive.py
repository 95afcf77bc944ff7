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


def _group_path(path: str) -> str:
    """The member the derived struct holds for a touched path."""
    parts = path.replace("[", ".[").split(".")
    if parts[0] == "arch" and len(parts) > 1:
        if parts[1] == "hyp_state" and len(parts) > 2:
            return "arch.hyp_state." + parts[2]
        return "arch." + parts[1]
    return parts[0]


def derive(footprint: dict, vcpu: StructLayout, ctxt: StructLayout, source: str = "") -> Derived:
    from scopecheck.layout import member

    groups: dict[str, DerivedMember] = {}
    for key, e in footprint.items():
        if e["root"] != "kvm_vcpu":
            continue
        path = e["path"]
        if path == "arch.ctxt" or path.startswith(("arch.ctxt.", "arch.ctxt[")):
            continue
        gp = _group_path(path)
        if gp in ("arch", "arch.ctxt"):
            continue
        try:
            m = member(vcpu, gp)
        except KeyError:
            continue
        d = groups.get(gp)
        if d is None:
            d = groups[gp] = DerivedMember(name=gp.rsplit(".", 1)[-1], path=gp, type_name=m.type_name,
                                           size=m.size or 0, align=_align_of(m))
        d.touched.append(path)
        d.functions = sorted(set(d.functions) | set(e["functions"]))
        acc = {d.access, e["access"]}
        d.access = "rw" if ("rw" in acc or {"read", "write"} <= acc) else ("write" if "write" in acc else "read")
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
        decl = c_declarator(m.type_name, m.name) + ";"
        who = ", ".join(m.functions[:3]) + (f" +{len(m.functions) - 3}" if len(m.functions) > 3 else "")
        lines.append(f"\t{decl:<40} /* {m.offset:5d} {m.size:5d}  {m.path} ({m.access}: {who}) */".expandtabs(8))
    lines.append(f"}};\t/* size: {d.size}, members: {len(d.members)} */".expandtabs(8))
    lines.append(f"/* kvm_cpu_context {d.kvm_cpu_context} B + vcpu_hyp_state {d.size} B = {d.total} B, "
                 f"{d.pct:.1f}% of kvm_vcpu ({d.kvm_vcpu} B) */")
    return "\n".join(lines) + "\n"
