"""The report page: one self-contained ``index.html`` (figures embedded as PNG data URIs).

Links go only to files of the same report directory (the SVGs and CSVs). The headline
numbers are also embedded as JSON (``<script type="application/json" id="scopecheck-data">``)
for tools and tests.
"""

from __future__ import annotations

import base64
import json
from html import escape

from scopecheck import __version__

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;max-width:1200px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.7em;margin-bottom:.2em} h2{margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:.2em}
.answer{font-size:1.35em;padding:.6em .9em;border-radius:6px;margin:1em 0}
.no{background:#fde8e8;border-left:6px solid #d62728} .yes{background:#e6f4ea;border-left:6px solid #2ca02c}
.kpis{display:flex;flex-wrap:wrap;gap:.8em;margin:1em 0}
.kpi{border:1px solid #ddd;border-radius:6px;padding:.5em .9em;min-width:11em}
.kpi b{display:block;font-size:1.5em} .kpi span{color:#555;font-size:.9em}
figure{margin:1.2em 0} figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{color:#444;font-size:.95em}
table{border-collapse:collapse;font-size:.9em;margin:.6em 0} th,td{border:1px solid #ddd;padding:.25em .5em;
text-align:left;vertical-align:top} td.n{text-align:right;font-variant-numeric:tabular-nums}
th{background:#f5f5f5} code{font-size:.95em} .chain{color:#555;font-size:.85em}
.muted{color:#666;font-size:.9em} .pass{color:#2ca02c;font-weight:bold} .fail{color:#d62728;font-weight:bold}
"""

CAPTIONS = {
    "sizes": "Size bars. kvm_vcpu (what the host owns) against the RFC's reduced hyp state (kvm_cpu_context + "
             "vcpu_hyp_state, or the RFC's hyp fields where this kernel keeps them loose), against the state "
             "derived from what hyp really touches (scopecheck derive), and against the union of kvm_vcpu "
             "bytes hyp touches (red: the part outside the scope). The dashed line is the RFC's ~2 kB claim.",
    "layout": "Layout map. Every byte of struct kvm_vcpu, 512 B (or 128 B) per row, coloured by what nVHE hyp "
              "code does with it: read, write or both (inside the query's scope), leak (outside it), inside the "
              "scope but untouched, or untouched. kvm_cpu_context accesses are drawn at arch.ctxt. Labels mark "
              "where large members start.",
    "callgraph": "Call graph, cut to what matters: every leaking function (red, leak count in brackets) with "
                 "its shortest call chain from a hyp entry point (blue frame), left to right by call depth.",
    "leaks": "Leak counts per source file and per function.",
    "narrow": "Narrowing (scopecheck narrow): the hyp functions that take a struct kvm_vcpu *, by the narrowest "
              "parameter list that covers everything they and the callees they hand the vcpu to need.",
    "trend": "Trend across the runs recorded in the history database: struct sizes, the RFC scope, the "
             "derived state and the bytes hyp touches (top), fields touched and leaks (bottom).",
}
CAPTIONS["boundary"] = ("Host/hyp trust boundary. Per field of host-owned kvm_vcpu / kvm memory: bytes hyp reads "
                        "from it (left, untrusted input for a protected VM) and writes to it (right, state handed "
                        "to the host); * marks fields moved on the flush/sync path of one vcpu run.")
ORDER = ("sizes", "layout", "callgraph", "leaks", "boundary", "narrow", "trend")


def _png_width(png: bytes) -> int:
    return int.from_bytes(png[16:20], "big") if png[:8] == b"\x89PNG\r\n\x1a\n" else 0


def _b(n) -> str:
    return "-" if n is None else f"{n:,} B"


def _kpi(value, label: str, ident: str) -> str:
    return f'<div class="kpi" id="kpi-{ident}"><b>{escape(str(value))}</b><span>{escape(label)}</span></div>'


def _evidence(r) -> list[str]:
    """The reconciliation ledger: what each door saw, and what nobody could (scopecheck.reconcile)."""
    L = getattr(r, "ledger", None)
    if L is None:
        return []
    c = L.counts
    p = ['<h2 id="evidence">Evidence</h2>', f"<p>{escape(L.summary())}.</p>",
         '<table id="evidence-counts"><tr><th>class</th><th>access sites</th><th>meaning</th></tr>']
    meaning = {"explained": "source access confirmed by a load/store in the machine code",
               "binary_only": "load/store in the machine code no source access explains (judged)",
               "source_only": "source access in code that is in the binary, no machine access matched (judged)",
               "compiled_away": "source access in code not in this build"
               + (" (judged: --include-compiled-away)" if L.include_compiled_away else " (not judged)"),
               "unanalysed": "seen but not mapped: unresolved calls, unread DWARF, unmapped offsets, ..."}
    for k in ("explained", "binary_only", "source_only", "compiled_away", "unanalysed"):
        p.append(f'<tr><td>{k.replace("_", "-")}</td><td class="n">{c[k]:,}</td><td>{escape(meaning[k])}</td></tr>')
    p.append("</table>")
    if L.binary_only:
        p.append('<h3>Binary-only accesses</h3><table id="binary-only-table"><tr><th>function</th><th>location</th>'
                 "<th>field</th><th>access</th><th>instruction</th></tr>")
        for a in L.binary_only[:500]:
            loc = (a.file or "?") + (f":{a.line}" if a.line else "")
            p.append(f"<tr><td><code>{escape(a.function[0])}</code></td><td><code>{escape(loc)}</code></td>"
                     f"<td><code>{escape(a.root)}: {escape(a.path)}</code></td><td>{escape(a.access)}</td>"
                     f"<td><code>{escape(hex(a.address) if a.address is not None else '')} "
                     f"{escape(a.insn or '')}</code></td></tr>")
        p.append("</table>")
    if L.compiled_away:
        p.append('<h3>Not in this build</h3><table id="compiled-away-table"><tr><th>function</th><th>location</th>'
                 "<th>accesses</th></tr>")
        for d in L.compiled_away[:500]:
            loc = (d["file"] or "?") + (f":{d['line']}" if d["line"] else "")
            fields = ", ".join(sorted({f"{a.root}:{a.path}" for a in d["accesses"]}))
            p.append(f"<tr><td><code>{escape(d['function'])}</code></td><td><code>{escape(loc)}</code></td>"
                     f"<td><code>{escape(fields)}</code></td></tr>")
        p.append("</table>")
    if L.unanalysed:
        kinds: dict = {}
        for u in L.unanalysed:
            kinds[u.kind] = kinds.get(u.kind, 0) + 1
        p.append('<h3>Unanalysed</h3><table id="unanalysed-table"><tr><th>kind</th><th>function</th>'
                 "<th>location</th><th>detail</th></tr>")
        for u in L.unanalysed[:500]:
            loc = (u.file or "?") + (f":{u.line}" if u.line else "")
            p.append(f"<tr><td>{escape(u.kind)}</td><td><code>{escape(u.function[0] if u.function else '')}"
                     f"</code></td><td><code>{escape(loc)}</code></td><td>{escape(u.detail)}</td></tr>")
        p.append("</table>")
        if len(L.unanalysed) > 500:
            p.append(f'<p class="muted">{len(L.unanalysed) - 500} more in the JSON output.</p>')
    return p


def render(data, figs: dict, csvs: list[str], runs: list[dict] | None = None) -> str:
    h = data.headline
    r = data.proof
    ok = not h["leaks"]
    title = f"scopecheck report: {data.label}"
    p = []
    p.append("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
             f"<title>{escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>")
    p.append(f"<h1>{escape(title)}</h1>")
    p.append(f'<p class="muted"><code>{escape(h["target"])}</code>'
             + (f" &middot; build-id <code>{escape(h['build_id'])}</code>" if h["build_id"] else "")
             + (f" &middot; kernel {escape(h['kernel'])}" if h["kernel"] else "")
             + f" &middot; {escape(h['mode'])} &middot; query <code>{escape(h['query'])}</code>"
             f" ({escape(r.query.title)})</p>")
    p.append("<p><b>The RFC's question:</b> does nVHE hyp code need only <code>struct kvm_cpu_context</code> "
             "plus a few hyp registers (<code>vcpu_hyp_state</code>, about 2 kB), rather than the whole "
             "<code>struct kvm_vcpu</code>?</p>")
    p.append(f'<p class="answer {"yes" if ok else "no"}" id="answer">{escape(h["answer"])}</p>')
    kp = [_kpi(_b(h["kvm_vcpu"]), "struct kvm_vcpu", "kvm_vcpu")]
    if h["rfc_scope"] is not None:
        what = "vcpu_hyp_state" if h["vcpu_hyp_state_present"] else "the RFC's hyp fields"
        kp.append(_kpi(f"{h['rfc_scope']:,} B ({h['rfc_scope_pct']:.1f}%)",
                       f"RFC scope: kvm_cpu_context {_b(h['kvm_cpu_context'])} + {what} {_b(h['rfc_hyp_bytes'])}",
                       "rfc_scope"))
    if h["derived_total"] is not None:
        kp.append(_kpi(f"{h['derived_total']:,} B ({h['derived_pct']:.1f}%)",
                       f"derived: kvm_cpu_context + vcpu_hyp_state of {h['derived_members']} touched fields "
                       f"({_b(h['derived_hyp_state'])})", "derived_total"))
    kp.append(_kpi(h["fields_touched"], f"fields touched ({h['kvm_vcpu_fields_touched']} in kvm_vcpu)",
                   "fields_touched"))
    kp.append(_kpi(_b(h["touched_bytes"]), "bytes of kvm_vcpu hyp touches", "touched_bytes"))
    kp.append(_kpi(h["leaks"], f"leaks in {h['leak_functions']} functions, {h['leak_files']} files "
                                f"({_b(h['leak_bytes'])})", "leaks"))
    if h["pkvm_hyp_vcpu"]:
        kp.append(_kpi(_b(h["pkvm_hyp_vcpu"]), "pkvm_hyp_vcpu (embeds a whole kvm_vcpu)", "pkvm_hyp_vcpu"))
    p.append('<div class="kpis">' + "".join(kp) + "</div>")
    p.append(f'<p class="muted">{escape(data.size.summary_line())}. Call graph: {h["functions"]} hyp functions, '
             f'{h["edges"]} call edges, {h["unresolved_calls"]} unresolved indirect calls.</p>')
    for lim in r.limitations:
        p.append(f'<p class="muted">note: {escape(lim)}</p>')

    p.append("<h2>Figures</h2>")
    for name in ORDER:
        if name not in figs:
            continue
        png = base64.b64encode(figs[name][0]).decode()
        wide = ' style="overflow-x:auto"' if name == "callgraph" else ""
        big = name == "callgraph" and _png_width(figs[name][0]) > 1600  # scroll rather than shrink
        img = ' style="max-width:none"' if big else ""
        p.append(f'<figure id="fig-{name}"><div{wide}><img alt="{escape(name)} figure"{img} '
                 f'src="data:image/png;base64,{png}"></div>'
                 f'<figcaption>{escape(CAPTIONS[name])} <a href="{name}.svg">SVG</a> '
                 f'<a href="{name}.png">PNG</a></figcaption></figure>')
    if data.layout.unmapped or data.layout.address_only:
        p.append(f'<p class="muted">Not drawn in the layout map: {len(data.layout.unmapped)} footprint field(s) '
                 f'of other structs or of unknown offset, {len(data.layout.address_only)} field(s) whose address '
                 'only is taken (see footprint.csv).</p>')

    p.append(f'<h2 id="leaks">Leaks ({h["leaks"]})</h2>')
    if r.leaks:
        p.append('<table id="leak-table"><tr><th>function</th><th>location</th><th>field</th><th>access</th>'
                 '<th>bytes</th><th>call chain</th></tr>')
        for l in r.leaks:
            loc = (l.file or "?") + (f":{l.line}" if l.line else "")
            fld = l.field[1:-1] + f" from {l.root}" if l.kind == "escalation" else f"{l.root}: {l.field}"
            p.append(f'<tr data-fingerprint="{l.fingerprint}"><td><code>{escape(l.function)}</code></td>'
                     f"<td><code>{escape(loc)}</code></td><td><code>{escape(fld)}</code></td>"
                     f"<td>{escape(l.access)}</td><td class=\"n\">{'' if l.size is None else l.size}</td>"
                     f'<td class="chain">{escape(" → ".join(l.chain))}</td></tr>')
        p.append("</table>")
    else:
        p.append("<p>No leaks.</p>")
    p.extend(_evidence(r))

    bnd = getattr(data, "boundary", None)
    if bnd:
        t = bnd["totals"]
        p.append(f'<h2 id="boundary">Host/hyp boundary ({t["crossings"]} crossings)</h2>')
        p.append(f'<p id="boundary-totals">{escape(h.get("boundary_line") or "")}</p>')
        p.append('<table id="boundary-table"><tr><th>field</th><th>bytes read</th><th>bytes written</th>'
                 "<th>flush/sync</th><th>functions</th><th>sites</th></tr>")
        for row in bnd["fields"]:
            fn = ", ".join(row["functions"][:4]) + (f" +{len(row['functions']) - 4}" if len(row["functions"]) > 4
                                                      else "")
            st = ", ".join(row["sites"][:3]) + (f" +{len(row['sites']) - 3}" if len(row["sites"]) > 3 else "")
            p.append(f"<tr><td><code>{escape(row['root'])}: {escape(row['field'])}</code></td>"
                     f'<td class="n">{row["read_bytes"] or ""}</td><td class="n">{row["write_bytes"] or ""}</td>'
                     f'<td>{"yes" if row["on_path"] else ""}</td><td class="chain">{escape(fn)}</td>'
                     f'<td class="chain">{escape(st)}</td></tr>')
        p.append("</table>")

    if data.derived is not None and data.derived.members:
        d = data.derived
        p.append(f"<h2>Derived vcpu_hyp_state ({d.size:,} B, {len(d.members)} members)</h2>")
        p.append('<table id="derived-table"><tr><th>member</th><th>kvm_vcpu path</th><th>type</th><th>size</th>'
                 "<th>access</th><th>functions</th></tr>")
        for m in d.members:
            who = ", ".join(m.functions[:4]) + (f" +{len(m.functions) - 4}" if len(m.functions) > 4 else "")
            p.append(f"<tr><td><code>{escape(m.name)}</code></td><td><code>{escape(m.path)}</code></td>"
                     f"<td><code>{escape(m.type_name)}</code></td><td class=\"n\">{m.size}</td>"
                     f"<td>{escape(m.access)}</td><td class=\"chain\">{escape(who)}</td></tr>")
        p.append("</table>")

    p.append("<h2>Struct sizes</h2>")
    p.append('<table id="size-table"><tr><th>struct</th><th>size</th><th>members</th><th>holes</th>'
             "<th>padding</th><th>% kvm_vcpu</th><th>pahole</th></tr>")
    for n, lay in data.size.layouts.items():
        pct = data.size.pct_of_kvm_vcpu(n)
        ph = (data.size.pahole or {}).get(n)
        p.append(f'<tr><td><code>{escape(n)}</code></td><td class="n" data-struct="{escape(n)}">{lay.size}</td>'
                 f'<td class="n">{lay.stats.nr_members}</td><td class="n">{lay.stats.holes}</td>'
                 f'<td class="n">{lay.stats.padding}</td><td class="n">{"-" if pct is None else f"{pct:.1f}%"}</td>'
                 f'<td class="n">{"-" if ph is None else ph.size}</td></tr>')
    p.append("</table>")
    if data.size.absent:
        p.append(f'<p class="muted">not in this build: {escape(", ".join(data.size.absent))}</p>')

    if data.boot is not None:
        b = data.boot
        p.append(f'<h2>Boot ({"passed" if b.get("passed") else "FAILED"})</h2>')
        p.append(f'<p class="muted">mode {escape(str(b.get("mode")))}, status {escape(str(b.get("status")))}, '
                 f'kernel {escape(str(b.get("kernel")))}</p>')
        p.append('<table id="boot-table"><tr><th>check</th><th>result</th><th>detail</th></tr>')
        for c in b.get("checks", []):
            if not isinstance(c, dict):
                continue
            cls = "pass" if c.get("passed") else "fail"
            p.append(f'<tr><td>{escape(str(c.get("name")))}</td><td class="{cls}">'
                     f'{"pass" if c.get("passed") else "FAIL"}</td><td>{escape(str(c.get("detail") or ""))}</td></tr>')
        p.append("</table>")

    if runs:
        from scopecheck.history import run_label

        p.append(f"<h2>History ({len(runs)} runs)</h2>")
        p.append('<table id="history-table"><tr><th>run</th><th>time</th><th>kvm_vcpu</th><th>RFC scope</th>'
                 "<th>derived</th><th>fields touched</th><th>touched bytes</th><th>leaks</th></tr>")
        for run in runs:
            p.append(f"<tr><td>{escape(run_label(run))}</td><td>{escape(str(run.get('timestamp')))}</td>"
                     + "".join(f'<td class="n">{"-" if run.get(k) is None else run.get(k)}</td>'
                               for k in ("kvm_vcpu", "rfc_scope", "derived_total", "footprint", "touched_bytes",
                                         "leaks")) + "</tr>")
        p.append("</table>")

    p.append("<h2>Data</h2><ul>")
    for c in csvs:
        p.append(f'<li><a href="{escape(c)}">{escape(c)}</a></li>')
    p.append('<li><a href="size.json">size.json</a> and <a href="callgraph.json">callgraph.json</a> '
             "(as <code>scopecheck size/callgraph --format json</code>; compare runs with "
             "<code>scopecheck diff</code>)</li></ul>")
    p.append(f'<p class="muted">scopecheck {escape(__version__)}</p>')
    p.append('<script type="application/json" id="scopecheck-data">'
             + json.dumps(h, sort_keys=True).replace("</", "<\\/") + "</script>")
    p.append("</body>\n</html>\n")
    return "\n".join(p)
