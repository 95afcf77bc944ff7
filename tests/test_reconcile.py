"""The reconciliation ledger (scopecheck/reconcile.py): every access site accounted for.

On the mini hyp, fixtures/mini_hyp/src/reconcile.c carries ``expect-evidence:`` markers
(an access only the machine code shows, a function the compiler removed) and
``expect: ... pkvm-hyp-vcpu`` markers (a callee handed ``&hyp_vcpu->vcpu``); every output
format carries the ledger; on Debian's 6.1 vmlinux ``ctxt-only`` judges by DWARF parameter
types in binary-only mode, and a query that cannot be judged exits 2.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from conftest import FIXTURE_BUILD, ROOT, fixture_variants, run_cli
from scopecheck.proof import prove
from scopecheck.query import canonical

SRC = ROOT / "fixtures" / "mini_hyp" / "src"
VARIANTS = fixture_variants()
EVIDENCE = re.compile(r"expect-evidence: (?P<cls>[\w-]+) (?P<root>\w+):(?P<path>[\w.\[\]*]+) (?P<access>\w+)")
PKVM = re.compile(r"expect(?:@(?P<layout>before|after))?: (?P<verdict>ok|leak|dead) pkvm-hyp-vcpu "
                  r"(?P<root>\w+):(?P<path>[\w.\[\]*]+) (?P<access>read|write|rw)")


def _markers(rx):
    out = []
    for f in sorted(SRC.iterdir()):
        if f.suffix not in (".c", ".h", ".S"):
            continue
        for n, line in enumerate(f.read_text().splitlines(), 1):
            out += [{"file": f.name, "line": n, **m.groupdict()} for m in rx.finditer(line)]
    return out


def _key(file, line, root, path, access):
    return (Path(file).name if file else None, line, f"{root}:{path}", access)


@pytest.fixture(scope="module", params=VARIANTS)
def proof(request):
    return request.param, prove(FIXTURE_BUILD / request.param, use_cache=False)


def test_evidence_markers(proof):
    variant, r = proof
    L = r.ledger
    marks = _markers(EVIDENCE)
    assert {m["cls"] for m in marks} >= {"binary-only", "compiled-away"}
    binary_only = {_key(a.file, a.line, a.root, a.path, a.access) for a in L.binary_only}
    away = {_key(a.file, a.line, a.root, a.path, a.access) for d in L.compiled_away for a in d["accesses"]}
    source_only = {_key(a.file, a.line, a.root, a.path, a.access) for a in L.source_only}
    for m in marks:
        root, path = canonical(m["root"], m["path"])
        k = (m["file"], m["line"], f"{root}:{path}", m["access"])
        got = {"binary-only": binary_only, "compiled-away": away, "source-only": source_only}[m["cls"]]
        assert k in got, f"{variant}: {m['cls']} not in the ledger: {k}"
    # the binary-only site carries its instruction, and the leak it makes is judged with origin binary
    ex = [a for a in L.binary_only if a.file and Path(a.file).name == "reconcile.c"]
    assert ex and all(a.address is not None and a.insn and a.insn.startswith("ldr") for a in ex), ex
    assert any(l.origin == "binary" and Path(l.file).name == "reconcile.c" for l in r.leaks)
    # compiled-away accesses are listed, not judged
    assert not any(l.field == "arch.last_run_cpu" and Path(l.file or "").name == "reconcile.c" for l in r.leaks)
    c = L.counts
    assert c["explained"] > 20 and c["compiled_away"] >= 2 and c["binary_only"] >= 1
    assert c["unanalysed"] == len(L.unanalysed) and any(u.kind == "indirect-call" for u in L.unanalysed)


def test_include_compiled_away_judges_it():
    r = prove(FIXTURE_BUILD / "before-dwarf5", include_compiled_away=True)
    got = {(Path(l.file).name, l.line, l.field) for l in r.leaks}
    m = next(m for m in _markers(EVIDENCE) if m["cls"] == "compiled-away" and m["file"] == "reconcile.c")
    assert (m["file"], m["line"], m["path"]) in got
    assert r.ledger.include_compiled_away and "(judged)" in r.ledger.summary()


@pytest.mark.parametrize("variant", VARIANTS)
def test_pkvm_hyp_vcpu_across_calls(variant):
    r = prove(FIXTURE_BUILD / variant, query="pkvm-hyp-vcpu")
    layout = variant.split("-")[0]
    got = {_key(l.file, l.line, l.root, l.field, l.access) for l in r.leaks if l.kind == "field"}
    marks = [m for m in _markers(PKVM) if m["layout"] in (None, layout)]
    assert any(m["verdict"] == "leak" for m in marks)
    for m in marks:
        root, path = canonical(m["root"], m["path"])
        k = (m["file"], m["line"], f"{root}:{path}", m["access"])
        assert (k in got) == (m["verdict"] == "leak"), f"{variant}: {m}"
    callees = {k[0]: v for k, v in r.ledger.hyp_vcpu_callees.items()}
    assert callees.get("timer_sync") == "reconcile_cases", callees
    leak = next(l for l in r.leaks if l.function == "timer_sync")
    assert leak.via and "&hyp_vcpu->vcpu from reconcile_cases" in leak.via
    # without the source the machine code alone follows &hyp_vcpu->vcpu into the callee
    plain = prove(FIXTURE_BUILD / variant, query="pkvm-hyp-vcpu", binary_only=True)
    assert any(l.function == "timer_sync" for l in plain.leaks), "binary-only mode must follow the call too"


def test_every_output_carries_the_evidence(tmp_path):
    target = str(FIXTURE_BUILD / "before-dwarf5")
    t = run_cli("callgraph", target)
    assert t.returncode == 0, t.stderr
    line = [x for x in t.stdout.splitlines() if x.startswith("evidence: ")]
    assert len(line) == 1 and "binary-only" in line[0] and "compiled-away" in line[0]
    j = json.loads(run_cli("callgraph", "--format", "json", target).stdout)
    ev = j["evidence"]
    assert j["schema_version"] == 2
    assert ev["counts"]["binary_only"] == len(ev["binary_only"]) >= 1
    assert ev["counts"]["compiled_away"] == sum(len(d["accesses"]) for d in ev["compiled_away"])
    assert all(d["status"] == "not in this build" for d in ev["compiled_away"])
    assert {"address", "insn"} <= set(ev["binary_only"][0])
    # the summary line is the JSON's counts
    c = ev["counts"]
    assert f"{c['explained']} explained, {c['binary_only']} binary-only" in line[0]
    s = json.loads(run_cli("callgraph", "--format", "sarif", target).stdout)
    props = s["runs"][0]["properties"]["evidence"]
    assert props["counts"] == c and props["binary_only"]
    r = run_cli("callgraph", "--format", "json", "--include-compiled-away", target)
    assert json.loads(r.stdout)["evidence"]["compiled_away_judged"] is True


@pytest.mark.kernel
def test_ctxt_only_binary_only_debian_61(vmlinux_61):
    """The issue's case: ctxt-only on Debian's own 6.1 vmlinux must fail the gate naming ctxt_has_mte."""
    r = run_cli("callgraph", str(vmlinux_61), "--query", "ctxt-only", "--fail-on-leak", "--format", "json")
    assert r.returncode == 1, r.stderr
    d = json.loads(r.stdout)
    assert d["mode"] == "binary-only"
    assert any(l["function"] == "ctxt_has_mte" for l in d["leaks"]), [l["function"] for l in d["leaks"]]
    ev = d["evidence"]["counts"]
    assert ev["binary_only"] > 100 and ev["explained"] == 0 and ev["source_only"] == 0
    # a query over a struct this kernel lacks is refused, never "no leaks"
    r = run_cli("callgraph", str(vmlinux_61), "--query", "pkvm-hyp-vcpu")
    assert r.returncode == 2 and "pkvm_hyp_vcpu" in r.stderr and "cannot be judged" in r.stderr
    assert r.stdout == ""


@pytest.mark.kernel
def test_ledger_pkvm_tiny_61():
    from build_cache import pkvm_tiny_61

    r = prove(pkvm_tiny_61().out)
    c = r.ledger.counts
    assert r.mode == "source+binary"
    assert c["explained"] > 100 and c["source_only"] > 0 and c["compiled_away"] > 0
    # every binary-only site has an instruction and a line
    assert all(a.insn and a.address is not None for a in r.ledger.binary_only)
    assert sum(c.values()) > 0 and c["unanalysed"] == len(r.ledger.unanalysed)


@pytest.mark.kernel
@pytest.mark.slow
def test_pkvm_hyp_vcpu_across_calls_612():
    """Linux 6.12 runs a protected guest with ``__kvm_vcpu_run(&hyp_vcpu->vcpu)``: the query follows it."""
    from build_cache import build

    r = prove(build("6.12").out, query="pkvm-hyp-vcpu")
    callees = {k[0]: v for k, v in r.ledger.hyp_vcpu_callees.items()}
    assert callees.get("__kvm_vcpu_run") == "handle___kvm_vcpu_run", callees
    inside = [l for l in r.leaks if l.kind == "field" and l.via and "&hyp_vcpu->vcpu from" in l.via]
    assert inside, "no access judged inside a callee handed &hyp_vcpu->vcpu"
    assert any(l.function == "__kvm_vcpu_run" for l in inside), [l.function for l in inside]
    # judged as hyp's copy of the vcpu: the RFC's fields stay allowed
    assert not any(l.field.startswith(("arch.ctxt", "arch.hcr_el2")) for l in inside)
