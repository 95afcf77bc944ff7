"""The scope proof reads the binary in one of the worker processes that parse the C (the first
job they take), so that no more processes compete than there are cores. What it finds there
must be what it finds in the calling process, and its errors must reach the caller whole."""

from __future__ import annotations

import os

import pytest

from conftest import FIXTURE_BUILD, fixture_variants
from scopecheck.errors import InputError, ToolMissing
from scopecheck.output import proof as out
from scopecheck.proof import prove
from scopecheck.source import clang_facts as cf
from scopecheck.source import compdb as cdb

VARIANT = fixture_variants()[0]


def _fixture_cmds():
    build = FIXTURE_BUILD / VARIANT
    return [c for c in cdb.load(build / "compile_commands.json") if c.file.endswith(".c")]


def _raise_input_error(msg):
    raise InputError(msg)


def _raise_tool_missing(program, package):
    raise ToolMissing(program, package)


def _pid():
    return os.getpid()


def test_binary_door_in_a_worker_equals_the_binary_door_here(monkeypatch):
    with_workers = prove(FIXTURE_BUILD / VARIANT, use_cache=False)
    started = []
    real = cf.PendingSourceFacts._start_workers

    def spy(self):
        real(self)
        started.append(self._first is not None)

    monkeypatch.setattr(cf.PendingSourceFacts, "_start_workers", spy)
    prove(FIXTURE_BUILD / VARIANT, use_cache=False)
    assert started == [True]  # the fixture's nine C units start workers, the binary door is their first job
    monkeypatch.setattr(os, "cpu_count", lambda: 1)  # one core: no workers, the binary is read here
    here = prove(FIXTURE_BUILD / VARIANT, use_cache=False)
    assert started == [True, False]
    assert out.to_json(with_workers) == out.to_json(here)


def test_first_job_runs_in_a_worker_and_its_errors_reach_the_caller():
    cmds = _fixture_cmds()
    assert len(cmds) > 2
    job = cf.start_source_facts(cmds, cache=False, first=(_pid, ()))
    try:
        pid = job.first()
        assert isinstance(pid, int) and pid != os.getpid()
        assert job.result().functions  # the C units are parsed as well
    finally:
        job.close()
    for fn, args, cls in ((_raise_input_error, ("no kvm_vcpu here",), InputError),
                          (_raise_tool_missing, ("cpp", "cpp"), ToolMissing)):
        job = cf.start_source_facts(cmds, cache=False, first=(fn, args))
        try:
            with pytest.raises(cls) as e:
                job.first()
        finally:
            job.close()
        assert args[0] in str(e.value)
        if cls is ToolMissing:
            assert (e.value.program, e.value.package) == args


def test_first_job_is_not_run_without_workers():
    job = cf.start_source_facts(_fixture_cmds()[:2], cache=False, first=(_pid, ()))  # two units: no workers
    try:
        assert job.first() is cf.NOT_RUN
    finally:
        job.close()


def _fresh_memos():
    for d in (cf._HEADER_FUNCTIONS, cf._HEADER_VARIABLES, cf._PREFIXES, cf._SENT):
        d.clear()
    cf._LOCAL_NEW.clear()
    cf._LOADED.clear()


def _parse_in_another_process(cmd, share):
    """(the TU's facts as the cache stores them, header memo entries it read from ``share``),
    parsed in a forked process, as a second worker would."""
    import multiprocessing as mp

    with mp.get_context("fork").Pool(1) as pool:
        return pool.apply(_parse_here, (cmd, share))


def _parse_here(cmd, share):
    before = cf.STATS["header_memo_loaded"]
    tf = cf.parse_tu(cmd, includes=False, share=share)
    return tf.to_wire(), cf.STATS["header_memo_loaded"] - before


def test_header_functions_walked_by_one_worker_are_what_another_would_walk(tmp_path):
    """A worker takes the header functions another worker published instead of walking them
    again: its facts must be exactly those it computes alone (they are cached per TU)."""
    cmds = sorted(_fixture_cmds(), key=lambda c: c.file)
    uses = [c for c in cmds if '#include "hyp.h"' in open(c.file).read()]  # hyp.h includes inline.h
    assert len(uses) >= 2, "the fixture's header inlines are included by several units"
    first, second = uses[0], uses[1]
    _fresh_memos()
    alone = cf.parse_tu(second, includes=False).to_wire()
    _fresh_memos()
    cf.parse_tu(first, includes=False, share=str(tmp_path))  # this process walks and publishes
    published = sorted(os.listdir(tmp_path))
    assert published and all(n.endswith(".memo") for n in published)
    _fresh_memos()
    shared, loaded = _parse_in_another_process(second, str(tmp_path))
    assert loaded > 0  # it did take the other's entries ...
    assert shared == alone  # ... and they are what it computes alone
    _fresh_memos()


def test_published_header_memos_are_only_a_speed_up(tmp_path):
    """Half-written files, this process's own files and damaged files are not read; what is
    not found is walked."""
    cmd = sorted(_fixture_cmds(), key=lambda c: c.file)[0]
    _fresh_memos()
    alone = cf.parse_tu(cmd, includes=False).to_wire()
    (tmp_path / "1.0.1.tmp").write_bytes(b"half written")
    (tmp_path / f"{os.getpid()}.0.1.memo").write_bytes(b"not an entry")
    (tmp_path / "2.0.1.memo").write_bytes(b"SCOPECHECK-CACHE\x01\ndamaged")
    _fresh_memos()
    before = cf.STATS["header_memo_loaded"]
    assert cf.parse_tu(cmd, includes=False, share=str(tmp_path)).to_wire() == alone
    assert cf.STATS["header_memo_loaded"] == before
    _fresh_memos()
    assert cf.parse_tu(cmd, includes=False, share=str(tmp_path / "gone")).to_wire() == alone  # no directory
    _fresh_memos()


def test_the_workers_share_directory_is_removed():
    job = cf.start_source_facts(_fixture_cmds(), cache=False)
    share = job._share
    try:
        assert share and os.path.isdir(share)
        job.result()
    finally:
        job.close()
    assert not os.path.exists(share)
