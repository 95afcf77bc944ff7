"""Baselines fingerprint the access kind: a new write to a field that a baselined leak only read fails.

A small hyp source, built with the mini hyp's headers (as the query tests build theirs), reads
``vcpu->vcpu_id`` (a leak under rfc-hyp-scope); its baseline is taken. The next version of the
same function also writes that field: the gate must fail on the write, while the read stays
baselined.
"""

from __future__ import annotations

import json

from conftest import run_cli
from test_queries import build

HEAD = '#include "types.h"\n#include "kvm_host.h"\n\n'
READ_ONLY = HEAD + """noinline int bl_vcpu_id(struct kvm_vcpu *vcpu)
{
\treturn vcpu->vcpu_id;
}
"""
READ_AND_WRITE = HEAD + """noinline int bl_vcpu_id(struct kvm_vcpu *vcpu)
{
\tint id = vcpu->vcpu_id;

\tvcpu->vcpu_id = id + 1;
\treturn id;
}
"""


def _leaks(out: str) -> list[dict]:
    return [l for l in json.loads(out)["leaks"] if l["field"] == "vcpu_id"]


def test_new_write_to_a_baselined_read_fails_the_gate(tmp_path):
    src = tmp_path / "src" / "bl.c"
    src.parent.mkdir()
    src.write_text(READ_ONLY)
    (tmp_path / "old").mkdir()
    old = build(src, (tmp_path / "old").resolve())
    base = tmp_path / "baseline.json"
    r = run_cli("callgraph", str(old), "--format", "json", "--output", str(base), "--no-cache")
    assert r.returncode == 0, r.stderr
    (read,) = _leaks(base.read_text())
    assert read["access"] == "read"
    # the same code against its own baseline passes
    r = run_cli("callgraph", str(old), "--baseline", str(base), "--fail-on-leak", "--no-cache")
    assert r.returncode == 0, r.stdout + r.stderr

    src.write_text(READ_AND_WRITE)
    (tmp_path / "new").mkdir()
    new = build(src, (tmp_path / "new").resolve())
    r = run_cli("callgraph", str(new), "--format", "json", "--baseline", str(base), "--fail-on-leak",
                "--no-cache")
    assert r.returncode == 1, r.stderr
    by_access = {l["access"]: l for l in _leaks(r.stdout)}
    assert by_access["read"]["baselined"] is True
    assert by_access["read"]["fingerprint"] == read["fingerprint"]
    assert by_access["write"]["baselined"] is False


def test_old_baselines_are_refused_with_one_line(tmp_path):
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"tool": "scopecheck", "command": "callgraph", "leaks": [{"fingerprint": "ab"}]}))
    from conftest import FIXTURE_BUILD

    r = run_cli("callgraph", str(FIXTURE_BUILD / "after-dwarf5"), "--baseline", str(old))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "older scopecheck" in r.stderr
