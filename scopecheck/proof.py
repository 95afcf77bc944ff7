"""The scope proof as a library call: facts from both doors, the graph, the judgement.

    from scopecheck.proof import prove
    result = prove("build-6.1", query="rfc-hyp-scope")
    result.leaks, result.footprint, result.unresolved

With a build directory and its source tree the source door (libclang on
compile_commands.json, asm-offsets constants in hyp .S files) supplies accesses with
file:line:col; the binary door supplies functions, call edges and, for what the source
cannot show, loads and stores. A bare vmlinux runs binary-only, and the result says what
that cannot see.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from scopecheck.errors import InputError
from scopecheck.graph import HypGraph, build_graph, norm_file, norm_key, preload_graph
from scopecheck.model_code import Escalation, FieldAccess, FuncKey
from scopecheck.query import Query, canonical, load_query

SCHEMA_VERSION = 2  # 2: top-level "evidence" (the reconciliation ledger), binary accesses with address/insn
#: 2: the access kind is part of Leak.fingerprint (1 had query, function, field and kind only)
FINGERPRINT_VERSION = 2
ROOTS = ("kvm_vcpu", "kvm_vcpu_arch", "kvm_cpu_context", "vcpu_hyp_state", "pkvm_hyp_vcpu")
#: also followed by the source door (host-owned kvm memory for the trust-boundary query), not judged as vcpu roots
BOUNDARY_ROOTS = ("kvm",)
NVHE_DIR = "arch/arm64/kvm/hyp/nvhe/"

BINARY_ONLY_LIMITS = (
    "binary-only: field accesses come from loads and stores through registers that DWARF says hold "
    "a vcpu pointer; accesses through pointers DWARF does not track, and fields only passed by address, "
    "are not seen",
    "binary-only: file:line comes from the line table (inlined code is attributed to the inlined function)",
    "binary-only: indirect calls are resolved through function tables found in the binary only",
)


@dataclass(slots=True)
class Inputs:
    """What a TARGET (and --source) resolve to."""

    elf: Path
    build_dir: Path | None
    source_root: Path | None
    compdb: Path | None
    asm_offsets: Path | None


@dataclass(slots=True)
class Leak:
    query: str
    root: str
    field: str
    access: str
    size: int | None
    offset: int | None
    function: str
    function_key: FuncKey
    file: str | None
    line: int | None
    col: int | None
    origin: str
    via: str | None
    chain: list[str]
    kind: str = "field"  # field | escalation
    baselined: bool = False
    provenance: str | None = None  # "host" | "hyp" | None: whose memory the access touched

    @property
    def fingerprint(self) -> str:
        """Stable id for baselines: query, function, field, kind and the access (read/write/rw/addr), so a
        new write to a field that a baselined leak only read is a new leak (FINGERPRINT_VERSION 2)."""
        ident = (f"{self.query}|{self.function}|{self.function_key[1]}|{self.root}:{self.field}|{self.kind}"
                 f"|{self.access}")
        return hashlib.sha256(ident.encode()).hexdigest()[:32]

    def to_dict(self) -> dict:
        return {"query": self.query, "kind": self.kind, "root": self.root, "field": self.field,
                "access": self.access, "bytes": self.size, "offset": self.offset,
                "function": self.function, "file": self.file, "line": self.line, "col": self.col,
                "origin": self.origin, "via": self.via, "chain": self.chain,
                "fingerprint": self.fingerprint, "baselined": self.baselined, "provenance": self.provenance}


@dataclass(slots=True)
class ProofResult:
    query: Query
    inputs: Inputs
    mode: str  # "source+binary" or "binary-only"
    limitations: list[str]
    graph: HypGraph
    accesses: list[FieldAccess]  # canonical root/path, code in the binary
    leaks: list[Leak]
    footprint: dict  # "root:path" -> {...}
    unresolved: list[dict]
    stats: dict = field(default_factory=dict)
    diagnostics: list[str] = field(default_factory=list)
    ledger: object = None  # scopecheck.reconcile.Ledger: every access site's evidence class
    source_facts: object = None  # the source door's SourceFacts (None binary-only); `narrow` reads params/calls

    @property
    def gating_leaks(self) -> list[Leak]:
        return [l for l in self.leaks if not l.baselined]


# ---------------------------------------------------------------- inputs

def resolve_inputs(target: str | os.PathLike, source: str | os.PathLike | None = None,
                   binary_only: bool = False) -> Inputs:
    from scopecheck.paths import check_input_file

    t = Path(target)
    check_input_file(t, what="kernel image, object or build directory", dir_ok=True)
    build_dir = None
    if t.is_dir():
        build_dir = t
        cands = [t / "vmlinux", t / NVHE_DIR / "kvm_nvhe.o", t / "kvm_nvhe.o"]
        elf = next((c for c in cands if c.is_file()), None)
        if elf is None:
            raise InputError(f"{t}: not a kernel build directory (no vmlinux, no {NVHE_DIR}kvm_nvhe.o)")
    else:
        elf = t
        # a kvm_nvhe.o inside a build tree: find the build dir
        parts = t.resolve().parts
        if t.name == "kvm_nvhe.o" and len(parts) > 6 and "/".join(parts[-6:-1]) == NVHE_DIR.strip("/"):
            build_dir = Path(*parts[:-6])
        elif (t.parent / "compile_commands.json").is_file():
            build_dir = t.parent
    if binary_only:
        return Inputs(elf, build_dir, None, None, None)
    compdb = None
    src_root = Path(source) if source else None
    if src_root is not None:
        check_input_file(src_root, what="kernel source directory (--source)", dir_only=True)
    if build_dir is not None:
        c = build_dir / "compile_commands.json"
        compdb = c if c.is_file() else None
        if src_root is None:
            link = build_dir / "source"
            src_root = link.resolve() if link.exists() else (build_dir if (build_dir / "Kconfig").is_file()
                                                               else None)
        if compdb is None and src_root is not None and (src_root / "scripts/clang-tools").is_dir():
            compdb = _make_compdb(src_root, build_dir)
    if compdb is None and source is not None:
        raise InputError(f"no compile_commands.json in {build_dir or t.parent}; "
                         "build with `scopecheck kernel build` or run scripts/clang-tools/gen_compile_commands.py")
    offs = None
    if build_dir is not None:
        for c in (build_dir / "include/generated/asm-offsets.h", build_dir / "offsets.h"):
            if c.is_file():
                offs = c
                break
    return Inputs(elf, build_dir, src_root, compdb, offs)


def _make_compdb(src: Path, out: Path) -> Path | None:
    import subprocess
    import sys

    script = src / "scripts/clang-tools/gen_compile_commands.py"
    dest = out / "compile_commands.json"
    try:
        subprocess.run([sys.executable, str(script), "-d", str(out), "-o", str(dest)], check=True,
                       capture_output=True, timeout=300)
    except (OSError, subprocess.SubprocessError):
        return None
    return dest if dest.is_file() else None


# ---------------------------------------------------------------- the proof

def prove(target, source=None, query: str | Query = "rfc-hyp-scope", *, binary_only: bool = False,
          entry_points: list[str] | None = None, baseline: set[str] | None = None,
          use_cache: bool = True, progress=None, include_compiled_away: bool = False) -> ProofResult:
    q = query if isinstance(query, Query) else load_query(query)
    inp = resolve_inputs(target, source, binary_only)
    step = progress or (lambda msg: None)

    job = None
    if inp.compdb is not None:
        step("reading hyp source with libclang and the binary (worker processes)")
        # the binary door is the first job of the workers that parse the C: three busy processes
        # on two cores cost a third more CPU than two (caches thrash); a cached one is read here
        offload = not (use_cache and _binary_cached(inp.elf))
        job = _start_source(inp, use_cache, first=(_binary_door_job, (inp, q, use_cache)) if offload else None)
    try:
        got = job.pending.first() if job is not None else None
        if got is None or got is _not_run():
            got = _binary_door(inp, q, use_cache, step)
        facts, b_acc, b_esc, b_stats, layouts, layout_notes, params = got
        src_facts = None
        diagnostics: list[str] = list(layout_notes)
        if job is not None:
            step("reading hyp assembly, waiting for the C workers")
            src_facts, inp.source_root = _finish_source(job, inp, use_cache)
            diagnostics.extend(src_facts.diagnostics)
    finally:
        if job is not None:
            job.pending.close()
    root_str = str(inp.source_root) if inp.source_root else None
    if params is not None:
        params = {norm_key(k, root_str): v for k, v in params.items()}
    mode = "source+binary" if src_facts is not None else "binary-only"
    limits = [] if src_facts is not None else list(BINARY_ONLY_LIMITS)
    if src_facts is None and isinstance(b_stats, dict) and not b_stats.get("seeds") and not b_acc:
        # nothing seen is not "no leaks": the machine code gave no root pointer to follow
        raise InputError(f"{inp.elf}: cannot be judged binary-only: no hyp function's DWARF holds a pointer to "
                         f"{', '.join(sorted(layouts))} (were the hyp's C units found? "
                         f"{b_stats.get('functions', 0)} functions read); give the build directory for source facts")

    step("building the call graph")
    g = build_graph(facts, src_facts, root_str, entry_points or q.entry_points or None)

    # reconcile: every machine access explained by the source or reported itself, nothing dropped
    step("reconciling source and machine code")
    from scopecheck.reconcile import binary_provenance, reconcile

    bs = b_stats if isinstance(b_stats, dict) else {}
    b_prov = binary_provenance(b_acc, bs.get("provenance"), facts)  # whose memory each machine access touches
    ledger = reconcile(src_facts, b_acc, b_esc, facts, g, root_str, layouts,
                       b_unanalysed=bs.get("unanalysed", ()), call_args=bs.get("call_args", ()),
                       params=params, include_compiled_away=include_compiled_away)
    canon = [(j.access, j.roots) for j in ledger.judged]
    escalations = ledger.escalations
    accesses = canon
    dropped_not_in_binary = ledger.counts["compiled_away"]

    judged_funcs = _applicable_functions(q, src_facts, g, root_str, params)
    if judged_funcs is not None and not judged_funcs and params is not None and not any(params.values()):
        raise InputError(f"{inp.elf}: query {q.id} judges functions by their parameter types, and neither "
                         "the source nor the DWARF gives any")
    leaks: list[Leak] = []
    if q.provenance is not None:  # a trust-boundary query: host-owned memory, judged by direction
        from scopecheck import boundary

        leaks = boundary.judge(q, g, canon, judged_funcs)
    for a, orig_roots in (canon if q.provenance is None else ()):
        if not a.path or not any(q.judges_root(r) for r in orig_roots):
            continue
        if judged_funcs is not None and a.function not in judged_funcs:
            continue
        verdict = q.is_allowed(a.root, a.path)
        if verdict is False and a.access == "addr" and _contains_allowed(q, a.root, a.path):
            continue  # &vcpu->arch: taking the address of a struct that holds allowed fields
        if verdict is False:
            leaks.append(_leak(q, g, a, "field"))
    if q.escalations:
        for e in escalations:
            if judged_funcs is not None and e.function not in judged_funcs:
                continue
            if q.is_allowed(e.to_root, "") is True and q.allowed_prefixes(e.to_root) in (["*"], [""]):
                continue
            acc = FieldAccess(root=e.from_root, path=f"<container_of to {e.to_root}>", access="escalation",
                              function=e.function, file=e.file, line=e.line, col=e.col, origin=e.origin,
                              via=e.via)
            leaks.append(_leak(q, g, acc, "escalation"))
    leaks = _dedupe(leaks)
    for l in leaks:
        l.baselined = bool(baseline) and l.fingerprint in baseline
    leaks.sort(key=lambda l: (l.file or "", l.line or 0, l.col or 0, l.field))

    footprint = _footprint(canon)
    stats = {"functions": g.graph.number_of_nodes(), "edges": g.graph.number_of_edges(),
             "entry_points": len(g.entries), "accesses": len(accesses),
             "source_accesses_not_in_binary": dropped_not_in_binary,
             "fields_touched": len(footprint), "leaks": len(leaks),
             # without timings, so that the same inputs give byte-identical output
             "binary": {k: v for k, v in (b_stats if isinstance(b_stats, dict) else {}).items()
                        if k not in ("timings", "unanalysed", "call_args", "provenance")}}
    if q.provenance is not None:
        stats["boundary"] = boundary.section(q, g, [a for a, _ in canon])
        stats["boundary"]["binary_provenance"] = {k: b_prov[k] for k in ("summaries", "rounds", "host_fields")
                                                  if k in b_prov}
        why = boundary.unjudgeable(stats["boundary"]["totals"])
        if why is not None:
            raise InputError(f"{inp.elf}: query {q.id} cannot be judged ({mode}): {why}")
    return ProofResult(q, inp, mode, limits, g, [a for a, _ in canon], leaks, footprint, g.unresolved,
                       stats, diagnostics, ledger, source_facts=src_facts)


def _binary_door(inp: Inputs, q: Query, use_cache: bool, step):
    """(hyp functions, machine accesses, escalations, stats, layouts, layout notes, parameter types
    or None) read from the ELF; the parameter types' keys are not normalised yet."""
    from scopecheck.binary.elf import ElfImage
    from scopecheck.binary.functions import hyp_functions

    cached = _binary_cache_load(inp.elf) if use_cache else None
    if cached is not None:
        return _binary_door_rest(inp, q, use_cache, step, None, cached)
    step("reading hyp functions from the binary")
    # one ElfImage for the functions and the machine accesses: the DIEs pyelftools parsed for
    # the first are not parsed again for the second
    with ElfImage(inp.elf) as elf:
        elf.require_dwarf()
        facts = hyp_functions(elf)
        return _binary_door_rest(inp, q, use_cache, step, elf, (facts, None, None, None))


def _binary_door_rest(inp: Inputs, q: Query, use_cache: bool, step, elf, got):
    from scopecheck.layout import load_layouts

    facts, b_acc, b_esc, b_stats = got
    if not facts.functions:
        raise InputError(f"{inp.elf}: no nVHE hyp code found (no __kvm_nvhe_ functions with DWARF)")
    layouts = {k: v for k, v in load_layouts(inp.elf, ROOTS, use_cache=use_cache).items() if v}
    layout_notes = []
    for extra in BOUNDARY_ROOTS:  # sizes for the boundary's kvm accesses: best effort
        try:
            layouts.update({k: v for k, v in load_layouts(inp.elf, (extra,), use_cache=use_cache).items() if v})
        except InputError as e:
            layout_notes.append(f"struct {extra}: no layout, its fields have no offset or size ({e})")
    if "kvm_vcpu" not in layouts:
        raise InputError(f"{inp.elf}: struct kvm_vcpu not found in DWARF")
    _refuse_unjudgeable(q, layouts, inp)
    if b_acc is None:
        step("reading loads and stores of vcpu fields from the machine code")
        from scopecheck.binary.accesses import binary_accesses

        b_acc, b_esc, b_stats = binary_accesses(elf, facts, use_cache=use_cache)
        if use_cache:
            _binary_cache_save(inp.elf, (facts, b_acc, b_esc, b_stats))
    params = None
    if q.only_param_type or "pkvm_hyp_vcpu" in (q.roots or ()):
        from scopecheck.binary.params import param_types

        params = param_types(elf if elf is not None else inp.elf, facts)
        if params.unreadable:  # never silent: listed as unanalysed evidence
            b_stats = dict(b_stats) if isinstance(b_stats, dict) else {}
            b_stats["unanalysed"] = list(b_stats.get("unanalysed", ())) + params.unreadable
    return facts, b_acc, b_esc, b_stats, layouts, layout_notes, params


def _binary_door_job(inp: Inputs, q: Query, use_cache: bool):
    """:func:`_binary_door` in a worker process (no progress)."""
    return _binary_door(inp, q, use_cache, lambda msg: None)


def _not_run():
    from scopecheck.source.clang_facts import NOT_RUN

    return NOT_RUN


def _binary_cached(elf_path: Path) -> bool:
    from scopecheck import cache

    p = _binary_cache_path(elf_path) if cache.enabled() else None
    return p is not None and p.is_file()


def _binary_cache_path(elf_path: Path) -> Path | None:
    """Keyed by the ELF's identity (build-id, size, mtime, path) and scopecheck's code fingerprint."""
    from scopecheck import cache
    from scopecheck.binary.elf import ElfImage
    from scopecheck.paths import cache_dir

    try:
        with ElfImage(elf_path) as elf:
            ident = ["hyp-binary", elf.build_id, elf.file_size, elf.mtime_ns, os.path.realpath(elf_path)]
    except InputError:
        return None
    return cache_dir("hyp") / (cache.key(*ident) + ".msgpack")


def _binary_cache_load(elf_path: Path):
    """Binary facts of this exact ELF from a previous run (msgpack, checked; a bad entry is rebuilt)."""
    from scopecheck import cache

    if not cache.enabled():
        return None
    p = _binary_cache_path(elf_path)
    if p is None:
        return None
    data = cache.read(p)
    if isinstance(data, tuple) and len(data) == 4:
        return data
    if data is not None:
        cache.report_bad(p, "unexpected shape")
    return None


def _binary_cache_save(elf_path: Path, data) -> None:
    from scopecheck import cache

    if not cache.enabled():
        return
    p = _binary_cache_path(elf_path)
    if p is not None:
        cache.write(p, tuple(data))


@dataclass
class _SourceJob:
    """The source door, started: C translation units parsing in worker processes."""
    pending: object  # clang_facts.PendingSourceFacts
    hyp: list
    c_cmds: list
    s_files: list
    kernel: bool
    root: Path | None


def _start_source(inp: Inputs, use_cache: bool, progress=None, first=None) -> _SourceJob:
    from scopecheck.source import compdb as cdb
    from scopecheck.source.clang_facts import start_source_facts

    text = inp.compdb.read_text(errors="replace")
    kernel = "__KVM_NVHE_HYPERVISOR__" in text or "/kvm/hyp/nvhe/" in text
    keep = (lambda f, raw: "__KVM_NVHE_HYPERVISOR__" in raw or "/kvm/hyp/nvhe/" in f) if kernel else None
    cmds = cdb.load(inp.compdb, source_root=inp.source_root, keep=keep)
    hyp = [c for c in cmds if _is_hyp_source(c, kernel)]
    root = inp.source_root
    if root is None and hyp:  # no kernel tree: the entries' common directory
        root = Path(os.path.commonpath([c.directory for c in hyp]))
    if not hyp:
        raise InputError(f"{inp.compdb}: no nVHE hyp sources in the compilation database")
    c_cmds = [c for c in hyp if str(c.file).endswith(".c")]
    s_files = [c.file for c in hyp if str(c.file).endswith(".S")]
    if kernel and not s_files and root is not None:
        # the kernel's database lists no .S: take the hyp assembly of the nvhe objects
        hyp_dir = Path(root) / "arch/arm64/kvm/hyp"
        s_files = sorted(str(p) for p in [*hyp_dir.glob("nvhe/*.S"), *hyp_dir.glob("*.S")])
    also = None
    c_cmd = _context_cmd(c_cmds)
    if inp.asm_offsets is not None and s_files and c_cmd is not None:
        # the assembly's C context (layouts, prototypes) from the worker that parses c_cmd anyway
        from scopecheck.source.asm_pp import c_context_of, context_roots

        also = (c_cmd.file, c_context_of, (sorted(context_roots(inp.asm_offsets, ROOTS)),))
    pending = start_source_facts(c_cmds, roots=ROOTS + BOUNDARY_ROOTS, cache=use_cache, progress=progress,
                                 also=also, first=first)
    return _SourceJob(pending, hyp, c_cmds, s_files, kernel, root)


def _context_cmd(c_cmds):
    """The hyp C translation unit the assembly's C context is read from."""
    return next((c for c in c_cmds if c.file.endswith(("/switch.c", "/hyp-main.c"))), c_cmds[0] if c_cmds else None)


def _finish_source(job: _SourceJob, inp: Inputs, use_cache: bool):
    """(SourceFacts, source root): the assembly is read here while the C workers run, then their
    facts are merged."""
    asm = None
    if inp.asm_offsets is not None and job.s_files:
        asm = _asm_facts(job.hyp, job.c_cmds, job.s_files, inp, job.kernel, job.root, use_cache,
                         context=job.pending.also)
    preload_graph()  # the call graph's library is imported while the workers parse, not after them
    facts = job.pending.result()
    if asm is not None:
        facts.accesses.extend(asm[0])
        facts.unanalysed.extend(asm[1])
        facts.diagnostics.extend(asm[2])
    return facts, job.root


def _source_facts(inp: Inputs, use_cache: bool, progress):
    job = _start_source(inp, use_cache, progress)
    try:
        return _finish_source(job, inp, use_cache)
    finally:
        job.pending.close()


def _asm_facts(hyp, c_cmds, s_files, inp: Inputs, kernel: bool, root, use_cache: bool,
               context=None) -> tuple[list, list, list]:
    """(accesses, unanalysed, diagnostics) of the hyp assembly, preprocessed with each file's own command
    (source/asm_pp.py); the regex reading of the unpreprocessed file only where no command or
    no preprocessor run worked. ``context``: gives the C context read by a C worker, or None
    (:func:`asm_pp.asm_facts`)."""
    from scopecheck.source.asm_offsets import asm_accesses, parse_asm_offsets
    from scopecheck.source.asm_pp import asm_facts, kbuild_asm_commands

    s_cmds = [c for c in hyp if str(c.file).endswith(".S")]
    if not s_cmds and kernel and c_cmds:  # 6.1's database lists no .S: kbuild's .cmd files have them
        s_cmds = [c for c in kbuild_asm_commands(c_cmds[0].directory, pattern=".*.nvhe.o.cmd")
                  if c.file in set(s_files)]
    res = asm_facts(s_cmds, inp.asm_offsets, _context_cmd(c_cmds), roots=ROOTS, source_root=root, cache=use_cache,
                    context=context)
    accesses = list(res.accesses)
    # a file the preprocessor failed on is read by the regex fallback below, which misses offsets
    # built by C macros: it stays listed as unanalysed, with why, and the failure is a diagnostic
    unanalysed = [replace(u, detail=f"{u.detail}; read without the preprocessor (offsets built by C macros "
                                    "are not seen)") if u.kind == "asm-file" else u for u in res.unanalysed]
    done = {c.file for c in s_cmds} - {os.path.normpath(os.path.join(str(root or ""), u.file or ""))
                                       for u in res.unanalysed if u.kind == "asm-file"}
    rest = [f for f in s_files if os.path.normpath(f) not in done]
    if rest:
        accesses.extend(asm_accesses(rest, parse_asm_offsets(inp.asm_offsets)))
    return accesses, unanalysed, list(res.diagnostics)


def _is_nvhe(cmd) -> bool:
    """nVHE hyp objects: files in hyp/nvhe/, and shared hyp/*.c compiled with __KVM_NVHE_HYPERVISOR__."""
    if "-D__KVM_NVHE_HYPERVISOR__" in cmd.arguments:
        return True
    if "-D__KVM_VHE_HYPERVISOR__" in cmd.arguments:
        return False
    f = str(cmd.file)
    out = str(getattr(cmd, "output", "") or "")
    return "/kvm/hyp/nvhe/" in f or "/kvm/hyp/nvhe/" in out or f.startswith(NVHE_DIR)


def _is_hyp_source(cmd, kernel: bool) -> bool:
    """In a kernel's database the nVHE objects; in any other (the fixture) every entry."""
    out = str(getattr(cmd, "output", "") or "")
    if out.endswith((".s", ".i")) or "asm-offsets" in str(cmd.file):
        return False  # generators compiled with -S, not hyp code
    return _is_nvhe(cmd) if kernel else True


def _with(a: FieldAccess, **kw) -> FieldAccess:
    d = {s: getattr(a, s) for s in FieldAccess.__slots__}
    d.update(kw)
    return FieldAccess(**d)


def _offset_size(layouts, root, path, a) -> tuple[int | None, int | None]:
    lay = layouts.get(root)
    if lay is None or not path:
        return a.offset, a.size
    from scopecheck.layout import member

    p = path
    while p:
        try:
            m = member(lay, p.replace("[*]", ""))
            return m.offset, m.size
        except (KeyError, ValueError):
            if "." not in p:
                break
            p = p.rsplit(".", 1)[0]
    return a.offset, a.size


def _applicable_functions(q: Query, src, g: HypGraph, root, params: dict | None = None) -> set | None:
    """Keys of the functions the query's [applies_to] selects, by source or DWARF parameter types."""
    if not q.only_param_type:
        return None
    out = set()
    vcpuish = {_norm_type(x) for x in q.vcpu_param_types}
    want = _norm_type(q.only_param_type)

    def applies(types) -> bool:
        vt = [_norm_type(t) for t in types if _norm_type(t) in vcpuish]
        return bool(vt) and all(t == want for t in vt)

    if src is not None:
        for f in src.functions:
            if applies([t for _, t in f.params]):
                k = g.map_key(norm_key(f.key, root))
                if k is not None:
                    out.add(k)
    for k, ps in (params or {}).items():  # the binary's DWARF: every mode, also code the source lacks
        if applies([t for _, t in ps]):
            out.add(k)
    return out


def _refuse_unjudgeable(q: Query, layouts: dict, inp: Inputs) -> None:
    """A query restricted to roots this kernel does not have cannot be judged: say so (exit 2)."""
    if q.roots and not any(r in layouts for r in q.roots):
        raise InputError(f"{inp.elf}: query {q.id} judges only accesses through "
                         f"{', '.join('struct ' + r for r in q.roots)}, which this kernel's DWARF does not "
                         "have; it cannot be judged here")


def _norm_type(t: str) -> str:
    return " ".join(t.replace("const ", "").replace("*", " * ").split())


def _contains_allowed(q: Query, root: str, path: str) -> bool:
    from scopecheck.query import path_has_prefix

    return any(path_has_prefix(p, path) for p in (q.allowed_prefixes(root) or []))


def _leak(q: Query, g: HypGraph, a: FieldAccess, kind: str) -> Leak:
    chain = [k[0] for k in g.chain(a.function)]
    return Leak(query=q.id, root=a.root, field=a.path, access=a.access, size=a.size, offset=a.offset,
                function=a.function[0], function_key=a.function, file=a.file, line=a.line, col=a.col,
                origin=a.origin, via=a.via, chain=chain, kind=kind, provenance=a.provenance)


def _dedupe(leaks: list[Leak]) -> list[Leak]:
    seen, out = set(), []
    for l in leaks:
        k = (l.kind, l.root, l.field, l.access, l.function_key, l.file, l.line, l.col)
        if k not in seen:
            seen.add(k)
            out.append(l)
    return out


def _footprint(canon) -> dict:
    fp: dict = {}
    for a, _ in canon:
        if not a.path:
            continue
        key = f"{a.root}:{a.path}"
        e = fp.setdefault(key, {"root": a.root, "path": a.path, "offset": a.offset, "size": a.size,
                                "access": set(), "functions": set(), "origins": set()})
        e["access"].add(a.access)
        e["functions"].add(a.function[0])
        e["origins"].add(a.origin)
    for e in fp.values():
        acc = e["access"]
        e["access"] = "rw" if ("rw" in acc or {"read", "write"} <= acc) else \
            ("write" if "write" in acc else ("read" if "read" in acc else sorted(acc)[0]))
        e["functions"] = sorted(e["functions"])
        e["origins"] = sorted(e["origins"])
    return dict(sorted(fp.items()))
