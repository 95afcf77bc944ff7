"""Robustness: fuzzed ELF/DWARF, compile_commands.json, query TOML and asm-offsets.h inputs
end in exit 0, 1 or 2 with at most one line on stderr: never a traceback, never a hang.

The suite (``tests/fuzz/``, described in docs/robustness.md) runs ``SCOPECHECK_FUZZ_CASES``
cases (default 10,000): ~60 % seeded ELF/DWARF mutations on a 2-process pool, ~40 %
hypothesis examples of the text inputs, plus 50 cases through the real CLI. The last test
prints ``fuzz: N cases, crashes 0, hangs 0, peak RSS M MB``. Also here: compressed debug
sections (zlib, zstd), split DWARF, the layout cache (corruption, concurrent writers) and the
subprocess rules.
"""

from __future__ import annotations

import ast
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from conftest import FIXTURE_BUILD, ROOT, run_cli
from fuzz import corpus, runner, textfuzz
from fuzz.elfmut import ElfMap, mutate
from fuzz.harness import Outcome, Tally, peak_rss_mb

TOTAL = int(os.environ.get("SCOPECHECK_FUZZ_CASES", "10000"))
CLI_CASES = 50
TEXT_EACH = max(1, round(TOTAL * 0.4) // 3)
ELF_CASES = max(1, TOTAL - CLI_CASES - 3 * TEXT_EACH)
RSS_LIMIT_MB = 1024

TALLY = Tally()
_SETTINGS = settings(max_examples=TEXT_EACH, derandomize=True, deadline=None, database=None,
                     suppress_health_check=list(HealthCheck))


def _fixture(variant="after-dwarf5", name="kvm_nvhe.o") -> Path:
    p = FIXTURE_BUILD / variant / name
    if not p.is_file():
        pytest.skip("fixture objects not built")
    return p


@pytest.fixture(scope="module")
def scratch():
    d = Path(tempfile.mkdtemp(prefix="scopecheck-fuzz-test-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


# ---------------------------------------------------------------- 1. ELF/DWARF

def test_elf_dwarf_fuzz(scratch):
    real = corpus.real_nvhe_object()
    t = runner.run(ELF_CASES, jobs=2, scratch=scratch / "elf", real=real, log=lambda s: None)
    TALLY.merge(t)
    print(f"ELF/DWARF: {t.cases} cases in {t.seconds:.0f} s ({', '.join(f'{k} {v}' for k, v in sorted(t.by_lane.items()))}); "
          f"exit 0: {t.ok}, exit 2: {t.errors}")
    assert t.cases == ELF_CASES
    assert not t.failures, "\n".join(f.line() + f"\n  replay: python tests/fuzz/runner.py --replay {f.lane} {f.seed}"
                                     for f in t.failures[:20])
    assert t.peak_rss_mb < RSS_LIMIT_MB


# ---------------------------------------------------------------- 1. text inputs (hypothesis)

def _record(lane: str, o: Outcome) -> None:
    TALLY.add(lane, TALLY.by_lane.get(lane, 0), "hypothesis example", o)
    assert o.status in ("ok", "error"), f"{lane}: {o.status}: {o.detail}"


@_SETTINGS
@given(textfuzz.compdb_texts())
def test_compile_commands_fuzz(data):
    with tempfile.TemporaryDirectory() as d:
        _record("compile_commands.json", textfuzz.check_compdb(data, Path(d)))


@_SETTINGS
@given(textfuzz.query_texts())
def test_query_toml_fuzz(data):
    with tempfile.TemporaryDirectory() as d:
        _record("query TOML", textfuzz.check_query(data, Path(d)))


@_SETTINGS
@given(textfuzz.asm_inputs())
def test_asm_offsets_fuzz(inputs):
    with tempfile.TemporaryDirectory() as d:
        _record("asm-offsets.h", textfuzz.check_asm(*inputs, Path(d)))


# ---------------------------------------------------------------- 1. through the real CLI

def _cli_case(i: int, scratch: Path) -> tuple[int, str, subprocess.CompletedProcess]:
    groups = corpus.seeds(scratch / "cli-seeds")
    group = "linked" if groups["linked"] and i % 3 else ("reloc-big" if i % 2 else "reloc")
    items = groups[group]
    seed = 7_000_000 + i
    item = items[seed % len(items)]
    clean = Path(item.path).read_bytes()
    data, desc = mutate(clean, ElfMap.parse(clean), seed)
    f = scratch / f"cli-{seed}.o"
    f.write_bytes(data)
    args = ["size", "--no-cache", str(f)] + (["--no-pahole"] if i % 2 else [])  # pahole on corrupt DWARF, too
    r = run_cli(*args, env={"SCOPECHECK_CACHE": str(scratch / "cli-cache")}, timeout=120)
    return seed, f"{item.name}: {desc}", r


def test_cli_sample(scratch):
    """50 mutated objects through ``python -m scopecheck size``: exit 0/1/2, stderr at most one line."""
    with ThreadPoolExecutor(2) as ex:
        results = list(ex.map(lambda i: _cli_case(i, scratch), range(CLI_CASES)))
    bad = []
    for seed, desc, r in results:
        lines = r.stderr.strip().splitlines()
        ok = (r.returncode in (0, 1, 2) and "Traceback" not in r.stderr and "internal error" not in r.stderr
              and (len(lines) <= 1 or all(l.startswith("scopecheck: MISMATCH") for l in lines)))
        o = Outcome("ok" if r.returncode == 0 else "error", r.returncode) if ok else \
            Outcome("crash", r.returncode, r.stderr.strip()[-300:])
        TALLY.add("cli", seed, desc, o)
        if not ok:
            bad.append(f"seed {seed} ({desc}): exit {r.returncode}: {r.stderr.strip()[-300:]}")
    assert not bad, "\n".join(bad)


# ---------------------------------------------------------------- 2. formats real kernels use

def _sizes(path: Path) -> dict:
    from scopecheck import targets
    from scopecheck.size import size_report

    r = size_report(targets.resolve(path), pahole=False, use_cache=False)
    return {n: (l.size, l.stats.holes, l.stats.padding, len(l.members)) for n, l in r.layouts.items()}


@pytest.mark.parametrize("linked", [False, True], ids=["object", "linked"])
@pytest.mark.parametrize("kind", ["zlib", "zstd"])
def test_compressed_debug_sections(scratch, kind, linked):
    objcopy = shutil.which("aarch64-linux-gnu-objcopy")
    if objcopy is None:
        pytest.skip("aarch64-linux-gnu-objcopy (binutils-aarch64-linux-gnu) not installed")
    src = _fixture()
    if linked:
        src = corpus._link(src, scratch / "plain-linked.elf")
        if src is None:
            pytest.skip("aarch64-linux-gnu-ld not installed")
    out = scratch / f"{kind}-{'linked' if linked else 'obj'}.o"
    r = subprocess.run([objcopy, f"--compress-debug-sections={kind}", str(src), str(out)], capture_output=True,
                       text=True, timeout=60)
    if r.returncode != 0:
        pytest.skip(f"this objcopy cannot compress with {kind}: {r.stderr.strip()}")
    from scopecheck.binary.elf import ElfImage

    with ElfImage(out) as e:
        assert e.compressed_debug()
    assert _sizes(out) == _sizes(src)
    if linked:  # the call graph needs .debug_aranges, compressed too
        from scopecheck.proof import prove

        a, b = prove(src, binary_only=True, use_cache=False), prove(out, binary_only=True, use_cache=False)
        assert sorted(l.fingerprint for l in a.leaks) == sorted(l.fingerprint for l in b.leaks)


def test_legacy_zdebug_object_refused(scratch):
    objcopy = shutil.which("aarch64-linux-gnu-objcopy")
    if objcopy is None:
        pytest.skip("aarch64-linux-gnu-objcopy not installed")
    out = scratch / "zdebug.o"
    subprocess.run([objcopy, "--compress-debug-sections=zlib-gnu", str(_fixture()), str(out)], check=True,
                   timeout=60)
    r = run_cli("size", "--no-cache", "--no-pahole", str(out))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert ".zdebug" in r.stderr and "--decompress-debug-sections" in r.stderr


def test_split_dwarf_refused(scratch):
    gcc = shutil.which("aarch64-linux-gnu-gcc")
    if gcc is None:
        pytest.skip("aarch64-linux-gnu-gcc not installed")
    c = scratch / "split.c"
    c.write_text("struct kvm_vcpu { int a; long b; };\nstruct kvm_vcpu v;\n")
    subprocess.run([gcc, "-g", "-gdwarf-5", "-gsplit-dwarf", "-c", str(c), "-o", str(scratch / "split.o")],
                   check=True, cwd=scratch, timeout=60)
    for f, words in ((scratch / "split.o", ("split DWARF", "split.dwo", "-gsplit-dwarf")),
                     (scratch / "split.dwo", (".dwo file", "-gsplit-dwarf"))):
        r = run_cli("size", "--no-cache", "--no-pahole", str(f))
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert all(w in r.stderr for w in words), r.stderr


# ---------------------------------------------------------------- 3. caches

def test_corrupt_layout_cache_is_rebuilt(tmp_path, monkeypatch):
    """Garbage, truncation, wrong shapes and a flipped digit: each detected, the cache rebuilt."""
    from scopecheck import layout_cache
    from scopecheck.binary.elf import ElfImage
    from scopecheck.layout import load_layouts

    monkeypatch.setenv("SCOPECHECK_CACHE", str(tmp_path))
    obj = _fixture()
    want = load_layouts(obj, use_cache=False)
    load_layouts(obj)  # writes the cache
    with ElfImage(obj) as e:
        path = layout_cache.LayoutCache.for_elf(e).path
    good = path.read_text()
    flipped = good.replace('"size":1888', '"size":1880', 1)
    assert flipped != good
    rng = random.Random(1)
    import hashlib

    body = json.dumps({**_cache_json(good), "layouts": {"kvm_vcpu": {"name": 3}}}).encode()
    well_summed = b"sha256 " + hashlib.sha256(body).hexdigest().encode() + b"\n" + body  # decodes badly
    bad = [b"", b"\0" * 100, good[: len(good) // 2].encode(), b"[]", b'{"key": 1}', flipped.encode(),
           well_summed]
    for _ in range(40):
        raw = bytearray(good.encode())
        raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
        bad.append(bytes(raw))
    for b in bad:
        path.write_bytes(b)
        got = load_layouts(obj)
        assert got == want, b[:80]
        assert _cache_json(path.read_text())["key"], "cache not rewritten"


def _cache_json(text: str) -> dict:
    """A layout cache file: ``sha256 <hex>`` on the first line, then the JSON body."""
    head, body = text.split("\n", 1)
    assert head.startswith("sha256 ")
    return json.loads(body)


def test_concurrent_runs_share_the_cache(tmp_path):
    """Four CLI runs on one cold cache at once: all succeed, same output, a valid cache after."""
    obj = _fixture()
    env = {"SCOPECHECK_CACHE": str(tmp_path)}
    procs = [subprocess.Popen([sys.executable, "-m", "scopecheck", "size", "--no-pahole", "--format", "json", str(obj)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                              env={**os.environ, **env}) for _ in range(4)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outs]
    assert len({o[0] for o in outs}) == 1
    files = list((tmp_path / "layouts").glob("*.json"))
    assert len(files) == 1 and _cache_json(files[0].read_text())["key"]
    assert not list((tmp_path / "layouts").glob(".*.tmp")), "temporary files left behind"
    r = run_cli("size", "--no-pahole", "--format", "json", str(obj), env=env)
    assert r.returncode == 0 and r.stdout == outs[0][0]


# ---------------------------------------------------------------- 4. subprocesses

_CALLS = {"run", "Popen", "check_output", "check_call", "call"}
#: the analysis path (size, callgraph, derive) must bound every child in time
_BOUNDED = ("scopecheck/binary/", "scopecheck/source/", "scopecheck/proof.py", "scopecheck/size.py",
            "scopecheck/layout.py", "scopecheck/derive.py")


def _subprocess_calls():
    for f in sorted((ROOT / "scopecheck").rglob("*.py")):
        tree = ast.parse(f.read_text(), str(f))
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in _CALLS
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "subprocess"):
                yield f.relative_to(ROOT).as_posix(), node


def _is_string(e) -> bool:
    if isinstance(e, ast.JoinedStr) or (isinstance(e, ast.Constant) and isinstance(e.value, str)):
        return True
    return isinstance(e, ast.BinOp) and (_is_string(e.left) or _is_string(e.right))


def test_subprocesses_take_argument_lists():
    bad = []
    for rel, node in _subprocess_calls():
        kw = {k.arg: k.value for k in node.keywords}
        if "shell" in kw and not (isinstance(kw["shell"], ast.Constant) and kw["shell"].value is False):
            bad.append(f"{rel}:{node.lineno}: shell=")
        if node.args and _is_string(node.args[0]):
            bad.append(f"{rel}:{node.lineno}: a command string, not an argument list")
    assert not bad, "\n".join(bad)


def test_analysis_subprocesses_are_bounded():
    bad = [f"{rel}:{node.lineno}" for rel, node in _subprocess_calls()
           if rel.startswith(_BOUNDED) and node.func.attr != "Popen" and "timeout" not in {k.arg for k in node.keywords}]
    assert not bad, "subprocess calls without timeout= on the analysis path:\n" + "\n".join(bad)


def test_missing_pahole_names_its_package(tmp_path):
    """Without pahole on PATH: the size report still prints, with a note naming the package."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    r = run_cli("size", "--no-cache", str(_fixture()), env={"PATH": str(bindir)})
    assert r.returncode == 0, r.stderr
    assert "dwarves" in r.stdout + r.stderr


# ---------------------------------------------------------------- 5. the summary line

def test_zz_summary(record_property):
    """``fuzz: N cases, crashes 0, hangs 0, peak RSS M MB`` over every fuzz case above (always shown:
    conftest.py prints it in the session summary, from whichever worker process ran this file)."""
    TALLY.peak_rss_mb = max(TALLY.peak_rss_mb, peak_rss_mb())
    line = TALLY.summary()
    record_property("summary_line", line)
    if TALLY.cases == 0:
        pytest.skip("no fuzz test ran in this session")
    assert TALLY.crashes == 0 and TALLY.hangs == 0, [f.line() for f in TALLY.failures[:20]]
    assert TALLY.peak_rss_mb < RSS_LIMIT_MB
