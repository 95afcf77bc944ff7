"""``scopecheck report``: size + callgraph (+ derive) of one target as a self-contained HTML page.

    from scopecheck.report import collect, write_report
    data = collect("build-6.1")                       # runs the size job and the scope proof
    files = write_report(data, "reports/6.1", history="runs.sqlite")

Every number on the page comes from the :class:`scopecheck.size.SizeReport` and the
:class:`scopecheck.proof.ProofResult` of the run (and :func:`scopecheck.derive.derive` on
its footprint); nothing is recomputed another way. The report directory holds
``index.html`` (figures embedded), CSV tables, each figure as PNG and SVG, and the
``size.json`` / ``callgraph.json`` the CLI would print for the same target (inputs for
``scopecheck diff``). It is built in a temporary directory next to ``out`` and renamed
into place, so a reader sees the old report or the new one, never half of one.
"""

from __future__ import annotations

import json

from scopecheck import jsontext
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from scopecheck.errors import InputError, ScopecheckError

SCHEMA_VERSION = 1
#: the RFC's claim: hyp's own copy of the vcpu state fits in about 2 kB
RFC_CLAIM_BYTES = 2048
#: byte categories of the layout map, in legend order (name, colour)
CATEGORIES = (
    ("untouched", "#e3e3e3"),
    ("in scope, untouched", "#c7e9c0"),
    ("read", "#6baed6"),
    ("write", "#fd8d3c"),
    ("read+write", "#6a51a3"),
    ("leak", "#d62728"),
)
CAT_INDEX = {name: i for i, (name, _) in enumerate(CATEGORIES)}
_ACCESS_CAT = {"read": "read", "write": "write", "rw": "read+write"}
#: where other roots sit inside kvm_vcpu (for the layout map)
ROOT_IN_VCPU = {"kvm_vcpu": "", "kvm_cpu_context": "arch.ctxt", "vcpu_hyp_state": "arch.hyp_state"}
#: the call-graph figure shows at most this many leaking functions (the ones with most leaks)
MAX_GRAPH_LEAFS = 45


# ---------------------------------------------------------------- data

@dataclass(slots=True)
class LayoutMap:
    """kvm_vcpu's bytes, each in one of :data:`CATEGORIES`."""

    size: int
    codes: bytearray                       # category index per byte
    segments: list[dict]                   # contiguous runs: offset, end, bytes, category, fields
    bytes_by_category: dict[str, int]
    regions: list[tuple[str, int, int]]    # (path, offset, size): members worth a label
    unmapped: list[str]                    # footprint keys not drawn (other roots, unknown offset)
    address_only: list[str]                # footprint keys only address-taken (not leaks): not painted

    @property
    def touched_bytes(self) -> int:
        return sum(self.bytes_by_category[c] for c in ("read", "write", "read+write", "leak"))

    @property
    def leak_bytes(self) -> int:
        return self.bytes_by_category["leak"]


@dataclass(slots=True)
class CutGraph:
    """The hyp call graph cut to the leaking functions and their chains from entry points."""

    nodes: dict          # FuncKey -> {"name", "file", "depth", "leaks", "entry"}
    edges: list          # (parent FuncKey, child FuncKey)
    leaking_functions: int
    shown_leaking: int
    total_nodes: int
    total_edges: int


@dataclass(slots=True)
class ReportData:
    proof: object               # ProofResult
    size: object                # SizeReport
    derived: object | None      # Derived (None without kvm_cpu_context)
    label: str
    kernel: str | None
    boot: dict | None
    layout: LayoutMap
    graph: CutGraph
    headline: dict
    created: float = field(default_factory=time.time)
    narrow: object | None = None  # NarrowResult (None: binary-only, or a query without [narrow])
    boundary: dict | None = None  # host/hyp trust boundary (scopecheck.boundary.section), None: no crossing


@dataclass(slots=True)
class ReportFiles:
    out: Path
    files: list[str]            # names inside out
    history_run: int | None = None


def collect(target, source=None, query: str = "rfc-hyp-scope", *, boot=None, label: str | None = None,
            binary_only: bool = False, entry_points: list[str] | None = None, pahole: bool = True,
            use_cache: bool = True, progress=None) -> ReportData:
    """Run the scope proof and the size job on ``target`` (the inputs of ``scopecheck callgraph``)."""
    from scopecheck.proof import prove

    boot_doc = load_boot(boot) if boot is not None else None  # bad input fails before the long work
    from scopecheck import cache

    with cache.disabled(not use_cache):  # --no-cache reaches every layer
        r = prove(target, source, query, binary_only=binary_only, entry_points=entry_points,
                  use_cache=use_cache, progress=progress)
        return from_results(r, size_of(r, pahole=pahole, use_cache=use_cache), boot=boot_doc, label=label)


def size_of(proof, *, pahole: bool = True, use_cache: bool = True):
    """The SizeReport of the ELF the proof read (what ``scopecheck size ELF`` prints)."""
    from scopecheck import targets as tg
    from scopecheck.size import size_report

    return size_report(tg.resolve(proof.inputs.elf), None, pahole=pahole, use_cache=use_cache)


def from_results(proof, size, *, boot: dict | None = None, label: str | None = None) -> ReportData:
    """Assemble a report from an existing ProofResult and SizeReport of the same ELF."""
    from scopecheck.derive import derive

    vcpu = size.layouts.get("kvm_vcpu")
    if vcpu is None:
        raise InputError(f"{proof.inputs.elf}: struct kvm_vcpu not found in DWARF")
    ctxt = size.layouts.get("kvm_cpu_context")
    derived = derive(proof.footprint, vcpu, ctxt, str(proof.inputs.elf)) if ctxt is not None else None
    kernel = kernel_release(proof.inputs)
    lab = label or kernel or Path(str(proof.inputs.build_dir or proof.inputs.elf)).name
    lay = layout_map(proof, vcpu)
    cut = cut_graph(proof)
    data = ReportData(proof=proof, size=size, derived=derived, label=lab, kernel=kernel, boot=boot,
                      layout=lay, graph=cut, headline={})
    data.headline = headline(data)
    data.narrow = _narrow_of(proof)
    data.boundary = boundary_of(proof)
    if data.boundary is not None:
        t = data.boundary["totals"]
        data.headline.update(boundary_read_bytes=t["read_bytes"], boundary_write_bytes=t["write_bytes"],
                             boundary_crossings=t["crossings"], boundary_line=t and _boundary_line(t))
    return data


def _narrow_of(proof):
    """`scopecheck narrow` on the same proof, when it applies (source mode, a [narrow] table)."""
    from scopecheck.narrow import narrow

    if proof.mode != "source+binary":
        return None
    try:
        return narrow(proof=proof)
    except InputError:
        return None


def boundary_of(proof) -> dict | None:
    """The host/hyp boundary of the proof's accesses (whatever the query), None without host crossings."""
    from scopecheck import boundary

    b = proof.stats.get("boundary") or boundary.section(proof.query, proof.graph, proof.accesses)
    return b if b["crossings"] else None


def _boundary_line(t: dict) -> str:
    from scopecheck.boundary import summary_line

    return summary_line(t)


def kernel_release(inputs) -> str | None:
    """"6.1.192 pkvm-tiny" (a scopecheck build), the banner's release (a vmlinux), or None."""
    bd = inputs.build_dir
    if bd is not None:
        stamp = Path(bd) / "scopecheck-build.json"
        try:
            d = json.loads(stamp.read_text())
            if d.get("kernel_version"):
                return " ".join(str(x) for x in (d["kernel_version"], d.get("config")) if x)
        except (OSError, ValueError, AttributeError):
            pass
        rel = Path(bd) / "include/config/kernel.release"
        if rel.is_file():
            return rel.read_text().strip() or None
    from scopecheck.binary.elf import ElfImage

    try:
        with ElfImage(inputs.elf) as elf:
            ro = elf.section_bytes(".rodata")
            if ro is None:
                return None
            raw = bytes(ro)
    except (InputError, OSError):
        return None
    i = raw.find(b"Linux version ")
    if i < 0:
        return None
    return raw[i + 14:i + 200].split(b" ", 1)[0].decode(errors="replace") or None


def load_boot(path) -> dict:
    """A ``scopecheck boot --format json`` report."""
    from scopecheck.paths import check_input_file

    p = Path(path)
    check_input_file(p, what="boot report (--boot)", max_bytes=1 << 28)
    try:
        d = json.loads(p.read_text())
    except OSError as e:
        raise InputError(f"{p}: cannot read the boot report ({e.strerror or e})") from None
    except ValueError as e:
        raise InputError(f"{p}: boot report is not JSON ({e})") from None
    if not isinstance(d, dict) or not isinstance(d.get("checks"), list) or "passed" not in d:
        raise InputError(f"{p}: not a `scopecheck boot --format json` report (no 'checks', 'passed')")
    return d


# ---------------------------------------------------------------- the layout map

def layout_map(proof, vcpu) -> LayoutMap:
    from scopecheck.layout import member

    size = vcpu.size
    codes = bytearray(size)  # 0 = untouched
    owner: list = [None] * size
    q = proof.query
    for prefix in q.allowed_prefixes("kvm_vcpu") or []:
        span = (0, size) if prefix in ("*", "") else _span(vcpu, prefix)
        if span:
            lo, hi = span
            codes[lo:hi] = bytes([CAT_INDEX["in scope, untouched"]]) * (hi - lo)
    bases: dict[str, int | None] = {}
    for root, pre in ROOT_IN_VCPU.items():
        if not pre:
            bases[root] = 0
        else:
            try:
                bases[root] = member(vcpu, pre).offset
            except KeyError:
                bases[root] = None
    leak_keys = {f"{l.root}:{l.field}" for l in proof.leaks if l.kind == "field"}
    paint, unmapped, addr_only = [], [], []
    for key, e in proof.footprint.items():
        base = bases.get(e["root"])
        if base is None or e.get("offset") is None or not e.get("size"):
            unmapped.append(key)
            continue
        if key in leak_keys:
            cat = "leak"
        elif e["access"] in _ACCESS_CAT:
            cat = _ACCESS_CAT[e["access"]]
        else:
            addr_only.append(key)
            continue
        lo = max(0, base + e["offset"])
        hi = min(size, base + e["offset"] + e["size"])
        if hi > lo:
            paint.append((cat == "leak", -(hi - lo), lo, hi, cat, key))
    for _, _, lo, hi, cat, key in sorted(paint):  # big before small, leaks last: nothing hides a leak
        codes[lo:hi] = bytes([CAT_INDEX[cat]]) * (hi - lo)
        owner[lo:hi] = [key] * (hi - lo)
    segments: list[dict] = []
    i = 0
    while i < size:
        j = i
        while j < size and codes[j] == codes[i] and owner[j] == owner[i]:
            j += 1
        cat = CATEGORIES[codes[i]][0]
        if segments and segments[-1]["category"] == cat and segments[-1]["end"] == i and owner[i] is None:
            segments[-1]["end"] = j
            segments[-1]["bytes"] = j - segments[-1]["offset"]
        else:
            segments.append({"offset": i, "end": j, "bytes": j - i, "category": cat,
                             "field": owner[i] or ""})
        i = j
    by_cat = {name: 0 for name, _ in CATEGORIES}
    for c in codes:
        by_cat[CATEGORIES[c][0]] += 1
    regions = []
    for m in vcpu.members:
        subs = m.members if m.name == "arch" else [m]
        for s in subs:
            if (s.size or 0) >= max(192, size // 40):
                regions.append((s.path, s.offset, s.size))
    return LayoutMap(size, codes, segments, by_cat, regions, unmapped, addr_only)


def _span(vcpu, path: str):
    from scopecheck.layout import member

    try:
        m = member(vcpu, path)
    except KeyError:
        return None
    return (m.offset, m.offset + (m.size or 0)) if m.size else None


# ---------------------------------------------------------------- the cut call graph

def cut_graph(proof, max_leafs: int = MAX_GRAPH_LEAFS) -> CutGraph:
    g = proof.graph
    counts: dict = {}
    for l in proof.leaks:
        counts[l.function_key] = counts.get(l.function_key, 0) + 1
    ranked = sorted(counts, key=lambda k: (-counts[k], k[0], repr(k)))
    shown = ranked[:max_leafs]
    entries = set(g.entries)
    nodes: dict = {}
    edges: set = set()
    for k in shown:
        chain = g.chain(k)
        for d, n in enumerate(chain):
            info = nodes.setdefault(n, {"name": n[0], "file": n[1], "depth": d, "leaks": counts.get(n, 0),
                                        "entry": n in entries})
            info["depth"] = min(info["depth"], d)
        edges.update(zip(chain, chain[1:]))
    return CutGraph(nodes=nodes, edges=sorted(edges, key=repr), leaking_functions=len(counts),
                    shown_leaking=len(shown), total_nodes=g.graph.number_of_nodes(),
                    total_edges=g.graph.number_of_edges())


# ---------------------------------------------------------------- the headline

def headline(data: ReportData) -> dict:
    r, s, d = data.proof, data.size, data.derived
    summ = s.summary()
    leaks = r.leaks
    h = {
        "target": str(r.inputs.elf),
        "label": data.label,
        "kernel": data.kernel,
        "build_id": s.build_id,
        "query": r.query.id,
        "mode": r.mode,
        "kvm_vcpu": summ.get("kvm_vcpu"),
        "kvm_cpu_context": summ.get("kvm_cpu_context"),
        "vcpu_hyp_state": summ.get("vcpu_hyp_state"),
        "vcpu_hyp_state_present": summ.get("vcpu_hyp_state_present"),
        "rfc_hyp_bytes": summ.get("vcpu_hyp_state") if summ.get("vcpu_hyp_state_present")
        else summ.get("rfc_loose_bytes"),
        "rfc_scope": summ.get("reduced_scope"),
        "rfc_scope_pct": summ.get("reduced_pct_of_kvm_vcpu"),
        "derived_hyp_state": d.size if d else None,
        "derived_members": len(d.members) if d else None,
        "derived_total": d.total if d else None,
        "derived_pct": round(d.pct, 2) if d else None,
        "pkvm_hyp_vcpu": summ.get("pkvm_hyp_vcpu"),
        "rfc_claim_bytes": RFC_CLAIM_BYTES,
        "structs": {n: lay.size for n, lay in s.layouts.items()},
        "fields_touched": len(r.footprint),
        "kvm_vcpu_fields_touched": sum(1 for e in r.footprint.values() if e["root"] in ROOT_IN_VCPU),
        "touched_bytes": data.layout.touched_bytes,
        "leak_bytes": data.layout.leak_bytes,
        "leaks": len(leaks),
        "leak_functions": len({l.function_key for l in leaks}),
        "leak_files": len({l.file for l in leaks}),
        "escalations": sum(1 for l in leaks if l.kind == "escalation"),
        "functions": r.stats.get("functions"),
        "edges": r.stats.get("edges"),
        "unresolved_calls": len(r.unresolved),
        "evidence": dict(r.ledger.counts) if getattr(r, "ledger", None) is not None else None,
        "boot_passed": data.boot.get("passed") if data.boot else None,
    }
    h["answer"] = answer(h)
    return h


def answer(h: dict) -> str:
    """One sentence: is the RFC's scope enough for this kernel's hyp code?"""
    if not h["leaks"]:
        return (f"Yes: every kvm_vcpu field hyp touches lies in the {h['query']} scope "
                f"({h['fields_touched']} fields touched, no leaks).")
    esc = f", {h['escalations']} container_of escalation(s)" if h["escalations"] else ""
    return (f"No: {h['leaks']} access(es) in {h['leak_functions']} hyp function(s) reach "
            f"{h['leak_bytes']} B of kvm_vcpu outside the {h['query']} scope{esc}.")


# ---------------------------------------------------------------- tables

def tables(data: ReportData) -> dict:
    """name -> pandas DataFrame (each written as NAME.csv)."""
    import pandas as pd

    r, s = data.proof, data.size
    out = {}
    rows = []
    for n, lay in s.layouts.items():
        st = lay.stats
        pct = s.pct_of_kvm_vcpu(n)
        p = (s.pahole or {}).get(n)
        rows.append({"struct": n, "size": lay.size, "members": st.nr_members, "holes": st.holes,
                     "sum_holes": st.sum_holes, "padding": st.padding,
                     "pct_of_kvm_vcpu": None if pct is None else round(pct, 2),
                     "pahole_size": p.size if p else None})
    if data.derived is not None:
        rows.append({"struct": "vcpu_hyp_state (derived)", "size": data.derived.size,
                     "members": len(data.derived.members), "holes": None, "sum_holes": None, "padding": None,
                     "pct_of_kvm_vcpu": round(100.0 * data.derived.size / data.derived.kvm_vcpu, 2),
                     "pahole_size": None})
    out["sizes"] = pd.DataFrame(rows, columns=["struct", "size", "members", "holes", "sum_holes", "padding",
                                               "pct_of_kvm_vcpu", "pahole_size"])
    leak_keys = {f"{l.root}:{l.field}" for l in r.leaks if l.kind == "field"}
    fp = [{"field": k, "root": e["root"], "path": e["path"], "offset": e["offset"], "size": e["size"],
           "access": e["access"], "leak": k in leak_keys, "functions": " ".join(e["functions"]),
           "origins": " ".join(e["origins"])} for k, e in r.footprint.items()]
    out["footprint"] = pd.DataFrame(fp, columns=["field", "root", "path", "offset", "size", "access", "leak",
                                                 "functions", "origins"])
    lk = [{"fingerprint": l.fingerprint, "kind": l.kind, "function": l.function, "file": l.file,
           "line": l.line, "col": l.col, "root": l.root, "field": l.field, "access": l.access,
           "bytes": l.size, "offset": l.offset, "origin": l.origin, "chain": " -> ".join(l.chain)}
          for l in r.leaks]
    cols = ["fingerprint", "kind", "function", "file", "line", "col", "root", "field", "access", "bytes",
            "offset", "origin", "chain"]
    leaks = pd.DataFrame(lk, columns=cols)
    out["leaks"] = leaks
    by_file = leaks.assign(file=leaks["file"].fillna("?")).groupby("file").agg(
        leaks=("fingerprint", "size"), functions=("function", "nunique")).reset_index()
    out["leaks_by_file"] = by_file.sort_values(["leaks", "file"], ascending=[False, True]).reset_index(drop=True)
    by_fn = leaks.assign(file=leaks["file"].fillna("?")).groupby(["function", "file"]).agg(
        leaks=("fingerprint", "size"), fields=("field", "nunique")).reset_index()
    out["leaks_by_function"] = by_fn.sort_values(["leaks", "function"], ascending=[False, True]) \
        .reset_index(drop=True)
    out["layout_map"] = pd.DataFrame(data.layout.segments, columns=["offset", "end", "bytes", "category", "field"])
    if data.derived is not None:
        out["derived"] = pd.DataFrame([{"name": m.name, "path": m.path, "type": m.type_name, "size": m.size,
                                        "offset": m.offset, "access": m.access,
                                        "functions": " ".join(m.functions)} for m in data.derived.members],
                                      columns=["name", "path", "type", "size", "offset", "access", "functions"])
    if data.boundary is not None:
        out["boundary"] = pd.DataFrame(
            [dict(r, functions=" ".join(r["functions"]), sites=" ".join(r["sites"])) for r in data.boundary["fields"]],
            columns=["root", "field", "offset", "size", "read_bytes", "write_bytes", "on_path", "functions", "sites"])
    cg = [{"function": v["name"], "file": v["file"], "depth": v["depth"], "leaks": v["leaks"],
           "entry": v["entry"]} for v in data.graph.nodes.values()]
    out["callgraph_cut"] = pd.DataFrame(cg, columns=["function", "file", "depth", "leaks", "entry"]) \
        .sort_values(["depth", "function"]).reset_index(drop=True)
    return out


# ---------------------------------------------------------------- writing

def check_out(out: Path) -> None:
    """``out`` must be new, empty, or a previous scopecheck report (which is replaced)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: --out exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not _is_report(out):
        raise InputError(f"{out}: --out is a non-empty directory that is not a scopecheck report; "
                         "refusing to replace it")


def _is_report(d: Path) -> bool:
    try:
        return json.loads((d / "report.json").read_text()).get("command") == "report"
    except (OSError, ValueError, AttributeError):
        return False


def write_report(data: ReportData, out, *, history=None) -> ReportFiles:
    """Write the report directory ``out`` atomically; with ``history`` also append the run to it."""
    from scopecheck import history as hist
    from scopecheck.output import figures, html
    from scopecheck.output import proof as proof_out
    from scopecheck.output import size as size_out

    out = Path(out)
    check_out(out)
    row = hist.row_from(data, str(out))
    runs = None
    if history is not None:
        runs = hist.runs(history) + [dict(row, id=None)]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        files: list[str] = []

        def put(name: str, payload: bytes | str) -> None:
            (tmp / name).write_bytes(payload.encode() if isinstance(payload, str) else payload)
            files.append(name)

        put("size.json", size_out.to_json([data.size]))
        put("callgraph.json", proof_out.to_json(data.proof))
        if data.narrow is not None:
            from scopecheck.output import narrow as narrow_out

            put("narrow.json", narrow_out.to_json(data.narrow))
        tabs = tables(data)
        if runs is not None:
            tabs["history"] = hist.frame(runs)
        csvs = []
        for name, df in tabs.items():
            put(f"{name}.csv", df.to_csv(index=False, lineterminator="\n"))
            csvs.append(f"{name}.csv")
        figs = figures.render_all(data, runs)
        for name, (png, svg) in figs.items():
            put(f"{name}.png", png)
            put(f"{name}.svg", svg)
        put("index.html", html.render(data, figs, csvs, runs))
        meta = {"schema_version": SCHEMA_VERSION, "tool": "scopecheck", "command": "report",
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(data.created)),
                "headline": data.headline, "figures": sorted(figs), "csv": csvs,
                "files": sorted(files + ["report.json"])}
        put("report.json", jsontext.dumps(meta) + "\n")
        for f in tmp.iterdir():
            os.chmod(f, 0o644)
        os.chmod(tmp, 0o755)
        _swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    run_id = hist.record(history, row) if history is not None else None
    return ReportFiles(out=out, files=sorted(files), history_run=run_id)


def _swap_into_place(tmp: Path, out: Path) -> None:
    old = None
    if out.exists():
        check_out(out)
        old = out.parent / f".{out.name}.old-{os.getpid()}-{int(time.time() * 1e6)}"
        os.rename(out, old)
    try:
        os.rename(tmp, out)
    except OSError:
        if old is not None:
            os.rename(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def report(target, out, source=None, query: str = "rfc-hyp-scope", *, boot=None, history=None,
           label: str | None = None, binary_only: bool = False, entry_points: list[str] | None = None,
           pahole: bool = True, use_cache: bool = True, progress=None) -> tuple[ReportData, ReportFiles]:
    """The whole job: collect, then write ``out`` (and append to ``history``)."""
    check_out(Path(out))
    if history is not None:
        from scopecheck import history as hist

        hist.runs(history)  # a bad DB fails before the long work
    data = collect(target, source, query, boot=boot, label=label, binary_only=binary_only,
                   entry_points=entry_points, pahole=pahole, use_cache=use_cache, progress=progress)
    return data, write_report(data, out, history=history)


__all__ = ["collect", "from_results", "write_report", "report", "ReportData", "ReportFiles", "LayoutMap",
           "CutGraph", "ScopecheckError"]
