"""Which hyp functions could take something narrower than ``struct kvm_vcpu *``, and in which order.

    from scopecheck.narrow import narrow
    n = narrow("build-6.1")                   # runs (or takes) the callgraph proof
    n.totals, n.plan, n.functions[0].can_take

Built on the scope proof's facts (:func:`scopecheck.proof.prove`: the merged call graph
and the canonical field accesses) and on the source door's function parameters and call
arguments. For every hyp function with a ``struct kvm_vcpu *`` parameter (const or not,
inlined instances included) it computes what the function *needs* from that vcpu: its own
kvm_vcpu field accesses plus, transitively, those of every callee it hands the vcpu (or a
pointer derived from it, ``&vcpu->arch.ctxt``) to, following direct calls and indirect
calls resolved as ``callgraph`` resolves them. Those needs are classified against the
narrower parameter types a query names in its ``[narrow]`` table::

    [narrow]
    "struct kvm_cpu_context *" = ["arch.ctxt"]
    "struct vcpu_hyp_state *" = ["arch.hyp_state", "@rfc_hyp_fields"]

``can_take`` is the smallest list of those types whose field prefixes cover every need
(empty when none suffices); ``blocked_by`` the needs no listed type covers, each with the
call chain that needs it. The plan orders the narrowable functions leaves first: a
function can only change its parameter once the callees it hands the vcpu to have.
"""

from __future__ import annotations

import itertools
import re
import tomllib
from dataclasses import dataclass, field

from scopecheck.errors import InputError
from scopecheck.query import Query, canonical, path_has_prefix

SCHEMA_VERSION = 1
VCPU = "kvm_vcpu"
UNUSED = "unused"
NEEDS_VCPU = "kvm_vcpu"

LIMITATIONS = (
    "callees the binary has no trace of (compiled away, or inlined without a DWARF record) count "
    "through their source: the narrowed source must still compile",
    "a vcpu pointer stored to memory, returned, or passed to code outside hyp is not a need; "
    "the compiler rejects such a narrowing",
    "accesses of a function are attributed to the vcpu parameter even when they go through "
    "another vcpu pointer the function holds (conservative)",
)
NO_ARGS_LIMIT = ("call arguments were not recorded by the source door: every callee with a "
                 "struct kvm_vcpu * parameter called from a function holding a vcpu is taken "
                 "to receive it (conservative)")


@dataclass(slots=True)
class NarrowType:
    ctype: str  # "struct kvm_cpu_context *"
    prefixes: list[str]  # kvm_vcpu field paths it covers

    @property
    def short(self) -> str:
        return _struct_of(self.ctype) or self.ctype


@dataclass(slots=True)
class NarrowFunction:
    key: tuple
    function: str
    file: str | None
    line: int | None
    params: list  # [[name, type], ...]
    param: str  # the struct kvm_vcpu * parameter
    param_index: int
    needs: dict  # path -> chain (function names, this one first, the one with the access last)
    can_take: list[str]
    blocked_by: list[dict]
    klass: str
    address_taken: bool = False
    inline: bool = False
    static: bool = False
    callees: list = field(default_factory=list)  # keys of functions it hands the vcpu to

    def to_dict(self) -> dict:
        return {"function": self.function, "file": self.file, "line": self.line,
                "params": [list(p) for p in self.params], "param": self.param,
                "needs": sorted(self.needs), "can_take": self.can_take, "blocked_by": self.blocked_by,
                "class": self.klass, "address_taken": self.address_taken, "inline": self.inline,
                "hands_vcpu_to": sorted({k[0] for k in self.callees})}


@dataclass(slots=True)
class NarrowResult:
    query: Query
    target: str
    mode: str
    types: list[NarrowType]
    functions: list[NarrowFunction]
    plan: list[dict]
    totals: dict
    limitations: list[str]
    source_root: str | None = None
    duplicate_names: frozenset = frozenset()  # names of several functions in the hyp binary

    def by_name(self, name: str) -> list[NarrowFunction]:
        return [f for f in self.functions if f.function == name]

    def to_dict(self) -> dict:
        return {"schema_version": SCHEMA_VERSION, "tool": "scopecheck", "command": "narrow",
                "query": {"id": self.query.id, "title": self.query.title},
                "target": self.target, "mode": self.mode,
                "narrow_types": {t.ctype: t.prefixes for t in self.types},
                "limitations": self.limitations,
                "functions": [f.to_dict() for f in self.functions],
                "plan": self.plan, "totals": self.totals}


# ---------------------------------------------------------------- the [narrow] table

def narrow_types(q: Query) -> list[NarrowType]:
    """The query's ``[narrow]`` table, virtual groups expanded, in file order."""
    if q.path is None:
        raise InputError(f"query {q.id}: no file to read a [narrow] table from")
    try:
        data = tomllib.loads(q.path.read_text())
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{q.path}: cannot read ({e})") from None
    table = data.get("narrow")
    if table is None:
        raise InputError(f"{q.path}: query {q.id} has no [narrow] table (narrower parameter types)")
    if not isinstance(table, dict) or not table:
        raise InputError(f"{q.path}: [narrow] must map C pointer types to lists of kvm_vcpu field paths")
    out = []
    for ctype, prefixes in table.items():
        if not isinstance(prefixes, list) or not all(isinstance(x, str) for x in prefixes):
            raise InputError(f"{q.path}: narrow.{ctype!r} must be a list of kvm_vcpu field paths")
        if _struct_of(ctype) is None:
            raise InputError(f"{q.path}: narrow type {ctype!r} is not of the form 'struct NAME *'")
        exp: list[str] = []
        for p in prefixes:
            if p.startswith("@"):
                if p[1:] not in q.virtual:
                    raise InputError(f"{q.path}: narrow.{ctype!r} names virtual group {p!r}, which [virtual] lacks")
                exp.extend(q.virtual[p[1:]])
            else:
                exp.append(p)
        out.append(NarrowType(ctype, exp))
    return out


_STRUCT_PTR = re.compile(r"^(?:const\s+|volatile\s+)*struct\s+(\w+)\s*\*\s*(?:const\s*)?$")


def _struct_of(ctype: str) -> str | None:
    """``const struct kvm_vcpu *`` -> ``kvm_vcpu``; None for anything but a pointer to a struct."""
    m = _STRUCT_PTR.match(" ".join(str(ctype).split()))
    return m.group(1) if m else None


# ---------------------------------------------------------------- the analysis

def narrow(target=None, source=None, query: str | Query = "rfc-hyp-scope", *, proof=None,
           binary_only: bool = False, use_cache: bool = True, progress=None) -> NarrowResult:
    """Classify every hyp function taking a kvm_vcpu. ``proof``: a ProofResult already computed."""
    from scopecheck.proof import prove

    if proof is None:
        proof = prove(target, source, query, binary_only=binary_only, use_cache=use_cache, progress=progress)
    types = narrow_types(proof.query)
    if proof.mode != "source+binary":
        raise InputError(f"{proof.inputs.elf}: narrow needs the source (compile_commands.json): parameter "
                         "types and call arguments come from it; binary-only input is not supported")
    step = progress or (lambda msg: None)
    step("computing what each vcpu function needs")
    src = _source(proof, use_cache)
    return _analyse(proof, src, types)


def _source(proof, use_cache: bool):
    """The source door's facts for the proof's inputs (from the per-TU cache the proof filled)."""
    src = getattr(proof, "source_facts", None)
    if src is not None:
        return src
    from scopecheck.proof import _source_facts

    facts, _root = _source_facts(proof.inputs, use_cache, None)
    return facts


class _Facts:
    """Per binary function key: source function, own accesses by root, outgoing pointer hand-offs."""

    def __init__(self, proof, src):
        import functools

        from scopecheck.graph import norm_file, norm_key as _norm_key

        norm_key = functools.lru_cache(maxsize=None)(_norm_key)
        g = proof.graph
        self.g = g
        root = str(proof.inputs.source_root) if proof.inputs.source_root else None
        self.func: dict = {}  # binary key -> SourceFunction
        # functions the source shows but the binary has no trace of (an __always_inline helper whose
        # inlined instance DWARF does not record, or code the configuration compiles away): a vcpu
        # handed to them still reaches their accesses, and the narrowed source must still compile
        self.src_only: dict = {}  # source key -> SourceFunction
        self.by_name: dict = {}  # name -> [source-only keys]
        for sf in src.functions:
            sk = norm_key(sf.key, root)
            k = g.map_key(sk)
            if k is not None and k not in self.func:
                self.func[k] = sf
            elif k is None and sk not in self.src_only:
                self.src_only[sk] = sf
                self.by_name.setdefault(sf.name, []).append(sk)
        self.func.update(self.src_only)
        self.own: dict = {}  # (key, root) -> {path: (file, line)}
        addr_only: dict = {}
        src_only_acc = []
        for a in src.accesses:
            sk = norm_key(a.function, root)
            if sk in self.src_only:
                r, p = canonical(a.root, a.path)
                src_only_acc.append((sk, r, p, norm_file(a.file, root), a.line, a.access))
        for fk, r, p, file, line, acc in [*((a.function, a.root, a.path, a.file, a.line, a.access)
                                             for a in proof.accesses), *src_only_acc]:
            if p:
                self.own.setdefault((fk, r), {}).setdefault(p, (file, line))
                addr_only.setdefault((fk, r, p), set()).add(acc)
        # &vcpu->arch taken only to reach members (an alias, a hand-off) is not a need of its own
        self._addr_only = {k for k, v in addr_only.items() if v == {"addr"}}
        self.calls: dict = {}  # binary key -> [SourceCall]
        self.args_known = True
        for c in src.calls:
            sk = norm_key(c.caller, root)
            k = sk if sk in self.src_only else g.map_key(sk)
            if k is None:
                continue
            self.calls.setdefault(k, []).append(c)
            if getattr(c, "args", None) is None:
                self.args_known = False
        gr = g.graph
        self.address_taken = {b for a, b, d in gr.edges(data=True)
                              if d.get("kinds", set()) & {"indirect_by_type", "address_taken"}}
        taken = {t.function for t in src.address_taken}
        self.address_taken.update(k for k in self.func if k[0] in taken)
        self._memo_edges: dict = {}
        for (key, root), paths in self.own.items():
            handed = [p for _c, p, _i in self.handoffs(key, root) if p]
            for p in [p for p in paths if (key, root, p) in self._addr_only]:
                if any(q != p and path_has_prefix(q, p) for q in [*paths, *handed]) or p in handed:
                    del paths[p]

    def param_struct(self, key, i: int) -> str | None:
        sf = self.func.get(key)
        if sf is None or i >= len(sf.params):
            return None
        return _struct_of(sf.params[i][1])

    def handoffs(self, key, root: str) -> list[tuple]:
        """(callee key, path P under ``root`` handed, callee param index) for calls in ``key``."""
        mk = (key, root)
        if mk in self._memo_edges:
            return self._memo_edges[mk]
        out: set = set()
        gr = self.g.graph
        succ = list(gr.successors(key)) if key in gr else []
        for c in self.calls.get(key, []):
            args = getattr(c, "args", None)
            if c.indirect:
                targets = [s for s in succ if (sf := self.func.get(s)) is not None and sf.type
                           and sf.type == c.target_type]
            else:
                targets = [s for s in succ if s[0] == c.callee]
                if not targets and c.callee in self.by_name:
                    cands = self.by_name[c.callee]
                    same = [k for k in cands if k[1] == key[1]]
                    targets = same or cands
            if not targets:
                continue
            if args is None:  # no argument facts: every pointer parameter of the root's type receives it
                for t in targets:
                    sf = self.func.get(t)
                    for i, (_n, ty) in enumerate(sf.params if sf else ()):
                        if _struct_of(ty) == root:
                            out.add((t, "", i))
                continue
            for i, a in enumerate(args):
                if not a or ":" not in a:
                    continue
                r, p = a.split(":", 1)
                r, p = canonical(r, p)
                if r != root:
                    continue
                for t in targets:
                    out.add((t, p, i))
        res = sorted(out, key=repr)
        self._memo_edges[mk] = res
        return res


def _deep_needs(facts: _Facts, start: list[tuple]) -> dict:
    """(key, root) -> {path: chain} for every pair reachable from ``start``, to a fixpoint."""
    # the pairs and their hand-off dependencies
    deps: dict = {}
    todo = list(start)
    while todo:
        pair = todo.pop()
        if pair in deps:
            continue
        key, root = pair
        lst = []
        for callee, p, i in facts.handoffs(key, root):
            s = facts.param_struct(callee, i)
            if s is None:
                # a callee without a known parameter (assembly, a macro-defined function): the whole
                # handed pointer is needed, plus what the callee does with that root
                lst.append(((callee, root), p, True, None))
                continue
            croot, cpath = canonical(s, "")
            if p == "":
                if croot == root:
                    lst.append(((callee, root), "", False, None))
                continue
            if croot == root:  # &vcpu->arch to a kvm_vcpu_arch parameter: canonical paths, keep those under p
                lst.append(((callee, root), "", False, p))
            else:  # &vcpu->arch.ctxt to a kvm_cpu_context parameter: its paths prefixed by p
                lst.append(((callee, croot), p, True, None))
        deps[pair] = lst
        todo.extend(d[0] for d in lst if d[0] not in deps)

    needs: dict = {pair: {path: ((pair[0],), where) for path, where in facts.own.get(pair, {}).items()}
                   for pair in deps}
    changed = True
    while changed:
        changed = False
        for pair, lst in deps.items():
            mine = needs[pair]
            for dep, prefix, add_self, under in lst:
                theirs = needs.get(dep, {})
                if add_self and prefix and prefix not in mine:
                    mine[prefix] = ((pair[0], dep[0]), None)
                    changed = True
                for path, (chain, where) in theirs.items():
                    if under is not None and not path_has_prefix(path, under):
                        continue
                    full = f"{prefix}.{path}" if prefix and under is None else path
                    if pair[0] in chain:
                        new = chain
                        if full in mine:
                            continue
                    else:
                        new = (pair[0], *chain)
                    old = mine.get(full)
                    if old is None or len(old[0]) > len(new):
                        mine[full] = (new, where)
                        changed = True
    return needs


def _cover(needs, types: list[NarrowType]) -> list[NarrowType] | None:
    """The smallest list of types whose prefixes cover every need (file order breaks ties)."""
    for n in range(1, len(types) + 1):
        for combo in itertools.combinations(types, n):
            if all(any(path_has_prefix(p, pre) for t in combo for pre in t.prefixes) for p in needs):
                return list(combo)
    return None


def _analyse(proof, src, types: list[NarrowType]) -> NarrowResult:
    facts = _Facts(proof, src)
    cands = []
    for key, sf in sorted(facts.func.items(), key=lambda kv: repr(kv[0])):
        if key in facts.src_only:
            continue  # not in the binary
        for i, (name, ty) in enumerate(sf.params):
            if _struct_of(ty) == VCPU:
                cands.append((key, sf, i, name))
                break
    needs_all = _deep_needs(facts, [(k, VCPU) for k, *_ in cands])
    all_prefixes = [pre for t in types for pre in t.prefixes]
    out: list[NarrowFunction] = []
    for key, sf, i, name in cands:
        needs = needs_all.get((key, VCPU), {})
        paths = sorted(needs)
        if not paths:
            can, klass, blocked = [], UNUSED, []
        else:
            combo = _cover(paths, types)
            can = [t.ctype for t in combo] if combo else []
            klass = "+".join(t.short for t in combo) if combo else NEEDS_VCPU
            blocked = [] if combo else [
                {"field": p, "chain": [k[0] for k in needs[p][0]],
                 "file": needs[p][1][0] if needs[p][1] else None,
                 "line": needs[p][1][1] if needs[p][1] else None}
                for p in paths if not any(path_has_prefix(p, pre) for pre in all_prefixes)]
        callees = sorted({c for c, p, _i in facts.handoffs(key, VCPU) if p == ""}, key=repr)
        out.append(NarrowFunction(
            key=key, function=key[0], file=key[1], line=key[2], params=[list(p) for p in sf.params],
            param=name, param_index=i, needs={p: [k[0] for k in needs[p][0]] for p in paths},
            can_take=can, blocked_by=blocked, klass=klass, address_taken=key in facts.address_taken,
            inline=bool(sf.is_inline), static=bool(sf.is_static), callees=callees))
    plan = _plan(out)
    totals = _totals(out, types)
    lims = list(LIMITATIONS)
    if not facts.args_known:
        lims.append(NO_ARGS_LIMIT)
    root = str(proof.inputs.source_root) if proof.inputs.source_root else None
    seen: dict = {}
    for k in proof.graph.in_binary:
        seen.setdefault(k[0], set()).add(k)
    dups = frozenset(n for n, ks in seen.items() if len(ks) > 1)
    return NarrowResult(proof.query, str(proof.inputs.elf), proof.mode, types, out, plan, totals, lims, root,
                        dups)


def _plan(funcs: list[NarrowFunction]) -> list[dict]:
    """Narrowable functions, leaves first (callees handed the vcpu before their callers)."""
    import networkx as nx

    ok = {f.key: f for f in funcs if f.can_take}
    g = nx.DiGraph()
    g.add_nodes_from(ok)
    for f in ok.values():
        for c in f.callees:
            if c in ok and c != f.key:
                g.add_edge(f.key, c)  # f after c
    cond = nx.condensation(g)
    order = list(reversed(list(nx.lexicographical_topological_sort(
        cond, key=lambda n: repr(sorted(cond.nodes[n]["members"], key=repr))))))
    plan = []
    step_of: dict = {}
    for n in order:
        members = sorted(cond.nodes[n]["members"], key=repr)
        step = 1 + max((step_of[c] for m in members for c in g.successors(m) if c in step_of
                        and c not in members), default=0)
        for m in members:
            step_of[m] = step
    for m in sorted(ok, key=lambda k: (step_of[k], repr(k))):
        f = ok[m]
        plan.append({"step": step_of[m], "function": f.function, "file": f.file, "line": f.line,
                     "to": f.can_take, "after": sorted({c[0] for c in g.successors(m)}),
                     "address_taken": f.address_taken})
    return plan


def _totals(funcs: list[NarrowFunction], types: list[NarrowType]) -> dict:
    by: dict[str, int] = {}
    for f in funcs:
        by[f.klass] = by.get(f.klass, 0) + 1
    first = types[0].short if types else None
    pair = "+".join(t.short for t in types[:2]) if len(types) >= 2 else None
    return {"functions": len(funcs),
            "first_type_alone": by.get(first, 0) if first else 0,
            "first_two_types": by.get(pair, 0) if pair else 0,
            "needs_kvm_vcpu": by.get(NEEDS_VCPU, 0),
            "unused": by.get(UNUSED, 0),
            "narrowable": sum(1 for f in funcs if f.can_take),
            "classes": dict(sorted(by.items()))}
