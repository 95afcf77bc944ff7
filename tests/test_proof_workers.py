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
