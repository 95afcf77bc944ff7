"""The host/hyp trust boundary: provenance of every access and the pkvm-host-boundary query.

On the mini hyp, ``fixtures/mini_hyp/src/host-boundary.c`` marks each access with whose memory
it touches (``boundary: host|hyp|unknown read|write ROOT:PATH``); the source door must give
exactly that provenance, the shipped query must report exactly the host ones, and the per-run
totals must be the distinct bytes pahole gives for those fields. The Linux 6.12 part lives in
tests/test_boundary_612.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from conftest import FIXTURE_BUILD, ROOT, run_cli
from test_fixtures import needs_pahole, resolve

SRC = ROOT / "fixtures" / "mini_hyp" / "src" / "host-boundary.c"
VARIANTS = ["before-dwarf5", "after-dwarf4"]
BMARK = re.compile(r"boundary: (host|hyp|unknown) (read|write) (\w+):([\w.\[\]*]+)")
PATH = ["hb_flush_hyp_vcpu", "hb_sync_hyp_vcpu"]


def boundary_markers() -> list[tuple]:
    out = []
    for n, line in enumerate(SRC.read_text().splitlines(), 1):
        for m in BMARK.finditer(line):
            out.append((n, m[1], m[2], m[3], m[4]))
    return out


def _dirs(access: str) -> set[str]:
    return {"read": {"read"}, "write": {"write"}, "rw": {"read", "write"}}.get(access, set())


@pytest.fixture(scope="module", params=VARIANTS)
def src_facts(request):
    from scopecheck.proof import BOUNDARY_ROOTS, ROOTS
    from scopecheck.source.compdb import load
    from scopecheck.source.clang_facts import source_facts

    cmds = [c for c in load(FIXTURE_BUILD / request.param) if c.file.endswith("host-boundary.c")]
    return source_facts(cmds, roots=ROOTS + BOUNDARY_ROOTS, cache=False)


def test_markers_cover_every_kind():
    ms = boundary_markers()
    assert {m[1] for m in ms} == {"host", "hyp", "unknown"}
    assert {m[2] for m in ms} == {"read", "write"}
    assert any(m[3] == "kvm" for m in ms)


def test_every_access_has_the_marked_provenance(src_facts):
    f = src_facts
    assert not f.diagnostics
    got: dict = {}
    for a in f.accesses:
        if Path(a.file).name != SRC.name:
            continue
        for d in _dirs(a.access):
            got.setdefault((a.line, d, a.root, a.path), set()).add(a.provenance or "unknown")
    want = {(n, d, r, p): prov for n, prov, d, r, p in boundary_markers()}
    for k, prov in want.items():
        assert got.get(k) == {prov}, f"host-boundary.c:{k[0]} {k[2]}:{k[3]} {k[1]}: want {prov}, got {got.get(k)}"
    # and no read/write in the file is left without a marker (nothing silently host or hyp)
    unmarked = {k: v for k, v in got.items() if k not in want and k[2] != "kvm_cpu_context"}
    assert not unmarked, unmarked


def test_whole_struct_copy_is_one_access_of_the_member(src_facts):
    copies = [a for a in src_facts.accesses if a.path in ("arch.ctxt", "vcpu.arch.ctxt")
              and a.function[0] in PATH]
    assert sorted((a.function[0], a.root, a.access, a.provenance) for a in copies) == [
        ("hb_flush_hyp_vcpu", "kvm_vcpu", "read", "host"),
        ("hb_flush_hyp_vcpu", "pkvm_hyp_vcpu", "write", "hyp"),
        ("hb_sync_hyp_vcpu", "kvm_vcpu", "write", "host"),
        ("hb_sync_hyp_vcpu", "pkvm_hyp_vcpu", "read", "hyp")]


@pytest.fixture(scope="module")
def boundary_proof():
    from scopecheck.proof import prove
    from scopecheck.query import load_query

    q = load_query("pkvm-host-boundary")
    q.boundary_path = PATH
    return prove(FIXTURE_BUILD / "before-dwarf5", query=q, use_cache=False)


def test_query_reports_exactly_the_host_crossings(boundary_proof):
    r = boundary_proof
    got = {(l.line, l.access, l.root, l.field) for l in r.leaks if Path(l.file).name == SRC.name}
    want = {(n, d, root, p) for n, prov, d, root, p in boundary_markers() if prov == "host"}
    assert got == want
    assert all(l.provenance == "host" for l in r.leaks)
    # the host crossings of the older flush/sync in pkvm.c are there too, hyp's own copy is not
    pkvm = {(l.access, l.field) for l in r.leaks if Path(l.file).name == "pkvm.c"}
    assert ("read", "arch.ctxt.regs.pc") in pkvm and ("write", "mode") in pkvm
    assert not any(l.root == "pkvm_hyp_vcpu" for l in r.leaks)


@needs_pahole
def test_totals_are_the_distinct_bytes_pahole_gives(boundary_proof):
    r = boundary_proof
    t = r.stats["boundary"]["totals"]
    obj = FIXTURE_BUILD / "before-dwarf5" / "kvm_nvhe.o"
    ms = [m for m in boundary_markers() if m[1] == "host" and m[3] == "kvm_vcpu"]
    fn_of_line = {}
    for n, line in enumerate(SRC.read_text().splitlines(), 1):
        m = re.match(r"^static noinline \w+ (\w+)\(|^noinline \w+ (\w+)\(", line)
        if m:
            fn_of_line[n] = m[1] or m[2]

    def fn_at(line):
        return fn_of_line[max(k for k in fn_of_line if k <= line)]

    def span(path):  # a variable index counts the whole array
        off, size = resolve(obj, "kvm_vcpu", re.sub(r"\[\*\]", "", path))
        return set(range(off, off + size))

    for d, key in (("read", "read_bytes"), ("write", "write_bytes")):
        covered = set()
        for n, _, dd, _, p in ms:
            if dd == d and fn_at(n) in PATH:
                covered |= span(p)
        assert covered and t[key] == len(covered), (d, t)
    assert t["crossings"] == len({(l.line, l.access, l.root, l.field) for l in r.leaks})


def test_cli_text_json_and_baseline_gate(tmp_path):
    target = str(FIXTURE_BUILD / "before-dwarf5")
    r = run_cli("callgraph", "--query", "pkvm-host-boundary", target)
    assert r.returncode == 0, r.stderr
    assert re.search(r"per vcpu run hyp reads \d+ B from the host and writes \d+ B of guest state to it",
                     r.stdout)
    assert "(host read, 1040 B)" in r.stdout  # the whole kvm_cpu_context copied in
    j = run_cli("callgraph", "--query", "pkvm-host-boundary", "--format", "json", target)
    d = json.loads(j.stdout)
    assert d["schema_version"] == 2
    assert d["leaks"] and all(l["provenance"] == "host" for l in d["leaks"])
    b = d["stats"]["boundary"]
    assert b["crossings"] and all(c["provenance"] == "host" for c in b["crossings"])
    assert {f["field"] for f in b["fields"]} >= {"arch.ctxt", "arch.vgic_cpu.vgic_lr[*]"}
    base = tmp_path / "base.json"
    base.write_text(j.stdout)
    r = run_cli("callgraph", "--query", "pkvm-host-boundary", "--fail-on-leak", "--baseline", str(base), target)
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_new_crossing_fails_the_gate(tmp_path):
    """The query's test source, once as is (the baseline) and once with one more host read."""
    from test_queries import build

    src = ROOT / "scopecheck" / "queries" / "pkvm-host-boundary.c"
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    text = src.read_text()
    anchor = "\thyp_vcpu->vcpu.arch.ctxt.__hyp_running_vcpu = NULL;"
    assert anchor in text
    (a / src.name).write_text(text)  # same relative file name in both: same fingerprints
    (b / src.name).write_text(text.replace(anchor, anchor + "\n\thyp_vcpu->vcpu.arch.cntvoff = "
                                                            "host_vcpu->arch.cntvoff;"))
    build(a / src.name, a)
    build(b / src.name, b)
    base = tmp_path / "base.json"
    r = run_cli("callgraph", "--query", "pkvm-host-boundary", "-f", "json", "-o", str(base), str(a))
    assert r.returncode == 0, r.stderr
    r = run_cli("callgraph", "--query", "pkvm-host-boundary", "-f", "json", "--fail-on-leak",
                "--baseline", str(base), str(b))
    assert r.returncode == 1, r.stderr
    new = [l for l in json.loads(r.stdout)["leaks"] if not l["baselined"]]
    assert [(l["function"], l["field"], l["access"], l["provenance"]) for l in new] == [
        ("q_flush", "arch.cntvoff", "read", "host")]


@pytest.mark.parametrize("toml,msg", [
    ('id = "x"\nprovenance = "guest"\n', "provenance must be"),
    ('id = "x"\n[allow]\n[allow_read]\nkvm_vcpu = []\n', "needs provenance"),
    ('id = "x"\nprovenance = "host"\n[allow_write]\nkvm_vcpu = "arch"\n', "must be a list"),
    ('id = "x"\nprovenance = "host"\n[boundary]\npath = "flush"\n', "[boundary] path"),
])
def test_bad_boundary_query(tmp_path, toml, msg):
    p = tmp_path / "q.toml"
    p.write_text(toml)
    r = run_cli("callgraph", "--query", str(p), str(FIXTURE_BUILD / "before-dwarf5"))
    assert r.returncode == 2
    assert msg in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_provenance_survives_the_source_cache(tmp_path, monkeypatch):
    """A warm run (facts and provenance summaries read back from the cache) gives the same provenance."""
    from scopecheck.proof import BOUNDARY_ROOTS, ROOTS
    from scopecheck.source.clang_facts import STATS, source_facts
    from scopecheck.source.compdb import load

    monkeypatch.setenv("SCOPECHECK_CACHE", str(tmp_path))
    cmds = load(FIXTURE_BUILD / "before-dwarf5")

    def prov():
        f = source_facts(cmds, roots=ROOTS + BOUNDARY_ROOTS, cache=True)
        return sorted((a.file, a.line, a.col or 0, a.root, a.path, a.access, a.provenance or "") for a in f.accesses)

    cold = prov()
    hits = STATS["cache_hits"]
    warm = prov()
    assert STATS["cache_hits"] > hits
    assert warm == cold and any(p[-1] == "host" for p in cold)


ALLOW_ALL = ('id = "allow-all-boundary"\nprovenance = "host"\nescalations = false\n'
             '[allow_read]\nkvm_vcpu = ["*"]\nkvm = ["*"]\n[allow_write]\nkvm_vcpu = ["*"]\nkvm = ["*"]\n')


def test_no_leaks_never_claimed_over_accesses_not_judged(tmp_path):
    """Everything allowed, so no leaks: the verdict still says how much was judged and what was not
    (hb_note_run's vcpu is host's from one caller and hyp's from the other), in text, JSON and SARIF."""
    q = tmp_path / "allow-all.toml"
    q.write_text(ALLOW_ALL)
    target = str(FIXTURE_BUILD / "before-dwarf5")
    r = run_cli("callgraph", "--query", str(q), target)
    assert r.returncode == 0, r.stderr
    assert "every touched field is in scope" not in r.stdout
    m = re.search(r"no leaks among the (\d+) judged access\(es\); (\d+) access\(es\) in (\d+) function\(s\) "
                  r"NOT judged", r.stdout)
    assert m and int(m[1]) > 0 and int(m[2]) > 0, r.stdout
    assert f"; judged: {m[1]} access(es) whose memory's owner is known; not judged: {m[2]} access(es)" in r.stdout
    d = json.loads(run_cli("callgraph", "--query", str(q), "-f", "json", target).stdout)
    t = d["stats"]["boundary"]["totals"]
    assert (t["judged"], t["unknown_provenance"]) == (int(m[1]), int(m[2]))
    s = json.loads(run_cli("callgraph", "--query", str(q), "-f", "sarif", target).stdout)
    sp = s["runs"][0]["properties"]["boundary"]
    assert (sp["judged"], sp["unknown_provenance"]) == (int(m[1]), int(m[2]))


def test_unjudgeable_boundary_refused():
    from scopecheck.boundary import unjudgeable, verdict_line

    assert unjudgeable({"judged": 0, "unknown_provenance": 5, "unknown_functions": 2}).startswith("none of the 5")
    assert unjudgeable({"judged": 3, "unknown_provenance": 5}) is None
    assert unjudgeable({"judged": 0, "unknown_provenance": 0}) is None
    assert "NOT judged" in verdict_line({"judged": 3, "unknown_provenance": 5, "unknown_functions": 2})
    assert "in scope" in verdict_line({"judged": 3, "unknown_provenance": 0})


# ---------------------------------------------------------------- the binary door's provenance

@pytest.fixture(scope="module", params=VARIANTS)
def binary_prov(request):
    """The binary door's accesses of the mini hyp, provenance resolved whole-program (as a proof does)."""
    from scopecheck.binary.accesses import binary_accesses
    from scopecheck.binary.elf import ElfImage
    from scopecheck.binary.functions import hyp_functions
    from scopecheck.reconcile import binary_provenance

    obj = FIXTURE_BUILD / request.param / "kvm_nvhe.o"
    with ElfImage(obj) as elf:
        facts = hyp_functions(elf)
    acc, _esc, stats = binary_accesses(obj, facts, use_cache=False)
    res = binary_provenance(acc, stats.get("provenance"), facts)
    return acc, res


def test_binary_provenance_matches_the_markers(binary_prov):
    """Binary-only: every load/store of host-boundary.c the machine code shows has the provenance its
    marker gives (a marker's path covers the fields a whole-member copy is compiled into)."""
    acc, res = binary_prov
    assert res["summaries"] > 0 and "pkvm_hyp_vcpu.host_vcpu" in res["host_fields"]
    marks = boundary_markers()
    got: dict = {}
    unmarked = []
    for a in acc:
        if not a.file or Path(a.file).name != SRC.name or not a.path:
            continue
        for d in _dirs(a.access):
            got.setdefault(a.provenance or "unknown", set()).add((a.function[0], d, a.root, a.path))
            m = [mk for mk in marks if mk[0] == a.line and mk[2] == d and mk[3] == a.root
                 and (a.path == mk[4] or a.path.startswith(mk[4] + ".")
                      or a.path.startswith(mk[4].replace("[*]", "") + "["))]
            if not m:
                unmarked.append((a.line, d, a.root, a.path, a.provenance))
                continue
            assert a.provenance == (None if m[0][1] == "unknown" else m[0][1]), \
                f"host-boundary.c:{a.line} {a.root}:{a.path} {d}: want {m[0][1]}, got {a.provenance} ({a.insn})"
    # the host_ctxt registers (kvm_cpu_context) carry no boundary marker: they are hyp's memory; a
    # load the line table puts on another line (a function's first line, an inline's body) has
    # the provenance the markers give its field and direction elsewhere in the file
    for line, d, root, path, prov in unmarked:
        if root == "kvm_cpu_context":
            assert prov == "hyp", (line, d, root, path, prov)
            continue
        want = {None if mk[1] == "unknown" else mk[1] for mk in marks if mk[2] == d and mk[3] == root
                and (path == mk[4] or path.startswith(mk[4].replace("[*]", "") + "["))}
        assert want and prov in want, (line, d, root, path, prov, want)
    # what the machine code shows of the flush/sync pattern: host reads in flush (sve_state, the
    # vgic_cpu copy), host writes in sync (vgic_lr[i]), hyp's own vcpu written/read, the
    # host-register pointer's kvm read, the parameter passed a host pointer, the one passed both
    # (hb_sync_hyp_vcpu's writes are a memcpy call and a loop whose index register a mov sets: the
    # binary door sees neither; the older sync_hyp_vcpu of pkvm.c shows the host writes)
    host = {(f, d) for f, d, _r, _p in got["host"]}
    assert {("hb_flush_hyp_vcpu", "read"), ("hb_host_mp_state", "read"), ("hb_handle_vcpu_run", "read")} <= host
    assert ("hb_flush_hyp_vcpu", "write") not in host and ("hb_sync_hyp_vcpu", "read") not in host
    assert {(f, d) for f, d, r, _p in got["hyp"] if r == "pkvm_hyp_vcpu"} >= {
        ("hb_flush_hyp_vcpu", "write"), ("hb_flush_hyp_vcpu", "read"), ("hb_sync_hyp_vcpu", "read")}
    assert {f for f, _d, _r, _p in got["unknown"]} == {"hb_note_run"}
    pkvm = {(a.function[0], d, a.path, a.provenance) for a in acc if a.file and Path(a.file).name == "pkvm.c"
            and a.root == "kvm_vcpu" for d in _dirs(a.access)}
    assert {("flush_hyp_vcpu", "read", "arch.ctxt.regs.pc", "host"),
            ("sync_hyp_vcpu", "write", "arch.ctxt.regs.pc", "host"), ("sync_hyp_vcpu", "write", "mode", "host")} <= pkvm
    assert not {x for x in pkvm if x[0] == "flush_hyp_vcpu" and x[1] == "write" and x[3] == "host"}
    assert not {x for x in pkvm if x[0] == "sync_hyp_vcpu" and x[1] == "read" and x[3] == "host"}


def test_binary_only_boundary_query_judges(tmp_path):
    """The shipped query in binary-only mode judges by the binary door's provenance: the flush reads
    and sync writes of host memory are leaks, hb_note_run's write is counted as not judged."""
    r = run_cli("callgraph", "--query", "pkvm-host-boundary", "--binary-only", "-f", "json",
                str(FIXTURE_BUILD / "before-dwarf5"))
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["mode"] == "binary-only"
    t = d["stats"]["boundary"]["totals"]
    assert t["judged"] > t["unknown_provenance"] > 0
    leaks = {(l["function"], l["access"]) for l in d["leaks"]}
    assert {("hb_flush_hyp_vcpu", "read"), ("flush_hyp_vcpu", "read"), ("sync_hyp_vcpu", "write"),
            ("hb_host_mp_state", "read")} <= leaks
    assert all(l["provenance"] == "host" and l["origin"] == "binary" for l in d["leaks"])
    assert not any(l["function"] == "hb_note_run" for l in d["leaks"])
    ev = d["evidence"]["binary_only"]
    assert {e["provenance"] for e in ev} == {"host", "hyp", None}
