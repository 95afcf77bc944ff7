"""`scopecheck narrow`: classes, plan and Coccinelle patch on the mini hyp and on 6.1 pkvm-tiny.

Expected classes live in the C (fixtures/mini_hyp/src/narrow.c): a ``/* narrow: CLASS [cocci]
[blocked-by=FIELD] */`` comment on a function's definition line.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import FIXTURE_BUILD, ROOT, fixture_variants, run_cli
from scopecheck.narrow import narrow
from scopecheck.proof import prove

SRC = ROOT / "fixtures" / "mini_hyp" / "src"
VARIANTS = fixture_variants()
MARK = re.compile(r"/\*\s*narrow:\s*(?P<klass>[\w+]+)(?P<props>(?:\s+[\w=.\[\]-]+)*)\s*\*/")
needs_spatch = pytest.mark.skipif(shutil.which("spatch") is None, reason="needs spatch (Debian package coccinelle)")


def narrow_markers() -> dict:
    out = {}
    for f in sorted(SRC.glob("*.[ch]")):
        for n, line in enumerate(f.read_text().splitlines(), 1):
            m = MARK.search(line)
            if not m:
                continue
            name = re.search(r"(\w+)\s*\(", line).group(1)
            props = m["props"].split()
            out[name] = {"file": f.name, "line": n, "klass": m["klass"], "cocci": "cocci" in props,
                         "blocked_by": [p[len("blocked-by="):] for p in props if p.startswith("blocked-by=")]}
    return out


@pytest.fixture(scope="module", params=VARIANTS)
def fixture_narrow(request):
    return request.param, narrow(FIXTURE_BUILD / request.param)


def test_markers_present():
    ms = narrow_markers()
    classes = {m["klass"] for m in ms.values()}
    assert {"kvm_cpu_context", "kvm_cpu_context+vcpu_hyp_state", "kvm_vcpu", "unused"} <= classes
    assert any(m["cocci"] for m in ms.values())


def test_fixture_classes_match_markers(fixture_narrow):
    variant, n = fixture_narrow
    ms = narrow_markers()
    for name, m in ms.items():
        fs = n.by_name(name)
        assert len(fs) == 1, f"{variant}: {name} not among the kvm_vcpu functions"
        f = fs[0]
        assert Path(f.file).name == m["file"] and f.line == m["line"]
        assert f.klass == m["klass"], f"{variant}: {name}: {f.klass} != {m['klass']} (needs {sorted(f.needs)})"
        if m["klass"] == "kvm_cpu_context":
            assert f.can_take == ["struct kvm_cpu_context *"]
        elif m["klass"] == "kvm_cpu_context+vcpu_hyp_state":
            assert f.can_take == ["struct kvm_cpu_context *", "struct vcpu_hyp_state *"]
        else:
            assert f.can_take == []
        assert set(m["blocked_by"]) <= {b["field"] for b in f.blocked_by}, (name, f.blocked_by)
        assert bool(f.blocked_by) == (m["klass"] == "kvm_vcpu")
    # blocked only through its callee: its own accesses are in scope, every blocking chain goes
    # through the callee, down to the function with the access
    f = n.by_name("narrow_blocked_by_callee")[0]
    for b in f.blocked_by:
        assert b["chain"][:2] == ["narrow_blocked_by_callee", "__kvm_vcpu_run"] and b["line"], b
    assert next(b for b in f.blocked_by if b["field"] == "stat.exits")["chain"] == \
        ["narrow_blocked_by_callee", "__kvm_vcpu_run"]
    own = [p for p, chain in f.needs.items() if chain == ["narrow_blocked_by_callee"]]
    assert own and all(p.startswith("arch.ctxt") for p in own)
    # the hand-off of &vcpu->arch.ctxt brings the callee's context field in, under arch.ctxt
    assert "arch.ctxt.sys_regs[19]" in n.by_name("narrow_hands_ctxt")[0].needs  # PAR_EL1


def test_fixture_plan_leaves_first(fixture_narrow):
    _variant, n = fixture_narrow
    step = {p["function"]: p["step"] for p in n.plan}
    assert set(step) == {f.function for f in n.functions if f.can_take}
    for p in n.plan:
        for c in p["after"]:
            assert step[c] < p["step"], (p, c)
    assert step["narrow_leaf_ctxt"] < step["narrow_via_callee_ctxt"]
    t = n.totals
    assert t["functions"] == len(n.functions)
    assert sum(t["classes"].values()) == t["functions"]
    assert t["first_type_alone"] == t["classes"]["kvm_cpu_context"] >= 3


def test_cli_json_schema():
    r = run_cli("narrow", "--format", "json", str(FIXTURE_BUILD / "before-dwarf5"))
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["schema_version"] == 1 and d["command"] == "narrow"
    assert set(d) >= {"functions", "plan", "totals", "limitations", "narrow_types"}
    for f in d["functions"]:
        assert set(f) >= {"function", "file", "line", "params", "needs", "can_take", "blocked_by"}
        assert any("kvm_vcpu" in t for _n, t in f["params"])
    assert d["narrow_types"]["struct kvm_cpu_context *"] == ["arch.ctxt"]
    text = run_cli("narrow", str(FIXTURE_BUILD / "before-dwarf5")).stdout
    assert "hyp functions take kvm_vcpu;" in text and "plan (" in text


def test_bad_input(tmp_path):
    q = tmp_path / "q.toml"
    q.write_text('id = "no-narrow"\n[allow]\nkvm_vcpu = ["arch.ctxt"]\n')
    r = run_cli("narrow", "--query", str(q), str(FIXTURE_BUILD / "before-dwarf5"))
    assert r.returncode == 2 and "no [narrow] table" in r.stderr and "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1 and not r.stdout
    q.write_text('id = "bad"\n[allow]\nkvm_vcpu = ["x"]\n[narrow]\n"int" = ["arch.ctxt"]\n')
    r = run_cli("narrow", "--query", str(q), str(FIXTURE_BUILD / "before-dwarf5"))
    assert r.returncode == 2 and "struct NAME *" in r.stderr
    r = run_cli("narrow", str(FIXTURE_BUILD / "before-dwarf5" / "kvm_nvhe.o"), "--emit-cocci",
                str(tmp_path / "no-such-dir" / "x.cocci"))
    assert r.returncode == 2 and not (tmp_path / "no-such-dir").exists()
    # a bare object without its compilation database: binary-only, which narrow refuses in one line
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(FIXTURE_BUILD / "before-dwarf5" / "kvm_nvhe.o", bare / "kvm_nvhe.o")
    r = run_cli("narrow", str(bare / "kvm_nvhe.o"))
    assert r.returncode == 2 and "needs the source" in r.stderr and r.stderr.count("\n") == 1 and not r.stdout


# ---------------------------------------------------------------- the semantic patch, applied

def _apply(cocci: Path, tree: Path, *targets: str) -> None:
    r = subprocess.run(["spatch", "--sp-file", str(cocci), "--in-place", "--include-headers", "--very-quiet",
                        *[a for t in targets for a in (["--dir", t] if (tree / t).is_dir() else [t])]],
                       cwd=tree, capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]


@needs_spatch
@pytest.mark.skipif(shutil.which("aarch64-linux-gnu-gcc") is None, reason="needs aarch64-linux-gnu-gcc")
def test_fixture_cocci_apply_build_reprove(tmp_path):
    before = FIXTURE_BUILD / "before-dwarf5"
    cocci = tmp_path / "narrow.cocci"
    r = run_cli("narrow", str(before), "--emit-cocci", str(cocci), "--quiet")
    assert r.returncode == 0, r.stderr
    marked = {name for name, m in narrow_markers().items() if m["cocci"]}
    text = cocci.read_text()
    for name in marked:
        assert "@narrow_def_" in text and f" {name}(" in text, name
    # a copy of the fixture sources, patched by spatch, built by the fixture's own script
    copy = tmp_path / "fixtures"
    (copy / "mini_hyp").mkdir(parents=True)
    shutil.copy(ROOT / "fixtures" / "build.sh", copy / "build.sh")
    shutil.copytree(SRC, copy / "mini_hyp" / "src")
    _apply(cocci, copy / "mini_hyp", "src")
    patched = (copy / "mini_hyp" / "src" / "narrow.c").read_text()
    assert "narrow_leaf_ctxt(struct kvm_cpu_context *ctxt)" in patched
    assert "narrow_leaf_ctxt(&vcpu->arch.ctxt);" in patched  # a caller that keeps its vcpu
    b = subprocess.run(["bash", str(copy / "build.sh"), str(tmp_path / "out")], capture_output=True, text=True,
                       timeout=600)
    assert b.returncode == 0, b.stderr[-3000:]
    out = tmp_path / "out" / "before-dwarf5"
    n2 = narrow(out)
    names = {f.function for f in n2.functions}
    assert not marked & names, "narrowed functions still take a kvm_vcpu"
    # the narrowed functions now take the context (source parameters of the rebuilt fixture)
    for name in marked:
        assert re.search(rf"\b{name}\((const )?struct kvm_cpu_context \*ctxt", patched), name
    # no new leak: the proof of the patched build reports the same (function, field) pairs
    old = {(l.function, l.field) for l in prove(before).leaks}
    new = {(l.function, l.field) for l in prove(out).leaks}
    assert new <= old, sorted(new - old)


# ---------------------------------------------------------------- 6.1 pkvm-tiny

@pytest.fixture(scope="module")
def tiny61_narrow():
    from build_cache import pkvm_tiny_61

    k = pkvm_tiny_61()
    r = prove(k.out)
    return k, r, narrow(proof=r)


@pytest.mark.kernel
def test_narrow_61_plan(tiny61_narrow):
    _k, r, n = tiny61_narrow
    t = n.totals
    assert t["functions"] >= 100 and sum(t["classes"].values()) == t["functions"]
    assert t["first_type_alone"] >= 10 and t["first_two_types"] >= 5 and t["needs_kvm_vcpu"] >= 10
    by = {f.function: f for f in n.functions}
    # the run loop needs the whole vcpu; exception.c's sysreg helpers need only the context
    assert by["__kvm_vcpu_run"].klass == "kvm_vcpu" and by["__kvm_vcpu_run"].blocked_by
    assert by["__vcpu_write_spsr_abt"].can_take == ["struct kvm_cpu_context *"]
    # every blocker is a field the proof calls a leak (outside the RFC scope), reached by its chain
    # (or one reached through a callee the binary does not hold: compiled away, yet in the source)
    leak_fields = {l.field for l in r.leaks if l.root == "kvm_vcpu"}
    in_binary = {k[0] for k in r.graph.in_binary}
    for f in n.functions:
        for b in f.blocked_by:
            assert b["chain"][0] == f.function
            assert any(b["field"] == x or b["field"].startswith(x + ".") or x.startswith(b["field"] + ".")
                       for x in leak_fields) or not set(b["chain"]) <= in_binary, (f.function, b)
    step = {p["function"]: p["step"] for p in n.plan}
    for p in n.plan:
        assert all(step[c] < p["step"] for c in p["after"])


@pytest.mark.kernel
@needs_spatch
def test_narrow_61_cocci_apply_build_reprove_boot(tiny61_narrow, tmp_path):
    from build_cache import build, debian_source_tree
    from cocci_patch import cocci_to_patch
    from scopecheck.output.cocci import emit

    k, r, n = tiny61_narrow
    patch = emit(n)
    names = {f.function for f in patch.narrowed}
    assert len(names) >= 5, patch.summary()
    cocci = tmp_path / "narrow.cocci"
    cocci.write_text(patch.text)
    diff = tmp_path / "narrow-61.patch"
    changed = cocci_to_patch(cocci, debian_source_tree("6.1").dir, diff)
    assert "arch/arm64/kvm/hyp/exception.c" in changed
    k2 = build("6.1", patches=[diff])
    r2 = prove(k2.out)
    n2 = narrow(proof=r2)
    still = names & {f.function for f in n2.functions}
    assert not still, f"still take a kvm_vcpu after the patch: {sorted(still)}"
    # ... they take the context now (source parameters of the patched build)
    params = {sf.name: sf.params for sf in r2.source_facts.functions if sf.name in names}
    assert set(params) == names
    for name, ps in params.items():
        assert any(t.replace("const ", "").strip() == "struct kvm_cpu_context *" for _n, t in ps), (name, ps)
    # no new leak
    old = {(l.function, l.field) for l in r.leaks}
    new = {(l.function, l.field) for l in r2.leaks}
    assert new <= old, sorted(new - old)
    assert n2.totals["functions"] == n.totals["functions"] - len(names)
    # and the patched kernel boots protected, runs a guest
    if k2.image is None or shutil.which("qemu-system-aarch64") is None:
        pytest.skip("no Image or no qemu-system-aarch64: boot not checked")
    b = run_cli("boot", str(k2.image), "--vmlinux", str(k2.vmlinux), "--format", "json", "-q", "--timeout", "120",
                timeout=900)
    rep = json.loads(b.stdout)
    assert b.returncode == 0 and rep["passed"] is True and rep["mode"] == "protected", b.stdout + b.stderr


@pytest.mark.kernel
def test_narrow_612_plan():
    from build_cache import build

    k = build("6.12")
    r = run_cli("narrow", str(k.out), "--format", "json", "--quiet", timeout=3600)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    t = d["totals"]
    assert t["functions"] >= 100 and sum(t["classes"].values()) == t["functions"]
    assert t["narrowable"] >= 20 and d["plan"]
    step = {p["function"]: p["step"] for p in d["plan"]}
    assert all(step[c] < p["step"] for p in d["plan"] for c in p["after"])
    by = {f["function"]: f for f in d["functions"]}
    assert by["__kvm_vcpu_run"]["can_take"] == [] and by["__kvm_vcpu_run"]["blocked_by"]
    assert by["__vcpu_write_spsr_abt"]["can_take"] == ["struct kvm_cpu_context *"]
