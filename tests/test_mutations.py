"""Mutation tests: leaks injected into Debian's 6.1 hyp source must be found at their file:line.

tests/mutations.py makes one ``-p1`` patch at test time from the pristine extracted tree
(direct access, macro-expanded access, container_of escalation, header inline, a handler
reached only through ``host_hcall[]``, assembly through a new asm-offsets constant, a
write through an alias pointer, a read only the machine code shows, and an access to an
allowed field). The patched pkvm-tiny
kernel is built once (3-5 minutes on 2 cores, then cached by patch content) and proved
with the rfc-hyp-scope query; the pristine build is proved too, so every expected leak is
shown to be new.
"""

from __future__ import annotations

import pytest

from build_cache import debian_source_tree, pkvm_tiny_61
from mutations import MUTATIONS, Mutation, write_patch

pytestmark = [pytest.mark.kernel, pytest.mark.slow]

QUERY = "rfc-hyp-scope"


@pytest.fixture(scope="module")
def patched():
    """(patch path, mutations with their lines), at a stable path so the build cache hits."""
    from scopecheck.paths import cache_dir

    return write_patch(debian_source_tree().dir, cache_dir("mutations") / "mutations-6.1.patch")


@pytest.fixture(scope="module")
def pristine_proof():
    from scopecheck.proof import prove

    return prove(pkvm_tiny_61().out, query=QUERY, use_cache=True)


@pytest.fixture(scope="module")
def mutant_proof(patched):
    from scopecheck.proof import prove

    patch, _ = patched
    return prove(pkvm_tiny_61(patches=[patch]).out, query=QUERY, use_cache=True)


def _muts(patched) -> dict[str, Mutation]:
    return {m.name: m for m in patched[1]}


def _same_file(leak_file: str | None, rel: str) -> bool:
    return bool(leak_file) and leak_file.replace("\\", "/").endswith(rel)


def _field_matches(leak_field: str, want: str) -> bool:
    return leak_field == want or leak_field.startswith(want + ".") or leak_field.startswith(want + "[")


def _matching(leaks, m: Mutation, line: int | None = None):
    return [l for l in leaks
            if l.kind == m.kind and _same_file(l.file, m.file) and (line is None or l.line == line)
            and _field_matches(l.field, m.field) and l.access == m.access]


def _describe(leaks, m: Mutation) -> str:
    near = [l for l in leaks if _same_file(l.file, m.file)]
    return "\n".join(f"  {l.kind} {l.root}:{l.field} {l.access} in {l.function} at {l.file}:{l.line}:{l.col} "
                     f"({l.origin})" for l in near) or "  (no leaks in that file)"


EXPECTED = [m.name for m in MUTATIONS if not m.negative]


def test_patch_is_deterministic_and_marks_every_mutation(patched, tmp_path):
    from mutations import build_patch

    patch, muts = patched
    text, again = build_patch(debian_source_tree().dir, tmp_path)
    assert patch.read_text() == text  # same content every run: the build cache key stays the same
    assert [m.line for m in muts] == [m.line for m in again]
    assert all(m.line > 0 for m in muts)
    for m in muts:
        assert f"scopecheck-mutation: {m.name}" in (tmp_path / "b" / m.file).read_text().splitlines()[m.line - 1]
    assert "\n+++ b/arch/arm64/kvm/hyp/nvhe/switch.c\n" in text and "--- a/arch/arm64/kvm/hyp/nvhe/switch.c\n" in text


@pytest.mark.parametrize("name", EXPECTED)
def test_mutation_detected(name, patched, mutant_proof, pristine_proof):
    m = _muts(patched)[name]
    found = _matching(mutant_proof.leaks, m, m.line)
    assert found, (f"mutation {name!r} ({m.kind} {m.field} {m.access} in {m.function}) not reported at "
                   f"{m.file}:{m.line}; leaks in that file:\n{_describe(mutant_proof.leaks, m)}")
    assert any(l.function == m.function for l in found), [l.function for l in found]
    assert all(l.origin == m.origin for l in found), [l.origin for l in found]
    assert all(l.chain for l in found)  # reached from an entry point
    # new: nothing like it in the same function of the pristine build
    old = [l for l in _matching(pristine_proof.leaks, m) if l.function == m.function]
    assert not old, f"the pristine 6.1 build already leaks this: {old}"


def test_escalated_vcpu_is_followed(patched, mutant_proof):
    """The container_of line is an escalation and the field read through it a leak of kvm_vcpu."""
    muts = _muts(patched)
    esc, use = muts["escalation"], muts["escalation-field"]
    e = _matching(mutant_proof.leaks, esc, esc.line)
    f = _matching(mutant_proof.leaks, use, use.line)
    assert e and f
    assert {l.root for l in f} == {"kvm_vcpu"}


def test_table_only_handler_is_reached_from_the_host_hcall_dispatcher(patched, mutant_proof):
    m = _muts(patched)["fn-table"]
    found = [l for l in _matching(mutant_proof.leaks, m, m.line) if l.function == m.function]
    assert found
    chain = found[0].chain
    # not an entry point of its own: the dispatcher (handle_host_hcall, inlined into handle_trap)
    # reaches it through the table
    assert chain[-1] == m.function and len(chain) > 1, chain
    assert {"handle_host_hcall", "handle_trap"} & set(chain[:-1]), chain
    assert m.function not in {k[0] for k in mutant_proof.graph.entries}


def test_binary_only_mutation_is_a_binary_only_site(patched, mutant_proof, pristine_proof):
    """The read through the asm-copied pointer is only in the machine code: the ledger says binary-only,
    with the instruction, and the source never saw it."""
    m = _muts(patched)["binary-only"]
    sites = [a for a in mutant_proof.ledger.binary_only
             if _same_file(a.file, m.file) and a.line == m.line and _field_matches(a.path, m.field)]
    assert sites, [(a.file, a.line, a.path) for a in mutant_proof.ledger.binary_only if _same_file(a.file, m.file)]
    assert all(a.insn and a.address is not None and a.origin == "binary" for a in sites)
    assert not any(_same_file(a.file, m.file) and a.line == m.line for a in mutant_proof.ledger.source_only)
    c = mutant_proof.ledger.counts
    assert c["binary_only"] >= pristine_proof.ledger.counts["binary_only"] + 1


def test_allowed_field_not_reported(patched, mutant_proof):
    m = _muts(patched)["allowed"]
    at_line = [l for l in mutant_proof.leaks if _same_file(l.file, m.file) and l.line == m.line]
    assert not at_line, at_line
    # ... although the analyzer saw the accesses (the negative is not vacuous)
    seen = {a.path for a in mutant_proof.accesses
            if _same_file(a.file, m.file) and a.line == m.line and a.root == "kvm_vcpu"}
    assert "arch.hcr_el2" in seen and any(p.startswith("arch.ctxt.regs.pc") for p in seen), seen


def test_only_the_mutations_are_new(patched, mutant_proof, pristine_proof):
    """Every leak of the mutant build is a pristine one (by function and field) or an expected mutation."""
    muts = patched[1]

    def ident(l):
        return (l.kind, l.function, l.root, l.field, l.access)

    old = {ident(l) for l in pristine_proof.leaks}
    new = [l for l in mutant_proof.leaks if ident(l) not in old]
    unexpected = [l for l in new
                  if not any(not m.negative and _matching([l], m, m.line) for m in muts)]
    assert not unexpected, "\n".join(f"{l.kind} {l.root}:{l.field} {l.access} in {l.function} at "
                                     f"{l.file}:{l.line}" for l in unexpected)


def test_cli_gate_fails_on_exactly_the_mutations(patched, mutant_proof, pristine_proof, tmp_path):
    """`callgraph --fail-on-leak --baseline <pristine json>` on the mutant: exit 1, the mutations gate."""
    import json

    from conftest import run_cli

    base = tmp_path / "pristine.json"
    r = run_cli("callgraph", str(pristine_proof.inputs.build_dir), "--query", QUERY, "--format", "json",
                "--quiet", "-o", str(base))
    assert r.returncode == 0, r.stderr
    r = run_cli("callgraph", str(mutant_proof.inputs.build_dir), "--query", QUERY, "--format", "json",
                "--quiet", "--fail-on-leak", "--baseline", str(base))
    assert r.returncode == 1, r.stderr
    gating = [l for l in json.loads(r.stdout)["leaks"] if not l["baselined"]]
    want = [m for m in patched[1] if not m.negative]

    def hit(l, m):
        return (l["file"], l["line"], l["kind"], l["access"]) == (m.file, m.line, m.kind, m.access) \
            and _field_matches(l["field"], m.field)

    assert sorted(m.name for m in want if any(hit(l, m) for l in gating)) == sorted(m.name for m in want)
    assert all(any(hit(l, m) for m in want) for l in gating), gating
    assert len(gating) == len(want), gating
