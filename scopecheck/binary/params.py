"""Parameter types of the hyp's functions and inlined functions, from DWARF.

    from scopecheck.binary.params import param_types
    param_types("vmlinux", facts)   # {FuncKey: (("ctxt", "struct kvm_cpu_context *"), ...)}

Keys are those of :func:`scopecheck.binary.functions.hyp_functions` (out-of-line
functions and the callees of inlined instances); the types are spelled like C
(``struct kvm_vcpu *``, ``const struct kvm_cpu_context *``), following abstract origins,
so a query can judge functions by their parameter types without the source.
"""

from __future__ import annotations

from scopecheck.binary.dwarf import children, open_dwarf, reading_dwarf
from scopecheck.binary.elf import ElfImage
from scopecheck.binary.types import type_name
from scopecheck.model_code import HypFacts, Unanalysed


class Params(dict):
    """FuncKey -> ((name, type), ...); ``unreadable``: an :class:`Unanalysed` (``dwarf-form``) per
    function whose parameter types could not be read (a query judging by type cannot judge it)."""

    def __init__(self):
        super().__init__()
        self.unreadable: list[Unanalysed] = []


def param_types(elf_or_path, facts: HypFacts) -> Params:
    own = not isinstance(elf_or_path, ElfImage)
    elf = ElfImage(elf_or_path) if own else elf_or_path
    try:
        with reading_dwarf(elf.path, "DWARF parameter types of the hyp functions"):
            return _run(elf, facts)
    finally:
        if own:
            elf.close()


def _params_of(die, depth=0) -> tuple | None:
    """((name, type), ...) of a subprogram DIE, following DW_AT_abstract_origin/specification.

    A parameter whose type cannot be read has type ``"?"``."""
    out = []
    seen = False
    for ch in children(die):
        if ch.tag != "DW_TAG_formal_parameter":
            continue
        seen = True
        a = ch.attributes
        src = ch
        if "DW_AT_type" not in a and "DW_AT_abstract_origin" in a:
            try:
                src = ch.get_DIE_from_attribute("DW_AT_abstract_origin")
            except Exception:
                src = ch
        sa = src.attributes
        name = sa["DW_AT_name"].value if "DW_AT_name" in sa else b""
        name = name.decode() if isinstance(name, bytes) else str(name)
        try:
            t = src.get_DIE_from_attribute("DW_AT_type") if "DW_AT_type" in sa else None
            out.append((name, type_name(t)))
        except Exception:
            out.append((name, "?"))
    if not seen and depth < 4:
        for ref in ("DW_AT_abstract_origin", "DW_AT_specification"):
            if ref in die.attributes:
                try:
                    return _params_of(die.get_DIE_from_attribute(ref), depth + 1)
                except Exception:
                    return None
    return tuple(out)


def _run(elf: ElfImage, facts: HypFacts) -> Params:
    dwarf = open_dwarf(elf)
    out = Params()

    def die_at(off):
        cu = dwarf.get_CU_containing(off)
        return cu.get_DIE_from_refaddr(off)

    def unreadable(key, file, line, why):
        out.unreadable.append(Unanalysed("dwarf-form", key, file, line, None,
                                         f"parameter types not readable from the DWARF: {why}", origin="binary"))

    files = {f.key: (f.decl_file, f.decl_line) for f in facts.functions}
    for f in facts.functions:
        if f.die_offset is None or f.key in out:
            continue
        try:
            p = _params_of(die_at(f.die_offset))
        except Exception as e:  # a corrupt DIE: this function cannot be judged by its types
            unreadable(f.key, f.decl_file, f.decl_line, type(e).__name__)
            continue
        if p is not None:
            out[f.key] = p
            if any(t == "?" for _n, t in p):
                unreadable(f.key, f.decl_file, f.decl_line, "a parameter's type")
    for inst in facts.inlined:
        if inst.die_offset is None or inst.callee in out:
            continue
        try:
            d = die_at(inst.die_offset)
            o = d.get_DIE_from_attribute("DW_AT_abstract_origin") if "DW_AT_abstract_origin" in d.attributes else d
            p = _params_of(o)
        except Exception as e:
            unreadable(inst.callee, *files.get(inst.callee, (None, None)), type(e).__name__)
            continue
        if p is not None:
            out[inst.callee] = p
    return out
