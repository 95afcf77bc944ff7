"""The report's figures (matplotlib, Agg canvas): each rendered to PNG and SVG bytes.

This is the only module that imports matplotlib; it does so inside functions and
never touches pyplot's global state (figures are ``matplotlib.figure.Figure`` objects
drawn on an Agg canvas), so importing scopecheck stays cheap and a caller's own
matplotlib backend is left alone. SVG text stays text (``svg.fonttype = none``), so
the numbers in an SVG can be searched and tested.
"""

from __future__ import annotations

import io

RC = {
    "font.size": 12,
    "axes.titlesize": 14,
    "axes.titleweight": "bold",
    "axes.labelsize": 12,
    "xtick.labelsize": 11,
    "ytick.labelsize": 11,
    "legend.fontsize": 11,
    "svg.fonttype": "none",
    "svg.hashsalt": "scopecheck",
    "font.family": "DejaVu Sans",
}
DPI = 100
#: colours of the size bars
C_VCPU, C_CTXT, C_HYP, C_DERIVED, C_TOUCHED, C_LEAK = "#9e9e9e", "#4c72b0", "#55a868", "#dd8452", "#6a51a3", "#d62728"


def _figure(w: float, h: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig) -> tuple[bytes, bytes]:
    png, svg = io.BytesIO(), io.BytesIO()
    fig.savefig(png, format="png", dpi=DPI, metadata={"Software": None})
    fig.savefig(svg, format="svg", metadata={"Date": None})
    return png.getvalue(), svg.getvalue()


def render_all(data, runs: list[dict] | None = None) -> dict[str, tuple[bytes, bytes]]:
    """name -> (png, svg) for every figure of the report (``trend`` only with a history)."""
    import matplotlib

    with matplotlib.rc_context(RC):
        out = {"sizes": _save(size_bars(data)), "layout": _save(layout_map(data)),
               "callgraph": _save(callgraph(data)), "leaks": _save(leak_counts(data))}
        if getattr(data, "narrow", None) is not None:
            out["narrow"] = _save(narrow_classes(data.narrow, data.label))
        if runs:
            out["trend"] = _save(trend(runs))
        if getattr(data, "boundary", None):
            out["boundary"] = _save(boundary_bars(data))
    return out


# ---------------------------------------------------------------- host/hyp boundary

C_READ, C_WRITE = "#4c72b0", "#d62728"
MAX_BOUNDARY_ROWS = 40


def boundary_bars(data):
    """Bytes hyp reads from (untrusted input) and writes to (guest state to the host) host memory, per field."""
    b = data.boundary
    rows = sorted(b["fields"], key=lambda r: (-(r["read_bytes"] + r["write_bytes"]), r["root"], r["field"]))
    shown = rows[:MAX_BOUNDARY_ROWS]
    fig = _figure(12, 0.32 * len(shown) + 2.4)
    ax = fig.add_subplot()
    ys = range(len(shown))
    reads = [-r["read_bytes"] for r in shown]
    writes = [r["write_bytes"] for r in shown]
    ax.barh(ys, reads, color=C_READ, height=0.7, label="read from the host (untrusted input)")
    ax.barh(ys, writes, color=C_WRITE, height=0.7, label="written to the host (flows to the host)")
    span = max([1] + [abs(x) for x in reads + writes])
    for y, r, w in zip(ys, reads, writes):
        if r:
            ax.text(r - span * 0.01, y, f"{-r:,}", va="center", ha="right", fontsize=9)
        if w:
            ax.text(w + span * 0.01, y, f"{w:,}", va="center", ha="left", fontsize=9)
    for y, r in zip(ys, shown):
        if not r["size"]:
            ax.text(span * 0.01, y, "size unknown (no layout)", va="center", ha="left", fontsize=9, color="#555555")
    labels = [(f"{r['root']}: " if r["root"] != "kvm_vcpu" else "") + r["field"] + (" *" if r["on_path"] else "")
              for r in shown]
    from matplotlib.ticker import FuncFormatter

    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{abs(v):,.0f}"))
    ax.set_yticks(list(ys), labels, fontsize=9)
    ax.invert_yaxis()
    ax.set_xlim(-span * 1.25, span * 1.25)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel("bytes (left: read, right: written)")
    ax.spines[["top", "right"]].set_visible(False)
    t = b["totals"]
    more = f"; {len(rows) - len(shown)} more field(s) in boundary.csv" if len(rows) > len(shown) else ""
    fig.legend(loc="outside lower center", frameon=False, ncol=2)
    fig.suptitle(f"{data.label}: host-owned kvm_vcpu / kvm memory hyp reads and writes\n"
                 f"per vcpu run ({' / '.join(t['path'])}, fields marked *): {t['read_bytes']:,} B read, "
                 f"{t['write_bytes']:,} B written{more}", x=0.01, ha="left", fontsize=13, fontweight="bold")
    return fig


def _kb(n: int) -> str:
    return f"{n:,} B"


# ---------------------------------------------------------------- size bars

def size_bars(data):
    h = data.headline
    vcpu = h["kvm_vcpu"]
    ctxt = h["kvm_cpu_context"] or 0
    rows = []  # (label, [(value, colour, legend)], total)
    rows.append(("kvm_vcpu\n(what the host owns)", [(vcpu, C_VCPU, "kvm_vcpu")], vcpu))
    if h["rfc_scope"] is not None:
        hyp_name = "vcpu_hyp_state" if h["vcpu_hyp_state_present"] else "RFC's hyp fields (loose)"
        rows.append((f"RFC scope\nkvm_cpu_context + {'vcpu_hyp_state' if h['vcpu_hyp_state_present'] else 'hyp fields'}",
                     [(ctxt, C_CTXT, "kvm_cpu_context"), (h["rfc_hyp_bytes"] or 0, C_HYP, hyp_name)], h["rfc_scope"]))
    if h["derived_total"] is not None:
        rows.append((f"derived from hyp's footprint\nkvm_cpu_context + vcpu_hyp_state ({h['derived_members']} fields)",
                     [(ctxt, C_CTXT, "kvm_cpu_context"), (h["derived_hyp_state"], C_DERIVED,
                                                          "derived vcpu_hyp_state")], h["derived_total"]))
    rows.append(("kvm_vcpu bytes hyp touches\n(union of the footprint)",
                 [(h["touched_bytes"] - h["leak_bytes"], C_TOUCHED, "touched, in scope"),
                  (h["leak_bytes"], C_LEAK, "touched, leak")], h["touched_bytes"]))
    if h["pkvm_hyp_vcpu"]:
        rows.append(("pkvm_hyp_vcpu\n(hyp's copy, embeds kvm_vcpu)", [(h["pkvm_hyp_vcpu"], C_VCPU, None)],
                     h["pkvm_hyp_vcpu"]))
    fig = _figure(12, 1.1 * len(rows) + 1.9)
    ax = fig.add_subplot()
    seen = set()
    for i, (label, parts, total) in enumerate(rows):
        left = 0
        for val, col, leg in parts:
            lab = leg if leg and leg not in seen else None
            if leg:
                seen.add(leg)
            ax.barh(i, val, left=left, color=col, height=0.62, label=lab, edgecolor="white", linewidth=0.8)
            left += val
        pct = f"  ({100.0 * total / vcpu:.1f}% of kvm_vcpu)" if i else ""
        ax.text(total + vcpu * 0.012, i, _kb(total) + pct, va="center", ha="left", fontsize=12,
                fontweight="bold" if i == 0 else "normal", zorder=4,
                bbox={"boxstyle": "square,pad=0.1", "facecolor": "white", "linewidth": 0, "alpha": 0.85})
    ax.set_yticks(range(len(rows)), [r[0] for r in rows])
    ax.invert_yaxis()
    xmax = max(max(r[2] for r in rows), h["rfc_claim_bytes"]) * 1.5
    ax.set_xlim(0, xmax)
    ax.axvline(h["rfc_claim_bytes"], color="black", linestyle="--", linewidth=1.5, zorder=3)
    ax.text(h["rfc_claim_bytes"], -0.62, f" RFC's claim: ~2 kB ({h['rfc_claim_bytes']} B)", ha="left",
            va="bottom", fontsize=11)
    ax.set_xlabel("bytes")
    ax.set_ylim(len(rows) - 0.4, -0.95)
    ax.spines[["top", "right"]].set_visible(False)
    fig.legend(loc="outside lower center", frameon=False, ncol=3)
    fig.suptitle(f"{data.label}: kvm_vcpu against the RFC's reduced hyp state", x=0.01, ha="left",
                 fontsize=14, fontweight="bold")
    return fig


# ---------------------------------------------------------------- layout map

def layout_map(data):
    import numpy as np
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    from scopecheck.report import CATEGORIES

    lay = data.layout
    size = lay.size
    width = 512 if size > 2048 else 128
    nrows = -(-size // width)
    grid = np.full(nrows * width, len(CATEGORIES), dtype=float)
    grid[:size] = np.frombuffer(bytes(lay.codes), dtype=np.uint8)
    grid = grid.reshape(nrows, width)
    cmap = ListedColormap([c for _, c in CATEGORIES] + ["#ffffff"])
    fig = _figure(13, 0.36 * nrows + 3.4)
    ax = fig.add_subplot()
    ax.imshow(grid, cmap=cmap, vmin=-0.5, vmax=len(CATEGORIES) + 0.5, aspect="auto", interpolation="nearest",
              extent=(0, width, nrows, 0))
    for r in range(1, nrows):
        ax.axhline(r, color="white", linewidth=2)
    for x in range(64, width, 64):
        ax.axvline(x, color="white", linewidth=0.4, alpha=0.7)
    # region labels: the start of every big member, in the row where it starts
    placed: dict[int, list[float]] = {}
    for path, off, sz in lay.regions:
        row, col = divmod(off, width)
        if any(abs(col - c) < width * 0.14 for c in placed.get(row, [])):
            continue
        placed.setdefault(row, []).append(col)
        ax.plot([col, col], [row, row + 1], color="black", linewidth=1.2)
        ax.text(col + width * 0.004, row + 0.5, path, va="center", ha="left", fontsize=9.5,
                bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "alpha": 0.75, "linewidth": 0})
    ax.set_yticks([r + 0.5 for r in range(nrows)], [f"{r * width:>5}" for r in range(nrows)])
    ax.set_ylabel("offset of the row (bytes)")
    ax.set_xticks(range(0, width + 1, 64))
    ax.set_xlabel(f"byte within the row ({width} B per row; thin lines every 64 B cache line)")
    counts = lay.bytes_by_category
    handles = [Patch(facecolor=c, edgecolor="#555555", label=f"{name}: {counts[name]:,} B")
               for name, c in CATEGORIES]
    fig.legend(handles=handles, loc="outside lower center", ncol=3, frameon=False, fontsize=12)
    h = data.headline
    ax.set_title(f"{data.label}: struct kvm_vcpu, {size:,} B, by what nVHE hyp does with each byte\n"
                 f"touched {h['touched_bytes']:,} B ({100.0 * h['touched_bytes'] / size:.1f}%), "
                 f"of which outside the {h['query']} scope (leak): {h['leak_bytes']:,} B", loc="left")
    return fig


# ---------------------------------------------------------------- call graph

def _tree_positions(cut) -> dict:
    """Leaves get consecutive rows, a parent the mean row of its children: no edge crosses."""
    children: dict = {}
    parent: dict = {}
    for a, b in cut.edges:
        if b not in parent:
            parent[b] = a
            children.setdefault(a, []).append(b)
    roots = sorted((k for k in cut.nodes if k not in parent), key=lambda k: (cut.nodes[k]["name"], repr(k)))
    pos: dict = {}
    nxt = [0]

    def place(k, depth):
        kids = sorted(children.get(k, []), key=lambda c: (cut.nodes[c]["name"], repr(c)))
        if not kids:
            pos[k] = (depth, nxt[0])
            nxt[0] += 1
            return pos[k][1]
        ys = [place(c, depth + 1) for c in kids]
        if cut.nodes[k]["leaks"]:  # a leaking function with callees that leak too: its own row
            y = nxt[0]
            nxt[0] += 1
            ys.append(y)
        pos[k] = (depth, (min(ys) + max(ys)) / 2)
        return pos[k][1]

    for r in roots:
        place(r, 0)
    return pos


def callgraph(data):
    cut = data.graph
    if not cut.nodes:
        fig = _figure(10, 2.4)
        ax = fig.add_subplot()
        ax.axis("off")
        ax.text(0.5, 0.5, f"no leaks: nothing to show\n({cut.total_nodes} hyp functions, "
                f"{cut.total_edges} call edges)", ha="center", va="center", fontsize=14)
        ax.set_title(f"{data.label}: hyp call graph, leaking functions", loc="left")
        return fig
    tree = _tree_positions(cut)
    depth = max(p[0] for p in tree.values()) + 1
    rows = max(p[1] for p in tree.values()) + 1
    # column widths in inches: a column must hold its labels that have callees to the right;
    # a leaf owns its row, so its label may run on into the next columns
    char_in = 0.6 * 10.5 / 72
    parents = {a for a, _ in cut.edges}
    need = [0.0] * depth
    for k, info in cut.nodes.items():
        d = tree[k][0]
        text = len(info["name"]) + (5 if info["leaks"] else 0)
        if k in parents or d == depth - 1:
            need[d] = max(need[d], text * char_in * 1.1 + 0.45)
    xs = [0.0]
    for d in range(depth - 1):
        xs.append(xs[-1] + max(need[d], 1.0))
    width = max(xs[tree[k][0]] + (len(v["name"]) + 5) * char_in + 0.3 for k, v in cut.nodes.items())
    pos = {k: (xs[d], y) for k, (d, y) in tree.items()}
    fig = _figure(max(10.0, width * 1.04 + 0.4), max(3.8, 0.34 * rows + 2.2))
    ax = fig.add_subplot()
    for a, b in cut.edges:
        (x0, y0), (x1, y1) = pos[a], pos[b]
        xm = x1 - 0.18  # the elbow just before the child: siblings share one bracket
        ax.plot([x0, xm, xm, x1], [y0, y0, y1, y1], color="#8c8c8c", linewidth=1.1, zorder=1,
                solid_joinstyle="round")
    for k, info in cut.nodes.items():
        x, y = pos[k]
        leak = info["leaks"] > 0
        label = info["name"] + (f"  ({info['leaks']})" if leak else "")
        style = {"boxstyle": "round,pad=0.25", "linewidth": 1.4 if info["entry"] else 0.8,
                 "facecolor": "#d62728" if leak else ("#ffffff" if not info["entry"] else "#e8eef8"),
                 "edgecolor": "#7f0000" if leak else ("#1f3b73" if info["entry"] else "#8c8c8c")}
        ax.text(x, y, label, ha="left", va="center", fontsize=10.5, color="white" if leak else "black",
                fontweight="bold" if leak or info["entry"] else "normal", bbox=style, zorder=3,
                family="DejaVu Sans Mono")
    ax.set_xlim(-0.1, width + 0.2)
    ax.set_ylim(rows - 0.4, -0.8)
    ax.set_xticks(xs, ["entry"] + [f"depth {d}" for d in range(1, depth)], ha="left")
    ax.xaxis.tick_top()
    ax.tick_params(axis="x", length=0, labelsize=11)
    ax.set_yticks([])
    for s in ax.spines.values():
        s.set_visible(False)
    more = "" if cut.shown_leaking == cut.leaking_functions else \
        f" (the {cut.shown_leaking} with most leaks of {cut.leaking_functions})"
    ax.set_title(f"{data.label}: hyp call chains from entry points to the {cut.leaking_functions} leaking "
                 f"functions{more}\nred = reaches kvm_vcpu outside the scope (leak count in brackets); "
                 f"{len(cut.nodes)} of {cut.total_nodes} hyp functions shown", loc="left", fontsize=12.5)
    return fig


# ---------------------------------------------------------------- leak counts

def leak_counts(data, top: int = 20):
    from collections import Counter

    leaks = data.proof.leaks
    by_file = Counter((l.file or "?") for l in leaks)
    by_fn = Counter(l.function for l in leaks)
    n = max(1, min(top, max(len(by_file), len(by_fn))))
    fig = _figure(14, 0.36 * n + 2.2)
    axes = fig.subplots(1, 2, width_ratios=[1, 1])
    for ax, counter, what in ((axes[0], by_file, "file"), (axes[1], by_fn, "function")):
        items = sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
        if not items:
            ax.text(0.5, 0.5, "no leaks", ha="center", va="center", fontsize=14, transform=ax.transAxes)
            ax.axis("off")
            continue
        names = [_short(k, 46) for k, _ in items]
        vals = [v for _, v in items]
        ax.barh(range(len(items)), vals, color="#d62728", height=0.7)
        for i, v in enumerate(vals):
            ax.text(v, i, f" {v}", va="center", ha="left", fontsize=11)
        ax.set_yticks(range(len(items)), names, family="DejaVu Sans Mono", fontsize=10.5)
        ax.set_ylim(n - 0.5, -0.6)
        ax.set_xlim(0, max(vals) * 1.15 + 0.5)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.spines[["top", "right"]].set_visible(False)
        shown = "" if len(counter) <= top else f" (top {top} of {len(counter)})"
        ax.set_title(f"leaks per {what}{shown}", loc="left")
        ax.set_xlabel("leaks")
    fig.suptitle(f"{data.label}: {len(leaks)} leaks in {len(by_fn)} functions, {len(by_file)} files",
                 x=0.01, ha="left", fontsize=14, fontweight="bold")
    return fig


def _short(s: str, n: int) -> str:
    return s if len(s) <= n else "\u2026" + s[-(n - 1):]


# ---------------------------------------------------------------- trend across runs

def trend(runs: list[dict]):
    from scopecheck.history import run_label

    labels = [run_label(r) for r in runs]
    x = list(range(len(runs)))
    fig = _figure(max(10.0, 1.3 * len(runs) + 5), 8.2)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 2])
    series = (("kvm_vcpu", "kvm_vcpu", C_VCPU, "o"), ("rfc_scope", "RFC scope (ctxt + hyp fields)", C_HYP, "s"),
              ("derived_total", "derived (ctxt + derived hyp state)", C_DERIVED, "D"),
              ("kvm_cpu_context", "kvm_cpu_context", C_CTXT, "^"),
              ("touched_bytes", "kvm_vcpu bytes hyp touches", C_TOUCHED, "v"),
              ("leak_bytes", "leak bytes", C_LEAK, "x"))
    for key, name, col, mk in series:
        ys = [r.get(key) for r in runs]
        if all(v is None for v in ys):
            continue
        top.plot(x, [float("nan") if v is None else v for v in ys], marker=mk, color=col, label=name,
                 linewidth=2, markersize=7)
    top.axhline(2048, color="black", linestyle="--", linewidth=1)
    top.text(x[-1] + 0.3, 2048, "RFC's claim ~2 kB", va="center", ha="left", fontsize=10.5,
             bbox={"boxstyle": "square,pad=0.15", "facecolor": "white", "linewidth": 0})
    top.set_xlim(-0.5, len(x) - 0.5 + 0.9)
    top.set_ylabel("bytes")
    top.set_ylim(bottom=0)
    top.grid(axis="y", alpha=0.3)
    top.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    top.set_title("sizes and footprint across report runs", loc="left")
    w = 0.38
    fp = [r.get("footprint") or 0 for r in runs]
    lk = [r.get("leaks") or 0 for r in runs]
    b1 = bottom.bar([i - w / 2 for i in x], fp, width=w, color=C_CTXT, label="fields touched")
    b2 = bottom.bar([i + w / 2 for i in x], lk, width=w, color=C_LEAK, label="leaks")
    bottom.bar_label(b1, fontsize=10)
    bottom.bar_label(b2, fontsize=10)
    bottom.set_ylabel("count")
    bottom.set_ylim(0, max(fp + lk + [1]) * 1.2)
    bottom.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    bottom.set_xticks(x, labels, rotation=20 if len(runs) > 3 else 0, ha="right" if len(runs) > 3 else "center")
    bottom.spines[["top", "right"]].set_visible(False)
    top.spines[["top", "right"]].set_visible(False)
    return fig


# ---------------------------------------------------------------- a patch series, step by step

def series_trend(steps: list[dict]):
    """``scopecheck series --out``: leaks, touched bytes and struct sizes after each patch.

    ``steps``: dicts with "label" (x tick), "leaks", "new_leaks", "touched_bytes", "kvm_vcpu",
    "kvm_cpu_context" and "status" ("ok" or a failure: drawn as a gap with a mark).
    """
    import matplotlib

    with matplotlib.rc_context(RC):
        x = list(range(len(steps)))
        fig = _figure(max(9.0, 1.1 * len(steps) + 5), 7.4)
        top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 2])
        nan = float("nan")
        for key, name, col, mk in (("kvm_vcpu", "kvm_vcpu", C_VCPU, "o"),
                                   ("kvm_cpu_context", "kvm_cpu_context", C_CTXT, "^"),
                                   ("touched_bytes", "kvm_vcpu bytes hyp touches", C_TOUCHED, "v"),
                                   ("leak_bytes", "leak bytes", C_LEAK, "x")):
            ys = [s.get(key) for s in steps]
            if all(v is None for v in ys):
                continue
            top.plot(x, [nan if v is None else v for v in ys], marker=mk, color=col, label=name, linewidth=2,
                     markersize=7)
        top.set_ylabel("bytes")
        top.set_ylim(bottom=0)
        top.grid(axis="y", alpha=0.3)
        top.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        top.set_title("the series, patch by patch", loc="left")
        lk = [s.get("leaks") if s.get("leaks") is not None else 0 for s in steps]
        new = [len(s.get("new_leaks") or []) for s in steps]
        bars = bottom.bar(x, lk, width=0.55, color=[C_LEAK if n else C_CTXT for n in new], label="leaks")
        bottom.bar_label(bars, labels=[(f"{v} (+{n})" if n else str(v)) if s.get("status") == "ok" else
                                       s.get("status", "") for v, n, s in zip(lk, new, steps)], fontsize=10)
        for i, s in enumerate(steps):
            if s.get("status") != "ok":
                bottom.axvspan(i - 0.4, i + 0.4, color="#cccccc", alpha=0.5, linewidth=0)
        bottom.set_ylabel("leaks")
        bottom.set_ylim(0, max(lk + [1]) * 1.3)
        labels = [(lab if len(lab) <= 34 else lab[:33] + "\u2026") for lab in
                  (s.get("label", str(i)) for i, s in enumerate(steps))]
        bottom.set_xticks(x, labels, rotation=25 if len(steps) > 3 else 0, ha="right" if len(steps) > 3 else "center")
        for ax in (top, bottom):
            ax.spines[["top", "right"]].set_visible(False)
        return _save(fig)


# ---------------------------------------------------------------- narrow classes

#: colour per narrow class (unknown combinations get the next colour of the cycle)
NARROW_COLOURS = {"kvm_cpu_context": C_CTXT, "vcpu_hyp_state": C_HYP, "kvm_cpu_context+vcpu_hyp_state": "#8172b3",
                  "unused": "#c7c7c7", "kvm_vcpu": C_LEAK}


def narrow_classes(n, label: str = ""):
    """One stacked bar: the kvm_vcpu-taking hyp functions by the narrowest type list that suffices."""
    classes = n.totals["classes"]
    first = [k for k in classes if k not in ("kvm_vcpu", "unused")]
    first.sort(key=lambda k: (k.count("+"), k))
    order = first + [k for k in ("unused", "kvm_vcpu") if k in classes]
    fig = _figure(12, 3.2)
    ax = fig.subplots()
    left = 0
    extra = ["#937860", "#da8bc3", "#8c8c8c", "#ccb974", "#64b5cd"]
    for i, k in enumerate(order):
        v = classes[k]
        colour = NARROW_COLOURS.get(k) or extra[i % len(extra)]
        name = "needs kvm_vcpu" if k == "kvm_vcpu" else ("vcpu unused" if k == "unused" else k.replace("+", " + "))
        ax.barh([0], [v], left=left, color=colour, height=0.6, label=f"{name} ({v})")
        if v:
            ax.text(left + v / 2, 0, str(v), ha="center", va="center", color="white", fontsize=12,
                    fontweight="bold")
        left += v
    ax.set_yticks([])
    ax.set_xlim(0, max(left, 1))
    ax.set_xlabel("hyp functions taking struct kvm_vcpu *")
    ax.spines[["top", "right", "left"]].set_visible(False)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.45), ncol=min(len(order), 3), frameon=False)
    t = n.totals
    fig.suptitle(f"{label}: {t['functions']} functions take kvm_vcpu, {t['narrowable']} could take less",
                 x=0.01, ha="left", fontsize=14, fontweight="bold")
    return fig
