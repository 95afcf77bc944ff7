"""`scopecheck report` and `scopecheck diff`: real reports, checked against `size` / `callgraph` JSON.

The report's numbers must be those of the size and callgraph commands on the same target:
the CSVs, the HTML headline and the figures' SVG text are compared with
`scopecheck size --format json` and `scopecheck callgraph --format json` run as a user would.
"""

from __future__ import annotations

import csv
import io
import json
import re
import sqlite3
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from conftest import FIXTURE_BUILD, run_cli
from scopecheck.cli_report import diff_cmd, report_cmd

MINI = FIXTURE_BUILD / "before-dwarf5"
MINI_AFTER = FIXTURE_BUILD / "after-dwarf5"
FIGURES = ("sizes", "layout", "callgraph", "leaks")
CSVS = ("sizes", "footprint", "leaks", "leaks_by_file", "leaks_by_function", "layout_map", "derived",
        "callgraph_cut")

_app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
_app.command("report")(report_cmd)
_app.command("diff")(diff_cmd)


def cli(*args: str):
    """The report/diff commands through typer, as cli.py registers them."""
    return CliRunner().invoke(_app, [str(a) for a in args], catch_exceptions=False)


BOOT = {"schema_version": 1, "image": "Image", "vmlinux": None, "mode": "protected", "status": "completed",
        "passed": True, "kernel": "6.1.192", "seconds": 12.3, "timings": {},
        "checks": [{"name": "hyp-initialised", "passed": True, "status": "pass", "detail": "hyp initialised",
                    "evidence": []},
                   {"name": "guest-ran", "passed": True, "status": "pass", "detail": "a guest ran", "evidence": []}],
        "trace": None, "console_lines": 10, "console_file": None, "qemu": []}


# ---------------------------------------------------------------- validators

def check_png(p: Path) -> tuple[int, int]:
    from PIL import Image

    data = p.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", p
    assert data[-12:-4] == b"\x00\x00\x00\x00IEND", p
    with Image.open(p) as im:
        im.verify()
    with Image.open(p) as im:
        w, h = im.size
        assert 600 <= w <= 5000 and 200 <= h <= 5000, (p, im.size)
        return w, h


def svg_text(p: Path) -> str:
    root = ET.parse(p).getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg", p
    return " ".join(t.strip() for t in root.itertext() if t.strip())


class _Html(HTMLParser):
    VOID = {"meta", "img", "br", "hr", "link", "input", "col", "area", "base", "source", "wbr"}
    OPTIONAL = {"p", "li", "tr", "td", "th"}

    def __init__(self):
        super().__init__()
        self.stack, self.errors, self.srcs, self.hrefs, self.text = [], [], [], [], []
        self.data_json = None
        self._in_data = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.srcs.append(a.get("src", ""))
        if tag == "a":
            self.hrefs.append(a.get("href", ""))
        if tag == "script" and a.get("id") == "scopecheck-data":
            self._in_data = True
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        while self.stack and self.stack[-1] != tag and self.stack[-1] in self.OPTIONAL:
            self.stack.pop()
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unexpected </{tag}> (open: {self.stack[-3:]})")
            return
        self.stack.pop()
        if tag == "script":
            self._in_data = False

    def handle_data(self, data):
        if self._in_data:
            self.data_json = json.loads(data)
        else:
            self.text.append(data)


def parse_html(p: Path) -> _Html:
    h = _Html()
    doc = p.read_text()
    assert doc.startswith("<!DOCTYPE html>")
    h.feed(doc)
    h.close()
    assert not h.errors, h.errors[:5]
    assert not h.stack, h.stack
    return h


def read_csv(p: Path) -> list[dict]:
    return list(csv.DictReader(io.StringIO(p.read_text())))


def _num(v):
    return None if v in ("", None) else float(v)


# ---------------------------------------------------------------- shared checks

def check_report(out: Path, size_json: dict, cg_json: dict, *, history_runs: int | None = None,
                 boot: bool = False) -> dict:
    """Every file valid, every number equal to the size/callgraph JSON. Returns the headline."""
    meta = json.loads((out / "report.json").read_text())
    assert meta["command"] == "report"
    assert sorted(p.name for p in out.iterdir()) == meta["files"]
    narrowed = cg_json["mode"] == "source+binary"  # `narrow` needs the source
    figs = FIGURES + (("narrow",) if narrowed else ()) + (("trend",) if history_runs else ())
    if meta["headline"].get("boundary_crossings"):  # host-owned memory touched: the boundary figure
        figs += ("boundary",)
    assert sorted(meta["figures"]) == sorted(figs)
    if narrowed:
        t = json.loads((out / "narrow.json").read_text())["totals"]
        assert f"{t['functions']} functions take kvm_vcpu" in svg_text(out / "narrow.svg")
    for f in figs:
        check_png(out / f"{f}.png")
        svg_text(out / f"{f}.svg")
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")], "temp dirs left"

    # the embedded JSON outputs are the commands' outputs (minus run-dependent parts)
    assert json.loads((out / "size.json").read_text())["targets"][0]["structs"] == \
        size_json["targets"][0]["structs"]
    got_cg = json.loads((out / "callgraph.json").read_text())
    for k in ("leaks", "footprint", "stats", "entry_points"):
        if k == "stats":
            strip = lambda s: {a: b for a, b in s.items() if a != "binary"}  # noqa: E731  (timings)
            assert strip(got_cg[k]) == strip(cg_json[k])
        else:
            assert got_cg[k] == cg_json[k], k

    tgt = size_json["targets"][0]
    sizes = {s["name"]: s["size"] for s in tgt["structs"]}
    summ = tgt["summary"]
    h = meta["headline"]

    # CSVs
    for c in CSVS:
        assert (out / f"{c}.csv").is_file(), c
    rows = {r["struct"]: r for r in read_csv(out / "sizes.csv")}
    for n, s in sizes.items():
        assert int(rows[n]["size"]) == s
    fp = read_csv(out / "footprint.csv")
    assert [r["field"] for r in fp] == [f["field"] for f in cg_json["footprint"]]
    for r, f in zip(fp, cg_json["footprint"]):
        assert r["access"] == f["access"] and _num(r["size"]) == (None if f["size"] is None else float(f["size"]))
    leak_fields = {f"{l['root']}:{l['field']}" for l in cg_json["leaks"] if l["kind"] == "field"}
    assert {r["field"] for r in fp if r["leak"] == "True"} == leak_fields
    lk = read_csv(out / "leaks.csv")
    assert [r["fingerprint"] for r in lk] == [l["fingerprint"] for l in cg_json["leaks"]]
    by_file = read_csv(out / "leaks_by_file.csv")
    assert sum(int(r["leaks"]) for r in by_file) == len(cg_json["leaks"])
    by_fn = read_csv(out / "leaks_by_function.csv")
    assert sum(int(r["leaks"]) for r in by_fn) == len(cg_json["leaks"])
    assert {r["function"] for r in by_fn} == {l["function"] for l in cg_json["leaks"]}
    lm = read_csv(out / "layout_map.csv")
    assert sum(int(r["bytes"]) for r in lm) == sizes["kvm_vcpu"]
    assert int(lm[-1]["end"]) == sizes["kvm_vcpu"]
    leak_bytes = sum(int(r["bytes"]) for r in lm if r["category"] == "leak")
    touched = sum(int(r["bytes"]) for r in lm if r["category"] in ("read", "write", "read+write", "leak"))
    assert {r["field"] for r in lm if r["category"] == "leak"} <= leak_fields
    # every byte of a kvm_vcpu field hyp reads or writes is drawn as touched (or leak)
    cat = [""] * sizes["kvm_vcpu"]
    for r in lm:
        cat[int(r["offset"]):int(r["end"])] = [r["category"]] * int(r["bytes"])
    for f in cg_json["footprint"]:
        if f["root"] == "kvm_vcpu" and f["size"] and f["offset"] is not None and f["access"] != "addr":
            span = set(cat[f["offset"]:f["offset"] + f["size"]])
            assert span <= {"read", "write", "read+write", "leak"}, (f["field"], span)
            if f["field"] in leak_fields:
                assert span == {"leak"}, f["field"]
    # the headline: the size and callgraph numbers
    assert h["kvm_vcpu"] == sizes["kvm_vcpu"] == summ["kvm_vcpu"]
    assert h["kvm_cpu_context"] == summ["kvm_cpu_context"]
    assert h["rfc_scope"] == summ["reduced_scope"]
    assert h["rfc_scope_pct"] == summ["reduced_pct_of_kvm_vcpu"]
    assert h["structs"] == sizes
    assert h["fields_touched"] == len(cg_json["footprint"]) == cg_json["stats"]["fields_touched"]
    assert h["leaks"] == len(cg_json["leaks"]) == cg_json["stats"]["leaks"]
    assert h["leak_functions"] == len({(l["function"], l["file"]) for l in cg_json["leaks"]}) or \
        h["leak_functions"] >= len({l["function"] for l in cg_json["leaks"]})
    assert h["leak_bytes"] == leak_bytes and h["touched_bytes"] == touched
    assert h["functions"] == cg_json["stats"]["functions"]
    if "pkvm_hyp_vcpu" in sizes:
        assert h["pkvm_hyp_vcpu"] == sizes["pkvm_hyp_vcpu"]
    derived = read_csv(out / "derived.csv")
    assert h["derived_members"] == len(derived)
    assert h["derived_total"] == summ["kvm_cpu_context"] + h["derived_hyp_state"]

    # the page: self-contained, the same numbers visible
    page = parse_html(out / "index.html")
    assert page.data_json == h
    assert page.srcs and all(s.startswith("data:image/png;base64,") for s in page.srcs)
    assert len(page.srcs) == len(figs)
    local = [x for x in page.hrefs if not x.startswith("#")]
    assert all("/" not in x and (out / x).is_file() for x in local), local
    assert {f"{c}.csv" for c in CSVS} <= set(local)
    text = " ".join(page.text)
    assert f"{sizes['kvm_vcpu']:,} B" in text
    assert f"{summ['reduced_scope']:,} B ({summ['reduced_pct_of_kvm_vcpu']:.1f}%)" in text
    assert h["answer"] in text
    for l in cg_json["leaks"]:
        assert l["fingerprint"] in (out / "index.html").read_text()
    if boot:
        assert "hyp-initialised" in text and "Boot (passed)" in text

    # the figures carry the same numbers (SVG text stays text)
    s = svg_text(out / "sizes.svg")
    assert f"{sizes['kvm_vcpu']:,} B" in s and f"{summ['reduced_scope']:,} B" in s
    assert f"{h['derived_total']:,} B" in s and "2048" in s
    lay = svg_text(out / "layout.svg")
    assert f"leak: {leak_bytes:,} B" in lay and f"{sizes['kvm_vcpu']:,} B" in lay
    g = svg_text(out / "callgraph.svg")
    cut = read_csv(out / "callgraph_cut.csv")
    for r in cut:
        assert r["function"] in g
    assert {r["function"] for r in cut if int(r["leaks"])} == {l["function"] for l in cg_json["leaks"]} or \
        len({l["function"] for l in cg_json["leaks"]}) > 45
    lc = svg_text(out / "leaks.svg")
    assert f"{len(cg_json['leaks'])} leaks" in lc
    if history_runs:
        con = sqlite3.connect(out.parent / "history.sqlite")
        assert con.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == history_runs
        assert len(read_csv(out / "history.csv")) == history_runs
    return h


def _json(*args: str) -> dict:
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


# ---------------------------------------------------------------- the mini hyp fixture

@pytest.fixture(scope="module")
def mini_report(tmp_path_factory):
    d = tmp_path_factory.mktemp("mini")
    boot = d / "boot.json"
    boot.write_text(json.dumps(BOOT))
    hist = d / "history.sqlite"
    r1 = cli("report", MINI_AFTER, "--out", d / "after", "--history", hist, "--quiet")
    assert r1.exit_code == 0, r1.output
    r = cli("report", MINI, "--out", d / "report", "--boot", boot, "--history", hist)
    assert r.exit_code == 0, r.output
    assert "index.html" in r.output and "No:" in r.output and "history: run #2" in r.output
    elf = MINI / "kvm_nvhe.o"
    return d, _json("size", "--format", "json", str(elf)), _json("callgraph", str(MINI), "--format", "json")


def test_mini_report_matches_size_and_callgraph(mini_report):
    d, size_json, cg_json = mini_report
    h = check_report(d / "report", size_json, cg_json, history_runs=2, boot=True)
    assert h["leaks"] == 41 and h["escalations"] == 1  # 19 + rawaccess.c/guest-regs.S, host-boundary.c, reconcile.c, narrow.c
    assert h["label"] == "before-dwarf5"
    # the evidence ledger: the same counts as callgraph's JSON, and a section in the page
    assert h["evidence"] == cg_json["evidence"]["counts"]
    page = (d / "report" / "index.html").read_text()
    assert 'id="evidence"' in page and 'id="binary-only-table"' in page and "Not in this build" in page


def test_mini_trend_has_both_runs(mini_report):
    d = mini_report[0]
    s = svg_text(d / "report" / "trend.svg")
    assert "#1 after-dwarf5" in s and "this run before-dwarf5" in s
    rows = sqlite3.connect(d / "history.sqlite").execute(
        "SELECT label, kvm_vcpu, footprint, leaks, touched_bytes FROM runs ORDER BY id").fetchall()
    assert [r[0] for r in rows] == ["after-dwarf5", "before-dwarf5"]
    h = json.loads((d / "report" / "report.json").read_text())["headline"]
    assert rows[1][1:] == (h["kvm_vcpu"], h["fields_touched"], h["leaks"], h["touched_bytes"])


def test_rerun_replaces_report_atomically(mini_report, tmp_path, monkeypatch):
    from scopecheck import report as rep
    from scopecheck.output import figures

    out = tmp_path / "r"
    data, files = rep.report(MINI, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def boom(*a, **k):
        raise RuntimeError("render failed")

    monkeypatch.setattr(figures, "render_all", boom)
    with pytest.raises(RuntimeError):
        rep.write_report(data, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the old report, untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]  # no temp dir left behind
    monkeypatch.undo()
    rep.write_report(data, out)  # a report is replaced
    assert (out / "index.html").is_file() and sorted(p.name for p in tmp_path.iterdir()) == ["r"]


def test_bad_input_is_one_line_exit_2(tmp_path):
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "precious.txt").write_text("keep me")
    notjson = tmp_path / "boot.json"
    notjson.write_text("{")
    baddb = tmp_path / "h.sqlite"
    baddb.write_text("not a database at all, no sir" * 10)
    cases = [
        (["report", tmp_path / "missing", "--out", tmp_path / "o"], "no such file"),
        (["report", MINI, "--out", junk], "refusing"),
        (["report", MINI, "--out", junk / "precious.txt"], "not a directory"),
        (["report", MINI, "--out", tmp_path / "o", "--boot", notjson], "not JSON"),
        (["report", MINI, "--out", tmp_path / "o", "--history", baddb], "history"),
        (["report", MINI, "--out", tmp_path / "o", "--query", "no-such-query"], "no query"),
        (["diff", tmp_path / "missing.json", tmp_path / "missing.json"], "no such file"),
        (["diff", notjson, notjson], "not JSON"),
    ]
    for args, want in cases:
        r = cli(*args)
        assert r.exit_code == 2, (args, r.output)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("scopecheck: ") and want in lines[0], (args, r.stderr)
    assert (junk / "precious.txt").read_text() == "keep me"
    assert not (tmp_path / "o").exists()


def test_figures_module_is_the_only_matplotlib_user():
    import scopecheck

    pkg = Path(scopecheck.__file__).parent
    users = sorted(str(p.relative_to(pkg)) for p in pkg.rglob("*.py")
                   if re.search(r"^\s*(import|from)\s+matplotlib", p.read_text(), re.M))
    assert users == ["output/figures.py"]


# ---------------------------------------------------------------- diff

@pytest.fixture(scope="module")
def json_outputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("diff")
    out = {}
    for name, target in (("before", MINI), ("after", MINI_AFTER)):
        for cmd, arg in (("size", str(target / "kvm_nvhe.o")), ("callgraph", str(target))):
            r = run_cli(cmd, arg, "--format", "json")
            assert r.returncode == 0, r.stderr
            p = d / f"{name}-{cmd}.json"
            p.write_text(r.stdout)
            out[name, cmd] = p
    return out


def test_size_diff(json_outputs):
    a, b = json_outputs["before", "size"], json_outputs["after", "size"]
    sa, sb = (json.loads(p.read_text())["targets"][0] for p in (a, b))
    r = cli("diff", a, b, "--format", "json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["kind"] == "size"
    got = {s["struct"]: s for s in d["targets"][0]["structs"]}
    za = {s["name"]: s["size"] for s in sa["structs"]}
    zb = {s["name"]: s["size"] for s in sb["structs"]}
    for n in set(za) & set(zb):
        assert got[n]["growth"] == zb[n] - za[n]
    assert got["vcpu_hyp_state"]["status"] == "added"
    grew = [n for n in set(za) & set(zb) if zb[n] > za[n]]
    r = cli("diff", a, b, "--fail-on-growth")
    assert r.exit_code == (1 if grew else 0), r.output
    assert "kvm_vcpu" in r.stdout and "growth" in r.stdout
    r = cli("diff", b, a, "--fail-on-growth")  # the other way round
    shrank = [n for n in set(za) & set(zb) if zb[n] < za[n]]
    assert r.exit_code == (1 if shrank else 0)
    assert grew or shrank


def test_callgraph_diff(json_outputs):
    a, b = json_outputs["before", "callgraph"], json_outputs["after", "callgraph"]
    ja, jb = (json.loads(p.read_text()) for p in (a, b))
    r = cli("diff", a, b, "--format", "json")
    assert r.exit_code == 0
    d = json.loads(r.stdout)
    fa, fb = {l["fingerprint"] for l in ja["leaks"]}, {l["fingerprint"] for l in jb["leaks"]}
    assert {l["fingerprint"] for l in d["new_leaks"]} == fb - fa
    assert {l["fingerprint"] for l in d["removed_leaks"]} == fa - fb
    pa, pb = {f["field"]: f for f in ja["footprint"]}, {f["field"]: f for f in jb["footprint"]}
    assert {f["field"] for f in d["newly_touched"]} == set(pb) - set(pa)
    assert {f["field"] for f in d["no_longer_touched"]} == set(pa) - set(pb)
    assert d["newly_touched_bytes"] == sum(pb[k]["size"] or 0 for k in set(pb) - set(pa))
    new = bool(fb - fa)
    assert cli("diff", a, b, "--fail-on-new-leak").exit_code == (1 if new else 0)
    assert cli("diff", b, a, "--fail-on-new-leak").exit_code == (1 if fa - fb else 0)
    assert cli("diff", a, a, "--fail-on-new-leak", "--fail-on-growth").exit_code == 0
    t = cli("diff", a, b).stdout
    assert f"new leaks: {len(fb - fa)}" in t and f"removed leaks: {len(fa - fb)}" in t


def test_diff_refuses_mixed_kinds(json_outputs, tmp_path):
    r = cli("diff", json_outputs["before", "size"], json_outputs["after", "callgraph"])
    assert r.exit_code == 2 and "cannot compare size output" in r.stderr
    other = tmp_path / "o.json"
    other.write_text(json.dumps({"tool": "else", "command": "size"}))
    r = cli("diff", other, other)
    assert r.exit_code == 2 and "not `scopecheck size" in r.stderr


# ---------------------------------------------------------------- real kernels

@pytest.fixture(scope="module")
def tiny61_report(tmp_path_factory):
    from build_cache import pkvm_tiny_61
    from scopecheck import report as rep
    from scopecheck.proof import prove

    target = pkvm_tiny_61().out
    proof = prove(target)  # one ProofResult for the module
    data = rep.from_results(proof, rep.size_of(proof))
    d = tmp_path_factory.mktemp("r61")
    files = rep.write_report(data, d / "6.1", history=d / "history.sqlite")
    return d / "6.1", data, files, target


@pytest.mark.kernel
def test_report_61_matches_cli(tiny61_report):
    out, data, files, target = tiny61_report
    size_json = _json("size", "--format", "json", str(data.proof.inputs.elf))
    cg_json = _json("callgraph", str(target), "--format", "json", "--quiet")
    h = check_report(out, size_json, cg_json, history_runs=1)
    assert h["kernel"].startswith("6.1.") and h["mode"] == "source+binary"
    assert h["leaks"] > 0 and h["answer"].startswith("No:")
    assert not h["vcpu_hyp_state_present"] and h["rfc_hyp_bytes"] == size_json["targets"][0]["summary"][
        "rfc_loose_bytes"]
    # the call graph is cut: far fewer nodes than hyp has, every leaking function in it
    cut = read_csv(out / "callgraph_cut.csv")
    assert 0 < len(cut) < h["functions"] / 4
    w, hgt = check_png(out / "callgraph.png")
    assert w < 3000 and hgt < 2000


@pytest.mark.kernel
def test_report_612_vmlinux(vmlinux_612, tmp_path):
    from scopecheck import report as rep

    data, files = rep.report(vmlinux_612, tmp_path / "6.12")
    size_json = _json("size", "--format", "json", str(vmlinux_612))
    cg_json = _json("callgraph", str(vmlinux_612), "--format", "json", "--quiet")
    h = check_report(tmp_path / "6.12", size_json, cg_json)
    assert h["mode"] == "binary-only" and h["kernel"].startswith("6.12")
    assert h["pkvm_hyp_vcpu"] == size_json["targets"][0]["summary"]["pkvm_hyp_vcpu"]
    assert "binary-only" in (tmp_path / "6.12" / "index.html").read_text()
