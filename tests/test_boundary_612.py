"""The host/hyp trust boundary of Linux 6.12 pKVM (pkvm-tiny built from Debian's linux-source-6.12).

The expected inventory is not written down here: it is read at run time from the built tree's
``arch/arm64/kvm/hyp/nvhe/hyp-main.c``, whose ``flush_hyp_vcpu()`` copies host state in
(``hyp_vcpu->vcpu.X = ... host_vcpu->Y ...``: a read of Y) and ``sync_hyp_vcpu()`` copies it
back (``host_vcpu->X = ...`` or through ``host_cpu_if = &host_vcpu->P``: a write). Every such
line must be in the pkvm-host-boundary inventory with its direction, field and bytes (whole
members: pahole's size of the member), the per-run totals must be the distinct bytes pahole
gives for those fields, and a patch (generated at test time) adding one more host read to
flush_hyp_vcpu must fail ``callgraph --fail-on-leak`` against a baseline of the pristine build.
"""

from __future__ import annotations

import difflib
import json
import re
from pathlib import Path

import pytest

from conftest import run_cli
from test_fixtures import needs_pahole, pahole_size, resolve

HYP_MAIN = "arch/arm64/kvm/hyp/nvhe/hyp-main.c"
QUERY = "pkvm-host-boundary"
MARK = "scopecheck-boundary: new crossing"
pytestmark = [pytest.mark.kernel, pytest.mark.slow]


@pytest.fixture(scope="session")
def k612():
    from build_cache import build

    return build("6.12")


@pytest.fixture(scope="session")
def proof612(k612):
    from scopecheck.proof import prove

    return prove(k612.out, query=QUERY, use_cache=True)


# ---------------------------------------------------------------- the flush/sync code, read at run time

def function_body(text: str, name: str) -> tuple[int, list[str]]:
    """(line number of the first body line, body lines) of a C function definition in ``text``."""
    lines = text.splitlines()
    start = next(i for i, l in enumerate(lines) if re.match(rf"^static\s+void\s+{name}\s*\(", l))
    depth, body, first = 0, [], None
    for i in range(start, len(lines)):
        depth += lines[i].count("{") - lines[i].count("}")
        if first is None and "{" in lines[i]:
            first = i + 2  # 1-based, the line after the opening brace
            continue
        if first is not None:
            if depth <= 0:
                break
            body.append(lines[i])
    return first, body


def expected_crossings(tree: Path) -> set[tuple[int, str, str]]:
    """{(line, direction, kvm_vcpu path)} of host_vcpu accesses in flush_hyp_vcpu / sync_hyp_vcpu."""
    text = (tree / HYP_MAIN).read_text()
    out = set()
    for fn in ("flush_hyp_vcpu", "sync_hyp_vcpu"):
        first, body = function_body(text, fn)
        aliases = {}
        for n, line in enumerate(body, first):
            code = line.split("/*")[0]
            m = re.search(r"\*\s*(\w+)\s*=\s*&host_vcpu->([\w.]+)\s*;", code)
            if m:
                aliases[m[1]] = m[2]
                continue
            if re.search(r"=\s*hyp_vcpu->host_vcpu\s*;", code):
                continue
            lhs, eq, rhs = code.partition("=")
            if not eq or rhs.startswith("="):
                continue
            m = re.match(r"^\s*host_vcpu->([\w.]+)\s*$", lhs)
            if m:
                out.add((n, "write", m[1]))
            m = re.match(r"^\s*(\w+)->(\w+)(\[\w+\])?\s*$", lhs)
            if m and m[1] in aliases:
                out.add((n, "write", f"{aliases[m[1]]}.{m[2]}" + ("[*]" if m[3] else "")))
            for r in re.findall(r"host_vcpu->([\w.]+)", rhs):
                out.add((n, "read", r))
    return out


def _leaks_in_hyp_main(r):
    return {(l.line, l.access, l.field): l for l in r.leaks
            if l.file and l.file.endswith(HYP_MAIN) and l.root == "kvm_vcpu"}


def test_inventory_has_every_flush_read_and_sync_write(k612, proof612):
    want = expected_crossings(k612.source_dir)
    assert len({w for w in want if w[1] == "read"}) >= 8 and len({w for w in want if w[1] == "write"}) >= 4
    assert any(p == "arch.ctxt" for _, _, p in want)  # the whole-struct copies
    got = _leaks_in_hyp_main(proof612)
    missing = sorted(want - set(got))
    assert not missing, f"not in the inventory: {missing}"
    for key in want:
        l = got[key]
        assert l.provenance == "host" and l.size and l.size > 0, l
        assert l.chain[0] != l.function, l.chain  # reached from a hyp entry
    # flush/sync write only hyp's own copy besides: nothing else of theirs is a host crossing
    extra = {k for k, l in got.items() if l.function in ("flush_hyp_vcpu", "sync_hyp_vcpu")} - want
    assert not extra, extra


@needs_pahole
def test_whole_members_and_totals_match_pahole(k612, proof612):
    got = _leaks_in_hyp_main(proof612)
    vm = k612.vmlinux
    sizes = {l.field: l.size for l in got.values()}
    assert sizes["arch.ctxt"] == pahole_size(vm, "kvm_cpu_context")
    assert sizes["arch.vgic_cpu.vgic_v3"] == pahole_size(vm, "vgic_v3_cpu_if")
    assert sizes["arch.fault"] == pahole_size(vm, "kvm_vcpu_fault_info")
    t = proof612.stats["boundary"]["totals"]
    want = expected_crossings(k612.source_dir)
    for d, key in (("read", "read_bytes"), ("write", "write_bytes")):
        covered = set()
        for _, dd, p in want:
            if dd == d:
                off, size = resolve(vm, "kvm_vcpu", p.replace("[*]", ""))
                covered |= set(range(off, off + size))
        assert t[key] == len(covered), (d, t)
    assert t["read_fields"] == len({p for _, d, p in want if d == "read"})
    assert t["write_fields"] == len({p for _, d, p in want if d == "write"})
    print(f"\n6.12 pkvm-tiny: {proof612.stats['boundary']['totals']}")


def test_hypercall_register_and_host_fields(proof612):
    """Beyond flush/sync: host pointers from host registers and from pkvm_hyp_vm.host_kvm."""
    by_fn = {}
    for l in proof612.leaks:
        by_fn.setdefault(l.function, set()).add((l.root, l.field, l.access))
    assert ("kvm_vcpu", "vcpu_idx", "read") in by_fn["handle___kvm_vcpu_run"]  # DECLARE_REG + kern_hyp_va
    assert ("kvm_vcpu", "vcpu_id", "read") in by_fn["init_pkvm_hyp_vcpu"]  # a parameter from __pkvm_init_vcpu
    assert any(root == "kvm" for root, _, _ in by_fn["__pkvm_init_vm"])  # host_kvm
    # hyp's own copy is never reported
    assert not any(l.root == "pkvm_hyp_vcpu" for l in proof612.leaks)


# ---------------------------------------------------------------- a new crossing, through a patch

def boundary_patch(tree: Path) -> str:
    """One more host read in flush_hyp_vcpu, after its vsesr_el2 copy (a -p1 diff of hyp-main.c)."""
    old = (tree / HYP_MAIN).read_text().splitlines(keepends=True)
    at = next(i for i, l in enumerate(old) if re.search(r"hyp_vcpu->vcpu\.arch\.vsesr_el2\s*=", l))
    new = old[:at + 1] + [f"\thyp_vcpu->vcpu.arch.mp_state = host_vcpu->arch.mp_state; /* {MARK} */\n"] + \
        old[at + 1:]
    return "".join(difflib.unified_diff(old, new, f"a/{HYP_MAIN}", f"b/{HYP_MAIN}", n=3))


def write_boundary_patch(tree: Path) -> Path:
    """The patch at a stable path (rewritten only when it changes, so the build cache stays warm)."""
    from scopecheck.paths import cache_dir

    text = boundary_patch(tree)
    p = cache_dir("boundary") / "new-crossing-6.12.patch"
    if not p.is_file() or p.read_text() != text:
        p.write_text(text)
    return p


def test_a_new_crossing_fails_the_gate(k612, tmp_path):
    from build_cache import build

    patch = write_boundary_patch(k612.source_dir)
    mutant = build("6.12", patches=[patch])
    base = tmp_path / "pristine.json"
    r = run_cli("callgraph", "--query", QUERY, "--quiet", "-f", "json", "-o", str(base), str(k612.out),
                timeout=3600)
    assert r.returncode == 0, r.stderr
    r = run_cli("callgraph", "--query", QUERY, "--quiet", "-f", "json", "--fail-on-leak", "--baseline", str(base),
                str(mutant.out), timeout=3600)
    assert r.returncode == 1, r.stderr
    line = next(i for i, l in enumerate((mutant.source_dir / HYP_MAIN).read_text().splitlines(), 1) if MARK in l)
    new = [(l["function"], l["file"], l["line"], l["field"], l["access"], l["provenance"])
           for l in json.loads(r.stdout)["leaks"] if not l["baselined"]]
    assert new == [("flush_hyp_vcpu", HYP_MAIN, line, "arch.mp_state", "read", "host")]


# ---------------------------------------------------------------- Debian's 6.12 vmlinux, binary-only

def _prefix(field: str, want: str) -> bool:
    """``field`` (a machine access) lies in ``want`` (a source line's member: whole-struct copies)."""
    w = want.replace("[*]", "")
    return field == want or field.startswith(w + ".") or field.startswith(w + "[")


def _overlap(lay, path: str, leak: dict) -> bool:
    from scopecheck.layout import member

    m = member(lay, path.replace("[*]", ""))
    return m.offset < leak["offset"] + leak["bytes"] and leak["offset"] < m.offset + m.size


def test_debian_612_binary_only_judges_by_provenance():
    """A bare dbg vmlinux has no source: the binary door's provenance (host registers through
    kern_hyp_va, pkvm_hyp_vcpu.host_vcpu loads, resolved over the whole program) judges most accesses;
    the inventory lists flush_hyp_vcpu's host reads and sync_hyp_vcpu's host writes (inlined into
    handle___kvm_vcpu_run, attributed to the inlined function), each one on a line of Debian's
    hyp-main.c that reads (flush) or writes (sync) that host_vcpu member."""
    from build_cache import debian_source_tree
    from kernel_cache import debian_vmlinux

    from scopecheck.layout import load_layouts

    vm = debian_vmlinux("6.12")
    r = run_cli("callgraph", "--query", QUERY, "-f", "json", str(vm))
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["mode"] == "binary-only"
    t = d["stats"]["boundary"]["totals"]
    assert t["judged"] > t["unknown_provenance"], t
    want = expected_crossings(debian_source_tree("6.12").dir)
    lay = load_layouts(vm, ["kvm_vcpu"])["kvm_vcpu"]
    by_fn: dict = {}
    for l in d["leaks"]:
        assert l["provenance"] == "host" and l["origin"] == "binary", l
        by_fn.setdefault(l["function"], []).append(l)
    flush, sync = by_fn.get("flush_hyp_vcpu", []), by_fn.get("sync_hyp_vcpu", [])
    assert len(flush) >= 4 and len(sync) >= 4, sorted(by_fn)
    assert all(l["via"].endswith("inlined-in:handle___kvm_vcpu_run") for l in flush + sync)
    for l in flush + sync:
        assert l["file"].endswith(HYP_MAIN)
        d_ = "read" if l in flush else "write"
        assert l["access"] == d_, l
        # the bytes of a member that line copies (a union's members alias: vgic_v2 / vgic_v3)
        assert any(n == l["line"] and dd == d_ and (_prefix(l["field"], p) or _overlap(lay, p, l))
                   for n, dd, p in want), l
    assert {"arch.hcr_el2"} <= {l["field"] for l in flush} & {l["field"] for l in sync}
    print(f"\nDebian 6.12 binary-only: {t}; flush reads {len(flush)}, sync writes {len(sync)}")
    text = run_cli("callgraph", "--query", QUERY, str(vm)).stdout
    assert "every touched field is in scope" not in text
