"""``scopecheck kernel build``: cross-building pkvm-tiny from Debian's linux-source-6.1.

The pkvm-tiny build (~2-4 min on 2 cores) and the patched one are done once
into the shared cache (see build_cache.py); later runs take seconds.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import build_cache  # noqa: E402
from conftest import run_cli  # noqa: E402

from scopecheck.errors import ScopecheckError, ToolMissing  # noqa: E402
from scopecheck.kernels import build as kb  # noqa: E402
from scopecheck.kernels import kconfig as kc  # noqa: E402

pytestmark = [pytest.mark.kernel]

HYP_FILE = "arch/arm64/kvm/hyp/nvhe/switch.c"
INJECTED = "scopecheck_injected_leak"


@pytest.fixture(scope="session")
def tiny61() -> kb.BuiltKernel:
    return build_cache.pkvm_tiny_61()


@pytest.fixture(scope="session")
def src61() -> kb.SourceTree:
    return build_cache.debian_source_tree("6.1")


def _one_line_error(r, *words):
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("scopecheck: "), lines[0]
    assert "Traceback" not in r.stderr
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def _leak_patch(tree: Path, dest: Path) -> Path:
    """A real -p1 patch adding a hyp function that reads a vcpu register (an injected 'leak')."""
    old = (tree / HYP_FILE).read_text().splitlines(keepends=True)
    new = old + [
        "\n",
        "/* scopecheck test: injected by tests/test_kernel_build.py */\n",
        f"u64 {INJECTED}(struct kvm_vcpu *vcpu);\n",
        f"u64 {INJECTED}(struct kvm_vcpu *vcpu)\n",
        "{\n",
        "\treturn READ_ONCE(vcpu->arch.ctxt.regs.regs[0]);\n",
        "}\n",
    ]
    dest.write_text("".join(difflib.unified_diff(old, new, f"a/{HYP_FILE}", f"b/{HYP_FILE}")))
    return dest


def _bad_patch(tree: Path, dest: Path) -> Path:
    """A patch whose context is not in the file."""
    dest.write_text(
        f"--- a/{HYP_FILE}\n+++ b/{HYP_FILE}\n@@ -1,3 +1,4 @@\n"
        " this line is not in switch.c\n nor is this one\n+added\n and not this\n"
    )
    return dest


# --------------------------------------------------------------------------- the pkvm-tiny build


def test_artefacts_exist(tiny61):
    for name, path in tiny61.artefacts.items():
        assert path.is_file() and path.stat().st_size > 0, name
    assert tiny61.config_path.is_file() and tiny61.log.is_file()
    assert (tiny61.out / "source").resolve() == tiny61.source_dir.resolve()
    assert tiny61.kernel_version.startswith("6.1.")
    assert kb.load_build(tiny61.out) == tiny61


def test_vmlinux_and_image_are_arm64(tiny61):
    from elftools.elf.elffile import ELFFile

    for p in (tiny61.vmlinux, tiny61.kvm_nvhe_o):
        with open(p, "rb") as f:
            elf = ELFFile(f)
            assert elf["e_machine"] == "EM_AARCH64", p
            assert elf.elfclass == 64
    with open(tiny61.image, "rb") as f:
        head = f.read(64)
    assert head[0x38:0x3C] == b"ARM\x64"


def test_kvm_nvhe_symbols(tiny61):
    from elftools.elf.elffile import ELFFile

    with open(tiny61.kvm_nvhe_o, "rb") as f:
        names = [s.name for s in ELFFile(f).get_section_by_name(".symtab").iter_symbols() if s.name]
    nvhe = [n for n in names if n.startswith("__kvm_nvhe_")]
    assert len(nvhe) > 100
    assert "__kvm_nvhe___kvm_vcpu_run" in names


def test_compile_commands_cover_nvhe(tiny61):
    entries = json.loads(tiny61.compile_commands.read_text())
    files = {Path(e["file"]).as_posix() for e in entries}
    nvhe = {f for f in files if re.search(r"arch/arm64/kvm/hyp/nvhe/[^/]+\.c$", f)}
    assert any(f.endswith("hyp/nvhe/switch.c") for f in nvhe), sorted(nvhe)
    assert len(nvhe) >= 10
    switch = next(e for e in entries if e["file"].endswith("hyp/nvhe/switch.c"))
    assert "-D__KVM_NVHE_HYPERVISOR__" in switch["command"]
    assert Path(switch["directory"]) == tiny61.out


def test_config_options_stuck(tiny61):
    cfg = kb._parse_config(tiny61.config_path.read_text())
    for opt in ("CONFIG_ARM64", "CONFIG_KVM", "CONFIG_VIRTUALIZATION", "CONFIG_DEBUG_INFO",
                "CONFIG_DEBUG_INFO_DWARF5", "CONFIG_SERIAL_AMBA_PL011_CONSOLE", "CONFIG_BLK_DEV_INITRD",
                "CONFIG_RD_GZIP", "CONFIG_DEVTMPFS_MOUNT", "CONFIG_ARM_GIC_V3", "CONFIG_ARM_PSCI_FW",
                "CONFIG_SMP", "CONFIG_BINFMT_ELF", "CONFIG_BINFMT_SCRIPT", "CONFIG_PROC_FS", "CONFIG_SYSFS"):
        assert cfg.get(opt) == "y", opt
    assert cfg.get("CONFIG_DEBUG_INFO_REDUCED", "n") == "n"
    # every y the fragment asks for (BTF only when it was possible)
    frag = kb._parse_config(kb.fragment_text("pkvm-tiny", tiny61.kernel_version))
    for opt, want in frag.items():
        if opt in kb.BTF_OPTIONS and not tiny61.btf:
            continue
        if want == "y":
            assert cfg.get(opt) == "y", opt
    if kb.pahole_version() and kb.pahole_version() >= kb.PAHOLE_MIN_BTF_DWARF5:
        assert tiny61.btf, tiny61.notes


def test_dwarf5(tiny61):
    from elftools.elf.elffile import ELFFile

    with open(tiny61.kvm_nvhe_o, "rb") as f:
        cu = next(ELFFile(f).get_dwarf_info().iter_CUs())
        assert cu.header["version"] == 5


def _pahole_size(vmlinux: Path, struct: str) -> int:
    r = subprocess.run(["pahole", "-C", struct, str(vmlinux)], capture_output=True, text=True, timeout=300)
    # the struct's own summary is the last one at one tab; nested anonymous structs
    # (clang's DWARF names some that gcc's does not) print theirs deeper
    sizes = re.findall(r"^\t/\* size: (\d+),", r.stdout, re.M)
    assert sizes, (r.stdout[-500:], r.stderr[-500:])
    return int(sizes[-1])


def test_size_command_agrees_with_pahole(tiny61):
    if shutil.which("pahole") is None:
        pytest.skip("pahole not installed (Debian package dwarves)")
    r = run_cli("size", "--format", "json", "-s", "kvm_vcpu", "-s", "kvm_cpu_context", str(tiny61.vmlinux))
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["schema_version"] == 1
    structs = {s["name"]: s for t in data["targets"] for s in t["structs"]}
    for name in ("kvm_vcpu", "kvm_cpu_context"):
        assert structs[name]["size"] == _pahole_size(tiny61.vmlinux, name), name
        assert structs[name]["size"] > 0


def test_cached_build_is_reused(tiny61):
    t0 = time.monotonic()
    again = kb.cached_build(build_cache.debian_source_tarball("6.1"), "pkvm-tiny")
    assert again.out == tiny61.out
    assert time.monotonic() - t0 < 30


def test_build_key_depends_on_config_and_patches(tmp_path, src61):
    tarball = build_cache.debian_source_tarball("6.1")
    build_cache.require_cross_compiler()
    k1, _ = kb.build_key(tarball, "pkvm-tiny")
    k2, _ = kb.build_key(tarball, "defconfig")
    p = _leak_patch(src61.dir, tmp_path / "leak.patch")
    k3, _ = kb.build_key(tarball, "pkvm-tiny", [p])
    assert len({k1, k2, k3}) == 3
    assert kb.build_key(tarball, "pkvm-tiny")[0] == k1


# --------------------------------------------------------------------------- patches


def test_patch_applies_to_a_copy_only(tmp_path, src61):
    original = (src61.dir / HYP_FILE).read_text()
    patch = _leak_patch(src61.dir, tmp_path / "leak.patch")
    tree = kb.prepare_tree(src61, [patch])
    assert tree != src61.dir
    assert INJECTED in (tree / HYP_FILE).read_text()
    assert INJECTED not in (src61.dir / HYP_FILE).read_text()
    assert (src61.dir / HYP_FILE).read_text() == original
    assert not list(src61.dir.glob("arch/arm64/kvm/hyp/nvhe/*.orig"))
    assert not list(src61.dir.glob("arch/arm64/kvm/hyp/nvhe/*.rej"))
    assert kb.prepare_tree(src61, [patch]) == tree  # reused


@pytest.mark.slow
def test_patched_build_has_injected_function(tmp_path, src61, tiny61):
    patch = _leak_patch(src61.dir, tmp_path / "leak.patch")
    k = build_cache.pkvm_tiny_61([patch])
    assert k.out != tiny61.out and k.source_dir != src61.dir
    from elftools.elf.elffile import ELFFile

    with open(k.kvm_nvhe_o, "rb") as f:
        names = {s.name for s in ELFFile(f).get_section_by_name(".symtab").iter_symbols()}
    assert f"__kvm_nvhe_{INJECTED}" in names
    entries = json.loads(k.compile_commands.read_text())
    assert any(e["file"] == str(k.source_dir / HYP_FILE) for e in entries)
    assert INJECTED in (k.source_dir / HYP_FILE).read_text()
    assert INJECTED not in (src61.dir / HYP_FILE).read_text()


def test_without_debugedit_a_patched_build_says_why_it_is_not_seeded(tmp_path, src61, tiny61, monkeypatch):
    """The cache holds the build of SRC, debugedit is missing: nothing is copied, and the reason is
    one line for the build's notes and progress (the patched build is then made from nothing)."""
    from scopecheck.kernels.build import seed_from_cache

    bindir = tmp_path / "bin"  # every tool on PATH but debugedit
    bindir.mkdir()
    for d in os.environ["PATH"].split(os.pathsep):
        for exe in Path(d).glob("*") if Path(d).is_dir() else ():
            if exe.name != "debugedit" and not (bindir / exe.name).exists():
                (bindir / exe.name).symlink_to(exe)
    monkeypatch.setenv("PATH", str(bindir))
    assert shutil.which("debugedit") is None
    called = []
    why: list[str] = []
    out = tmp_path / "out"
    got = seed_from_cache(src61.given, src61, "pkvm-tiny", False, lambda: called.append(1) or tmp_path, out, None,
                          why)
    assert got is None and not out.exists() and called == []
    assert len(why) == 1 and why[0].startswith("built from nothing: the cache's build of SRC (")
    assert str(tiny61.out) in why[0] and "debugedit (Debian package debugedit) is not installed" in why[0]


def test_patched_build_is_an_incremental_copy_that_names_only_itself(tmp_path, src61, tiny61):
    """The patched build starts from a copy of the unpatched one; its DWARF names only its own tree and out."""
    from elftools.elf.elffile import ELFFile

    from scopecheck.kernels import seed

    patch = _leak_patch(src61.dir, tmp_path / "leak.patch")
    k = build_cache.pkvm_tiny_61([patch])
    assert shutil.which("debugedit"), "scripts/install-deps.sh installs debugedit"
    assert k.seeded_from == str(tiny61.out)
    note = next(n for n in k.notes if n.startswith("rebuilt incrementally"))
    recompiled = int(re.search(r"\((\d+) C file", note).group(1))
    assert 1 <= recompiled < 20, note  # the hyp file (and nothing like the whole kernel)
    assert seed.stale_paths(tiny61, [k.vmlinux, k.kvm_nvhe_o]) == []
    for f in (k.kvm_nvhe_o, k.vmlinux):
        with open(f, "rb") as fh:
            dwarf = ELFFile(fh).get_dwarf_info()
            tops = [cu.get_top_DIE() for cu in dwarf.iter_CUs()]
            comp_dirs = {t.attributes["DW_AT_comp_dir"].value.decode() for t in tops
                         if "DW_AT_comp_dir" in t.attributes}
            names = {t.attributes["DW_AT_name"].value.decode() for t in tops if "DW_AT_name" in t.attributes}
        assert comp_dirs == {str(k.out)}, (f, comp_dirs - {str(k.out)})
        assert str(k.source_dir / HYP_FILE) in names
        assert not any(n.startswith(str(src61.dir)) for n in names)


# --------------------------------------------------------------------------- errors: exit 2, one line


def test_bad_source_dir(tmp_path):
    (tmp_path / "Makefile").write_text("all:\n")
    r = run_cli("kernel", "build", str(tmp_path), "--out", str(tmp_path / "out"))
    _one_line_error(r, str(tmp_path), "not a Linux kernel source tree")
    r = run_cli("kernel", "build", str(tmp_path / "nope"), "--out", str(tmp_path / "out"))
    _one_line_error(r, "no such file or directory")
    assert not (tmp_path / "out").exists()


def test_missing_cross_compiler(tmp_path, src61):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for prog in ("make", "flex", "bison", "bc", "perl", "python3", "tar", "patch", "sh", "git"):
        path = shutil.which(prog)
        if path:
            os.symlink(path, bindir / prog)
    env = {"PATH": str(bindir)}
    r = run_cli("kernel", "build", str(src61.dir), "--out", str(tmp_path / "out"), env=env)
    _one_line_error(r, "aarch64-linux-gnu-gcc not found", "gcc-aarch64-linux-gnu")
    old = os.environ["PATH"]
    try:
        os.environ["PATH"] = str(bindir)
        with pytest.raises(ToolMissing) as e:
            kb.build_kernel(src61.dir, tmp_path / "out")
        assert e.value.program == "aarch64-linux-gnu-gcc"
    finally:
        os.environ["PATH"] = old


def test_missing_llvm(tmp_path, src61, monkeypatch):
    """--llvm on a PATH without clang (the build tools and gcc are there): one line, exit 2."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for prog in ("make", "flex", "bison", "bc", "perl", "python3", "tar", "patch", "sh", "git", kb.CROSS_GCC):
        path = shutil.which(prog)
        if path:
            os.symlink(path, bindir / prog)
    r = run_cli("kernel", "build", str(src61.dir), "--llvm", "--out", str(tmp_path / "out"),
                env={"PATH": str(bindir)})
    _one_line_error(r, "clang")
    assert not (tmp_path / "out" / kb.STAMP).exists()
    monkeypatch.setenv("PATH", str(bindir))
    with pytest.raises(ToolMissing, match="clang"):
        kb.build_kernel(src61.dir, tmp_path / "out", llvm=True)


def test_failing_patch(tmp_path, src61):
    build_cache.require_cross_compiler()
    patch = _bad_patch(src61.dir, tmp_path / "bad.patch")
    with pytest.raises(kb.PatchFailed, match="does not apply"):
        kb.prepare_tree(src61, [patch])
    before = set(kb.cache_dir("trees").iterdir())
    r = run_cli("kernel", "build", str(src61.dir), "--out", str(tmp_path / "out"), "--patch", str(patch))
    line = _one_line_error(r, "bad.patch", "does not apply")
    assert "FAILED" in line or "Hunk" in line
    assert set(kb.cache_dir("trees").iterdir()) == before  # nothing half-patched left behind
    assert "added" not in (src61.dir / HYP_FILE).read_text()
    with pytest.raises(kb.PatchFailed):
        kb.build_kernel(src61.dir, tmp_path / "out", patches=[patch])


def test_missing_patch_file(tmp_path, src61):
    build_cache.require_cross_compiler()
    r = run_cli("kernel", "build", str(src61.dir), "--out", str(tmp_path / "out"),
                "--patch", str(tmp_path / "nope.patch"))
    _one_line_error(r, "nope.patch", "no such patch file")


def test_out_inside_source_refused(src61):
    build_cache.require_cross_compiler()
    with pytest.raises(ScopecheckError, match="inside the source tree"):
        kb.build_kernel(src61.dir, src61.dir / "out")
    assert not (src61.dir / "out").exists()


def test_unknown_config(tmp_path, src61):
    build_cache.require_cross_compiler()
    r = run_cli("kernel", "build", str(src61.dir), "--out", str(tmp_path / "out"), "--config", "hugeconfig")
    _one_line_error(r, "hugeconfig", "pkvm-tiny")


# --------------------------------------------------------------------------- pure helpers


def test_first_error_prefers_compiler_error():
    lines = [
        "  CC      arch/arm64/kvm/hyp/nvhe/switch.nvhe.o",
        "make[4]: *** [scripts/Makefile.build:250: foo.o] Error 1",
        "/src/arch/arm64/kvm/hyp/nvhe/switch.c:12:5: error: 'x' undeclared (first use in this function)",
        "/src/arch/arm64/kvm/hyp/nvhe/hyp-main.c:3:1: error: second",
    ]
    assert kb.first_error(lines) == lines[2]
    assert kb.first_error(lines[:2]) == lines[1]
    assert kb.first_error(["  CC foo.o"]) is None


def test_unapplied_options_are_named():
    requested = kb._parse_config("CONFIG_KVM=y\n# CONFIG_DEBUG_INFO_REDUCED is not set\nCONFIG_FOO=m\n")
    final = kb._parse_config("CONFIG_DEBUG_INFO_REDUCED=y\nCONFIG_FOO=m\n")
    bad = kb._unapplied(requested, final)
    assert bad == ["CONFIG_KVM (wanted y, got not set)", "CONFIG_DEBUG_INFO_REDUCED (wanted not set, got y)"]


def test_version_sections_of_the_fragment():
    """`# scopecheck:since X.Y` sections apply to trees of that version and later (all when unknown)."""
    new, old, unknown = (kb.fragment_text("pkvm-tiny", v) for v in ("6.12.118", "6.1.192", ""))
    assert "CONFIG_JUMP_LABEL=y" in new and "CONFIG_JUMP_LABEL=y" in unknown
    assert "JUMP_LABEL" not in old and "CONFIG_KVM=y" in old
    assert not any("scopecheck:since" in t or "scopecheck:end" in t for t in (new, old, unknown))
    # the markers themselves never reach kconfig
    assert "JUMP_LABEL" in [i.name for i in kc.intents_from_fragment(new)]


def test_btf_section_can_be_stripped():
    text = kb.fragment_text("pkvm-tiny")
    assert "CONFIG_DEBUG_INFO_BTF=y" in text
    stripped = kb._strip_btf(text)
    assert "CONFIG_DEBUG_INFO_BTF=y" not in stripped and "CONFIG_BPF_SYSCALL" not in stripped
    assert "CONFIG_KVM=y" in stripped


def test_failed_step_quotes_first_error(tmp_path):
    log = tmp_path / "build.log"
    run = kb._Runner(log, dict(os.environ), None)
    script = ("echo '  CC      arch/arm64/kvm/hyp/nvhe/switch.nvhe.o'; "
              "echo '/src/arch/arm64/kvm/hyp/nvhe/switch.c:7:3: error: expected ; before }'; "
              "echo 'make[1]: *** [Makefile:1] Error 1'; exit 2")
    with pytest.raises(kb.BuildFailed) as e:
        run.run("build", ["sh", "-c", script], tmp_path)
    run.close()
    msg = str(e.value)
    assert "\n" not in msg
    assert "switch.c:7:3: error: expected ; before }" in msg and str(log) in msg
    assert "Error 1" in log.read_text()


def test_defconfig_config_step(tmp_path, src61):
    """--config defconfig: make defconfig + the debug overlay; the key options stick (no full build)."""
    build_cache.require_cross_compiler()
    make_vars, _ = kb._toolchain(False)
    out = tmp_path / "out"
    out.mkdir()
    run = kb._Runner(out / kb.LOG, dict(os.environ, LC_ALL="C"), None)
    try:
        kb._configure(run, src61.dir, out, ["make", "-C", str(src61.dir), f"O={out}", *make_vars],
                      "defconfig", None, btf=True)
    except kb._NoBTF:
        pass
    finally:
        run.close()
    cfg = kb._parse_config((out / ".config").read_text())
    for opt in ("CONFIG_KVM", "CONFIG_DEBUG_INFO_DWARF5", "CONFIG_ARM64", "CONFIG_PCI"):
        assert cfg.get(opt) == "y", opt
    assert cfg.get("CONFIG_DEBUG_INFO_REDUCED", "n") == "n"


# --------------------------------------------------------------------------- clang (--llvm) and 6.12 from source
#
# One build per series and compiler, shared through the cache with every other test.


@pytest.fixture(scope="session")
def tiny61_llvm() -> kb.BuiltKernel:
    return build_cache.build("6.1", llvm=True)


@pytest.fixture(scope="session")
def tiny612_llvm() -> kb.BuiltKernel:
    return build_cache.build("6.12", llvm=True)


@pytest.fixture(scope="session")
def tiny612() -> kb.BuiltKernel:
    return build_cache.build("6.12")


LLVM_BUILDS = ["tiny61_llvm", "tiny612_llvm"]


def _producer_and_version(obj: Path) -> tuple[str, int]:
    from elftools.elf.elffile import ELFFile

    with open(obj, "rb") as f:
        cu = next(ELFFile(f).get_dwarf_info().iter_CUs())
        producer = cu.get_top_DIE().attributes["DW_AT_producer"].value
        return producer.decode() if isinstance(producer, bytes) else str(producer), cu.header["version"]


@pytest.mark.parametrize("name", LLVM_BUILDS)
def test_llvm_build_is_clang_dwarf5(name, request):
    k = request.getfixturevalue(name)
    assert k.llvm and "clang" in k.toolchain
    producer, version = _producer_and_version(k.kvm_nvhe_o)
    assert "clang" in producer and version == 5
    assert k.kconfig["debug_info"] == "DWARF 5"
    cfg = kb._parse_config(k.config_path.read_text())
    assert cfg["CONFIG_CC_IS_CLANG"] == "y" and cfg["CONFIG_LD_IS_LLD"] == "y" and cfg["CONFIG_KVM"] == "y"


@pytest.mark.parametrize("name", LLVM_BUILDS)
def test_llvm_size_agrees_with_pahole(name, request):
    if shutil.which("pahole") is None:
        pytest.skip("pahole not installed (Debian package dwarves)")
    k = request.getfixturevalue(name)
    r = run_cli("size", "--format", "json", "-s", "kvm_vcpu", "-s", "kvm_cpu_context", str(k.vmlinux))
    assert r.returncode == 0, r.stderr
    structs = {s["name"]: s for t in json.loads(r.stdout)["targets"] for s in t["structs"]}
    for name_ in ("kvm_vcpu", "kvm_cpu_context"):
        assert structs[name_]["size"] == _pahole_size(k.vmlinux, name_) > 0, name_


def _callgraph(out: Path, query: str) -> dict:
    r = run_cli("callgraph", str(out), "--query", query, "--format", "json", "--quiet", timeout=1800)
    assert r.returncode in (0, 1), r.stderr
    return json.loads(r.stdout)


@pytest.mark.parametrize("name", LLVM_BUILDS)
def test_llvm_callgraph_reads_clang_dwarf5(name, request):
    """clang's DWARF 5 (strx/addrx/rnglistx forms): the proof finds the same kind of evidence as with gcc."""
    k = request.getfixturevalue(name)
    d = _callgraph(k.out, "rfc-hyp-scope")
    assert d["schema_version"] >= 1 and d["mode"] == "source+binary"
    assert any(e["root"] == "kvm_vcpu" for e in d["footprint"]), "no kvm_vcpu accesses seen in clang's DWARF"
    assert not d["diagnostics"], d["diagnostics"][:3]
    fields = {l["field"] for l in d["leaks"] if l.get("kind") == "field"}
    assert len(fields) >= 5, fields
    assert not any(f.startswith("arch.ctxt") for f in fields)


@pytest.mark.parametrize("name", LLVM_BUILDS)
def test_llvm_binary_door_reads_clang_units(name, request):
    """clang writes no .debug_aranges for C units: the binary door still finds the hyp's C functions
    in DWARF and follows their vcpu pointers (it once saw nothing and passed binary-only)."""
    k = request.getfixturevalue(name)
    r = run_cli("callgraph", str(k.vmlinux), "--binary-only", "--format", "json", "--quiet", timeout=600)
    assert r.returncode in (0, 1), r.stderr
    d = json.loads(r.stdout)
    assert d["mode"] == "binary-only"
    assert d["stats"]["binary"]["seeds"] > 50, d["stats"]["binary"]
    assert d["evidence"]["counts"]["binary_only"] > 100, d["evidence"]["counts"]
    assert {e["root"] for e in d["footprint"]} >= {"kvm_vcpu", "kvm_cpu_context"}
    files = {l["file"] for l in d["leaks"]}
    assert any(f and f.endswith(".c") for f in files), sorted(files)[:5]  # C code, from the line table
    full = _callgraph(k.out, "rfc-hyp-scope")
    assert full["evidence"]["counts"]["explained"] > 50, full["evidence"]["counts"]


def test_612_from_source_callgraph(tiny612):
    """6.12 built from Debian's linux-source-6.12: pkvm_hyp_vcpu and the RFC scope on a real source build."""
    assert tiny612.kernel_version.startswith("6.12")
    assert kb._parse_config(tiny612.config_path.read_text())["CONFIG_DEBUG_INFO_DWARF5"] == "y"
    hyp = _callgraph(tiny612.out, "pkvm-hyp-vcpu")
    assert hyp["mode"] == "source+binary" and hyp["query"]["id"] == "pkvm-hyp-vcpu"
    paths = {e["path"] for e in hyp["footprint"] if e["root"] == "pkvm_hyp_vcpu"}
    assert "host_vcpu" in paths, sorted(paths)[:20]
    assert all(l["query"] == "pkvm-hyp-vcpu" for l in hyp["leaks"])
    rfc = _callgraph(tiny612.out, "rfc-hyp-scope")
    assert rfc["mode"] == "source+binary" and rfc["leaks"]
    assert {e["root"] for e in rfc["footprint"]} >= {"kvm_vcpu", "kvm_cpu_context"}


# Every pkvm-tiny the suite builds boots in protected mode (6.1 with gcc is booted in test_boot.py).
# 6.12 needs CONFIG_JUMP_LABEL (see the pkvm-tiny fragment): without it hyp reads a static key from
# the kernel's .bss and takes an EL2 data abort at the first host hypercall.
@pytest.mark.parametrize("name", ["tiny61_llvm", "tiny612", "tiny612_llvm"])
def test_boots_protected(name, request):
    if shutil.which("qemu-system-aarch64") is None:
        pytest.skip("qemu-system-aarch64 not installed (Debian package qemu-system-arm)")
    from test_boot import CHECKS, _json, boot_cli

    k = request.getfixturevalue(name)
    proc = boot_cli(str(k.image), "--vmlinux", str(k.vmlinux), "--format", "json", "-q", "--timeout", "120")
    rep = _json(proc)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert rep["passed"] is True and [c["name"] for c in rep["checks"]] == CHECKS
    assert {c["name"]: c for c in rep["checks"]}["btf-sizes-match-dwarf"]["status"] == "pass"


def test_build_json_records_kconfig_choices(tiny61):
    r = run_cli("kernel", "build", str(build_cache.debian_source_tarball("6.1")), "--format", "json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["schema_version"] == 1 and d["kconfig"]["debug_info"] == "DWARF 5"
    assert "debug info: DWARF 5" in d["kconfig"]["choices"]
    assert "scopecheck: debug info: DWARF 5" in r.stderr.splitlines()


def test_ccache_masquerade_keeps_the_compiler_name(tmp_path, monkeypatch):
    """ccache runs as `aarch64-linux-gnu-gcc` from the front of PATH: same command lines, second compile a hit."""
    if shutil.which("ccache") is None:
        pytest.skip("ccache not installed (Debian package ccache)")
    build_cache.require_cross_compiler()
    monkeypatch.setenv("SCOPECHECK_CACHE", str(tmp_path / "cache"))
    d = kb._ccache_masquerade(False)
    assert Path(os.readlink(d / kb.CROSS_GCC)) == Path(shutil.which("ccache")).resolve()
    (tmp_path / "hyp.c").write_text("int hyp_answer(void) { return 42; }\n")
    env = dict(os.environ, PATH=f"{d}{os.pathsep}{os.environ['PATH']}", CCACHE_DIR=str(tmp_path / "ccache"))
    for _ in range(2):
        subprocess.run([kb.CROSS_GCC, "-g", "-O2", "-c", "hyp.c", "-o", "hyp.o"], cwd=tmp_path, env=env, check=True)
    stats = subprocess.run(["ccache", "--print-stats"], env=env, capture_output=True, text=True).stdout
    hits = dict(line.split("\t", 1) for line in stats.splitlines() if "\t" in line)
    assert int(hits.get("direct_cache_hit", 0)) + int(hits.get("preprocessed_cache_hit", 0)) == 1, stats
    assert int(hits.get("cache_miss", 0)) == 1, stats
