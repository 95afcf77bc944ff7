"""The hyp call graph (networkx), merged from the binary and, when given, the source.

Nodes are function keys ``(name, file, line)``; files are normalised relative to the
source tree so that same-named statics stay apart and the two doors agree. Only code
that exists in the hyp binary (an out-of-line function or an inlined instance) is a
node: a static inline in a header that hyp never compiled is not.

Edges: the binary's (DWARF call sites, inlining, bl/b/blr, function tables), the
source's direct calls, and indirect calls resolved soundly by type: a call through a
pointer of function type T may reach every address-taken hyp function of type T.
"""

from __future__ import annotations

import os
from collections import deque
from dataclasses import dataclass, field

from scopecheck.model_code import FuncKey, HypFacts, SourceFacts


def norm_file(path: str | None, root: str | None = None) -> str | None:
    """``/src/arch/arm64/kvm/hyp/nvhe/../pgtable.c`` -> ``arch/arm64/kvm/hyp/pgtable.c``."""
    if not path:
        return path
    p = os.path.normpath(path)
    if root and os.path.isabs(p):
        r = os.path.normpath(root)
        if p.startswith(r + os.sep):
            p = p[len(r) + 1:]
    return p


def norm_key(key: FuncKey, root: str | None = None) -> FuncKey:
    name, file, line = key
    return (name, norm_file(file, root), line)


@dataclass(slots=True)
class HypGraph:
    graph: object  # networkx.DiGraph of FuncKey
    in_binary: set  # keys of code that exists in the hyp binary
    entries: list  # entry-point keys
    unresolved: list = field(default_factory=list)  # dicts describing unresolved indirect calls
    key_map: dict = field(default_factory=dict)  # source key -> binary key
    _parents: dict | None = None
    _by_name: dict | None = None

    def node_name(self, key: FuncKey) -> str:
        return key[0]

    def map_key(self, key: FuncKey) -> FuncKey | None:
        """The binary key a source function key corresponds to (None if not in the binary)."""
        if key in self.key_map:
            return self.key_map[key]
        if key in self.in_binary:
            return key
        if self._by_name is None:
            self._by_name = {}
            for k in self.in_binary:
                self._by_name.setdefault(k[0], []).append(k)
        found = _match(key, self._by_name)
        self.key_map[key] = found
        return found

    def chain(self, key: FuncKey) -> list[FuncKey]:
        """Shortest call chain entry -> ... -> key (just [key] when no entry reaches it)."""
        if self._parents is None:
            self._parents = self._bfs()
        if key not in self._parents:
            return [key]
        out = [key]
        while self._parents[out[-1]] is not None:
            out.append(self._parents[out[-1]])
        return list(reversed(out))

    def reachable(self, key: FuncKey) -> bool:
        if self._parents is None:
            self._parents = self._bfs()
        return key in self._parents

    def _bfs(self) -> dict:
        g = self.graph
        parents: dict = {}
        q = deque()
        for e in self.entries:
            if e in g and e not in parents:
                parents[e] = None
                q.append(e)
        while q:
            n = q.popleft()
            for s in sorted(g.successors(n), key=repr):
                if s not in parents:
                    parents[s] = n
                    q.append(s)
        return parents


def preload_graph() -> None:
    """Import the graph library now (it costs ~0.1 s; the scope proof does it while it waits
    for the source workers instead of after them)."""
    import networkx  # noqa: F401


def build_graph(facts: HypFacts, source: SourceFacts | None = None, source_root: str | None = None,
                entry_names: list[str] | None = None) -> HypGraph:
    import networkx as nx

    g = nx.DiGraph()
    in_binary: set = set()
    for f in facts.functions:
        k = norm_key(f.key, source_root)
        g.add_node(k, name=f.name, asm=f.is_asm)
        in_binary.add(k)
    for i in facts.inlined:
        k = norm_key(i.callee, source_root)
        g.add_node(k, name=k[0], asm=False)
        in_binary.add(k)
    unresolved = []
    for e in facts.edges:
        if e.caller is None:
            continue
        a = norm_key(e.caller, source_root)
        if e.callee is None:
            if e.indirect:
                unresolved.append({"caller": a[0], "file": a[1], "line": e.line, "kind": e.kind,
                                   "via": e.via, "address": e.address, "target_type": e.target_type,
                                   "origin": "binary"})
            continue
        b = norm_key(e.callee, source_root)
        _add_edge(g, a, b, e.kind)

    key_map: dict = {}
    if source is not None:
        by_name: dict[str, list] = {}
        for k in in_binary:
            by_name.setdefault(k[0], []).append(k)
        for sf in source.functions:
            sk = norm_key(sf.key, source_root)
            key_map[sk] = _match(sk, by_name)
        # direct calls
        for c in source.calls:
            a = key_map.get(norm_key(c.caller, source_root))
            if a is None:
                continue
            if not c.indirect and c.callee:
                cands = by_name.get(c.callee, [])
                same_file = [k for k in cands if k[1] == a[1]]  # a static of the caller's file wins
                for b in same_file or cands:
                    _add_edge(g, a, b, "source_call")
        # indirect calls resolved by type
        taken_by_type: dict[str, set] = {}
        for t in source.address_taken:
            for k in by_name.get(t.function, []):
                taken_by_type.setdefault(t.type or "?", set()).add(k)
        for c in source.calls:
            if not c.indirect:
                continue
            a = key_map.get(norm_key(c.caller, source_root))
            if a is None:
                continue
            targets = taken_by_type.get(c.target_type or "", set())
            if not targets:
                unresolved.append({"caller": a[0], "file": norm_file(c.file, source_root), "line": c.line,
                                   "kind": "indirect", "via": c.via, "address": None,
                                   "target_type": c.target_type, "origin": "source"})
            for b in sorted(targets, key=repr):
                _add_edge(g, a, b, "indirect_by_type")

    entries: list = []
    if entry_names:
        for n in entry_names:
            entries.extend(k for k in in_binary if k[0] == n)
    else:
        entries = [norm_key(f.key, source_root) for f in facts.entry_points]
        if not entries:  # no assembly entry: start from the functions nobody calls
            entries = [k for k in in_binary if g.in_degree(k) == 0]
    return HypGraph(graph=g, in_binary=in_binary, entries=sorted(set(entries), key=repr),
                    unresolved=unresolved, key_map=key_map)


def _add_edge(g, a, b, kind: str) -> None:
    if g.has_edge(a, b):
        g[a][b]["kinds"].add(kind)
    else:
        g.add_edge(a, b, kinds={kind})


def _match(sk: FuncKey, by_name: dict) -> FuncKey | None:
    cands = by_name.get(sk[0], [])
    if sk in cands:
        return sk
    same_file = [k for k in cands if k[1] == sk[1]]
    if len(same_file) == 1:
        return same_file[0]
    if len(cands) == 1 and (cands[0][1] is None or sk[1] is None or
                            os.path.basename(cands[0][1]) == os.path.basename(sk[1])):
        return cands[0]
    return None
