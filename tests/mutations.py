"""Injected leaks ("mutations") for the 6.1 hyp source, as one ``-p1`` patch made at test time.

The kernel's text is never stored here: :func:`write_patch` copies the few files it
changes from the extracted pristine tree (``build_cache.debian_source_tree()``), inserts
lines next to stable anchors (a function's opening line, then a line inside it), and
diffs the copies with :mod:`difflib` (``a/<rel>`` / ``b/<rel>``). Every inserted line a
test expects at carries a marker comment ``scopecheck-mutation: NAME``; its line number in
the patched file is what the test requires the leak at.

Each mutation touches a field that the pristine 6.1 build does not leak in that function
(expected leak of root kvm_vcpu: field, access, where):

* ``direct``: ``vcpu->vcpu_id`` in ``__kvm_vcpu_run`` (nvhe/switch.c): read of ``vcpu_id``.
* ``macro``: ``scopecheck_mp_state(vcpu)``, a new macro in hyp/switch.h, used in
  ``__kvm_vcpu_run``: read of ``arch.mp_state`` at the line of use.
* ``escalation``: ``container_of(ctxt, struct kvm_vcpu, arch.ctxt)`` in
  ``__sysreg_save_state_nvhe(struct kvm_cpu_context *)`` (nvhe/sysreg-sr.c): an escalation
  at that line; ``escalation-field``: the escalated vcpu's ``vcpu_idx`` read on the next line.
* ``header-inline``: a new ``static inline`` in hyp/switch.h reading ``arch.pause``, called
  from ``__kvm_vcpu_run``: read at the header line.
* ``fn-table``: a new ``handle___scopecheck_probe`` referenced only from ``host_hcall[]``
  (nvhe/hyp-main.c), reading ``->cpu``.
* ``asm``: ``VCPU_SCOPECHECK_SVCR`` added to asm-offsets.c and loaded in ``__guest_enter``
  (hyp/entry.S): read of ``arch.svcr``, origin asm.
* ``alias-write``: ``struct kvm_vcpu_arch *a = &vcpu->arch; a->guest_debug_preserved.mdscr_el1 = 0``
  in ``handle___kvm_vcpu_run`` (nvhe/hyp-main.c): write at the assignment.
* ``pointer-arith``: ``*(int *)((char *)vcpu + offsetof(struct kvm_vcpu, mode))`` in
  ``__kvm_vcpu_run``: read of ``mode`` (mapped by byte range with libclang's layout).
* ``memcpy``: ``memcpy(&local, (char *)vcpu + offsetof(struct kvm_vcpu, requests), 8)`` in
  ``__kvm_vcpu_run``: read of ``requests``.
* ``asm-macro``: an assembler macro ``scopecheck_load_debug_ptr`` in asm/kvm_asm.h whose body
  loads through a C offset macro over a new asm-offsets constant, used in ``__guest_enter``:
  read of ``arch.debug_ptr`` at the line of use, origin asm (seen only after the preprocessor
  and the macro expansion).
* ``binary-only``: in ``__kvm_vcpu_run`` the vcpu pointer is copied by an inline-asm ``mov`` the
  source walk cannot see into, and ``arch.svcr`` is read through the copy: only the machine
  code shows the read (origin binary, a binary-only site in the evidence ledger).
* ``allowed`` (negative): ``vcpu->arch.hcr_el2`` and ``vcpu->arch.ctxt.regs.pc`` in
  ``__kvm_vcpu_run``: nothing reported.

The patch content depends only on the pristine source, so a patch written to a stable path
keeps the build cache (keyed by patch content) warm across runs.
"""

from __future__ import annotations

import difflib
import re
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

MARK = "scopecheck-mutation:"

SWITCH_C = "arch/arm64/kvm/hyp/nvhe/switch.c"
SWITCH_H = "arch/arm64/kvm/hyp/include/hyp/switch.h"
SYSREG_C = "arch/arm64/kvm/hyp/nvhe/sysreg-sr.c"
HYP_MAIN = "arch/arm64/kvm/hyp/nvhe/hyp-main.c"
ASM_OFFSETS = "arch/arm64/kernel/asm-offsets.c"
ENTRY_S = "arch/arm64/kvm/hyp/entry.S"
KVM_ASM_H = "arch/arm64/include/asm/kvm_asm.h"


@dataclass(frozen=True)
class Mutation:
    """One expected (or, ``negative``, forbidden) leak."""

    name: str
    file: str  # path relative to the source tree
    function: str
    field: str  # field path under root kvm_vcpu (a prefix: the analyzer may name a member below it)
    access: str  # read | write | escalation
    kind: str = "field"  # field | escalation
    origin: str = "source"  # source | asm
    negative: bool = False
    line: int = 0  # line in the patched file (filled in by build_patch)


@dataclass(frozen=True)
class Edit:
    """Insert ``text`` before/after the first line matching ``anchor`` at or after the first matching ``within``."""

    file: str
    within: str | None
    anchor: str
    text: str
    where: str = "after"  # after | before


def _m(name: str) -> str:
    return f"/* {MARK} {name} */"


EDITS: tuple[Edit, ...] = (
    # ---- nvhe/switch.c: __kvm_vcpu_run
    Edit(SWITCH_C, r"^int __kvm_vcpu_run\(struct kvm_vcpu \*vcpu\)$", r"^\tu64 exit_code;$",
         "\tu64 scopecheck_requests;\n"
         "\n"
         "\tif (*(int *)((char *)vcpu + offsetof(struct kvm_vcpu, mode)) < 0) " + _m("pointer-arith") + "\n"
         "\t\treturn ARM_EXCEPTION_IL;\n"
         "\tmemcpy(&scopecheck_requests, (char *)vcpu + offsetof(struct kvm_vcpu, requests), 8); "
         + _m("memcpy") + "\n"
         "\tif (scopecheck_requests == 1)\n"
         "\t\treturn ARM_EXCEPTION_IL;\n"
         "\tif (vcpu->vcpu_id < 0) " + _m("direct") + "\n"
         "\t\treturn ARM_EXCEPTION_IL;\n"
         "\tif (scopecheck_mp_state(vcpu) == KVM_MP_STATE_STOPPED) " + _m("macro") + "\n"
         "\t\treturn ARM_EXCEPTION_IL;\n"
         "\tif (scopecheck_vcpu_paused(vcpu))\n"
         "\t\treturn ARM_EXCEPTION_IL;\n"
         "\tif (!vcpu->arch.hcr_el2 && !vcpu->arch.ctxt.regs.pc) " + _m("allowed") + "\n"
         "\t\treturn ARM_EXCEPTION_IL;\n"
         "\t{\n"
         "\t\tunsigned long scopecheck_p;\n"
         "\n"
         "\t\tasm volatile(\"mov %0, %1\" : \"=r\"(scopecheck_p) : \"r\"(vcpu));\n"
         "\t\tif (*(volatile u64 *)(scopecheck_p + offsetof(struct kvm_vcpu, arch.svcr))) "
         + _m("binary-only") + "\n"
         "\t\t\treturn ARM_EXCEPTION_IL;\n"
         "\t}\n"),
    # ---- hyp/switch.h: a new macro and a new static inline
    Edit(SWITCH_H, None, r"^/\* Check whether the FP regs are owned by the guest \*/$",
         "/* scopecheck mutation tests: a macro and a header inline reaching outside the scope */\n"
         "#define scopecheck_mp_state(v)\t((v)->arch.mp_state.mp_state)\n"
         "\n"
         "static inline bool scopecheck_vcpu_paused(struct kvm_vcpu *vcpu)\n"
         "{\n"
         "\treturn vcpu->arch.pause; " + _m("header-inline") + "\n"
         "}\n"
         "\n", where="before"),
    # ---- nvhe/sysreg-sr.c: container_of from kvm_cpu_context to kvm_vcpu
    Edit(SYSREG_C, r"^void __sysreg_save_state_nvhe\(struct kvm_cpu_context \*ctxt\)$", r"^\{$",
         "\tstruct kvm_vcpu *scopecheck_vcpu = container_of(ctxt, struct kvm_vcpu, arch.ctxt); "
         + _m("escalation") + "\n"
         "\n"
         "\tif (scopecheck_vcpu->vcpu_idx < 0) " + _m("escalation-field") + "\n"
         "\t\treturn;\n"
         "\n"),
    # ---- nvhe/hyp-main.c: a handler reached only through host_hcall[]; an alias write
    Edit(HYP_MAIN, None, r"^typedef void \(\*hcall_t\)\(struct kvm_cpu_context \*\);$",
         "static void handle___scopecheck_probe(struct kvm_cpu_context *host_ctxt)\n"
         "{\n"
         "\tDECLARE_REG(struct kvm_vcpu *, vcpu, host_ctxt, 1);\n"
         "\tstruct kvm_vcpu *hyp_vcpu = kern_hyp_va(vcpu);\n"
         "\n"
         "\tcpu_reg(host_ctxt, 1) = hyp_vcpu->cpu; " + _m("fn-table") + "\n"
         "}\n"
         "\n", where="before"),
    Edit(HYP_MAIN, r"^static const hcall_t host_hcall\[\] = \{$", r"^\tHANDLE_FUNC\(__pkvm_vcpu_init_traps\),$",
         "\t[__KVM_HOST_SMCCC_FUNC___pkvm_vcpu_init_traps + 1] = (hcall_t)handle___scopecheck_probe,\n"),
    Edit(HYP_MAIN, r"^static void handle___kvm_vcpu_run\(struct kvm_cpu_context \*host_ctxt\)$",
         r"^\tDECLARE_REG\(struct kvm_vcpu \*, vcpu, host_ctxt, 1\);$",
         "\tstruct kvm_vcpu_arch *scopecheck_arch = &kern_hyp_va(vcpu)->arch;\n"
         "\n"
         "\tscopecheck_arch->guest_debug_preserved.mdscr_el1 = 0; " + _m("alias-write") + "\n"),
    # ---- asm-offsets.c + hyp/entry.S: a new constant and a load through it
    Edit(ASM_OFFSETS, None, r"^\s*DEFINE\(VCPU_HCR_EL2,.*\);$",
         "  DEFINE(VCPU_SCOPECHECK_SVCR,\toffsetof(struct kvm_vcpu, arch.svcr));\n"
         "  DEFINE(VCPU_SCOPECHECK_DEBUG_PTR,\toffsetof(struct kvm_vcpu, arch.debug_ptr));\n"),
    # asm/kvm_asm.h (assembly part): a C offset macro and an assembler macro using it
    Edit(KVM_ASM_H, None, r"^#define CPU_XREG_OFFSET\(x\)",
         "/* scopecheck mutation tests: an offset macro and an assembler macro over asm-offsets */\n"
         "#define SCOPECHECK_DEBUG_PTR_OFFSET\t(VCPU_SCOPECHECK_DEBUG_PTR + 0)\n"
         ".macro scopecheck_load_debug_ptr vcpu, tmp\n"
         "\tldr\t\\tmp, [\\vcpu, #SCOPECHECK_DEBUG_PTR_OFFSET]\n"
         ".endm\n"
         "\n", where="before"),
    # x0 holds the vcpu; x1 is scratch here (the next macro uses it as a temporary)
    Edit(ENTRY_S, r"^SYM_FUNC_START\(__guest_enter\)$", r"^\tadd\tx29, x0, #VCPU_CONTEXT$",
         f"\tldr\tx1, [x0, #VCPU_SCOPECHECK_SVCR]\t// {MARK} asm\n"
         f"\tscopecheck_load_debug_ptr x0, x1\t// {MARK} asm-macro\n"),
)

MUTATIONS: tuple[Mutation, ...] = (
    Mutation("direct", SWITCH_C, "__kvm_vcpu_run", "vcpu_id", "read"),
    Mutation("macro", SWITCH_C, "__kvm_vcpu_run", "arch.mp_state", "read"),
    Mutation("escalation", SYSREG_C, "__sysreg_save_state_nvhe", "<container_of to kvm_vcpu>", "escalation",
             kind="escalation"),
    Mutation("escalation-field", SYSREG_C, "__sysreg_save_state_nvhe", "vcpu_idx", "read"),
    Mutation("header-inline", SWITCH_H, "scopecheck_vcpu_paused", "arch.pause", "read"),
    Mutation("fn-table", HYP_MAIN, "handle___scopecheck_probe", "cpu", "read"),
    Mutation("asm", ENTRY_S, "__guest_enter", "arch.svcr", "read", origin="asm"),
    Mutation("alias-write", HYP_MAIN, "handle___kvm_vcpu_run", "arch.guest_debug_preserved.mdscr_el1", "write"),
    Mutation("pointer-arith", SWITCH_C, "__kvm_vcpu_run", "mode", "read"),
    Mutation("memcpy", SWITCH_C, "__kvm_vcpu_run", "requests", "read"),
    Mutation("asm-macro", ENTRY_S, "__guest_enter", "arch.debug_ptr", "read", origin="asm"),
    Mutation("binary-only", SWITCH_C, "__kvm_vcpu_run", "arch.svcr", "read", origin="binary"),
    Mutation("allowed", SWITCH_C, "__kvm_vcpu_run", "arch.hcr_el2", "read", negative=True),
)


def _apply(lines: list[str], e: Edit) -> list[str]:
    start = 0
    if e.within is not None:
        start = next((i for i, l in enumerate(lines) if re.search(e.within, l.rstrip("\n"))), None)
        if start is None:
            raise ValueError(f"{e.file}: no line matches {e.within!r}")
    at = next((i for i in range(start, len(lines)) if re.search(e.anchor, lines[i].rstrip("\n"))), None)
    if at is None:
        raise ValueError(f"{e.file}: no line matches {e.anchor!r} after line {start + 1}")
    new = e.text.splitlines(keepends=True)
    pos = at + 1 if e.where == "after" else at
    return lines[:pos] + new + lines[pos:]


def build_patch(source_dir: str | Path, workdir: str | Path | None = None) -> tuple[str, list[Mutation]]:
    """(unified diff text, mutations with their lines) for the pristine tree ``source_dir``.

    The files are copied to ``workdir``/a and ``workdir``/b (a temporary directory when not
    given), edited in b/ only, and diffed; ``source_dir`` is only read.
    """
    src = Path(source_dir)
    own_tmp = workdir is None
    work = Path(tempfile.mkdtemp(prefix="scopecheck-mutations-")) if own_tmp else Path(workdir)
    try:
        files = sorted({e.file for e in EDITS})
        for side in ("a", "b"):
            for rel in files:
                d = work / side / rel
                d.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src / rel, d)
        patched: dict[str, list[str]] = {}
        for rel in files:
            lines = (work / "b" / rel).read_text().splitlines(keepends=True)
            for e in EDITS:
                if e.file == rel:
                    lines = _apply(lines, e)
            (work / "b" / rel).write_text("".join(lines))
            patched[rel] = lines
        diff = []
        for rel in files:
            old = (work / "a" / rel).read_text().splitlines(keepends=True)
            diff += difflib.unified_diff(old, patched[rel], f"a/{rel}", f"b/{rel}", n=3)
        text = "".join(diff)
        out = []
        for m in MUTATIONS:
            marker = re.compile(rf"{re.escape(MARK)} {re.escape(m.name)}\b(?!-)")
            hits = [i for i, l in enumerate(patched[m.file], 1) if marker.search(l)]
            if len(hits) != 1:
                raise ValueError(f"mutation {m.name}: marker found {len(hits)} times in {m.file}")
            out.append(replace(m, line=hits[0]))
        return text, out
    finally:
        if own_tmp:
            shutil.rmtree(work, ignore_errors=True)


def write_patch(source_dir: str | Path, dest: str | Path) -> tuple[Path, list[Mutation]]:
    """Write the patch to ``dest`` (rewritten only when its content changes); (path, mutations)."""
    text, muts = build_patch(source_dir)
    dest = Path(dest)
    if not dest.is_file() or dest.read_text() != text:
        from scopecheck.paths import atomic_write_bytes

        atomic_write_bytes(dest, text.encode())
    return dest, muts
