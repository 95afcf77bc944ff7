"""Render a :class:`scopecheck.proof.ProofResult`: text, JSON, SARIF 2.1.0, DOT, GraphML."""

from __future__ import annotations

import io
import json

from scopecheck import jsontext
from scopecheck import __version__
from scopecheck.proof import FINGERPRINT_VERSION, SCHEMA_VERSION, ProofResult

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
_LEVEL = {"error": "error", "warning": "warning", "note": "note"}
#: the SARIF partialFingerprints key of Leak.fingerprint (v1 had no access kind)
SARIF_FINGERPRINT = f"scopecheckFunctionFieldAccess/v{FINGERPRINT_VERSION}"
_OLD_BASELINE = ("{path}: baseline from an older scopecheck (its leak fingerprints lack the access kind); "
                 "regenerate it with this version's callgraph --format json or sarif")


def _loc(file, line, col=None) -> str:
    if not file:
        return "?"
    return f"{file}:{line}" + (f":{col}" if col else "") if line else file


def text(r: ProofResult) -> str:
    q = r.query
    out = [f"{r.inputs.elf} ({r.mode}): {r.stats['functions']} hyp functions, "
           f"{r.stats['edges']} call edges, {len(r.footprint)} fields touched",
           f"query {q.id}: {q.title}"]
    for lim in r.limitations:
        out.append(f"note: {lim}")
    gating = r.gating_leaks
    if not r.leaks and "boundary" in r.stats:  # a trust-boundary query: say how much was judged
        from scopecheck.boundary import verdict_line

        out.append(verdict_line(r.stats["boundary"]["totals"]))
    elif not r.leaks:
        out.append("no leaks: every touched field is in scope")
    else:
        base = len(r.leaks) - len(gating)
        out.append(f"{len(r.leaks)} leak(s)" + (f", {base} in the baseline" if base else "") + ":")
    for l in r.leaks:
        mark = " (baseline)" if l.baselined else ""
        if l.kind == "escalation":
            what = f"escalation {l.field[1:-1]} from {l.root}"
        else:
            b = f", {l.size} B" if l.size else ""
            prov = f"{l.provenance} " if q.provenance and l.provenance else ""
            what = f"{l.root}: {l.field} ({prov}{l.access}{b})"
        out.append(f"  {_loc(l.file, l.line, l.col)}: {l.function}: {what}{mark}")
        out.append(f"      chain: {' -> '.join(l.chain)}")
    if "boundary" in r.stats:
        from scopecheck.boundary import summary_line

        out.append(summary_line(r.stats["boundary"]["totals"]))
    if r.unresolved:
        out.append(f"{len(r.unresolved)} indirect call(s) not resolved (see --format json: unresolved_calls)")
    if r.diagnostics:
        out.append(f"{len(r.diagnostics)} source diagnostic(s); first: {r.diagnostics[0]}")
    if r.ledger is not None:
        out.append(r.ledger.summary() + " (see --format json: evidence)")
    return "\n".join(out) + "\n"


def to_dict(r: ProofResult) -> dict:
    return {
        "schema_version": SCHEMA_VERSION,
        "tool": "scopecheck",
        "command": "callgraph",
        "query": {"id": r.query.id, "title": r.query.title, "severity": r.query.severity},
        "target": str(r.inputs.elf),
        "source_root": str(r.inputs.source_root) if r.inputs.source_root else None,
        "mode": r.mode,
        "limitations": r.limitations,
        "stats": r.stats,
        "fingerprint_version": FINGERPRINT_VERSION,
        "leaks": [l.to_dict() for l in r.leaks],
        "footprint": [dict(v, field=k) for k, v in r.footprint.items()],
        "unresolved_calls": r.unresolved,
        "entry_points": [k[0] for k in r.graph.entries],
        "diagnostics": r.diagnostics,
        "evidence": r.ledger.to_dict() if r.ledger is not None else None,
    }


def to_json(r: ProofResult) -> str:
    return jsontext.dumps(to_dict(r), default=sorted) + "\n"


def _phys(file, line, col=None) -> dict:
    region = {"startLine": line or 1}
    if col:
        region["startColumn"] = col
    return {"physicalLocation": {"artifactLocation": {"uri": file or "unknown", "uriBaseId": "SRCROOT"},
                                 "region": region}}


def to_sarif(r: ProofResult) -> str:
    q = r.query
    rule = {"id": q.id, "name": q.id.replace("-", " ").title().replace(" ", ""),
            "shortDescription": {"text": q.title},
            "fullDescription": {"text": q.description or q.title},
            "defaultConfiguration": {"level": _LEVEL[q.severity]},
            # GitHub code scanning wants help on every rule (the SARIF Multitool's GH2012)
            "help": {"text": (q.description or q.title) + f" Query {q.id}: what it allows is in its TOML file; "
                             "`scopecheck callgraph --query " + q.id + " --format json` lists every leak with "
                             "its call chain."},
            "helpUri": "https://example.invalid/scopecheck/queries/" + q.id}
    results = []
    g = r.graph
    for l in r.leaks:
        msg = (f"{l.function} {l.access}s {l.root}: {l.field}" if l.kind == "field"
               else f"{l.function}: {l.field[1:-1]} from {l.root}")
        flow_locs = []
        for k in g.chain(l.function_key):
            flow_locs.append({"location": {**_phys(k[1], k[2]), "message": {"text": k[0]}}})
        res = {"ruleId": q.id, "level": _LEVEL[q.severity], "message": {"text": msg},
               "locations": [_phys(l.file, l.line, l.col)],
               "partialFingerprints": {SARIF_FINGERPRINT: l.fingerprint},
               "codeFlows": [{"threadFlows": [{"locations": flow_locs}]}],
               "properties": {"field": f"{l.root}:{l.field}", "access": l.access, "bytes": l.size,
                              "origin": l.origin, "chain": l.chain, "provenance": l.provenance}}
        if l.baselined:
            res["baselineState"] = "unchanged"
        results.append(res)
    doc = {"$schema": SARIF_SCHEMA, "version": "2.1.0",
           "runs": [{"tool": {"driver": {"name": "scopecheck", "version": __version__,
                                         "informationUri": "https://example.invalid/scopecheck",
                                         "rules": [rule]}},
                     "originalUriBaseIds": {"SRCROOT": {"uri": (r.inputs.source_root.resolve().as_uri() + "/")
                                                        if r.inputs.source_root else "file:///"}},
                     "results": results,
                     "properties": {"evidence": _sarif_evidence(r),
                                    **({"boundary": r.stats["boundary"]["totals"]} if "boundary" in r.stats
                                       else {})}}]}
    return jsontext.dumps(doc) + "\n"


def _sarif_evidence(r: ProofResult) -> dict:
    """The ledger in SARIF run properties: counts, and the sites a reviewer must look at."""
    if r.ledger is None:
        return {}
    d = r.ledger.to_dict()
    return {"summary": r.ledger.summary(), "counts": d["counts"], "unanalysed_kinds": d["unanalysed_kinds"],
            "binary_only": d["binary_only"], "compiled_away": d["compiled_away"], "unanalysed": d["unanalysed"]}


def _graph_for_export(r: ProofResult):
    import networkx as nx

    g = nx.DiGraph()
    leaky = {l.function_key for l in r.leaks}
    for k in r.graph.graph.nodes:
        g.add_node(f"{k[0]}@{k[1]}:{k[2]}", label=k[0], file=str(k[1] or ""), line=int(k[2] or 0),
                   leak=k in leaky, entry=k in r.graph.entries)
    for a, b, d in r.graph.graph.edges(data=True):
        g.add_edge(f"{a[0]}@{a[1]}:{a[2]}", f"{b[0]}@{b[1]}:{b[2]}", kinds=",".join(sorted(d.get("kinds", ()))))
    return g


def to_dot(r: ProofResult) -> str:
    g = _graph_for_export(r)
    out = ["digraph hyp {", "  rankdir=LR; node [shape=box, fontname=monospace, fontsize=10];"]
    for n, d in g.nodes(data=True):
        style = ' style=filled fillcolor="#f4a3a3"' if d["leak"] else (' style=bold' if d["entry"] else "")
        out.append(f'  {json.dumps(n)} [label={json.dumps(d["label"])}{style}];')
    for a, b, d in g.edges(data=True):
        out.append(f'  {json.dumps(a)} -> {json.dumps(b)} [label={json.dumps(d["kinds"])}];')
    out.append("}")
    return "\n".join(out) + "\n"


def to_graphml(r: ProofResult) -> str:
    import networkx as nx

    buf = io.BytesIO()
    nx.write_graphml(_graph_for_export(r), buf)
    return buf.getvalue().decode()


def baseline_fingerprints(text_: str, path: str) -> set[str]:
    """Fingerprints from a previous ``--format json`` or ``--format sarif`` output."""
    from scopecheck.errors import InputError

    try:
        d = json.loads(text_)
    except ValueError as e:
        raise InputError(f"{path}: baseline is not JSON ({e})") from None
    if isinstance(d, dict) and "leaks" in d:
        if d["leaks"] and d.get("fingerprint_version") != FINGERPRINT_VERSION:
            raise InputError(_OLD_BASELINE.format(path=path))
        return {l.get("fingerprint") for l in d["leaks"] if isinstance(l, dict)} - {None}
    if isinstance(d, dict) and d.get("version") == "2.1.0":
        results = [res for run in d.get("runs", []) if isinstance(run, dict)
                   for res in run.get("results", []) if isinstance(res, dict)]
        got = {(res.get("partialFingerprints") or {}).get(SARIF_FINGERPRINT) for res in results} - {None}
        if results and not got:
            raise InputError(_OLD_BASELINE.format(path=path))
        return got
    raise InputError(f"{path}: baseline must be scopecheck callgraph JSON or SARIF output")
