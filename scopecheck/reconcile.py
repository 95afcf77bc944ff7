"""Reconcile the two doors into one ledger of evidence, function by function.

The source door (libclang, asm-offsets) and the binary door (loads and stores through
registers DWARF ties to a root struct) each report :class:`FieldAccess` records. Neither
discards the other's: every machine-code access site is *explained* by a source access of
the same out-of-line function or of a function inlined into it (overlapping bytes once both
are mapped into the kvm_vcpu they live in, compatible kind), or it stands on its own as a
*binary-only* access with its instruction and line-table file:line, judged like any other.
Every source access is *explained*, *source-only* (the function is in the binary, no machine
access matches: the compiler kept it in a register, merged it, or the binary door could not
follow the pointer) or *compiled-away* (its function is not in this build: a static inline
never instantiated, a function behind a constant-false condition). What either door saw but
could not map (``Unanalysed`` records, unresolved indirect calls, source functions whose name
matches several binary functions) is *unanalysed*. Nothing is dropped silently: the ledger
counts and lists every class.

Across calls: a ``struct kvm_vcpu *`` argument that is ``&hyp_vcpu->vcpu`` (a register the
binary door knows points at ``pkvm_hyp_vcpu.vcpu`` at a ``bl``) marks the callee; accesses
to kvm_vcpu fields in marked functions (and, transitively, in functions they pass their
vcpu on to) are judged as accesses through ``pkvm_hyp_vcpu``.

Works on model records only: no imports from ``binary/`` or ``source/``.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from scopecheck.graph import HypGraph, norm_file, norm_key
from scopecheck.model_code import Escalation, FieldAccess, HypFacts, SourceFacts, Unanalysed
from scopecheck.query import canonical

CLASSES = ("explained", "binary_only", "source_only", "compiled_away", "unanalysed")
# roots embedded in kvm_vcpu, for matching bytes across doors: root -> path of it in kvm_vcpu
_IN_VCPU = {"kvm_vcpu_arch": "arch", "kvm_cpu_context": "arch.ctxt", "vcpu_hyp_state": "arch.hyp_state"}
_BIG = 64  # source ranges wider than this are scanned linearly (whole structs, arrays)
_VCPUISH = ("kvm_vcpu", "kvm_vcpu_arch")


@dataclass(slots=True)
class Judged:
    """One access to judge: canonical root/path/offset/size; ``roots`` every original root it was seen through."""

    access: FieldAccess
    roots: frozenset
    ledger: str  # explained | binary_only | source_only | compiled_away | unanalysed


@dataclass(slots=True)
class Ledger:
    judged: list[Judged] = field(default_factory=list)
    escalations: list[Escalation] = field(default_factory=list)
    counts: dict = field(default_factory=lambda: {c: 0 for c in CLASSES})
    binary_only: list[FieldAccess] = field(default_factory=list)
    source_only: list[FieldAccess] = field(default_factory=list)
    compiled_away: list[dict] = field(default_factory=list)  # {"function", "file", "line", "accesses"}
    unanalysed: list[Unanalysed] = field(default_factory=list)
    binary_explained: int = 0  # machine access records explained by a source access
    hyp_vcpu_callees: dict = field(default_factory=dict)  # FuncKey -> caller name (&hyp_vcpu->vcpu passed)
    include_compiled_away: bool = False

    def summary(self) -> str:
        c = self.counts
        return (f"evidence: {c['explained']} explained, {c['binary_only']} binary-only, "
                f"{c['source_only']} source-only, {c['compiled_away']} compiled-away"
                + (" (judged)" if self.include_compiled_away and c["compiled_away"] else " (not in this build)"
                   if c["compiled_away"] else "")
                + f", {c['unanalysed']} unanalysed")

    def to_dict(self) -> dict:
        una: dict = {}
        for u in self.unanalysed:
            una[u.kind] = una.get(u.kind, 0) + 1
        return {
            "counts": dict(self.counts),
            "binary_explained": self.binary_explained,
            "compiled_away_judged": self.include_compiled_away,
            "unanalysed_kinds": dict(sorted(una.items())),
            "binary_only": [_acc_dict(a) for a in self.binary_only],
            "source_only": [_acc_dict(a) for a in self.source_only],
            "compiled_away": [{"function": d["function"], "file": d["file"], "line": d["line"],
                               "status": "not in this build",
                               "accesses": [_acc_dict(a) for a in d["accesses"]]} for d in self.compiled_away],
            "unanalysed": [u.to_dict() for u in self.unanalysed],
            "hyp_vcpu_callees": [{"function": k[0], "file": k[1], "line": k[2], "from": v}
                                 for k, v in sorted(self.hyp_vcpu_callees.items(), key=repr)],
        }


def _acc_dict(a: FieldAccess) -> dict:
    d = {"field": f"{a.root}:{a.path}", "access": a.access, "function": a.function[0], "file": a.file,
         "line": a.line, "col": a.col, "origin": a.origin, "offset": a.offset, "bytes": a.size,
         "provenance": a.provenance}
    if a.address is not None:
        d["address"] = hex(a.address)
        d["insn"] = a.insn
    return d


def _with(a: FieldAccess, **kw) -> FieldAccess:
    d = {s: getattr(a, s) for s in FieldAccess.__slots__}
    d.update(kw)
    return FieldAccess(**d)


class _Bytes:
    """Field offsets/sizes from the layouts, and the kvm_vcpu-relative space both doors are matched in."""

    def __init__(self, layouts: dict):
        self.lay = layouts
        self._memo: dict = {}
        self.base: dict = {}
        vcpu = layouts.get("kvm_vcpu")
        if vcpu is not None:
            from scopecheck.layout import member

            for r, p in _IN_VCPU.items():
                try:
                    self.base[r] = member(vcpu, p).offset
                except (KeyError, ValueError):
                    pass
        hv = layouts.get("pkvm_hyp_vcpu")
        self.hyp_vcpu_vcpu: int | None = None
        if hv is not None:
            from scopecheck.layout import member

            try:
                self.hyp_vcpu_vcpu = member(hv, "vcpu").offset
            except (KeyError, ValueError):
                pass

    def field(self, root: str, path: str, a: FieldAccess) -> tuple[int | None, int | None]:
        k = (root, path)
        r = self._memo.get(k)
        if r is None:
            r = self._memo[k] = _offset_size(self.lay, root, path)
        return r if r[0] is not None else (a.offset, a.size)

    def space(self, root: str, off: int | None) -> tuple[str, int | None]:
        if off is None:
            return root, None
        b = self.base.get(root)
        if b is not None:
            return "kvm_vcpu", b + off
        return root, off


def _offset_size(layouts, root, path) -> tuple[int | None, int | None]:
    lay = layouts.get(root)
    if lay is None or not path:
        return None, None
    from scopecheck.layout import member

    p = path
    while p:
        try:
            m = member(lay, p.replace("[*]", ""))
            return m.offset, m.size
        except (KeyError, ValueError, IndexError):
            if "." not in p:
                break
            p = p.rsplit(".", 1)[0]
    return None, None


def _compatible(b: str, s: str, b_size, s_size) -> bool:
    """A machine access of kind ``b`` is explained by a source access of kind ``s``."""
    if s == b or s in ("addr", "rw") or b == "rw":
        return True
    # a store to a bit-field or a narrow member is a read-modify-write of the wider unit
    return b == "read" and s == "write" and (s_size is None or b_size is None or s_size <= b_size)


class _Index:
    """Source accesses of a group of functions, by matching space root, for byte-overlap lookups."""

    __slots__ = ("starts", "items", "big")

    def __init__(self, rows):
        rows = sorted(rows, key=lambda r: r[0])
        self.starts = [r[0] for r in rows if r[1] - r[0] <= _BIG]
        self.items = [r for r in rows if r[1] - r[0] <= _BIG]
        self.big = [r for r in rows if r[1] - r[0] > _BIG]

    def hits(self, lo: int, hi: int):
        i = bisect.bisect_left(self.starts, lo - _BIG)
        items = self.items
        n = len(items)
        while i < n and items[i][0] < hi:
            r = items[i]
            if r[1] > lo:
                yield r
            i += 1
        for r in self.big:
            if r[0] < hi and r[1] > lo:
                yield r


def reconcile(src: SourceFacts | None, b_acc: list[FieldAccess], b_esc: list[Escalation], facts: HypFacts,
              g: HypGraph, source_root: str | None, layouts: dict, *, b_unanalysed=(), call_args=(),
              params: dict | None = None, include_compiled_away: bool = False) -> Ledger:
    """The ledger of both doors' evidence (see the module doc).

    ``params``: FuncKey (normalised) -> ((name, type), ...) of the binary's functions, used to
    follow ``&hyp_vcpu->vcpu`` into callees whose parameter is a ``struct kvm_vcpu *``.
    """
    root = source_root
    L = Ledger(include_compiled_away=include_compiled_away)
    B = _Bytes(layouts)

    def canon(a: FieldAccess, **kw) -> FieldAccess:
        r, p = canonical(a.root, a.path)
        off, size = B.field(r, p, a)
        return _with(a, root=r, path=p, offset=off, size=size, **kw)

    # ---- function groups: an out-of-line function and everything inlined into it
    group: dict = {}
    for f in facts.functions:
        k = norm_key(f.key, root)
        group.setdefault(k, {k})
    outer_of: dict = {}  # inlined function -> out-of-line functions holding it
    for inst in facts.inlined:
        c, k = norm_key(inst.callee, root), norm_key(inst.caller, root)
        group.setdefault(k, {k}).add(c)
        outer_of.setdefault(c, set()).add(k)
    for k in group:
        outer_of.setdefault(k, set()).add(k)
    # a machine access may also stand for a direct callee's source access: GCC's IPA-SRA turns a
    # pointer parameter only read into a value the caller loads (``.isra`` clones)
    callees_of: dict = {}
    clones = {norm_key(f.key, root) for f in facts.functions
              if not f.is_asm and f.symbol and any(t in f.symbol for t in (".isra", ".constprop", ".part"))}
    out_of_line = {norm_key(f.key, root) for f in facts.functions}
    for e in facts.edges:
        if e.caller is not None and e.callee is not None and e.kind in ("call_site", "tail_call", "bl", "b"):
            c = norm_key(e.callee, root)
            if c in clones:  # only a clone's parameters were changed by the compiler
                callees_of.setdefault(norm_key(e.caller, root), set()).add(c)

    # ... and a source callee whose inlined copy left no DWARF trace in this caller
    if src is not None:
        by_name_b: dict = {}
        for k in g.in_binary:
            by_name_b.setdefault(k[0], []).append(k)
        for c in src.calls:
            if c.indirect or not c.callee:
                continue
            ck = g.map_key(norm_key(c.caller, root))
            if ck is None:
                continue
            for b in by_name_b.get(c.callee, ()):
                if b not in out_of_line:  # an out-of-line callee's accesses are in its own code
                    callees_of.setdefault(ck, set()).add(b)

    # ---- source accesses: mapped to binary keys, or compiled away
    src_rows: dict = {}  # binary key -> [(canonical access, original root, matched flag list index)]
    src_list: list = []  # [canonical access, original root, matched binary roots set]
    if src is not None:
        by_name: dict = {}
        for k in g.in_binary:
            by_name.setdefault(k[0], []).append(k)
        away: dict = {}
        for a in src.accesses:
            sk = norm_key(a.function, root)
            k = g.map_key(sk)
            if k is None:
                ca = canon(a, function=sk, file=norm_file(a.file, root))
                n = len(by_name.get(sk[0], ()))
                if n > 1:
                    L.unanalysed.append(Unanalysed("ambiguous-function", sk, ca.file, ca.line, ca.col,
                                                   f"{ca.root}:{ca.path} ({ca.access}): {sk[0]} matches {n} "
                                                   "binary functions", a.origin))
                    L.counts["unanalysed"] += 1
                    if include_compiled_away:
                        L.judged.append(Judged(ca, frozenset((a.root,)), "unanalysed"))
                    continue
                away.setdefault(sk, []).append(ca)
                continue
            ca = canon(a, function=k, file=norm_file(a.file, root))
            i = len(src_list)
            src_list.append([ca, a.root, None, None])
            src_rows.setdefault(k, []).append(i)
        # a static inline whose whole body folded into its caller's addressing (vcpu_pc(),
        # vcpu_cpsr()) leaves no DW_TAG_inlined_subroutine: it is in the binary when a caller is,
        # and a machine access of that caller must explain its accesses
        folded = _folded_into(src, away, g, root)
        for sk, accs in sorted(away.items(), key=lambda t: repr(t[0])):
            callers = folded.get(sk)
            if callers:
                for ca in accs:
                    i = len(src_list)
                    src_list.append([ca, ca.root, None, sk])
                    for c in callers:
                        src_rows.setdefault(c, []).append(i)
                        _add_edge(g, c, sk)
                continue
            L.compiled_away.append({"function": sk[0], "file": sk[1], "line": sk[2], "accesses": accs})
            L.counts["compiled_away"] += len(accs)
            if include_compiled_away:
                L.judged.extend(Judged(ca, frozenset((ca.root,)), "compiled_away") for ca in accs)

    # ---- &hyp_vcpu->vcpu handed to callees
    marked = _hyp_vcpu_callees(call_args, facts, root, B, params or {})
    L.hyp_vcpu_callees = marked

    def marked_fn(k) -> str | None:
        for o in outer_of.get(k, (k,)):
            if o in marked:
                return marked[o]
        return None

    # ---- match every machine access against the source of its function group
    index_memo: dict = {}

    def index_for(k):
        r = index_memo.get(k)
        if r is None:
            rows: dict = {}
            keys = set()
            for o in outer_of.get(k, (k,)):
                keys |= group.get(o, {o})
            for kk in list(keys):
                keys |= callees_of.get(kk, set())
            for kk in keys:
                for i in src_rows.get(kk, ()):
                    ca = src_list[i][0]
                    sroot, soff = B.space(ca.root, ca.offset)
                    if soff is None:
                        continue
                    rows.setdefault(sroot, []).append((soff, soff + (ca.size or 1), i))
            r = index_memo[k] = {sr: _Index(v) for sr, v in rows.items()}
        return r

    have_source = src is not None
    for a in b_acc:
        k = norm_key(a.function, root)
        ca = canon(a, function=k, file=norm_file(a.file, root))
        matched = False
        if have_source and ca.offset is not None:
            sroot, boff = B.space(ca.root, ca.offset)
            idx = index_for(k).get(sroot)
            if idx is not None:
                bsize = ca.size or 1
                for _lo, _hi, i in idx.hits(boff, boff + bsize):
                    s = src_list[i]
                    if _compatible(ca.access, s[0].access, a.size, s[0].size):
                        if s[2] is None:
                            s[2] = set()
                        s[2].add(a.root)
                        matched = True
        if matched:
            L.binary_explained += 1
            continue
        roots = {a.root}
        if a.root in _VCPUISH and marked_fn(k) is not None:
            roots.add("pkvm_hyp_vcpu")
            if ca.via is None or "hyp_vcpu" not in ca.via:
                ca = _with(ca, via=f"&hyp_vcpu->vcpu from {marked_fn(k)}" + (f" {ca.via}" if ca.via else ""))
        L.binary_only.append(ca)
        L.counts["binary_only"] += 1
        L.judged.append(Judged(ca, frozenset(roots), "binary_only"))

    folded_away: dict = {}
    for ca, orig, broots, folded_fn in src_list:
        if folded_fn is not None and not broots:
            # folded into a caller, but no machine access there matches: not in this build either
            folded_away.setdefault(folded_fn, []).append(ca)
            continue
        roots = {orig} | (broots or set())
        m = marked_fn(ca.function) if orig in _VCPUISH else None
        if m is not None:
            roots.add("pkvm_hyp_vcpu")
            ca = _with(ca, via=f"&hyp_vcpu->vcpu from {m}" + (f" {ca.via}" if ca.via else ""))
        if broots:
            L.counts["explained"] += 1
            L.judged.append(Judged(ca, frozenset(roots), "explained"))
        else:
            L.counts["source_only"] += 1
            L.source_only.append(ca)
            L.judged.append(Judged(ca, frozenset(roots), "source_only"))

    for sk, accs in sorted(folded_away.items(), key=lambda t: repr(t[0])):
        L.compiled_away.append({"function": sk[0], "file": sk[1], "line": sk[2], "accesses": accs})
        L.counts["compiled_away"] += len(accs)
        if include_compiled_away:
            L.judged.extend(Judged(ca, frozenset((ca.root,)), "compiled_away") for ca in accs)
    L.compiled_away.sort(key=lambda d: (d["function"], d["file"] or "", d["line"] or 0))

    # ---- escalations: the source's, and the machine code's the source does not explain
    src_esc: dict = {}
    if src is not None:
        for e in src.escalations:
            k = g.map_key(norm_key(e.function, root))
            if k is None:
                continue
            src_esc.setdefault((e.from_root, e.to_root), set()).add(k)
            L.escalations.append(Escalation(e.from_root, e.to_root, k, norm_file(e.file, root), e.line, e.col,
                                            e.origin, e.via))
    for e in b_esc:
        k = norm_key(e.function, root)
        near = src_esc.get((e.from_root, e.to_root))
        keys = set()
        for o in outer_of.get(k, (k,)):
            keys |= group.get(o, {o})
        if near and keys & near:
            continue
        if e.via == "dwarf" and any(src_list[i][1] == e.to_root for kk in keys for i in src_rows.get(kk, ())):
            # DWARF names a register the bigger struct's pointer, and the source of the same code
            # holds such a pointer anyway (a parameter): register reuse, not a container_of
            continue
        L.escalations.append(Escalation(e.from_root, e.to_root, k, norm_file(e.file, root), e.line, e.col,
                                        e.origin, e.via))

    # ---- what was seen but not mapped
    extra: list = list(getattr(facts, "unanalysed", ()) or ()) + list(b_unanalysed)
    if src is not None:
        extra += list(src.unanalysed)
    for u in extra:
        fk = norm_key(u.function, root) if u.function else None
        L.unanalysed.append(Unanalysed(u.kind, fk, norm_file(u.file, root), u.line, u.col, u.detail, u.origin))
    for c in g.unresolved:
        L.unanalysed.append(Unanalysed("indirect-call", (c.get("caller"), c.get("file"), None), c.get("file"),
                                       c.get("line"), None,
                                       f"indirect call via {c.get('via') or '?'}"
                                       + (f" of type {c['target_type']}" if c.get("target_type") else "")
                                       + " not resolved", c.get("origin", "binary")))
    L.counts["unanalysed"] = len(L.unanalysed)
    L.unanalysed.sort(key=lambda u: (u.kind, u.file or "", u.line or 0, repr(u.function), u.detail))
    L.binary_only.sort(key=lambda a: (a.file or "", a.line or 0, a.address or 0, a.path))
    L.source_only.sort(key=lambda a: (a.file or "", a.line or 0, a.col or 0, a.path))
    return L


def binary_provenance(b_acc: list[FieldAccess], summaries: str | None, facts: HypFacts) -> dict:
    """Resolve the binary door's provenance symbols over the whole program (the same resolver as
    the source door's, :func:`scopecheck.provenance.resolve`) and set ``provenance`` on ``b_acc``.

    ``summaries``: the binary door's per-function summaries (JSON text: ``[function key, number of
    parameter registers, [[index into b_acc, symbol], ...], calls, stores]``). A function whose
    address is taken (a handler in a table, a callback) gets "not known" parameters. Returns the
    resolver's result (``params``, ``host_fields``, ``rounds``), with ``summaries`` counted.
    """
    import json

    from scopecheck.provenance import ProvSummary, resolve

    if not summaries:
        return {"summaries": 0}
    pairs = []
    for fk, nparams, accs, calls, stores in json.loads(summaries):
        s = ProvSummary(function=tuple(fk), nparams=nparams, accesses=[sym for _i, sym in accs],
                        calls=calls, stores=stores)
        pairs.append((s, [b_acc[i] for i, _sym in accs]))
    taken = {e.callee[0] for e in facts.edges if e.kind == "address_taken" and e.callee is not None}
    out = resolve(pairs, address_taken=taken)
    out["summaries"] = len(pairs)
    return out


def _folded_into(src: SourceFacts, away: dict, g: HypGraph, root) -> dict:
    """Source key of a function not in the binary -> binary keys of the functions it was inlined
    into without a DWARF trace (its source callers in the binary, through other such functions)."""
    names: dict = {}
    for sk in away:
        names.setdefault(sk[0], []).append(sk)
    callers: dict = {}
    for c in src.calls:
        if c.indirect or not c.callee or c.callee not in names:
            continue
        ck = norm_key(c.caller, root)
        for sk in names[c.callee]:
            callers.setdefault(sk, set()).add(ck)
    out: dict = {}
    for sk in away:
        seen, todo, found = {sk}, list(callers.get(sk, ())), set()
        while todo:
            ck = todo.pop()
            if ck in seen:
                continue
            seen.add(ck)
            k = g.map_key(ck)
            if k is not None:
                found.add(k)
            elif ck in away:
                todo.extend(callers.get(ck, ()))
        if found:
            out[sk] = found
    return out


def _add_edge(g: HypGraph, a, b) -> None:
    gr = g.graph
    if gr.has_edge(a, b):
        gr[a][b]["kinds"].add("inlined_folded")
    else:
        gr.add_edge(a, b, kinds={"inlined_folded"})
    g._parents = None  # chains are recomputed with the new edge


def _hyp_vcpu_callees(call_args, facts: HypFacts, root, B: _Bytes, params: dict) -> dict:
    """FuncKey -> name of a caller that passes it ``&hyp_vcpu->vcpu`` as a ``struct kvm_vcpu *``."""
    if B.hyp_vcpu_vcpu is None or not call_args:
        return {}
    at: dict = {}
    for f in facts.functions:
        if f.address is not None:
            at[f.address] = norm_key(f.key, root)

    def vcpu_param(k, reg) -> bool:
        ps = params.get(k)
        if not ps or reg >= len(ps):
            return False
        t = " ".join(ps[reg][1].replace("const ", "").replace("*", " * ").split())
        return t == "struct kvm_vcpu *"

    by_caller: dict = {}
    for outer, _inner, _pc, target, reg, vals in call_args:
        callee = at.get(target)
        if callee is None:
            continue
        by_caller.setdefault(norm_key(outer, root), []).append((callee, reg, vals))
    marked: dict = {}
    work = []
    for caller, calls in by_caller.items():
        for callee, reg, vals in calls:
            if any(r == "pkvm_hyp_vcpu" and o == B.hyp_vcpu_vcpu for r, o in vals) and vcpu_param(callee, reg):
                if callee not in marked:
                    marked[callee] = caller[0]
                    work.append(callee)
    while work:  # a marked function passing its vcpu on
        k = work.pop()
        for callee, reg, vals in by_caller.get(k, ()):
            if callee in marked:
                continue
            if any(r == "kvm_vcpu" and o == 0 for r, o in vals) and vcpu_param(callee, reg):
                marked[callee] = k[0]
                work.append(callee)
    return marked
