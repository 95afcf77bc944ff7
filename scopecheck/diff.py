"""``scopecheck diff A.json B.json``: what changed between two size or two callgraph JSON outputs.

The kind of each file comes from its ``"command"`` (``size`` or ``callgraph``); both must be
the same kind. A size diff gives per-struct byte growth and the direct members added or
removed; a callgraph diff gives new and removed leaks (by fingerprint), fields newly touched
and no longer touched (with bytes), and the change in the counts.
"""

from __future__ import annotations

import json

from scopecheck import jsontext
from pathlib import Path

from scopecheck.errors import InputError

SCHEMA_VERSION = 1


def _check(path) -> None:
    from scopecheck.paths import check_input_file

    p = Path(path)
    if p.is_dir():
        raise InputError(f"{p}: is a directory (pass size.json or callgraph.json, e.g. from a report)")
    check_input_file(p, what="size or callgraph JSON", max_bytes=1 << 30)


def load(path) -> dict:
    p = Path(path)
    _check(p)
    try:
        d = json.loads(p.read_text())
    except IsADirectoryError:
        raise InputError(f"{p}: is a directory (pass size.json or callgraph.json, e.g. from a report)") from None
    except OSError as e:
        raise InputError(f"{p}: cannot read ({e.strerror or e})") from None
    except ValueError as e:
        raise InputError(f"{p}: not JSON ({e})") from None
    if not isinstance(d, dict) or d.get("tool") != "scopecheck" or d.get("command") not in ("size", "callgraph"):
        raise InputError(f"{p}: not `scopecheck size --format json` or `scopecheck callgraph --format json` output")
    if d["command"] == "size" and not (isinstance(d.get("targets"), list) and d["targets"]):
        raise InputError(f"{p}: size JSON without targets")
    if d["command"] == "callgraph" and not (isinstance(d.get("leaks"), list) and isinstance(d.get("footprint"), list)):
        raise InputError(f"{p}: callgraph JSON without leaks / footprint")
    return d


def diff_files(a_path, b_path) -> dict:
    _check(a_path), _check(b_path)  # both file types before either is read
    a, b = load(a_path), load(b_path)
    if a["command"] != b["command"]:
        raise InputError(f"cannot compare {a['command']} output ({a_path}) with {b['command']} output ({b_path})")
    d = diff_size(a, b) if a["command"] == "size" else diff_callgraph(a, b)
    d["a"], d["b"] = str(a_path), str(b_path)
    return d


def _delta(x, y):
    return None if x is None or y is None else y - x


def diff_size(a: dict, b: dict) -> dict:
    if len(a["targets"]) != len(b["targets"]):
        raise InputError(f"size outputs hold {len(a['targets'])} and {len(b['targets'])} targets; "
                         "compare one target with one")
    pairs = []
    for ta, tb in zip(a["targets"], b["targets"]):
        sa = {s["name"]: s for s in ta["structs"]}
        sb = {s["name"]: s for s in tb["structs"]}
        structs = []
        for n in list(dict.fromkeys([*sa, *sb])):
            x, y = sa.get(n), sb.get(n)
            ma = {m["name"] for m in (x or {}).get("members", []) if m.get("name")}
            mb = {m["name"] for m in (y or {}).get("members", []) if m.get("name")}
            structs.append({"struct": n, "a": x["size"] if x else None, "b": y["size"] if y else None,
                            "growth": _delta(x["size"] if x else None, y["size"] if y else None),
                            "status": "added" if x is None else ("removed" if y is None else "common"),
                            "members_added": sorted(mb - ma) if x and y else [],
                            "members_removed": sorted(ma - mb) if x and y else []})
        sum_a, sum_b = ta.get("summary", {}), tb.get("summary", {})
        pairs.append({"a_target": ta.get("elf"), "b_target": tb.get("elf"),
                      "a_build_id": ta.get("build_id"), "b_build_id": tb.get("build_id"), "structs": structs,
                      "reduced_scope": {"a": sum_a.get("reduced_scope"), "b": sum_b.get("reduced_scope"),
                                        "growth": _delta(sum_a.get("reduced_scope"), sum_b.get("reduced_scope"))}})
    grew = [s for p in pairs for s in p["structs"] if (s["growth"] or 0) > 0]
    return {"schema_version": SCHEMA_VERSION, "tool": "scopecheck", "command": "diff", "kind": "size",
            "targets": pairs, "growth": bool(grew)}


def diff_callgraph(a: dict, b: dict) -> dict:
    la = {l["fingerprint"]: l for l in a["leaks"]}
    lb = {l["fingerprint"]: l for l in b["leaks"]}
    fa = {f["field"]: f for f in a["footprint"]}
    fb = {f["field"]: f for f in b["footprint"]}

    def leak(l):
        return {k: l.get(k) for k in ("fingerprint", "kind", "function", "file", "line", "root", "field",
                                      "access", "bytes")}

    def fp(f):
        return {"field": f["field"], "access": f.get("access"), "bytes": f.get("size"), "offset": f.get("offset"),
                "functions": f.get("functions", [])}

    new = [leak(lb[k]) for k in lb if k not in la]
    gone = [leak(la[k]) for k in la if k not in lb]
    touched = [fp(fb[k]) for k in fb if k not in fa]
    untouched = [fp(fa[k]) for k in fa if k not in fb]
    changed = [{"field": k, "a": fa[k].get("access"), "b": fb[k].get("access")} for k in fa
               if k in fb and fa[k].get("access") != fb[k].get("access")]
    sa, sb = a.get("stats", {}), b.get("stats", {})
    counts = {k: {"a": sa.get(k), "b": sb.get(k), "delta": _delta(sa.get(k), sb.get(k))}
              for k in ("functions", "edges", "fields_touched", "leaks")}
    return {"schema_version": SCHEMA_VERSION, "tool": "scopecheck", "command": "diff", "kind": "callgraph",
            "a_target": a.get("target"), "b_target": b.get("target"),
            "query": {"a": (a.get("query") or {}).get("id"), "b": (b.get("query") or {}).get("id")},
            "counts": counts, "new_leaks": new, "removed_leaks": gone,
            "newly_touched": touched, "no_longer_touched": untouched, "access_changed": changed,
            "newly_touched_bytes": sum(f["bytes"] or 0 for f in touched),
            "no_longer_touched_bytes": sum(f["bytes"] or 0 for f in untouched),
            "growth": bool(touched), "has_new_leaks": bool(new)}


def findings(d: dict, fail_on_growth: bool, fail_on_new_leak: bool) -> list[str]:
    """Why the diff should fail the gate (empty: it should not)."""
    out = []
    if fail_on_growth:
        if d["kind"] == "size":
            out += [f"struct {s['struct']} grew by {s['growth']} B" for p in d["targets"] for s in p["structs"]
                    if (s["growth"] or 0) > 0]
        elif d["newly_touched"]:
            out.append(f"hyp touches {len(d['newly_touched'])} more field(s) ({d['newly_touched_bytes']} B)")
    if fail_on_new_leak and d["kind"] == "callgraph" and d["new_leaks"]:
        out.append(f"{len(d['new_leaks'])} new leak(s)")
    return out


def _signed(n) -> str:
    return "-" if n is None else f"{n:+d}"


def to_text(d: dict) -> str:
    out = [f"diff {d['a']} -> {d['b']} ({d['kind']})"]
    if d["kind"] == "size":
        for p in d["targets"]:
            out.append(f"{p['a_target']} -> {p['b_target']}")
            w = max([len(s["struct"]) for s in p["structs"]] + [6])
            out.append(f"  {'struct'.ljust(w)}  {'A':>7}  {'B':>7}  {'growth':>7}")
            for s in p["structs"]:
                a = "-" if s["a"] is None else str(s["a"])
                b = "-" if s["b"] is None else str(s["b"])
                out.append(f"  {s['struct'].ljust(w)}  {a:>7}  {b:>7}  {_signed(s['growth']):>7}"
                           + ("" if s["status"] == "common" else f"  ({s['status']})"))
                if s["members_added"]:
                    out.append(f"      + members: {', '.join(s['members_added'])}")
                if s["members_removed"]:
                    out.append(f"      - members: {', '.join(s['members_removed'])}")
            r = p["reduced_scope"]
            if r["a"] is not None or r["b"] is not None:
                out.append(f"  reduced scope (kvm_cpu_context + RFC hyp state): {r['a']} -> {r['b']} B "
                           f"({_signed(r['growth'])})")
        return "\n".join(out) + "\n"
    c = d["counts"]
    out.append("  " + ", ".join(f"{k.replace('_', ' ')} {v['a']} -> {v['b']} ({_signed(v['delta'])})"
                                for k, v in c.items()))
    out.append(f"new leaks: {len(d['new_leaks'])}")
    for l in d["new_leaks"]:
        out.append(f"  + {l['function']}: {l['root']}: {l['field']} ({l['access']}"
                   + (f", {l['bytes']} B" if l.get("bytes") else "") + f")  {l['file']}:{l['line']}  {l['fingerprint']}")
    out.append(f"removed leaks: {len(d['removed_leaks'])}")
    for l in d["removed_leaks"]:
        out.append(f"  - {l['function']}: {l['root']}: {l['field']} ({l['access']})  {l['fingerprint']}")
    out.append(f"newly touched fields: {len(d['newly_touched'])} ({d['newly_touched_bytes']} B)")
    for f in d["newly_touched"]:
        out.append(f"  + {f['field']} ({f['access']}, {f['bytes'] if f['bytes'] is not None else '?'} B)")
    out.append(f"no longer touched fields: {len(d['no_longer_touched'])} ({d['no_longer_touched_bytes']} B)")
    for f in d["no_longer_touched"]:
        out.append(f"  - {f['field']} ({f['access']}, {f['bytes'] if f['bytes'] is not None else '?'} B)")
    if d["access_changed"]:
        out.append(f"access changed: {len(d['access_changed'])}")
        for f in d["access_changed"]:
            out.append(f"  ~ {f['field']}: {f['a']} -> {f['b']}")
    return "\n".join(out) + "\n"


def to_json(d: dict) -> str:
    return jsontext.dumps(d) + "\n"
