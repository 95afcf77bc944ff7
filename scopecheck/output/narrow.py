"""Render a :class:`scopecheck.narrow.NarrowResult`: text (totals, plan, blocked functions) or JSON."""

from __future__ import annotations

from scopecheck import jsontext


def _loc(f) -> str:
    return f"{f.file}:{f.line}" if f.file and f.line else (f.file or "?")


def totals_line(r) -> str:
    t = r.totals
    first = r.types[0].short if r.types else "?"
    pair = " + ".join(x.short for x in r.types[:2])
    return (f"{t['functions']} hyp functions take kvm_vcpu; {t['first_type_alone']} could take {first} alone; "
            f"{t['first_two_types']} {pair}; {t['needs_kvm_vcpu']} need more; {t['unused']} do not use it")


def text(r, *, verbose: bool = False) -> str:
    out = [f"{r.target} ({r.mode}), query {r.query.id}",
           "narrower types: " + "; ".join(f"{t.ctype} = {', '.join(t.prefixes)}" for t in r.types),
           totals_line(r),
           "classes: " + ", ".join(f"{k} {v}" for k, v in r.totals["classes"].items())]
    for lim in r.limitations:
        out.append(f"note: {lim}")
    if r.plan:
        out.append(f"plan ({len(r.plan)} functions, leaves first):")
        for p in r.plan:
            after = f" after {', '.join(p['after'])}" if p["after"] else ""
            at = " (address taken: its function-pointer type changes too)" if p["address_taken"] else ""
            out.append(f"  {p['step']:>3}. {p['function']} ({p['file']}:{p['line']}) -> "
                       f"{', '.join(p['to'])}{after}{at}")
    blocked = [f for f in r.functions if not f.can_take and f.klass != "unused"]
    if blocked:
        out.append(f"need the whole kvm_vcpu ({len(blocked)}):")
        for f in blocked:
            b = f.blocked_by[0] if f.blocked_by else None
            why = f"{b['field']} via {' -> '.join(b['chain'])}" if b else "?"
            more = f" (+{len(f.blocked_by) - 1} more)" if len(f.blocked_by) > 1 else ""
            out.append(f"  {f.function} ({_loc(f)}): {why}{more}")
    unused = [f for f in r.functions if f.klass == "unused"]
    if unused:
        out.append(f"vcpu parameter unused ({len(unused)}): " + ", ".join(f.function for f in unused))
    if verbose:
        out.append("needs per function:")
        for f in r.functions:
            out.append(f"  {f.function} ({_loc(f)}) [{f.klass}]: {', '.join(sorted(f.needs)) or '-'}")
    return "\n".join(out) + "\n"


def to_json(r) -> str:
    return jsontext.dumps(r.to_dict()) + "\n"
