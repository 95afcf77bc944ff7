"""The host/hyp trust boundary: every access hyp makes to host-owned memory, and its direction.

For a protected VM, every read of host memory is untrusted input and every write to it may hand
guest state to the host. Given the accesses of a proof (each with the ``provenance`` the source
door gave it, see :mod:`scopecheck.source.provenance`), this module lists the *crossings*
(accesses through a host-owned pointer, split by direction: ``rw`` counts as a read and a write;
taking an address is not an access), judges them for a trust-boundary query
(``provenance = "host"``, ``[allow_read]`` / ``[allow_write]``), and totals the distinct bytes
read and written on the flush/sync path of one vcpu run::

    from scopecheck.proof import prove
    r = prove("build-6.12", query="pkvm-host-boundary")
    r.stats["boundary"]["read_bytes"], r.stats["boundary"]["write_bytes"]

A whole-struct copy (``host_vcpu->arch.ctxt = hyp_vcpu->vcpu.arch.ctxt``) is one access of the
member with its full size. A variable index (``vgic_lr[i]``) counts the whole array: the totals
are an upper bound of what one run moves.
"""

from __future__ import annotations

from dataclasses import dataclass

#: canonical roots whose host-owned memory is the boundary (embedded roots map into kvm_vcpu)
BOUNDARY_ROOTS = ("kvm_vcpu", "kvm", "kvm_cpu_context", "vcpu_hyp_state")
#: the functions (with everything they call) that move vcpu state across per run
DEFAULT_PATH = ("flush_hyp_vcpu", "sync_hyp_vcpu")
DIRECTIONS = {"read": ("read",), "write": ("write",), "rw": ("read", "write")}


@dataclass(slots=True)
class Crossing:
    """One direction of one access to host-owned memory."""

    root: str
    field: str
    direction: str  # read (untrusted input) | write (flows to the host)
    offset: int | None
    size: int | None
    function: str
    function_key: tuple
    file: str | None
    line: int | None
    col: int | None
    origin: str
    via: str | None
    on_path: bool = False

    def to_dict(self) -> dict:
        return {"root": self.root, "field": self.field, "direction": self.direction, "offset": self.offset,
                "bytes": self.size, "function": self.function, "file": self.file, "line": self.line,
                "col": self.col, "origin": self.origin, "via": self.via, "provenance": "host",
                "on_path": self.on_path}


def crossings(accesses, graph=None, path=DEFAULT_PATH, roots=BOUNDARY_ROOTS) -> list[Crossing]:
    """Every access in ``accesses`` (canonical roots, as in ProofResult.accesses) made through a host pointer."""
    on_path = path_functions(graph, path) if graph is not None else set()
    out, seen = [], set()
    for a in accesses:
        if a.provenance != "host" or not a.path or a.root not in roots:
            continue
        for d in DIRECTIONS.get(a.access, ()):
            k = (a.root, a.path, d, a.function, a.file, a.line, a.col)
            if k in seen:
                continue
            seen.add(k)
            out.append(Crossing(a.root, a.path, d, a.offset, a.size, a.function[0], a.function, a.file, a.line,
                                a.col, a.origin, a.via, a.function in on_path))
    out.sort(key=lambda c: (c.file or "", c.line or 0, c.col or 0, c.field, c.direction))
    return out


def path_functions(graph, names=DEFAULT_PATH) -> set:
    """The functions named ``names`` and every function they (transitively) call."""
    import networkx as nx

    g = graph.graph if hasattr(graph, "graph") else graph
    starts = [n for n in g.nodes if n[0] in set(names)]
    out = set(starts)
    for s in starts:
        out |= nx.descendants(g, s)
    return out


def _union_bytes(spans) -> int:
    total, end = 0, None
    for lo, hi in sorted(spans):
        if end is None or lo >= end:
            total += hi - lo
            end = hi
        elif hi > end:
            total += hi - end
            end = hi
    return total


def distinct_bytes(cs: list[Crossing]) -> int:
    """Bytes covered by the crossings' fields (overlaps counted once, per root struct)."""
    by_root: dict[str, list] = {}
    for c in cs:
        if c.offset is not None and c.size:
            by_root.setdefault(c.root, []).append((c.offset, c.offset + c.size))
    return sum(_union_bytes(v) for v in by_root.values())


def totals(cs: list[Crossing], path=DEFAULT_PATH) -> dict:
    """Per vcpu run: distinct host bytes read and written by the flush/sync path, and all crossings."""
    onp = [c for c in cs if c.on_path]
    reads = [c for c in onp if c.direction == "read"]
    writes = [c for c in onp if c.direction == "write"]
    return {"path": list(path), "read_bytes": distinct_bytes(reads), "write_bytes": distinct_bytes(writes),
            "read_fields": len({(c.root, c.field) for c in reads}),
            "write_fields": len({(c.root, c.field) for c in writes}),
            "crossings": len(cs), "crossings_on_path": len(onp),
            "reads": sum(c.direction == "read" for c in cs), "writes": sum(c.direction == "write" for c in cs),
            "unsized": sum(1 for c in onp if c.offset is None or not c.size)}


def per_field(cs: list[Crossing]) -> list[dict]:
    """One row per host field: bytes read / written (field size when that direction happens), sites."""
    rows: dict = {}
    for c in cs:
        r = rows.setdefault((c.root, c.field), {"root": c.root, "field": c.field, "offset": c.offset,
                                                "size": c.size, "read_bytes": 0, "write_bytes": 0,
                                                "on_path": False, "functions": set(), "sites": set()})
        r[f"{c.direction}_bytes"] = c.size or 0
        r["on_path"] = r["on_path"] or c.on_path
        r["functions"].add(c.function)
        r["sites"].add(f"{c.file}:{c.line}")
    out = []
    for r in rows.values():
        r["functions"] = sorted(r["functions"])
        r["sites"] = sorted(r["sites"])
        out.append(r)
    out.sort(key=lambda r: (r["root"], r["offset"] if r["offset"] is not None else 1 << 40, r["field"]))
    return out


def summary_line(t: dict) -> str:
    s = (f"per vcpu run hyp reads {t['read_bytes']} B from the host and writes {t['write_bytes']} B "
         f"of guest state to it ({t['read_fields']} field(s) read, {t['write_fields']} written, "
         f"on {' / '.join(t['path'])}; {t['crossings']} crossing(s) in all")
    s += f"; {t['unsized']} of unknown size)" if t.get("unsized") else ")"
    if "judged" in t:
        s += f"; judged: {t['judged']} access(es) whose memory's owner is known"
    if t.get("unknown_provenance"):
        s += (f"; not judged: {t['unknown_provenance']} access(es) in {t['unknown_functions']} function(s) "
              "through pointers whose owner is not known (callers disagree, or binary-only)")
    return s


def verdict_line(t: dict) -> str:
    """The text verdict of a trust-boundary query without leaks: never "no leaks" from what was not judged."""
    judged, unknown = t.get("judged", 0), t.get("unknown_provenance", 0)
    if not unknown:
        return f"no leaks: every touched field is in scope (all {judged} access(es) to vcpu/kvm memory judged)"
    return (f"no leaks among the {judged} judged access(es); {unknown} access(es) in "
            f"{t.get('unknown_functions', 0)} function(s) NOT judged (whose memory they touch is not known)")


def unjudgeable(t: dict) -> str | None:
    """Why a trust-boundary query cannot be judged at all (nothing judged, something not), or None."""
    if t.get("judged", 0) == 0 and t.get("unknown_provenance", 0) > 0:
        return (f"none of the {t['unknown_provenance']} access(es) to vcpu/kvm memory could be judged: "
                "whose memory (host or hyp) a pointer designates is not known for any of them")
    return None


def judge(q, graph, canon, judged_funcs=None) -> list:
    """Leaks of a trust-boundary query: host crossings its [allow_read] / [allow_write] do not allow."""
    from scopecheck.proof import _leak

    out = []
    for a, orig_roots in canon:  # orig_roots: the roots the access was made through (reconcile)
        if a.provenance != q.provenance or not a.path or a.root not in BOUNDARY_ROOTS:
            continue
        if not any(q.judges_root(r) for r in orig_roots) and not q.judges_root(a.root):
            continue
        if judged_funcs is not None and a.function not in judged_funcs:
            continue
        for d in DIRECTIONS.get(a.access, ()):
            if q.allowed_direction(a.root, a.path, d):
                continue
            leak = _leak(q, graph, a, "field")
            leak.access = d
            leak.provenance = a.provenance
            out.append(leak)
    return out


def section(q, graph, canon_accesses) -> dict:
    """The ``boundary`` block of a proof (stats and JSON): totals and every crossing."""
    path = tuple(q.boundary_path) or DEFAULT_PATH
    cs = crossings(canon_accesses, graph, path)
    t = totals(cs, path)
    # what could not be judged: accesses to these roots whose pointer's owner is not known
    unknown = [a for a in canon_accesses if a.path and a.root in BOUNDARY_ROOTS and a.provenance is None
               and a.access in DIRECTIONS]
    t["unknown_provenance"] = len(unknown)
    t["unknown_functions"] = len({a.function for a in unknown})
    # what was judged: accesses to these roots through a pointer whose owner is known
    t["judged"] = sum(1 for a in canon_accesses if a.path and a.root in BOUNDARY_ROOTS
                      and a.provenance in ("host", "hyp") and a.access in DIRECTIONS)
    return {"totals": t, "fields": per_field(cs), "crossings": [c.to_dict() for c in cs]}
