"""Render :class:`scopecheck.size.SizeReport` as a table, a pahole -E style tree, JSON or CSV."""

from __future__ import annotations

import io

from scopecheck import jsontext
from scopecheck.size import SCHEMA_VERSION, SizeReport


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}%"


def table(reports: list[SizeReport]) -> str:
    out: list[str] = []
    for rep in reports:
        bid = f"  build-id {rep.build_id}" if rep.build_id else ""
        out.append(f"{rep.target.elf}{bid}")
        head = ["struct", "size", "members", "holes", "sum holes", "padding", "% kvm_vcpu"]
        have_ph = rep.pahole is not None
        if have_ph:
            head += ["pahole size", "pahole holes", "pahole padding"]
        rows = []
        for n, lay in rep.layouts.items():
            st = lay.stats
            row = [n, str(lay.size), str(st.nr_members), str(st.holes), str(st.sum_holes), str(st.padding),
                   _pct(rep.pct_of_kvm_vcpu(n))]
            if have_ph:
                p = rep.pahole.get(n)
                if p is None:
                    row += ["(absent)", "-", "-"]
                else:
                    flag = "" if p.size == lay.size else " !!"
                    row += [f"{p.size}{flag}", str(p.holes), str(p.padding)]
            rows.append(row)
        widths = [max(len(r[i]) for r in [head] + rows) for i in range(len(head))]
        fmt = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
        out.append(fmt(head))
        out.append("  ".join("-" * w for w in widths))
        out.extend(fmt(r) for r in rows)
        for n in rep.absent:
            out.append(f"{n}: not in this build")
        out.append(rep.summary_line())
        if rep.pahole_note:
            out.append(f"note: {rep.pahole_note}")
        elif rep.pahole is not None and not rep.mismatches:
            out.append(f"pahole {rep.pahole_version} (read the {rep.pahole_format or 'DWARF'}): sizes agree")
        out.append("")
    return "\n".join(out)


def c_declarator(type_name: str, name: str) -> str:
    """C declarator: ``u64 regs[31]``, ``struct kvm *kvm``."""
    base, sep, dims = type_name.partition("[")
    dims = sep + dims
    if base.endswith("*"):
        return f"{base}{name}{dims}"
    return f"{base} {name}{dims}".rstrip()


def expanded(reports: list[SizeReport]) -> str:
    """Nested field tree with absolute offsets and sizes, like ``pahole -E``.

    Each line ends with ``/* offset[:bit] size */`` and the member's full path.
    """
    out: list[str] = []

    def line(ind: str, text: str, m) -> str:
        bitpos = f":{m.bit_offset}" if m.bit_size is not None else ""
        size = "?" if m.size is None else str(m.size)
        return f"{ind}{text}".expandtabs(8).ljust(64) + f"/* {m.offset:6d}{bitpos} {size:>5} */  {m.path}"

    def rec(members, depth: int) -> None:
        ind = "\t" * depth
        for m in members:
            name = m.name or ""
            bits = f":{m.bit_size}" if m.bit_size is not None else ""
            if m.members:
                base = m.type_name.split("[", 1)[0]
                dims = m.type_name[len(base):]
                out.append(f"{ind}{base} {{".expandtabs(8))
                rec(m.members, depth + 1)
                out.append(line(ind, f"}} {name}{dims};", m))
            else:
                out.append(line(ind, c_declarator(m.type_name, name) + f"{bits};", m))

    for rep in reports:
        for n, lay in rep.layouts.items():
            out.append(f"{lay.kind} {n} {{".ljust(64) + f"/* {rep.target.elf} */")
            rec(lay.members, 1)
            st = lay.stats
            out.append(f"\t/* size: {lay.size}, cachelines: {st.cachelines}, members: {st.nr_members} */".expandtabs(8))
            out.append(f"\t/* holes: {st.holes}, sum holes: {st.sum_holes}, padding: {st.padding} */".expandtabs(8))
            out.append("};")
            out.append("")
    return "\n".join(out)


def to_json(reports: list[SizeReport], members: bool = True) -> str:
    doc = {"schema_version": SCHEMA_VERSION, "tool": "scopecheck", "command": "size",
           "targets": [r.to_dict(members=members) for r in reports]}
    return jsontext.dumps(doc) + "\n"


def to_csv(reports: list[SizeReport], members: bool = False) -> str:
    buf = io.StringIO()
    import csv

    w = csv.writer(buf, lineterminator="\n")
    if members:
        w.writerow(["target", "struct", "path", "offset", "size", "type", "bit_offset", "bit_size"])
        for rep in reports:
            for n, lay in rep.layouts.items():
                for m in lay.walk():
                    w.writerow([rep.target.elf, n, m.path, m.offset, m.size, m.type_name,
                                "" if m.bit_offset is None else m.bit_offset,
                                "" if m.bit_size is None else m.bit_size])
    else:
        w.writerow(["target", "struct", "size", "members", "holes", "sum_holes", "padding",
                    "pct_of_kvm_vcpu", "pahole_size"])
        for rep in reports:
            for n, lay in rep.layouts.items():
                st = lay.stats
                pct = rep.pct_of_kvm_vcpu(n)
                p = (rep.pahole or {}).get(n)
                w.writerow([rep.target.elf, n, lay.size, st.nr_members, st.holes, st.sum_holes, st.padding,
                            "" if pct is None else f"{pct:.2f}", "" if p is None else p.size])
    return buf.getvalue()
