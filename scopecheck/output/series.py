"""Rendering of ``scopecheck series``: JSON, the text table, and the --out directory (HTML, figure, DB)."""

from __future__ import annotations

import base64
import json

from scopecheck import jsontext
from html import escape
from pathlib import Path

from scopecheck.series import SCHEMA_VERSION, SeriesResult, Step


def _leak_brief(l: dict) -> dict:
    return {k: l.get(k) for k in ("function", "root", "field", "access", "file", "line", "kind", "fingerprint")}


def step_dict(s: Step) -> dict:
    p = s.patch
    st = s.state
    d = {
        "step": s.index,
        "patch": p.name if p is not None else None,
        "subject": p.subject if p is not None else "(base: SRC as it is)",
        "number": p.number if p is not None else None,
        "files": list(p.files) if p is not None else [],
        "status": s.status,
        "error": s.error,
        "seconds": s.seconds,
        "apply_seconds": s.apply_seconds,
        "build_seconds": s.build_seconds,
        "analysis_seconds": s.analysis_seconds,
        "reused": s.reused,
        "incremental": (not s.full_build) if s.status != "patch-failed" and s.reused is None else None,
        "compiled": list(s.compiled),
        "tus_parsed": st.tus_parsed if st else None,
        "tus_cached": st.tus_cached if st else None,
        "sizes": dict(st.sizes) if st else None,
        "size_change": s.size_change(),
        "leaks": st.leak_count if st else None,
        "new_leaks": [_leak_brief(l) for l in s.new_leaks],
        "removed_leaks": [_leak_brief(l) for l in s.removed_leaks],
        "fields_touched": len(st.footprint) if st else None,
        "newly_touched": s.newly_touched,
        "no_longer_touched": s.no_longer_touched,
        "touched_bytes": st.touched_bytes if st else None,
        "leak_bytes": st.leak_bytes if st else None,
        "narrowable": s.narrow_change(),
    }
    if s.index == 0:
        for k in ("new_leaks", "removed_leaks", "newly_touched", "no_longer_touched"):
            d.pop(k)
    return d


def to_dict(r: SeriesResult) -> dict:
    fr = r.first_regression
    return {
        "schema_version": SCHEMA_VERSION,
        "source": r.source,
        "kernel": r.kernel,
        "config": r.config,
        "query": r.query,
        "workdir": r.workdir,
        "base": step_dict(r.base) if r.steps else None,
        "steps": [step_dict(s) for s in r.patch_steps],
        "first_regression": None if fr is None else {
            "step": fr.index, "patch": fr.patch.name, "subject": fr.patch.subject,
            "leaks": [_leak_brief(l) for l in fr.new_leaks]},
        "failures": [{"step": s.index, "patch": s.patch.name if s.patch else None, "status": s.status,
                      "error": s.error} for s in r.failures],
        "notes": list(r.notes),
    }


def to_json(r: SeriesResult) -> str:
    return jsontext.dumps(to_dict(r)) + "\n"


def _signed(v) -> str:
    if v is None:
        return "-"
    return f"{v:+d}" if v else "0"


def regression_line(r: SeriesResult) -> str | None:
    fr = r.first_regression
    if fr is None:
        return None
    leaks = fr.new_leaks
    what = ", ".join(f"{l['function']} -> {l['root']}.{l['field']}" for l in leaks[:3])
    more = f" (+{len(leaks) - 3} more)" if len(leaks) > 3 else ""
    return (f"first regression: step {fr.index}: {fr.patch.label}: {len(leaks)} new leak(s): {what}{more}")


def text(r: SeriesResult) -> str:
    rows = [("#", "patch", "subject", "status", "files", "build s", "analysis s", "kvm_vcpu", "ctxt",
             "leaks", "new", "removed", "fields +/-", "narrowable")]
    for s in r.steps:
        d = step_dict(s)
        sc = d["size_change"] or {}
        if s.index == 0:
            vcpu = str((d["sizes"] or {}).get("kvm_vcpu", "-"))
            ctxt = str((d["sizes"] or {}).get("kvm_cpu_context", "-"))
            fields = str(d["fields_touched"])
            new = removed = "-"
        else:
            vcpu = _signed((sc.get("kvm_vcpu") or {}).get("change")) if sc else "-"
            ctxt = _signed((sc.get("kvm_cpu_context") or {}).get("change")) if sc else "-"
            fields = f"+{len(d['newly_touched'])}/-{len(d['no_longer_touched'])}" if s.state else "-"
            new, removed = (str(len(d["new_leaks"])), str(len(d["removed_leaks"]))) if s.state else ("-", "-")
        nw = d["narrowable"] or {}
        narrow = "-" if not nw else ("n/a" if not nw.get("available") else
                                     (str(nw["narrowable"]) if "change" not in nw else _signed(nw["change"])))
        subj = d["subject"] if len(d["subject"]) <= 48 else d["subject"][:47] + "\u2026"
        rows.append((str(s.index), d["patch"] or "(base)", subj, s.status, str(len(d["files"])),
                     _build_cell(s), f"{s.analysis_seconds:.1f}",
                     vcpu, ctxt, "-" if d["leaks"] is None else str(d["leaks"]), new, removed, fields, narrow))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    out = []
    for j, row in enumerate(rows):
        out.append("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
        if j == 0:
            out.append("  ".join("-" * w for w in widths))
    out.append("")
    out.append(f"{r.source} (linux {r.kernel}, {r.config}), query {r.query}; base: kvm_vcpu and ctxt in bytes, "
               "later rows: change against the last step that built")
    for s in r.patch_steps:
        for l in s.new_leaks:
            out.append(f"  step {s.index} adds: {l['function']} {l['access']} {l['root']}.{l['field']} "
                       f"at {l['file']}:{l['line']}")
        for l in s.removed_leaks:
            out.append(f"  step {s.index} removes: {l['function']} {l['root']}.{l['field']}")
    for s in r.failures:
        out.append(f"  step {s.index} {s.status}: {s.error}")
    line = regression_line(r)
    out.append(line or "first regression: none (no patch adds a leak)")
    nw = r.base.state.narrow_note if r.steps and r.base.state else None
    if nw:
        out.append(f"narrowable: not computed ({nw})")
    for n in r.notes:
        out.append(f"note: {n}")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------- --out DIR

def _build_cell(s: Step) -> str:
    if s.reused == "analysis":
        return "reused"
    if s.reused == "build":
        return "cached"
    return f"{s.build_seconds:.1f}" + (" full" if s.full_build else "")


def _trend_rows(r: SeriesResult) -> list[dict]:
    rows = []
    last = None
    for s in r.steps:
        d = step_dict(s)
        st = s.state or last
        rows.append({"label": "base" if s.index == 0 else f"{s.index}: {s.patch.subject}",
                     "status": s.status, "leaks": st.leak_count if st else None,
                     "new_leaks": d.get("new_leaks") or [],
                     "touched_bytes": st.touched_bytes if st else None, "leak_bytes": st.leak_bytes if st else None,
                     "kvm_vcpu": st.sizes.get("kvm_vcpu") if st else None,
                     "kvm_cpu_context": st.sizes.get("kvm_cpu_context") if st else None})
        if s.state is not None:
            last = s.state
    return rows


def write_out(r: SeriesResult, out: Path) -> dict[str, Path]:
    """series.html (table + trend figure), series.json, series-trend.png/.svg, history.sqlite (one row per step)."""
    from scopecheck import history
    from scopecheck.output.figures import series_trend
    from scopecheck.paths import atomic_write_bytes, atomic_write_text

    out = Path(out)
    if out.exists() and not out.is_dir():
        from scopecheck.errors import InputError

        raise InputError(f"--out {out}: exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    png, svg = series_trend(_trend_rows(r))
    files = {"png": out / "series-trend.png", "svg": out / "series-trend.svg", "json": out / "series.json",
             "html": out / "series.html", "history": out / "history.sqlite"}
    atomic_write_bytes(files["png"], png)
    atomic_write_bytes(files["svg"], svg)
    atomic_write_text(files["json"], to_json(r))
    for s in r.steps:
        if s.state is None:
            continue
        row = dict(s.state.history_row)
        row["label"] = "base" if s.index == 0 else f"{s.index}/{len(r.patch_steps)} {s.patch.subject}"[:120]
        row["report"] = str(out)
        history.record(files["history"], row)
    atomic_write_text(files["html"], html(r, png))
    return files


def html(r: SeriesResult, png: bytes) -> str:
    from scopecheck import __version__
    from scopecheck.output.html import CSS

    d = to_dict(r)
    head = ["#", "patch", "subject", "status", "build s", "analysis s", "kvm_vcpu", "kvm_cpu_context",
            "leaks", "new leaks", "removed leaks", "newly touched", "no longer touched"]
    rows = []
    for s in [d["base"], *d["steps"]]:
        sizes = s.get("sizes") or {}
        new = "<br>".join(escape(f"{l['function']}: {l['root']}.{l['field']}") for l in s.get("new_leaks", []))
        rem = "<br>".join(escape(f"{l['function']}: {l['root']}.{l['field']}") for l in s.get("removed_leaks", []))
        cls = "" if s["status"] == "ok" else ' class="fail"'
        cells = [str(s["step"]), escape(s["patch"] or "(base)"), escape(s["subject"]),
                 f"<span{cls}>{escape(s['status'])}</span>" + (f"<br><span class=muted>{escape(s['error'])}</span>"
                                                              if s.get("error") else ""),
                 f"{s['build_seconds']:.1f}", f"{s['analysis_seconds']:.1f}", str(sizes.get("kvm_vcpu", "-")),
                 str(sizes.get("kvm_cpu_context", "-")), "-" if s["leaks"] is None else str(s["leaks"]),
                 new, rem, escape(", ".join(s.get("newly_touched", []))),
                 escape(", ".join(s.get("no_longer_touched", [])))]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    fr = regression_line(r)
    verdict = (f'<p class="answer no">{escape(fr)}</p>' if fr else
               '<p class="answer yes">No patch in the series adds a leak.</p>')
    img = base64.b64encode(png).decode()
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>scopecheck series: {escape(r.source)}</title>
<style>{CSS}</style></head><body>
<h1>Patch series: {escape(r.source)}</h1>
<p class=muted>linux {escape(r.kernel)}, config {escape(r.config)}, query {escape(r.query)};
{len(r.patch_steps)} patch(es); scopecheck {escape(__version__)}</p>
{verdict}
<h2>Trend</h2>
<figure><img src="data:image/png;base64,{img}" alt="leaks, touched bytes and sizes per step">
<figcaption>After each patch: struct sizes and the kvm_vcpu bytes hyp touches (top); leaks, red where the
patch added one (bottom). Grey steps failed (patch did not apply, build failed). Also as
<a href="series-trend.svg">SVG</a>; the data in <a href="series.json">series.json</a>, one row per step in
history.sqlite.</figcaption></figure>
<h2>Steps</h2>
<table><tr>{"".join(f"<th>{h}</th>" for h in head)}</tr>
{chr(10).join(rows)}
</table>
<script type="application/json" id="scopecheck-data">{escape(json.dumps(d))}</script>
</body></html>
"""
