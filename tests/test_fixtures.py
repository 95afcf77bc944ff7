"""Tests of the committed mini-hyp fixtures (fixtures/, see fixtures/README.md).

1. rebuilding with the recorded toolchain reproduces the objects byte for byte;
2. every object is an aarch64 ELF whose DWARF version matches its variant;
3. pahole sees the expected before/after layouts;
4. offsets.h (gcc's own offsetof/sizeof) agrees with the DWARF layout;
5. the expectation markers parse and agree with the layout and the binaries.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "fixtures"
BUILD_SH = FIXTURES / "build.sh"
MINI = FIXTURES / "mini_hyp"
SRC = MINI / "src"
BUILD = MINI / "build"

VARIANTS = ["before-dwarf5", "before-dwarf4", "after-dwarf5", "after-dwarf4"]


def _build_sh_list(name: str) -> list[str]:
    """CSRCS / ASRCS of fixtures/build.sh (the sources every variant is built from)."""
    m = re.search(rf"^{name}=\((.*)\)$", BUILD_SH.read_text(), re.M)
    assert m, f"no {name}=(...) in build.sh"
    return m.group(1).split()


C_SOURCES = _build_sh_list("CSRCS")
ASM_SOURCES = _build_sh_list("ASRCS")
C_OBJECTS = sorted(s.rsplit(".", 1)[0] + ".o" for s in C_SOURCES)
ASM_OBJECTS = sorted(s.rsplit(".", 1)[0] + ".o" for s in ASM_SOURCES)
OBJECTS = sorted(ASM_OBJECTS + C_OBJECTS) + ["kvm_nvhe.o"]
PREFIX = "__kvm_nvhe_"


def layout(variant: str) -> str:
    return variant.split("-")[0]


def dwarf_version(variant: str) -> int:
    return int(variant[-1])


# --------------------------------------------------------------------------
# 1. byte-identical rebuild


def _tool_version(tool: str) -> str | None:
    if shutil.which(tool) is None:
        return None
    out = subprocess.run([tool, "--version"], capture_output=True, text=True, check=True)
    return out.stdout.splitlines()[0]


def _recorded_toolchain(variant: str) -> dict[str, str]:
    rec = {}
    for line in (BUILD / variant / "TOOLCHAIN").read_text().splitlines():
        key, _, val = line.partition(": ")
        rec[key] = val
    return rec


def test_toolchain_records_are_consistent():
    recs = [_recorded_toolchain(v) for v in VARIANTS]
    assert all(r == recs[0] for r in recs)
    assert set(recs[0]) == {"gcc", "ld", "objcopy"}
    assert recs[0]["gcc"].startswith("aarch64-linux-gnu-gcc ")


@pytest.mark.slow
def test_rebuild_is_byte_identical(tmp_path):
    recorded = _recorded_toolchain(VARIANTS[0])
    for key, tool in [("gcc", "aarch64-linux-gnu-gcc"), ("ld", "aarch64-linux-gnu-ld"),
                      ("objcopy", "aarch64-linux-gnu-objcopy")]:
        have = _tool_version(tool)
        if have is None:
            pytest.skip(f"{tool} not installed; cannot check the committed objects are reproducible")
        if have != recorded[key]:
            pytest.skip(f"{tool} is {have!r} but the fixtures were built with {recorded[key]!r}")
    if shutil.which("python3") is None:
        pytest.skip("build.sh needs python3 on PATH")

    out = tmp_path / "out"
    subprocess.run(["bash", str(BUILD_SH), str(out)], check=True, capture_output=True, text=True)
    for v in VARIANTS:
        for name in OBJECTS + ["offsets.h", "TOOLCHAIN"]:
            new = (out / v / name).read_bytes()
            old = (BUILD / v / name).read_bytes()
            assert new == old, f"{v}/{name} differs from the committed file"
        # Same entries as the committed database, only the directory differs.
        import json
        newdb = json.loads((out / v / "compile_commands.json").read_text())
        olddb = json.loads((BUILD / v / "compile_commands.json").read_text())
        assert [e["file"] for e in newdb] == [e["file"] for e in olddb]


# --------------------------------------------------------------------------
# 2. ELF / DWARF versions


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("obj", OBJECTS)
def test_object_is_aarch64_with_expected_dwarf(variant, obj):
    path = BUILD / variant / obj
    assert path.stat().st_size < 160_000, "fixture objects must stay small"
    with path.open("rb") as f:
        elf = ELFFile(f)
        assert elf["e_machine"] == "EM_AARCH64"
        assert elf.elfclass == 64 and elf.little_endian
        assert elf["e_type"] == "ET_REL"
        assert elf.get_section_by_name(".debug_info") is not None
        dwarf = elf.get_dwarf_info()
        cus = list(dwarf.iter_CUs())
        expected_cus = len(C_OBJECTS) + len(ASM_OBJECTS) if obj == "kvm_nvhe.o" else 1
        assert len(cus) == expected_cus
        versions = {cu.header["version"] for cu in cus}
        assert versions == {dwarf_version(variant)}
        names = sorted(cu.get_top_DIE().attributes["DW_AT_name"].value.decode() for cu in cus)
        for cu in cus:
            # location-independent: comp_dir is mapped to "."
            assert cu.get_top_DIE().attributes["DW_AT_comp_dir"].value == b"."
        if obj == "kvm_nvhe.o":
            assert names == sorted(f"src/{s}" for s in C_SOURCES + ASM_SOURCES)
        else:
            assert names == [f"src/{obj[:-2]}.{'S' if obj in ASM_OBJECTS else 'c'}"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_kvm_nvhe_is_linked_and_prefixed(variant):
    with (BUILD / variant / "kvm_nvhe.o").open("rb") as f:
        elf = ELFFile(f)
        secs = {s.name for s in elf.iter_sections()}
        assert {".hyp.text", ".hyp.rodata", ".hyp.bss"} <= secs
        assert ".text" not in secs
        symtab = elf.get_section_by_name(".symtab")
        named = [s.name for s in symtab.iter_symbols()
                 if s.name and s["st_info"]["type"] not in ("STT_SECTION", "STT_FILE")]
        assert named and all(n.startswith(PREFIX) for n in named)
        for fn in ["__kvm_vcpu_run", "handle_trap", "__guest_enter", "__host_trap"]:
            assert PREFIX + fn in named
        # DWARF-level tags the later analysis relies on.
        tags = set()
        for cu in elf.get_dwarf_info().iter_CUs():
            tags.update(d.tag for d in cu.iter_DIEs())
        assert "DW_TAG_inlined_subroutine" in tags
        assert ("DW_TAG_call_site" if dwarf_version(variant) == 5 else "DW_TAG_GNU_call_site") in tags


# --------------------------------------------------------------------------
# 3./4. pahole and offsets.h

needs_pahole = pytest.mark.skipif(shutil.which("pahole") is None, reason="pahole not installed")


@functools.cache
def pahole(obj: Path, typename: str, expand: bool = False) -> str:
    args = ["pahole"] + (["-E"] if expand else []) + ["-C", typename, str(obj)]
    return subprocess.run(args, capture_output=True, text=True, check=False).stdout


def pahole_size(obj: Path, typename: str) -> int | None:
    m = re.search(r"/\* size: (\d+),", pahole(obj, typename))
    return int(m.group(1)) if m else None


MEMBER_RE = re.compile(r"^(?P<decl>.*?);\s*/\*\s*(?P<off>\d+)(?::\s*\d+)?\s+(?P<size>\d+)\s*\*/\s*$")
_ATTR = r"__attribute__\(\((?:[^()]|\([^()]*\))*\)\)"  # __attribute__((__aligned__(16)))
CLOSE_RE = re.compile(r"^\s*\}\s*(?:" + _ATTR + r"\s*)?(?P<name>\w*)\s*(?:" + _ATTR + r")?(?P<dims>(?:\[\d*\])*)\s*(?:" + _ATTR + r")?\s*;"
                      r"\s*/\*\s*(?P<off>\d+)\s+(?P<size>\d+)\s*\*/\s*$")


class Node:
    def __init__(self, name, off, size, dims=()):
        self.name, self.off, self.size, self.dims = name, off, size, dims
        self.children: list[Node] = []

    def find(self, name):
        """Named child, looking through anonymous structs/unions."""
        for c in self.children:
            if c.name == name:
                return c
        for c in self.children:
            if c.name == "" and c.children:
                hit = c.find(name)
                if hit is not None:
                    return hit
        return None


def _decl_name(decl: str):
    decl = re.sub(r"__attribute__\(\(.*\)\)", "", decl).strip()
    m = re.search(r"\(\*\s*(\w+)\)\s*\(", decl)
    if m:
        return m.group(1), ()
    m = re.search(r"(\w+)((?:\[\d*\])*)(?::\d+)?$", decl)
    assert m, decl
    dims = tuple(int(d) if d else 0 for d in re.findall(r"\[(\d*)\]", m.group(2)))
    return m.group(1), dims


@functools.cache
def layout_tree(obj: Path, root: str) -> Node:
    """Parse `pahole -E -C root` (absolute offsets) into a tree."""
    text = pahole(obj, root, expand=True)
    assert text, f"pahole knows no type {root} in {obj}"
    top = Node(root, 0, pahole_size(obj, root))
    stack = [top]
    for line in text.splitlines()[1:]:
        s = line.strip()
        if s.endswith("{"):
            node = Node(None, None, None)
            stack[-1].children.append(node)
            stack.append(node)
            continue
        m = CLOSE_RE.match(line)
        if m and len(stack) > 1:
            node = stack.pop()
            node.name, node.off, node.size = m.group("name"), int(m.group("off")), int(m.group("size"))
            node.dims = tuple(int(d) if d else 0 for d in re.findall(r"\[(\d*)\]", m.group("dims")))
            continue
        m = MEMBER_RE.match(line)
        if m and not s.startswith("}"):
            name, dims = _decl_name(m.group("decl"))
            stack[-1].children.append(Node(name, int(m.group("off")), int(m.group("size")), dims))
    return top


@functools.cache
def enumerators(obj: Path) -> dict[str, int]:
    vals = {}
    with obj.open("rb") as f:
        for cu in ELFFile(f).get_dwarf_info().iter_CUs():
            for die in cu.iter_DIEs():
                if die.tag == "DW_TAG_enumerator":
                    vals[die.attributes["DW_AT_name"].value.decode()] = die.attributes["DW_AT_const_value"].value
    return vals


PATH_TOKEN = re.compile(r"(\w+)((?:\[[^\]]+\])*)")


def resolve(obj: Path, root: str, path: str) -> tuple[int, int]:
    """(offset, size) of root.path according to DWARF (via pahole -E)."""
    node = layout_tree(obj, root)
    off = 0
    for part in path.split("."):
        m = PATH_TOKEN.fullmatch(part)
        assert m, part
        child = node.find(m.group(1))
        if child is None:
            raise KeyError(f"{root}:{path}: no member {m.group(1)}")
        off, size = child.off, child.size
        idx = re.findall(r"\[([^\]]+)\]", m.group(2))
        if idx:
            dims = child.dims
            assert len(idx) == len(dims), (path, dims)
            nelem = 1
            for d in dims:
                nelem *= d
            esize = size // nelem
            flat = 0
            for i, d in zip(idx, dims):
                iv = 0 if i == "*" else int(i) if i.isdigit() else enumerators(obj)[i]
                assert 0 <= iv < d
                flat = flat * d + iv
            off, size = off + flat * esize, esize
        node = child
    return off, size


DEFINE_RE = re.compile(r"^#define (\w+) (-?\d+) /\* (offsetof|sizeof)\(struct (\w+)(?:, ([^)]*))?\) \*/$")


def read_offsets_h(variant: str) -> list[tuple[str, int, str, str, str | None]]:
    rows = []
    for line in (BUILD / variant / "offsets.h").read_text().splitlines():
        m = DEFINE_RE.match(line)
        if m:
            rows.append((m.group(1), int(m.group(2)), m.group(3), m.group(4), m.group(5)))
    return rows


@pytest.mark.parametrize("variant", VARIANTS)
def test_offsets_h_is_complete(variant):
    rows = read_offsets_h(variant)
    text = (BUILD / variant / "offsets.h").read_text()
    assert len(rows) == text.count("#define ") - 1  # all but the include guard parse
    offs = [r for r in rows if r[2] == "offsetof"]
    assert len(offs) >= 15
    assert {r[3] for r in offs} >= {"kvm_vcpu", "pkvm_hyp_vcpu"}
    assert any("[" in r[4] for r in offs) and any(r[4].count(".") >= 3 for r in offs)
    assert len([r for r in rows if r[2] == "sizeof"]) >= 5
    names = {r[0]: r for r in rows}
    if layout(variant) == "after":
        assert names["VCPU_HCR_EL2"][4] == "arch.hyp_state.hcr_el2"
    else:
        assert names["VCPU_HCR_EL2"][4] == "arch.hcr_el2"


@needs_pahole
@pytest.mark.parametrize("variant", VARIANTS)
def test_pahole_sizes_and_layouts(variant):
    nvhe = BUILD / variant / "kvm_nvhe.o"
    sizes = {t: pahole_size(nvhe, t) for t in
             ["kvm_vcpu", "kvm_vcpu_arch", "kvm_cpu_context", "vcpu_hyp_state", "pkvm_hyp_vcpu"]}
    assert sizes["kvm_vcpu"] and sizes["kvm_vcpu"] > sizes["kvm_vcpu_arch"] > sizes["kvm_cpu_context"] > 0
    assert sizes["pkvm_hyp_vcpu"] > sizes["kvm_vcpu"]
    # every C object carries the same kvm_vcpu
    for obj in C_OBJECTS:
        assert pahole_size(BUILD / variant / obj, "kvm_vcpu") == sizes["kvm_vcpu"]

    arch = layout_tree(nvhe, "kvm_vcpu_arch")
    top = {c.name for c in arch.children}
    loose = {"hcr_el2", "mdcr_el2", "vsesr_el2", "fault", "cflags", "iflags", "sflags"}
    if layout(variant) == "after":
        assert "hyp_state" in top and not (loose & top)
        assert sizes["vcpu_hyp_state"] == 64
        hs = arch.find("hyp_state")
        assert [c.name for c in hs.children] == ["hcr_el2", "mdcr_el2", "vsesr_el2", "fault", "flags"]
        assert [c.name for c in hs.find("fault").children] == ["esr_el2", "far_el2", "hpfar_el2", "disr_el1"]
    else:
        assert "hyp_state" not in top and loose <= top
        assert sizes["vcpu_hyp_state"] is None  # declared but unused: no DWARF
    # the layout feature catalogue is really there
    assert arch.find("pvtime_hi").off == arch.find("pvtime_raw").off + 4
    assert arch.find("state_bits").find("span") is not None
    assert arch.find("cntvoff").off % 16 == 0
    assert arch.find("vgic_cpu").find("lr_prio").dims == (2, 4)


@needs_pahole
def test_pahole_before_and_after_differ():
    b = BUILD / "before-dwarf5" / "kvm_nvhe.o"
    a = BUILD / "after-dwarf5" / "kvm_nvhe.o"
    assert pahole(b, "kvm_vcpu_arch") != pahole(a, "kvm_vcpu_arch")
    assert pahole_size(b, "kvm_cpu_context") == pahole_size(a, "kvm_cpu_context")
    # ctxt is the first member in both; pc sits at the same place
    assert resolve(b, "kvm_vcpu", "arch.ctxt.regs.pc") == resolve(a, "kvm_vcpu", "arch.ctxt.regs.pc")
    # same layout -> same pahole output whatever the DWARF version
    for lay in ["before", "after"]:
        d5, d4 = BUILD / f"{lay}-dwarf5" / "kvm_nvhe.o", BUILD / f"{lay}-dwarf4" / "kvm_nvhe.o"
        for t in ["kvm_vcpu", "kvm_vcpu_arch", "pkvm_hyp_vcpu"]:
            assert pahole(d5, t, True) == pahole(d4, t, True)


@needs_pahole
@pytest.mark.parametrize("variant", VARIANTS)
def test_offsets_h_matches_dwarf(variant):
    nvhe = BUILD / variant / "kvm_nvhe.o"
    checked = top_level = 0
    for name, value, kind, struct, path in read_offsets_h(variant):
        if kind == "sizeof":
            size = pahole_size(nvhe, struct)
            if size is None:  # type without DWARF (vcpu_hyp_state in "before")
                assert layout(variant) == "before" and struct == "vcpu_hyp_state"
                continue
            assert size == value, name
        else:
            off, _ = resolve(nvhe, struct, path)
            assert off == value, f"{name}: offsets.h says {value}, DWARF says {off}"
            top_level += "." not in path and "[" not in path
        checked += 1
    assert checked >= 40 and top_level >= 10


# --------------------------------------------------------------------------
# 5. expectation markers (grammar: fixtures/README.md)

ACCESS_RE = re.compile(
    r"^expect(?:@(?P<layout>before|after))?: (?P<verdict>ok|leak|dead) (?P<scope>[\w-]+)"
    r"(?: (?P<root>\w+):(?P<path>[\w.\[\]*]+) (?P<access>read|write|rw))?$")
ESC_RE = re.compile(
    r"^expect(?:@(?P<layout>before|after))?: escalation (?P<scope>[\w-]+) (?P<src>\w+)->(?P<dst>\w+)$")
FN_RE = re.compile(r"^expect-fn:((?: [\w=-]+)+)$")
# the reconciliation ledger's class of an access (scopecheck/reconcile.py)
EVIDENCE_RE = re.compile(r"^expect-evidence: (?P<evidence>explained|binary-only|source-only|compiled-away|unanalysed)"
                         r" (?P<root>\w+):(?P<path>[\w.\[\]*]+) (?P<access>read|write|rw|addr)$")
FN_PROPS = {"inlined", "noinline", "unused", "static-dup", "indirect", "called-from-asm", "asm"}


def parse_markers(path: Path) -> list[dict]:
    """Reference parser for the marker comments of one source file."""
    found = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        for comment in re.findall(r"/\*(.*?)\*/", line):
            comment = comment.strip()
            if not comment.startswith("expect"):
                continue
            for clause in (c.strip() for c in comment.split(";")):
                m = ACCESS_RE.match(clause) or ESC_RE.match(clause) or FN_RE.match(clause) or \
                    EVIDENCE_RE.match(clause)
                assert m, f"{path.name}:{lineno}: bad marker clause {clause!r}"
                rec = {"file": path.name, "line": lineno, "text": line, **m.groupdict()}
                if clause.startswith("expect-fn:"):
                    props = m.group(1).split()
                    rec["kind"] = "fn"
                    rec["props"] = props
                    rec["via"] = next((p[4:] for p in props if p.startswith("via=")), None)
                    bad = [p for p in props if p not in FN_PROPS and not p.startswith("via=")]
                    assert not bad, f"{path.name}:{lineno}: unknown props {bad}"
                    fm = re.match(r"^\s*(\w+):", line) or re.search(r"(\w+)\s*\([^()]*\)\s*(?:/\*|$)", line)
                    assert fm, f"{path.name}:{lineno}: no function name on expect-fn line"
                    rec["function"] = fm.group(1)
                elif clause.startswith("expect-evidence:"):
                    rec["kind"] = "evidence"
                elif "escalation" in clause.split()[1:2]:
                    rec["kind"] = "escalation"
                else:
                    rec["kind"] = "access"
                found.append(rec)
    return found


@functools.cache
def all_markers() -> tuple:
    files = sorted(p for p in SRC.iterdir() if p.suffix in {".c", ".h", ".S"})
    return tuple(m for f in files for m in parse_markers(f))


def test_markers_parse_and_cover_all_cases():
    ms = all_markers()
    verdicts = {m["verdict"] for m in ms if m["kind"] == "access"}
    assert verdicts == {"ok", "leak", "dead"}
    assert sum(m["kind"] == "escalation" for m in ms) >= 1
    scopes = {m["scope"] for m in ms if m["kind"] in ("access", "escalation")}
    assert "rfc-hyp-scope" in scopes and scopes <= {p.stem for p in (REPO / "scopecheck" / "queries").glob("*.toml")}, scopes
    assert {m["evidence"] for m in ms if m["kind"] == "evidence"} >= {"binary-only", "compiled-away"}
    files_with_leaks = {m["file"] for m in ms if m.get("verdict") == "leak"}
    assert {"switch.c", "hyp-main.c", "sysreg-sr.c", "pkvm.c", "entry.S"} <= files_with_leaks
    assert any(m["kind"] == "access" and m["file"] == "inline.h" and m["verdict"] == "ok" for m in ms)
    assert any(m["layout"] == "before" for m in ms) and any(m["layout"] == "after" for m in ms)
    # the alias-pointer leak and the table-only leak are marked
    assert any("a->mp_state" in m["text"] and m.get("verdict") == "leak" for m in ms)
    props = {p for m in ms if m["kind"] == "fn" for p in m["props"]}
    assert props >= FN_PROPS


@needs_pahole
@pytest.mark.parametrize("variant", VARIANTS)
def test_marker_paths_exist_in_layout(variant):
    nvhe = BUILD / variant / "kvm_nvhe.o"
    n = 0
    for m in all_markers():
        if m["kind"] != "access" or m["root"] is None:
            continue
        if m["layout"] not in (None, layout(variant)):
            continue
        off, size = resolve(nvhe, m["root"], m["path"])
        assert size > 0, m
        n += 1
    assert n >= 60


def _symbols_and_relocs(variant):
    with (BUILD / variant / "kvm_nvhe.o").open("rb") as f:
        elf = ELFFile(f)
        symtab = elf.get_section_by_name(".symtab")
        syms = list(symtab.iter_symbols())
        secidx = {i: s.name for i, s in enumerate(elf.iter_sections())}
        relocs = {}
        for sec in elf.iter_sections():
            if isinstance(sec, RelocationSection) and not sec.name.startswith(".rela.debug"):
                target = secidx[sec["sh_info"]]
                relocs[target] = [
                    (r["r_offset"], r["r_info_type"], syms[r["r_info_sym"]], r["r_addend"])
                    for r in sec.iter_relocations()]
        subprograms, inlined = set(), set()
        for cu in elf.get_dwarf_info().iter_CUs():
            for die in cu.iter_DIEs():
                if die.tag == "DW_TAG_subprogram" and "DW_AT_name" in die.attributes:
                    subprograms.add(die.attributes["DW_AT_name"].value.decode())
                if die.tag == "DW_TAG_inlined_subroutine":
                    origin = die.get_DIE_from_attribute("DW_AT_abstract_origin")
                    inlined.add(origin.attributes["DW_AT_name"].value.decode())
    return syms, relocs, subprograms, inlined


R_AARCH64_ABS64, R_AARCH64_JUMP26, R_AARCH64_CALL26 = 257, 282, 283


@pytest.mark.parametrize("variant", VARIANTS)
def test_function_markers_match_binary(variant):
    syms, relocs, subprograms, inlined = _symbols_and_relocs(variant)
    funcs = {}
    for s in syms:
        if s.name.startswith(PREFIX):
            funcs.setdefault(s.name[len(PREFIX):], []).append(s)
    text_relocs = relocs[".hyp.text"]

    def target(r):
        _, _, sym, addend = r
        return sym["st_value"] + addend if sym["st_info"]["type"] == "STT_SECTION" else sym["st_value"]

    for m in all_markers():
        if m["kind"] != "fn":
            continue
        name, props = m["function"], set(m["props"])
        if "unused" in props:
            assert name not in funcs and name not in subprograms and name not in inlined, name
            continue
        if "inlined" in props:
            assert name not in funcs and name in inlined, name
            continue
        assert name in funcs, f"{name} has no symbol"
        if "static-dup" in props:
            assert len(funcs[name]) >= 2 and all(s["st_info"]["bind"] == "STB_LOCAL" for s in funcs[name])
        if "called-from-asm" in props:
            assert any(t == R_AARCH64_CALL26 and sym.name == PREFIX + name
                       for _, t, sym, _ in text_relocs), name
        if m["via"]:
            (addr,) = {s["st_value"] for s in funcs[name]}
            (table,) = funcs[m["via"]]
            lo, hi = table["st_value"], table["st_value"] + table["st_size"]
            in_table = {target(r) for r in relocs[".hyp.rodata"]
                        if lo <= r[0] < hi and r[1] == R_AARCH64_ABS64}
            assert addr in in_table, f"{name} not in {m['via']}"
            direct = {target(r) for r in text_relocs if r[1] in (R_AARCH64_CALL26, R_AARCH64_JUMP26)
                      and r[2]["st_shndx"] != "SHN_UNDEF"}  # memset: undefined, value 0
            assert addr not in direct, f"{name} is called directly, not only via {m['via']}"
