"""The Kconfig resolver (scopecheck.kernels.kconfig) on small synthetic Kconfig trees and on 6.1 / 6.12.

The synthetic trees mimic what older kernels do (5.10: KVM depends on NET,
DEBUG_INFO is a plain option, no DWARF 5; 5.15: DWARF 5 excludes BTF; 6.1:
the DWARF choice selects DEBUG_INFO, BTF with DWARF 5 needs pahole >= 1.21),
so the resolver is tested against those shapes without their trees. Each
resolution is checked against the kernel's own ``conf --olddefconfig`` (the
binary built in the cached 6.1 build), not only against the resolver's own
prediction.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from scopecheck.kernels import build as kb  # noqa: E402
from scopecheck.kernels import kconfig as kc  # noqa: E402

COMMON = """\
mainmenu "synthetic"
config ARM64
\tdef_bool y
config EXPERT
\tbool "expert"
config TTY
\tbool "tty"
config SERIAL_AMBA_PL011
\tbool "pl011"
\tdepends on TTY
config SERIAL_AMBA_PL011_CONSOLE
\tbool "pl011 console"
\tdepends on SERIAL_AMBA_PL011
config BLK_DEV_INITRD
\tbool "initrd"
config DEBUG_KERNEL
\tbool "Kernel debugging"
config BPF_SYSCALL
\tbool "bpf()"
config DEBUG_INFO_REDUCED
\tbool "reduced"
\tdepends on DEBUG_INFO
config DEBUG_INFO_SPLIT
\tbool "split"
\tdepends on DEBUG_INFO
"""

#: 5.10: KVM needs NET; DEBUG_INFO is an option of its own; DWARF 4 only
TREE_510 = COMMON + """\
config NET
\tbool "Networking support"
menuconfig VIRTUALIZATION
\tbool "Virtualization"
if VIRTUALIZATION
config KVM
\tbool "Kernel-based Virtual Machine (KVM) support"
\tdepends on NET
endif
config DEBUG_INFO
\tbool "Compile the kernel with debug info"
\tdepends on DEBUG_KERNEL
config DEBUG_INFO_DWARF4
\tbool "Generate dwarf4 debuginfo"
\tdepends on DEBUG_INFO
config DEBUG_INFO_BTF
\tbool "Generate BTF typeinfo"
\tdepends on DEBUG_INFO && BPF_SYSCALL
"""

#: 5.15: a DWARF-version choice under DEBUG_INFO, and DWARF 5 excludes BTF
TREE_515 = COMMON + """\
menuconfig VIRTUALIZATION
\tbool "Virtualization"
config KVM
\tbool "KVM"
\tdepends on VIRTUALIZATION
config DEBUG_INFO
\tbool "Compile the kernel with debug info"
\tdepends on DEBUG_KERNEL
choice
\tprompt "DWARF version"
\tdepends on DEBUG_INFO
\tdefault DEBUG_INFO_DWARF_TOOLCHAIN_DEFAULT
config DEBUG_INFO_DWARF_TOOLCHAIN_DEFAULT
\tbool "Rely on the toolchain's implicit default DWARF version"
config DEBUG_INFO_DWARF4
\tbool "Generate DWARF Version 4 debuginfo"
config DEBUG_INFO_DWARF5
\tbool "Generate DWARF Version 5 debuginfo"
\tdepends on !DEBUG_INFO_BTF
endchoice
config DEBUG_INFO_BTF
\tbool "Generate BTF typeinfo"
\tdepends on DEBUG_INFO && BPF_SYSCALL
"""


def tree_61(pahole: int = 124, leb128: str = "y") -> str:
    """6.1: the debug-info choice selects DEBUG_INFO; BTF with DWARF 5 needs pahole >= 1.21 (from $(shell))."""
    return COMMON + f"""\
config PAHOLE_VERSION
\tint
\tdefault $(shell,echo {pahole})
config AS_HAS_NON_CONST_LEB128
\tdef_bool {leb128}
menuconfig VIRTUALIZATION
\tbool "Virtualization"
config KVM
\tbool "KVM"
\tdepends on VIRTUALIZATION
config DEBUG_INFO
\tbool
choice
\tprompt "Debug information"
\tdepends on DEBUG_KERNEL
config DEBUG_INFO_NONE
\tbool "Disable debug information"
config DEBUG_INFO_DWARF_TOOLCHAIN_DEFAULT
\tbool "Rely on the toolchain's implicit default DWARF version"
\tselect DEBUG_INFO
config DEBUG_INFO_DWARF4
\tbool "Generate DWARF Version 4 debuginfo"
\tselect DEBUG_INFO
config DEBUG_INFO_DWARF5
\tbool "Generate DWARF Version 5 debuginfo"
\tselect DEBUG_INFO
\tdepends on AS_HAS_NON_CONST_LEB128
endchoice
config DEBUG_INFO_BTF
\tbool "Generate BTF typeinfo"
\tdepends on DEBUG_INFO && BPF_SYSCALL
\tdepends on !DEBUG_INFO_DWARF5 || PAHOLE_VERSION >= 121
"""


@pytest.fixture(scope="module")
def conf_binary() -> Path:
    """The kernel's own scripts/kconfig/conf (from the cached 6.1 build) to check the resolver against."""
    from build_cache import pkvm_tiny_61

    conf = Path(pkvm_tiny_61().out) / "scripts/kconfig/conf"
    if not conf.is_file():
        pytest.skip("the cached 6.1 build has no scripts/kconfig/conf")
    return conf


def _tree(tmp_path: Path, text: str) -> Path:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "Kconfig").write_text(text)
    return tree


def _conf(conf: Path, tree: Path, config: Path, mode: str) -> None:
    env = dict(os.environ, srctree=str(tree), KCONFIG_CONFIG=str(config), ARCH="arm64", SRCARCH="arm64")
    subprocess.run([str(conf), f"--{mode}", "Kconfig"], cwd=tree, env=env, check=True, capture_output=True,
                   timeout=60)


def _resolve(tmp_path: Path, text: str, conf: Path, btf: bool = True, fragment: str | None = None,
             debug: str = "prefer-dwarf5", base_extra: str = ""):
    """allnoconfig as the base (like tinyconfig), the resolver, then the real conf --olddefconfig."""
    tree = _tree(tmp_path, text)
    base = tmp_path / "base.config"
    _conf(conf, tree, base, "allnoconfig")
    if base_extra:
        base.write_text(base.read_text() + base_extra)
        _conf(conf, tree, base, "olddefconfig")
    kconf = kc.load_kconfig(tree, {"srctree": str(tree)})
    intents = kc.intents_from_fragment(fragment if fragment is not None else kb.fragment_text("pkvm-tiny"))
    res = kc.resolve(kconf, base, intents, btf=btf, debug=debug, btf_unavailable="pahole too old")
    final = tmp_path / "final.config"
    final.write_text(base.read_text() + res.fragment_text())
    _conf(conf, tree, final, "olddefconfig")
    cfg = kb._parse_config(final.read_text())
    assert kc.verify(res, cfg) == [], "the resolver's prediction differs from conf --olddefconfig"
    return res, cfg


# --------------------------------------------------------------------------- synthetic trees


def test_510_kvm_needs_net_and_dwarf4(tmp_path, conf_binary):
    res, cfg = _resolve(tmp_path, TREE_510, conf_binary)
    assert res.choices[0] == "debug info: DWARF 4 (this tree has no DWARF 5 option)"
    assert res.debug_info == "DWARF 4" and res.btf
    assert res.added["NET"] == "y (needed by CONFIG_KVM)"
    assert "added CONFIG_NET=y (needed by CONFIG_KVM)" in res.choices
    for opt in ("KVM", "NET", "DEBUG_INFO", "DEBUG_INFO_DWARF4", "DEBUG_INFO_BTF", "SERIAL_AMBA_PL011_CONSOLE"):
        assert cfg[f"CONFIG_{opt}"] == "y", opt
    # options the fragment asks for that this tree does not have are named, not fatal
    assert any("CONFIG_DEVTMPFS_MOUNT (not in this tree)" in d for d in res.dropped)


def test_515_dwarf5_excludes_btf(tmp_path, conf_binary):
    res, cfg = _resolve(tmp_path, TREE_515, conf_binary)
    assert res.choices[0].startswith("debug info: DWARF 4 (DWARF 5 excludes BTF in this tree")
    assert cfg["CONFIG_DEBUG_INFO_DWARF4"] == "y" and cfg["CONFIG_DEBUG_INFO_BTF"] == "y"
    assert cfg.get("CONFIG_DEBUG_INFO_DWARF5", "n") == "n"


def test_515_without_btf_takes_dwarf5(tmp_path, conf_binary):
    res, cfg = _resolve(tmp_path, TREE_515, conf_binary, btf=False)
    assert res.choices[0] == "debug info: DWARF 5"
    assert "BTF: no (pahole too old)" in res.choices
    assert cfg["CONFIG_DEBUG_INFO_DWARF5"] == "y" and cfg.get("CONFIG_DEBUG_INFO_BTF", "n") == "n"


def test_61_old_pahole_prefers_btf_with_dwarf4(tmp_path, conf_binary):
    res, cfg = _resolve(tmp_path, tree_61(pahole=120), conf_binary)
    assert res.choices[0].startswith("debug info: DWARF 4 (DWARF 5 excludes BTF in this tree")
    assert "PAHOLE_VERSION >= 121" in res.choices[0]
    assert cfg["CONFIG_DEBUG_INFO"] == "y" and cfg["CONFIG_DEBUG_INFO_BTF"] == "y"


def test_61_new_pahole_dwarf5_and_btf(tmp_path, conf_binary):
    res, cfg = _resolve(tmp_path, tree_61(pahole=124), conf_binary)
    assert res.choices[:2] == ["debug info: DWARF 5", "BTF: yes"]
    assert cfg["CONFIG_DEBUG_INFO_DWARF5"] == "y" and cfg["CONFIG_DEBUG_INFO_BTF"] == "y"
    assert cfg["CONFIG_DEBUG_INFO_NONE"] == "n"


def test_toolchain_without_dwarf5(tmp_path, conf_binary):
    """An assembler check ($(as-instr ...) in real trees) that fails: DWARF 4, saying why."""
    res, cfg = _resolve(tmp_path, tree_61(leb128="n"), conf_binary)
    assert res.choices[0].startswith("debug info: DWARF 4 (DWARF 5 not possible: ")
    assert "AS_HAS_NON_CONST_LEB128" in res.choices[0]
    assert cfg["CONFIG_DEBUG_INFO_DWARF4"] == "y"


def test_file_config_keeps_its_dwarf4_and_drops_reduced(tmp_path, conf_binary):
    """--config FILE: its DWARF version is kept; only what the analysis needs (KVM, full debug info) is added."""
    base = ("CONFIG_DEBUG_KERNEL=y\nCONFIG_DEBUG_INFO_DWARF4=y\nCONFIG_DEBUG_INFO_REDUCED=y\n"
            "CONFIG_TTY=y\n")
    res, cfg = _resolve(tmp_path, tree_61(), conf_binary, fragment=kb.DEBUG_OVERLAY, debug="any",
                        base_extra=base)
    assert res.choices[0] == "debug info: DWARF 4 (as the config has it)"
    assert cfg["CONFIG_DEBUG_INFO_DWARF4"] == "y" and cfg["CONFIG_KVM"] == "y"
    assert cfg.get("CONFIG_DEBUG_INFO_REDUCED", "n") == "n"
    assert cfg["CONFIG_TTY"] == "y"  # the FILE's other choices are left alone
    assert cfg.get("CONFIG_SERIAL_AMBA_PL011", "n") == "n"


def test_unmet_required_option_is_named(tmp_path):
    text = TREE_510.replace("\tdepends on NET\n", "\tdepends on NET && HAVE_KVM\n") + "config HAVE_KVM\n\tbool\n"
    tree = _tree(tmp_path, text)
    kconf = kc.load_kconfig(tree, {"srctree": str(tree)})
    with pytest.raises(kc.Unresolvable) as e:
        kc.resolve(kconf, None, kc.intents_from_fragment(kb.fragment_text("pkvm-tiny")))
    assert "CONFIG_KVM" in e.value.missing
    assert "HAVE_KVM" in str(e.value) and "\n" not in str(e.value)


def test_kconfig_syntax_error_is_one_line(tmp_path):
    tree = _tree(tmp_path, "config FOO\n\tbool \"x\n\tfrobnicate\n")
    with pytest.raises(kc.KconfigFailed) as e:
        kc.load_kconfig(tree, {"srctree": str(tree)})
    assert "\n" not in str(e.value) and "Kconfig" in str(e.value)


def test_fragment_sections():
    by_name = {i.name: i for i in kc.intents_from_fragment(kb.fragment_text("pkvm-tiny"))}
    assert by_name["KVM"].section == "kvm" and by_name["KVM"].required
    assert by_name["SERIAL_AMBA_PL011_CONSOLE"].section == "console" and by_name["SERIAL_AMBA_PL011_CONSOLE"].required
    assert by_name["DEBUG_INFO_BTF"].section == "btf" and not by_name["DEBUG_INFO_BTF"].required
    assert by_name["DEBUG_INFO_DWARF5"].section == "debug info"
    assert not by_name["EXPERT"].required


# --------------------------------------------------------------------------- real trees (6.1, 6.12)


_CONFIGURED: dict = {}


def _configured(tmp_path_factory, series: str, llvm: bool) -> tuple[dict, dict]:
    """:func:`_configure_only` of pkvm-tiny, once per session for each tree and compiler (two tests read it)."""
    if (series, llvm) not in _CONFIGURED:
        _CONFIGURED[series, llvm] = _configure_only(tmp_path_factory.mktemp("configure"), series, llvm)
    return _CONFIGURED[series, llvm]


def _configure_only(tmp_path: Path, series: str, llvm: bool, config: str = "pkvm-tiny") -> tuple[dict, dict]:
    """kernel build's config stage alone (tinyconfig, the resolver, merge, olddefconfig) in a fresh O=."""
    import build_cache

    if llvm:
        try:
            kb._toolchain(True)
        except Exception as e:  # ToolMissing
            pytest.skip(str(e))
    else:
        build_cache.require_cross_compiler()
    tree = build_cache.debian_source_tree(series).dir
    make_vars, _ = kb._toolchain(llvm)
    out = tmp_path / f"out-{series}-{'llvm' if llvm else 'gcc'}"
    out.mkdir()
    env = dict(os.environ, LC_ALL="C")
    if shutil.which("ccache"):  # as kernel build runs it: compilers (host ones too) through ccache
        env["PATH"] = f"{kb._ccache_masquerade(llvm)}{os.pathsep}{env['PATH']}"
    run = kb._Runner(out / kb.LOG, env, None)
    try:
        rec = kb._configure(run, tree, out, ["make", "-C", str(tree), f"O={out}", *make_vars], config, None,
                            btf=True)
    finally:
        run.close()
    return rec, kb._parse_config((out / ".config").read_text())


@pytest.mark.kernel
@pytest.mark.parametrize("series,llvm", [("6.1", False), ("6.12", False), ("6.12", True)])
def test_pkvm_tiny_resolution_on_debian_trees(tmp_path_factory, series, llvm):
    rec, cfg = _configured(tmp_path_factory, series, llvm)
    assert rec["olddefconfig_disagrees"] == [], "the resolver predicted what olddefconfig did"
    assert rec["debug_info"] == "DWARF 5" and rec["btf"] is True, rec["choices"]
    assert rec["choices"][:2] == ["debug info: DWARF 5", "BTF: yes"]
    for opt in ("KVM", "DEBUG_INFO", "DEBUG_INFO_DWARF5", "DEBUG_INFO_BTF", "SERIAL_AMBA_PL011_CONSOLE",
                "BLK_DEV_INITRD", "DEVTMPFS_MOUNT"):
        assert cfg[f"CONFIG_{opt}"] == "y", opt
    assert cfg.get("CONFIG_CC_IS_CLANG", "n") == ("y" if llvm else "n")


@pytest.mark.kernel
def test_61_resolution_reproduces_the_cached_build(tmp_path_factory):
    """The resolver changes nothing where scopecheck's fragment already stuck: same .config as the cached build."""
    import build_cache

    k = build_cache.pkvm_tiny_61()
    _, cfg = _configured(tmp_path_factory, "6.1", False)
    cached = kb._parse_config(Path(k.config_path).read_text())
    diff = {o: (cached.get(o), cfg.get(o)) for o in set(cached) | set(cfg)
            if cached.get(o, "n") != cfg.get(o, "n") and o != "CONFIG_CC_VERSION_TEXT"}
    assert diff == {}


@pytest.fixture(scope="module")
def kconf61():
    import build_cache

    build_cache.require_cross_compiler()
    tree = build_cache.debian_source_tree("6.1").dir
    make_vars, _ = kb._toolchain(False)
    return tree, make_vars, kc.load_kconfig(tree, kc.kbuild_env(tree, make_vars))


def _olddefconfig(tree: Path, make_vars, out: Path, text: str) -> dict:
    out.mkdir(exist_ok=True)
    (out / ".config").write_text(text)
    subprocess.run(["make", "-s", "-C", str(tree), f"O={out}", *make_vars, "olddefconfig"], check=True,
                   capture_output=True, timeout=900)
    return kb._parse_config((out / ".config").read_text())


@pytest.mark.kernel
def test_61_file_with_kvm_removed_and_reduced_split_debug(tmp_path, kconf61):
    """A user's FILE without KVM and with reduced + split DWARF 4: KVM added, DWARF 4 kept, full debug info."""
    import build_cache

    tree, make_vars, kconf = kconf61
    base_text = Path(build_cache.pkvm_tiny_61().config_path).read_text()
    drop = ("CONFIG_KVM=", "CONFIG_VIRTUALIZATION=", "CONFIG_DEBUG_INFO_DWARF5=", "CONFIG_DEBUG_INFO_BTF=")
    base_text = "".join(l for l in base_text.splitlines(keepends=True) if not l.startswith(drop))
    base_text += ("# CONFIG_VIRTUALIZATION is not set\nCONFIG_DEBUG_INFO_DWARF4=y\nCONFIG_DEBUG_INFO_REDUCED=y\n"
                  "CONFIG_DEBUG_INFO_SPLIT=y\n")
    base = _olddefconfig(tree, make_vars, tmp_path / "base", base_text)
    assert base.get("CONFIG_KVM", "n") == "n" and base["CONFIG_DEBUG_INFO_REDUCED"] == "y"
    res = kc.resolve(kconf, tmp_path / "base" / ".config", kc.intents_from_fragment(kb.DEBUG_OVERLAY),
                     debug="any", btf=True)
    assert res.choices[0] == "debug info: DWARF 4 (as the config has it)"
    final = _olddefconfig(tree, make_vars, tmp_path / "final",
                          (tmp_path / "base" / ".config").read_text() + res.fragment_text())
    assert kc.verify(res, final) == []
    assert final["CONFIG_KVM"] == "y" and final["CONFIG_DEBUG_INFO_DWARF4"] == "y"
    assert final.get("CONFIG_DEBUG_INFO_REDUCED", "n") == "n" and final.get("CONFIG_DEBUG_INFO_SPLIT", "n") == "n"


@pytest.mark.kernel
def test_61_conflicting_btf_without_pahole(tmp_path, kconf61):
    """BTF asked for by the base config but not possible here (pahole): BTF off, DWARF 5 kept."""
    import build_cache

    tree, make_vars, kconf = kconf61
    base = Path(build_cache.pkvm_tiny_61().config_path)
    res = kc.resolve(kconf, base, kc.intents_from_fragment(kb.fragment_text("pkvm-tiny")), btf=False,
                     btf_unavailable="pahole not found")
    assert res.choices[:2] == ["debug info: DWARF 5", "BTF: no (pahole not found)"]
    assert res.assignments.get("DEBUG_INFO_BTF") == "n"
    final = _olddefconfig(tree, make_vars, tmp_path / "final", base.read_text() + res.fragment_text())
    assert kc.verify(res, final) == []
    assert final["CONFIG_DEBUG_INFO_DWARF5"] == "y" and final.get("CONFIG_DEBUG_INFO_BTF", "n") == "n"


def test_file_config_without_debug_info_gets_dwarf5(tmp_path, conf_binary):
    """--config FILE with no debug info at all: the best version this tree allows is turned on."""
    res, cfg = _resolve(tmp_path, tree_61(), conf_binary, fragment=kb.DEBUG_OVERLAY, debug="any",
                        base_extra="CONFIG_DEBUG_KERNEL=y\nCONFIG_DEBUG_INFO_NONE=y\n")
    assert res.choices[0] == "debug info: DWARF 5"
    assert cfg["CONFIG_DEBUG_INFO_DWARF5"] == "y" and cfg["CONFIG_KVM"] == "y"
