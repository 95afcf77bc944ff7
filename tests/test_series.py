"""`scopecheck series` on Debian's linux-source-6.1 (pkvm-tiny), patch by patch.

The series are written at test time from the pristine tree (tests/series_patches.py):
harmless / add a vcpu_id leak / remove it, as format-patch files and as an mbox with a
cover letter in shuffled order; a second patch that does not apply; a patch that breaks
the build. All runs share the series work directory in the cache (one copy of the tree,
one build directory, seeded from the shared pkvm-tiny build): the base is that shared build,
analysed as it is; every built step is an incremental rebuild of what the patch touched; and
a step whose tree an earlier run analysed (same SRC, config, compiler, query and patches so
far) is reused, not built. A nonce per test session makes the leak series' trees new, so that
the first run builds them for real.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

import series_patches as sp
from build_cache import debian_source_tarball, debian_source_tree, pkvm_tiny_61, require_cross_compiler

LEAK_FIELD = "vcpu_id"
FN = "__kvm_vcpu_run"


def run_cli(*args, timeout=7200) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scopecheck", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def src61():
    require_cross_compiler()
    tree = debian_source_tree("6.1")
    pkvm_tiny_61()  # the shared build: the base, and the seed of the work directory
    return tree


@pytest.fixture(scope="module")
def tarball(src61):
    return debian_source_tarball("6.1")


@pytest.fixture(scope="module")
def nonce():
    return uuid.uuid4().hex[:12]


@pytest.fixture(scope="module")
def leak_patches(src61, tmp_path_factory, nonce):
    return sp.leak_series(src61.dir, tmp_path_factory.mktemp("leak-series"), nonce)


@pytest.fixture(scope="module")
def files_run(tarball, leak_patches, tmp_path_factory):
    out = tmp_path_factory.mktemp("series-out") / "report"
    r = run_cli("series", tarball, *leak_patches, "--out", out, "--quiet")  # the text table on stdout
    assert r.returncode == 0, r.stderr
    return json.loads((out / "series.json").read_text()), out, r


def _leak_line(patched_text: str) -> int:
    return next(i for i, l in enumerate(patched_text.splitlines(), 1) if "scopecheck-series: leak" in l)


def _fields(leaks):
    return {(l["function"], l["root"], l["field"]) for l in leaks}


def test_leak_series_from_patch_files(files_run, leak_patches, src61, nonce):
    doc, _, _ = files_run
    assert doc["schema_version"] == 1 and doc["kernel"].startswith("6.1")
    # the base is the shared build of SRC, analysed where it is: nothing built for it
    assert doc["base"]["reused"] == "build" and doc["base"]["compiled"] == [] and doc["base"]["build_seconds"] == 0
    assert any(n.startswith("base: the build cache's build of SRC (") and "/builds/pkvm-tiny-6.1" in n
               for n in doc["notes"])
    steps = doc["steps"]
    assert [s["status"] for s in steps] == ["ok", "ok", "ok"]
    assert [s["reused"] for s in steps] == [None, None, None]  # trees new to the cache (the nonce)
    assert [s["subject"] for s in steps] == ["KVM: arm64: nVHE: check HCR_EL2 before running",
                                             "KVM: arm64: nVHE: look at the vcpu id",
                                             "KVM: arm64: nVHE: do not look at the vcpu id"]
    assert all(s["files"] == [sp.SWITCH_C] for s in steps)
    # 1: harmless (hcr_el2 is in scope); 2: adds exactly the vcpu_id read; 3: removes it
    assert steps[0]["new_leaks"] == [] and steps[0]["removed_leaks"] == []
    assert _fields(steps[1]["new_leaks"]) == {(FN, "kvm_vcpu", LEAK_FIELD)}
    assert steps[1]["removed_leaks"] == []
    assert steps[2]["new_leaks"] == [] and _fields(steps[2]["removed_leaks"]) == {(FN, "kvm_vcpu", LEAK_FIELD)}
    leak = steps[1]["new_leaks"][0]
    states = sp._states(src61.dir, nonce)
    assert leak["file"] == sp.SWITCH_C and leak["line"] == _leak_line(states["leak"])
    assert steps[1]["leaks"] == doc["base"]["leaks"] + 1 == steps[2]["leaks"] + 1 == steps[0]["leaks"] + 1
    assert f"kvm_vcpu:{LEAK_FIELD}" in steps[1]["newly_touched"]
    assert f"kvm_vcpu:{LEAK_FIELD}" in steps[2]["no_longer_touched"]
    for s in steps:  # no patch changes a struct
        assert {k: v["change"] for k, v in s["size_change"].items()} == {"kvm_vcpu": 0, "kvm_cpu_context": 0}
        assert s["sizes"]["kvm_vcpu"] > 4000
    fr = doc["first_regression"]
    assert fr["step"] == 2 and fr["patch"] == leak_patches[1].name
    assert fr["subject"] == "KVM: arm64: nVHE: look at the vcpu id" and _fields(fr["leaks"]) == {
        (FN, "kvm_vcpu", LEAK_FIELD)}
    assert doc["failures"] == []
    narrow = steps[0]["narrowable"]
    assert narrow["available"] in (True, False) and (narrow["available"] or narrow["reason"])


def test_later_steps_are_incremental(files_run):
    """Each patch recompiles switch.c and nothing else, and only its translation unit is parsed again."""
    doc, _, _ = files_run
    for s in doc["steps"]:
        assert s["incremental"] is True
        # init/version-timestamp.o is compiled at every vmlinux link
        assert [c for c in s["compiled"] if c != "init/version-timestamp.o"] == \
            ["arch/arm64/kvm/hyp/nvhe/switch.nvhe.o"], s["compiled"]
    # the nonce made switch.c new in steps 1 and 2; step 3's switch.c is step 1's again: a cache hit.
    # Step 1 is the first analysis in the work directory after the base (analysed in the build
    # cache's tree): its other units come from the cache when an earlier series analysed the work
    # directory's tree, else they are parsed there once.
    steps = doc["steps"]
    hyp_tus = doc["base"]["tus_parsed"] + doc["base"]["tus_cached"]
    assert hyp_tus >= 15 and all(s["tus_parsed"] + s["tus_cached"] == hyp_tus for s in steps)
    assert steps[0]["tus_parsed"] in (1, hyp_tus)
    assert [s["tus_parsed"] for s in steps[1:]] == [1, 0]


def test_text_table_and_out_dir(files_run, tarball, leak_patches):
    doc, out, r = files_run
    rows = [l for l in r.stdout.splitlines() if re.match(r"^\d+\s", l)]  # one row per patch after the base
    assert len(rows) == 4 and "(base)" in rows[0]
    assert leak_patches[1].name in rows[2] and "look at the vcpu id" in rows[2]
    assert re.search(r"\sok\s", rows[2])
    assert "first regression: step 2: " + leak_patches[1].name in r.stdout
    html = (out / "series.html").read_text()
    assert "look at the vcpu id" in html and "first regression: step 2" in html
    assert (out / "series-trend.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = (out / "series-trend.svg").read_text()
    assert "base" in svg and "2: KVM: arm64: nVHE: look at" in svg
    from scopecheck.history import runs

    rows = runs(out / "history.sqlite")
    assert [r["label"].split(" ", 1)[0] for r in rows[-4:]] == ["base", "1/3", "2/3", "3/3"]
    assert [r["leaks"] for r in rows[-4:]] == [doc["base"]["leaks"]] + [s["leaks"] for s in doc["steps"]]


def test_leak_series_from_mbox_and_gate(files_run, leak_patches, tarball, tmp_path):
    """The same series posted as an mbox (cover letter, shuffled): the same trees, so every step's
    analysis is the one the patch-file run kept, nothing is built; --fail-on-new-leak exits 1."""
    box = sp.as_mbox(leak_patches, tmp_path / "series.mbox")
    r = run_cli("series", tarball, "--mbox", box, "--fail-on-new-leak", "-f", "json", "--quiet")
    assert r.returncode == 1, r.stderr
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("scopecheck: first regression: step 2: series.mbox#")
    assert "look at the vcpu id" in err[0] and f"{FN} -> kvm_vcpu.{LEAK_FIELD}" in err[0]
    doc = json.loads(r.stdout)
    files_doc = files_run[0]
    key = lambda d: [(s["subject"], s["status"], sorted(l["fingerprint"] for l in s["new_leaks"]),
                      sorted(l["fingerprint"] for l in s["removed_leaks"]), s["leaks"], s["sizes"],
                      s["fields_touched"], s["newly_touched"], s["no_longer_touched"], s["touched_bytes"],
                      s["leak_bytes"], s["narrowable"]) for s in d["steps"]]
    assert key(doc) == key(files_doc)
    assert doc["first_regression"]["subject"] == files_doc["first_regression"]["subject"]
    assert all(s["reused"] == "analysis" and s["compiled"] == [] and s["build_seconds"] == 0
               and s["incremental"] is None and s["tus_parsed"] == 0 for s in doc["steps"])


def test_a_step_after_reused_steps_builds_them_all(files_run, leak_patches, tarball, src61, nonce, tmp_path):
    """Patches 1 and 2 are reused (nothing built); 3' is built, and its build holds 1 and 2 as well:
    the vcpu_id read of patch 2 is still there (no leak removed), nothing new is added."""
    extra = uuid.uuid4().hex[:12]
    p3 = sp.after_leak(src61.dir, tmp_path / "0003-KVM-arm64-nvhe-comment-after-the-vcpu-id.patch", nonce, extra)
    r = run_cli("series", tarball, leak_patches[0], leak_patches[1], p3, "-f", "json", "--quiet")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    steps = doc["steps"]
    assert [s["reused"] for s in steps] == ["analysis", "analysis", None]
    assert steps[2]["incremental"] is True and steps[2]["tus_parsed"] == 1
    assert "arch/arm64/kvm/hyp/nvhe/switch.nvhe.o" in steps[2]["compiled"]
    assert steps[2]["new_leaks"] == [] and steps[2]["removed_leaks"] == []
    assert steps[2]["leaks"] == steps[1]["leaks"] == files_run[0]["steps"][1]["leaks"]
    assert f"kvm_vcpu:{LEAK_FIELD}" not in steps[2]["no_longer_touched"]


def test_second_patch_does_not_apply(files_run, tarball, leak_patches, src61, nonce, tmp_path):
    bad = sp.bad_apply(src61.dir, tmp_path / "0002-other-tree.patch", nonce)
    # --keep-going: recorded, and the next patch applies to the tree as it is (without it: see the build test)
    r = run_cli("series", tarball, leak_patches[0], bad, leak_patches[1], "-f", "json", "--quiet",
                "--keep-going")
    assert r.returncode == 2
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in r.stderr
    assert err[0].startswith("scopecheck: 1 step(s) failed; first: step 2: patch 0002-other-tree.patch 2/3:")
    assert f"first failing hunk: {sp.SWITCH_C} @@ -" in err[0]
    doc = json.loads(r.stdout)
    assert [s["status"] for s in doc["steps"]] == ["ok", "patch-failed", "ok"]
    # 1 and then 2 on top (the failed patch left the tree alone) are the patch-file run's trees
    assert [s["reused"] for s in doc["steps"]] == ["analysis", None, "analysis"]
    assert _fields(doc["steps"][2]["new_leaks"]) == {(FN, "kvm_vcpu", LEAK_FIELD)}
    assert doc["first_regression"]["step"] == 3
    assert doc["failures"][0]["step"] == 2 and "does not apply" in doc["failures"][0]["error"]


def test_patch_breaks_the_build(tarball, leak_patches, src61, tmp_path):
    brk = sp.breaks_build(src61.dir, tmp_path / "0001-break.patch")
    r = run_cli("series", tarball, brk, leak_patches[0], "--quiet")
    assert r.returncode == 2
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in r.stderr
    assert err[0].startswith("scopecheck: step 1/2: 0001-break.patch 1/1: KVM: arm64: nVHE: use an undeclared "
                             "variable: build fails:")
    assert "scopecheck_series_undeclared" in err[0] and "switch.c" in err[0]
    assert "build-failed" in r.stdout


def test_bad_input_is_one_line(tarball, tmp_path, leak_patches):
    cases = [
        (["series", tarball], "no patches"),
        (["series", tarball, tmp_path / "nope.patch"], "no such patch file"),
        (["series", tmp_path / "nope", *leak_patches], "no such file or directory"),
        (["series", tarball, "--range", "a..b"], "--range needs SRC to be a git repository"),
        (["series", tarball, leak_patches[0], "--range", "a..b"], "cannot be combined"),
        (["series", tarball, leak_patches[0], "--query", "no-such-query"], "no-such-query"),
    ]
    for args, want in cases:
        r = run_cli(*args, timeout=120)
        assert r.returncode == 2, (args, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and want in lines[0] and "Traceback" not in r.stderr, (args, r.stderr)
        assert r.stdout == ""


def test_kernel_build_mbox_names_the_failing_hunk(src61, leak_patches, nonce, tmp_path):
    """`kernel build --mbox`: the series is read in [PATCH n/m] order; a patch that does not apply names its hunk."""
    box = sp.as_mbox([leak_patches[1], leak_patches[2]], tmp_path / "half.mbox")  # 2/3 and 3/3 without 1/3
    r = run_cli("kernel", "build", src61.dir, "--out", tmp_path / "o", "--mbox", box, "-q", timeout=600)
    assert r.returncode == 2 and "incomplete: patch 1/3 is missing" in r.stderr
    bad = sp.as_mbox([sp.bad_apply(src61.dir, tmp_path / "bad.patch", nonce, 1, 1)], tmp_path / "bad.mbox")
    r = run_cli("kernel", "build", src61.dir, "--out", tmp_path / "o", "--mbox", bad, "-q", timeout=600)
    assert r.returncode == 2, r.stderr
    line = r.stderr.strip()
    assert "\n" not in line and line.startswith("scopecheck: patch bad.mbox-0001.patch 1/1: KVM: arm64: nVHE: "
                                                "a patch against another tree does not apply to")
    assert f"first failing hunk: {sp.SWITCH_C} @@ -" in line
    assert not (tmp_path / "o" / "vmlinux").exists()


def test_kept_analysis_round_trip_and_damage(tmp_path, monkeypatch):
    """A kept step analysis reads back equal (this run parsed nothing for it); a damaged one is
    removed and reads as absent, so that the step is built and analysed again."""
    monkeypatch.setenv("SCOPECHECK_CACHE", str(tmp_path / "cache"))
    from scopecheck import series as se

    snap = se.Snapshot(leaks={"f1": {"function": "f", "field": "vcpu_id"}}, leak_count=2,
                       footprint={"kvm_vcpu:vcpu_id": {"bytes": 4, "access": "read"}},
                       sizes={"kvm_vcpu": 7088}, touched_bytes=120, leak_bytes=4,
                       narrowable={"g (a.c)", "h (b.c)"}, narrow_note=None, tus_parsed=3, tus_cached=18,
                       history_row={"timestamp": "2020-01-01T00:00:00Z", "leaks": 2}, mode="source+binary")
    key = "a" * 40
    assert se.load_snapshot(key) is None
    se.save_snapshot(key, snap)
    back = se.load_snapshot(key)
    assert back.narrowable == snap.narrowable and back.leaks == snap.leaks and back.sizes == snap.sizes
    assert (back.tus_parsed, back.tus_cached) == (0, 0)
    assert back.history_row["leaks"] == 2 and back.history_row["timestamp"] != "2020-01-01T00:00:00Z"
    path = se._snapshot_path(key)
    path.write_text('{"step_cache_version": 1, "leaks": ')
    assert se.load_snapshot(key) is None and not path.exists()
    path.write_text('[1, 2]')
    assert se.load_snapshot(key) is None and not path.exists()
    # the key follows every patch applied so far, in order, and the query
    from scopecheck.kernels.patches import Patch
    from scopecheck.query import load_query

    a, b = Patch("a", "a", "diff a\n"), Patch("b", "b", "diff b\n")
    q = load_query("rfc-hyp-scope")
    keys = {se.step_key("w", q, [a]), se.step_key("w", q, [a, b]), se.step_key("w", q, [b, a]),
            se.step_key("w2", q, [a]), se.step_key("w", load_query("ctxt-only"), [a])}
    assert len(keys) == 5 and se.step_key("w", q, [a, b]) == se.step_key("w", q, [a, b])
