"""Caches that cannot lie: code fingerprint in every key, checked msgpack entries, --no-cache everywhere.

The source TU cache (a header a cached TU includes changes; the fingerprint; a corrupt
entry) is tested in test_source_facts.py; this file covers the entry format, the binary
facts cache of the proof, the layout cache and ``--no-cache``.
"""

from __future__ import annotations

import json
import os

import pytest

from conftest import FIXTURE_BUILD, run_cli
from scopecheck import cache

FIX = FIXTURE_BUILD / "after-dwarf5"
OBJ = FIX / "kvm_nvhe.o"
ORIG_FP = cache.code_fingerprint


@pytest.fixture
def cache_root(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("SCOPECHECK_CACHE", str(root))
    return root


def _entries(root, kind):
    d = root / kind
    return sorted(p for p in d.iterdir() if not p.name.startswith(".")) if d.is_dir() else []


def test_fingerprint_is_of_the_code():
    fp = cache.code_fingerprint()
    assert len(fp) == 32 and fp == cache.code_fingerprint()
    assert cache.key("x", 1) != cache.key("x", 2)


def test_entries_round_trip_records_and_detect_damage(tmp_path):
    from scopecheck.binary.accesses import binary_accesses
    from scopecheck.binary.elf import ElfImage
    from scopecheck.binary.functions import hyp_functions
    from scopecheck.model_code import SourceFunction

    with ElfImage(OBJ) as elf:
        facts = hyp_functions(elf)
    acc, esc, stats = binary_accesses(OBJ, facts, use_cache=False)
    fn = SourceFunction("f", "a.c", 3, params=(("vcpu", "struct kvm_vcpu *"),))
    value = (facts, acc, esc, stats, [fn], {"empty": [], "n": 1})
    data = cache.dumps(value)
    back = cache.loads(data)
    assert back == value  # the same dataclasses, tuples stay tuples
    assert back[4][0].params == (("vcpu", "struct kvm_vcpu *"),) and hash(back[0].functions[0].key)
    assert not data.startswith(b"\x80")  # not a pickle
    for bad in (data[:-7], data[:60] + bytes([data[60] ^ 1]) + data[61:], b"garbage", b""):
        with pytest.raises(ValueError):
            cache.loads(bad)
    with pytest.raises(cache.Unsupported):
        cache.dumps(object())


def test_foreign_classes_cannot_be_named(tmp_path):
    data = bytearray(cache.dumps([1, 2]))
    body = bytes(data[len(cache.MAGIC) + 32:])
    n = int.from_bytes(body[:4], "little")
    evil = json.dumps({"t": ["dc", "os:system"], "fix": {}}).encode()
    body = len(evil).to_bytes(4, "little") + evil + body[4 + n:]
    import hashlib

    forged = cache.MAGIC + hashlib.sha256(body).digest() + body
    with pytest.raises(ValueError):
        cache.loads(forged)


def _prove_counting(monkeypatch):
    """prove() binary-only on the fixture; returns how often the binary door really ran."""
    import scopecheck.binary.functions as bf
    from scopecheck.proof import prove

    calls = []
    real = bf.hyp_functions

    def counted(elf):
        calls.append(1)
        return real(elf)

    monkeypatch.setattr(bf, "hyp_functions", counted)
    r = prove(OBJ, binary_only=True)
    return r, len(calls)


def test_binary_cache_warm_fingerprint_and_corruption(cache_root, monkeypatch, capsys):
    cold, n = _prove_counting(monkeypatch)
    assert n == 1
    (entry,) = _entries(cache_root, "hyp")
    assert entry.suffix == ".msgpack"
    warm, n = _prove_counting(monkeypatch)
    assert n == 0 and [l.to_dict() for l in warm.leaks] == [l.to_dict() for l in cold.leaks]
    # another scopecheck (code fingerprint) recomputes, in an entry of its own
    monkeypatch.setattr(cache, "code_fingerprint", lambda: "f" * 32)
    _, n = _prove_counting(monkeypatch)
    assert n == 1 and len(_entries(cache_root, "hyp")) == 2
    monkeypatch.setattr(cache, "code_fingerprint", ORIG_FP)
    # a damaged entry: detected, reported once in debug mode, rebuilt
    monkeypatch.setenv("SCOPECHECK_DEBUG", "1")
    cache._reported.clear()
    raw = entry.read_bytes()
    entry.write_bytes(raw[:len(raw) // 2])
    capsys.readouterr()
    again, n = _prove_counting(monkeypatch)
    err = capsys.readouterr().err
    assert n == 1 and err.count("unusable") == 1 and str(entry) in err
    assert [l.to_dict() for l in again.leaks] == [l.to_dict() for l in cold.leaks]
    assert entry.read_bytes() != raw[:len(raw) // 2]  # rewritten whole
    _, n = _prove_counting(monkeypatch)
    assert n == 0


def test_layout_cache_fingerprint_and_corruption(cache_root, monkeypatch, capsys):
    import scopecheck.binary.types as bt
    from scopecheck.layout import load_layouts

    reads = []
    real = bt.read_layouts
    monkeypatch.setattr(bt, "read_layouts", lambda elf, names: reads.append(names) or real(elf, names))
    first = load_layouts(OBJ, ["kvm_vcpu"])
    assert len(reads) == 1
    assert load_layouts(OBJ, ["kvm_vcpu"]) == first and len(reads) == 1
    (entry,) = _entries(cache_root, "layouts")
    monkeypatch.setattr(cache, "code_fingerprint", lambda: "e" * 32)
    assert load_layouts(OBJ, ["kvm_vcpu"]) == first and len(reads) == 2
    monkeypatch.setattr(cache, "code_fingerprint", ORIG_FP)
    monkeypatch.setenv("SCOPECHECK_DEBUG", "1")
    text = entry.read_text()
    assert text.startswith("sha256 ")
    entry.write_text(text.replace('"size":', '"size":1', 1))  # a flipped digit, still JSON
    capsys.readouterr()
    assert load_layouts(OBJ, ["kvm_vcpu"]) == first and len(reads) == 3
    assert "unusable" in capsys.readouterr().err


def test_no_cache_writes_and_reads_nothing(tmp_path):
    root = tmp_path / "cache"
    env = {"SCOPECHECK_CACHE": str(root)}
    for args in (["callgraph", str(FIX), "--format", "json", "--no-cache"],
                 ["size", str(OBJ), "--no-cache"],
                 ["derive", str(FIX), "--no-cache"]):
        r = run_cli(*args, env=env)
        assert r.returncode == 0, r.stderr
    left = [p for p in root.rglob("*") if p.is_file()] if root.exists() else []
    assert left == [], left
    # and with the cache on, every layer writes its entry
    r = run_cli("callgraph", str(FIX), "--format", "json", env=env)
    assert r.returncode == 0, r.stderr
    for kind in ("hyp", "layouts", "source"):
        assert _entries(root, kind), kind
    assert not [p for p in root.rglob("*.pickle")]
    assert os.environ.get("SCOPECHECK_CACHE") != str(root)


def test_fields_other_modules_add_just_work(monkeypatch):
    """A record with a bare ``tuple`` field holding pairs (as a helper might add) comes back with tuples."""
    import dataclasses
    import sys
    import types

    mod = types.ModuleType("scopecheck.fake_records")
    monkeypatch.setitem(sys.modules, "scopecheck.fake_records", mod)
    exec("from dataclasses import dataclass\n"
         "@dataclass(slots=True)\nclass Rec:\n    name: str\n    pairs: tuple = ()\n    extra: int | None = None\n",
         mod.__dict__)
    recs = [mod.Rec("a", ((1, 2), (3, 4)), 5), mod.Rec("b")]
    back = cache.loads(cache.dumps({"recs": recs}))
    assert back["recs"] == recs and dataclasses.is_dataclass(back["recs"][0])
    assert back["recs"][0].pairs == ((1, 2), (3, 4)) and isinstance(back["recs"][0].pairs[0], tuple)


def test_a_cache_directory_is_kept_under_its_size_limit_least_recently_used_out(cache_root, monkeypatch):
    """A real proof fills source/ and hyp/; with SCOPECHECK_CACHE_MAX_MB the directory written to
    is cut back to 80% of the limit, oldest-used first: an entry read since survives, the
    unread ones of an earlier run go, and the run's own result still comes back warm."""
    from scopecheck.model_code import SourceFunction

    src = cache_root / "source"
    src.mkdir(parents=True)
    # three stale entries of an "earlier version", ~400 kB each, used long ago
    recs = [SourceFunction(name=f"f{i}", file="x.c", line=i, params=(("v", "struct kvm_vcpu *"),))
            for i in range(4000)]
    stale = []
    for i in range(3):
        p = src / f"stale{i}.facts.msgpack"
        assert cache.write(p, recs)
        os.utime(p, (1_000_000 + i, 1_000_000 + i))
        stale.append(p)
    size = stale[0].stat().st_size
    assert size > 100_000
    # one of them is read again now: it becomes the most recently used
    assert cache.read(stale[0]) == recs
    limit_mb = max(1, (3 * size) // (1024 * 1024))
    monkeypatch.setenv("SCOPECHECK_CACHE_MAX_MB", str(limit_mb))
    assert cache.max_bytes() == limit_mb * 1024 * 1024
    removed = cache.prune(src)
    assert removed > 0
    left = {p.name for p in src.iterdir()}
    assert stale[0].name in left, "an entry read since was removed"
    assert stale[1].name not in left, "the least recently used entry was kept"
    assert sum(p.stat().st_size for p in src.iterdir()) <= 0.8 * limit_mb * 1024 * 1024
    # a directory under its limit is left alone
    assert cache.prune(src, limit=10**12) == 0
    # through the proof: its first write to source/ prunes the stale entries (least recently used),
    # not its own, and a second run reads its merged facts back (the read marks them used)
    for p in stale:
        assert cache.write(p, recs)
        os.utime(p, (1_000_000, 1_000_000))
    env = {"SCOPECHECK_CACHE_MAX_MB": "1"}
    r = run_cli("callgraph", str(FIX), "--format", "json", env=env)
    assert r.returncode == 0, r.stderr
    left = {p.name for p in src.iterdir()}
    assert not {p.name for p in stale} <= left, "no stale entry was pruned"
    whole = [p for p in src.iterdir() if p.name.endswith(".whole.msgpack")]
    assert len(whole) == 1
    os.utime(whole[0], (2_000_000, 2_000_000))
    r2 = run_cli("callgraph", str(FIX), "--format", "json", env=env)
    assert r2.returncode == 0 and json.loads(r2.stdout)["stats"] == json.loads(r.stdout)["stats"]
    assert whole[0].stat().st_mtime > 2_000_000, "the warm run did not read the merged facts"
    monkeypatch.setenv("SCOPECHECK_CACHE_MAX_MB", "not a number")
    assert cache.max_bytes() == cache.DEFAULT_MAX_MB * 1024 * 1024
