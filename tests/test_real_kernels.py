"""`scopecheck size` on Debian's real arm64 kernels must agree with pahole on the same file.

Expected values are pahole's, taken at run time, so the tests hold when Debian
updates its kernels.
"""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import run_cli
from scopecheck.binary import pahole
from scopecheck.layout import fields_at, load_layouts, member

pytestmark = [pytest.mark.kernel,
              pytest.mark.skipif(shutil.which("pahole") is None, reason="pahole (dwarves) not installed")]


def _size_json(path, *extra):
    r = run_cli("size", "--format", "json", "--no-cache", *extra, str(path))
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["schema_version"] == 1
    (t,) = doc["targets"]
    return t


@pytest.mark.parametrize("series", ["6.1", "6.12"])
def test_sizes_equal_pahole(series, vmlinux_61, vmlinux_612):
    path = vmlinux_61 if series == "6.1" else vmlinux_612
    t = _size_json(path, "--no-pahole")
    names = [s["name"] for s in t["structs"]]
    assert {"kvm_vcpu", "kvm_vcpu_arch", "kvm_cpu_context"} <= set(names)
    oracle = pahole.run(path, names)
    for s in t["structs"]:
        p = oracle[s["name"]]
        assert p is not None, f"pahole does not know {s['name']}"
        assert (s["size"], s["nr_members"], s["holes"], s["sum_holes"], s["padding"]) == \
               (p.size, p.nr_members, p.holes, p.sum_holes, p.padding), s["name"]
    if series == "6.12":
        # 6.12 keeps a whole kvm_vcpu inside struct pkvm_hyp_vcpu
        assert "pkvm_hyp_vcpu" in names
        phv = next(s for s in t["structs"] if s["name"] == "pkvm_hyp_vcpu")
        vcpu = next(s for s in t["structs"] if s["name"] == "kvm_vcpu")
        assert phv["size"] > vcpu["size"]
        assert any(m["path"] == "vcpu" and m["size"] == vcpu["size"] for m in phv["members"])
    assert t["summary"]["vcpu_hyp_state_present"] is False
    summ = t["summary"]
    # no vcpu_hyp_state: the RFC's fields are found loose in kvm_vcpu_arch and counted
    assert {"arch.hcr_el2", "arch.mdcr_el2", "arch.vsesr_el2", "arch.fault"} <= set(summ["rfc_loose_fields"])
    assert summ["reduced_scope"] == summ["kvm_cpu_context"] + sum(summ["rfc_loose_fields"].values())
    assert summ["reduced_scope"] < summ["kvm_vcpu"]


def test_cli_reports_pahole_agreement(vmlinux_61):
    r = run_cli("size", "--fail-on-mismatch", str(vmlinux_61))
    assert r.returncode == 0, r.stderr
    assert "sizes agree" in r.stdout
    assert "vcpu_hyp_state: not in this build" in r.stdout


def test_layout_paths_on_6_1(vmlinux_61):
    lay = load_layouts(vmlinux_61, ["kvm_vcpu", "kvm_cpu_context"])
    vcpu, ctxt = lay["kvm_vcpu"], lay["kvm_cpu_context"]
    arch_ctxt = member(vcpu, "arch.ctxt")
    assert arch_ctxt.size == ctxt.size
    pc = member(vcpu, "arch.ctxt.regs.pc")
    assert pc.size == 8
    assert fields_at(vcpu, pc.offset, 8) == ["arch.ctxt.regs.pc"]
    # an element of the sys_regs array is named with its index
    sr = member(vcpu, "arch.ctxt.sys_regs")
    assert fields_at(vcpu, sr.offset + 8 * 5, 8) == ["arch.ctxt.sys_regs[5]"]
    assert member(vcpu, "arch.ctxt.sys_regs[5]").offset == sr.offset + 40
    # the RFC's five hyp fields are loose in kvm_vcpu_arch on 6.1
    for f in ("arch.hcr_el2", "arch.mdcr_el2", "arch.vsesr_el2", "arch.fault"):
        m = member(vcpu, f)
        assert not (arch_ctxt.offset <= m.offset < arch_ctxt.offset + arch_ctxt.size)


def test_warm_cache_gives_identical_json(vmlinux_61, tmp_path):
    env = {"SCOPECHECK_CACHE": str(tmp_path)}
    a = run_cli("size", "--format", "json", str(vmlinux_61), env=env)
    b = run_cli("size", "--format", "json", str(vmlinux_61), env=env)
    assert a.returncode == b.returncode == 0
    assert a.stdout == b.stdout
    files = list((tmp_path / "layouts").glob("*.json"))
    assert len(files) == 1
    # a corrupted cache file is ignored and rewritten
    files[0].write_text("{ not json")
    c = run_cli("size", "--format", "json", str(vmlinux_61), env=env)
    assert c.returncode == 0 and c.stdout == a.stdout
    head, body = files[0].read_text().split("\n", 1)  # rewritten: checksum line, then the JSON
    assert head.startswith("sha256 ")
    json.loads(body)


def test_vmlinux_over_300_mb_within_memory_target(vmlinux_612):
    """Debian's 6.12 dbg vmlinux is ~350 MB: size and the binary-only proof stay well under 1 GB RSS."""
    import os
    import subprocess
    import sys

    assert vmlinux_612.stat().st_size > 300e6
    for args in (["size", "--no-cache", "--no-pahole"], ["callgraph", "--no-cache", "-f", "json"]):
        p = subprocess.Popen([sys.executable, "-m", "scopecheck", *args, str(vmlinux_612)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(p.pid, 0)  # this child's own peak RSS (KiB on Linux)
        err = p.stderr.read()
        p.stderr.close()
        assert os.waitstatus_to_exitcode(status) == 0, err
        assert err == b""
        assert usage.ru_maxrss < 1024 * 1024, f"{args[0]}: peak RSS {usage.ru_maxrss // 1024} MB"


@pytest.mark.parametrize("series", ["6.1", "6.12"])
def test_struct_kvm_layout_equals_pahole(series, vmlinux_61, vmlinux_612):
    """struct kvm (the boundary's host-owned kvm): found by scanning the DWARF's bytes for its name,
    where a misparse (bytes that decode as a struct named kvm) must not be taken for it."""
    from scopecheck.binary.elf import ElfImage
    from scopecheck.binary.types import read_layouts

    path = vmlinux_61 if series == "6.1" else vmlinux_612
    with ElfImage(path) as elf:
        lay = read_layouts(elf, ["kvm"])["kvm"]
    p = pahole.run(path, ["kvm"])["kvm"]
    assert lay is not None and (lay.size, len(lay.members)) == (p.size, p.nr_members)
    assert member(lay, "created_vcpus").size == 4
