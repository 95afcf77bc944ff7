"""Binary-only field accesses: which root-struct fields each hyp function loads and stores.

:func:`binary_accesses` reads the machine code of the hyp functions found by
:func:`scopecheck.binary.functions.hyp_functions` (a vmlinux's nVHE hyp or a
``kvm_nvhe.o``) and reports, as :class:`~scopecheck.model_code.FieldAccess`
records with ``origin="binary"``, every load/store through a register known to
point into a *root* struct (``kvm_vcpu``, ``kvm_vcpu_arch``, ``kvm_cpu_context``,
``pkvm_hyp_vcpu``, ``vcpu_hyp_state``: those present), plus
:class:`~scopecheck.model_code.Escalation` records (``origin="binary"``) where
code turns a pointer to a smaller root into one to a bigger root (container_of).

How a register gets a root (its *value* is a tuple of interpretations
``(root, offset, tag)``; the first is the primary one):

* **DWARF seeds** (the primary source of truth): formal parameters and
  variables of the out-of-line subprograms *and* of their inlined instances
  (and lexical blocks) whose type is a pointer to a root (through typedef /
  const / volatile), with a location ``DW_OP_regN`` / ``DW_OP_regx`` or
  ``DW_OP_bregN c ... DW_OP_stack_value`` (see :mod:`scopecheck.binary.locations`),
  from a single expression (whole scope) or a location list (per pc range).
  Before each instruction, every seed covering its pc is applied: if the
  register's dataflow value already describes the same bytes (the seed's struct
  lies at the right offset in the value's root, e.g. ``struct kvm_vcpu_arch *a =
  &vcpu->arch`` in a register known to hold ``kvm_vcpu+0x50``) the value is kept
  (locals derived from a parameter keep the parameter's root, as the fixture
  markers require); if the seed's struct is a *bigger* root containing the
  value's root, it is added as an alternative interpretation (a DWARF-visible
  ``container_of``: an Escalation); if it contradicts the value, the seed wins.
* **Pointer loads**: a 64-bit load of a member whose type is a pointer to a
  root (``ctxt->__hyp_running_vcpu``, ``hyp_vcpu->host_vcpu``) gives the
  destination a new root at offset 0.
* **Dataflow** over the function's basic blocks (hot and cold ranges), a
  forward "must" analysis: the state at a block entry is the intersection of
  its predecessors' states (worklist to a fixpoint); blocks with no known
  predecessor (after ``br`` jump tables) start empty. Transfer:
  ``mov xD, xS`` copies; ``add``/``sub xD, xS, #imm[, lsl #12]`` shift the
  offset (a ``sub`` tags the value, see below); pre/post-indexed addressing
  updates the base; ``bl`` to a hyp C function clobbers only the registers that
  function (transitively) writes (GCC's -fipa-ra relies on it), other ``bl`` and
  ``blr`` clobber x0-x18 and x30, ``hvc``/``smc``/``svc`` x0-x17; any other write to a general register (including 32-bit writes and
  loads of non-root data) clears it.

Accesses: ``ldr*/ldur*/ldp*/ldnp/ldxr*/ldaxr*/ldar*/ldapr*/ldxp/ldaxp`` are reads,
``str*/stur*/stp/stnp/stxr*/stlxr*/stlr*`` writes, LSE atomics
(``ldadd``/``ldclr``/``ldeor``/``ldset``/``swp``/``cas``/``st<op>``...) ``rw``, with
``[xN]``, ``[xN, #imm]``, ``[xN, #imm]!`` or ``[xN], #imm`` addressing; a pair
covers two registers (two accesses). The size is the register width (``x`` 8,
``w`` 4, ``q`` 16, ``d`` 8, ``s`` 4, ``h`` 2, ``b`` 1) or the mnemonic's
(``b``/``h``/``sw`` forms). ``prfm`` is counted in the stats, not reported.
``[xN, xM, lsl #s]`` (a variable index) is reported as ``path[*]`` when xN
points at the start of an array member whose element size is ``1 << s``, and
is otherwise listed in ``stats["variable_index"]``.

A ``sub xD, xS, #imm`` that takes a root pointer exactly to the start of a root
containing it (``kvm_cpu_context`` - 0x100 = ``kvm_vcpu`` in 6.1) is a container_of:
an Escalation ``via="sub"`` at the ``sub``, and the container becomes an
alternative interpretation of xD.

Resolving an access at ``offset + imm`` of a value: the first interpretation
whose root holds the accessed bytes is used; if that is not the primary one an
Escalation (primary root -> used root, ``via="dwarf"``) is reported. If no
interpretation fits and the primary root is embedded in other roots (e.g.
``kvm_cpu_context`` at ``kvm_vcpu.arch.ctxt``), the access is mapped into the
container that holds it, preferring ``kvm_vcpu`` and then the smallest
container, with an Escalation ``via="sub"`` (the value went through a ``sub``)
or ``via="offset"`` (an out-of-extent offset); else it is listed in
``stats["unresolved"]``.

Attribution: ``function`` is the key of the *innermost inlined instance*
whose ranges hold the instruction (the static inline whose source has the
access, like the source door and the fixture markers), else of the
out-of-line function. ``via`` is the base register (``"x0"``), followed by
``" inlined-in:<out-of-line function name>"`` for accesses attributed to an
inlined callee. ``file``/``line`` come from the DWARF line table at the
instruction. ``offset`` and ``size`` are the accessed bytes relative to the
root; a wide access spanning several fields gives one record per field.
"""

from __future__ import annotations

import bisect
import json
import re
import time

from scopecheck.binary import disasm
from scopecheck.binary.dwarf import children, line_program, open_dwarf, reading_dwarf
from scopecheck.binary.elf import ElfImage
from scopecheck.binary.functions import (
    _code_reader,
    _DwarfWalker,
    _overlaps,
    hyp_functions,
    read_aranges,
    section_headers,
)
from scopecheck.binary.locations import Locations, mem_slot, parses, reg_value
from scopecheck.layout import DEFAULT_STRUCTS, fields_at, load_layouts
from scopecheck.model_code import Escalation, FieldAccess, HypFacts, Unanalysed
from scopecheck.provenance import HOST_CTXT, HOST_FIELDS, HYP_TYPES
from scopecheck.provenance import meet as _prov_meet

ROOTS = DEFAULT_STRUCTS  # kvm_vcpu, kvm_vcpu_arch, kvm_cpu_context, vcpu_hyp_state, pkvm_hyp_vcpu

_SCOPE_TAGS = ("DW_TAG_subprogram", "DW_TAG_inlined_subroutine", "DW_TAG_lexical_block")
_VAR_TAGS = ("DW_TAG_formal_parameter", "DW_TAG_variable")
_QUALS = ("DW_TAG_typedef", "DW_TAG_const_type", "DW_TAG_volatile_type", "DW_TAG_restrict_type",
          "DW_TAG_atomic_type")

_REGNUM = {f"x{i}": i for i in range(31)}
_REGNUM.update({f"w{i}": i for i in range(31)})
_REGNUM.update({"fp": 29, "lr": 30, "x29": 29, "x30": 30})
_X = {f"x{i}" for i in range(31)} | {"fp", "lr"}
_WIDTH = {"x": 8, "w": 4, "q": 16, "d": 8, "s": 4, "h": 2, "b": 1}
_CALL_CLOBBER = tuple(range(19)) + (30,)
_SMC_CLOBBER = tuple(range(18))
_COND_BRANCH = ("cbz", "cbnz", "tbz", "tbnz")
_END = ("ret", "retaa", "retab", "eret", "eretaa", "eretab", "br", "braa", "braaz", "brab", "brabz")
_CALLS = ("bl", "blr", "blraa", "blraaz", "blrab", "blrabz")
_PAIRS = ("ldp", "stp", "ldnp", "stnp", "ldxp", "ldaxp", "stxp", "stlxp", "casp")
_NO_DEST = {"cmp", "cmn", "tst", "ccmp", "ccmn", "msr", "prfm", "prfum", "at", "dc", "ic", "tlbi", "sys",
            "fcmp", "fcmpe", "fccmp", "fccmpe", "hint", "nop"} | set(_COND_BRANCH)
_ATOMIC = re.compile(r"^(ld(add|clr|eor|set|smax|smin|umax|umin)|st(add|clr|eor|set|smax|smin|umax|umin)|swp|casp?)"
                     r"(a|al|l)?(b|h)?$")
_LOAD = re.compile(r"^(ldr|ldur|ldtr|ldp|ldnp|ldxr|ldaxr|ldar|ldapr|ldapur|ldxp|ldaxp|ldlar)(s?[bhw])?(p?)$")
_STORE = re.compile(r"^(str|stur|sttr|stp|stnp|stxr|stlxr|stlr|stlur|stxp|stlxp|stllr)([bh])?$")
# provenance rides along in the same state dict, under keys that are not register numbers
_M = 64  # _M + reg: the provenance symbol of the register's value (absent: not known)
_H = 128  # _H + reg: the register holds a pointer DWARF names host_ctxt (its regs are the host's)
_LD_DEPTH = 3  # deeper ["ld", ...] chains are "not known" (keeps the dataflow finite)
_MEET_MAX = 6
_NPARAMS = 8  # x0-x7: the argument registers
# ALU ops that keep a value's provenance when their only register source is one register
# (kern_hyp_va: and/ror/add/add lsl 12/ror; movk patches immediates into the destination)
_KEEP_PROV = ("and", "ror", "orr", "eor", "movk", "bic", "lsl", "lsr", "asr", "eon")


# ---------------------------------------------------------------- public API

def binary_accesses(elf_or_path, facts: HypFacts | None = None, roots=None, progress=None,
                    use_cache: bool = True):
    """Field accesses and escalations of the hyp's machine code (see the module doc).

    Returns ``(accesses, escalations, stats)``; ``stats`` has counts
    (``functions``, ``instructions``, ``accesses``, ``access_sites``, ``escalations``,
    ``prfm``, ``seeds``), ``unresolved`` / ``variable_index`` /
    ``unanalysed_functions`` / ``undecodable`` lists and ``timings`` (seconds).
    ``progress``, if given, is called with short status strings.
    """
    own = not isinstance(elf_or_path, ElfImage)
    elf = ElfImage(elf_or_path) if own else elf_or_path
    try:
        with reading_dwarf(elf.path, "DWARF of the hyp's variables"):
            return _run(elf, facts, roots, progress, use_cache)
    finally:
        if own:
            elf.close()


# ---------------------------------------------------------------- helpers

def _say(progress, msg):
    if progress is not None:
        progress(msg)


class _Roots:
    """Root layouts, embeddings between roots, pointer members, arrays, field paths (memoised)."""

    def __init__(self, layouts: dict):
        self.lay = {n: l for n, l in layouts.items() if l is not None}
        self.size = {n: l.size for n, l in self.lay.items()}
        names = set(self.lay)
        # emb[B][S] = offsets at which a struct S lies inside B
        self.emb: dict[str, dict[str, list[int]]] = {b: {} for b in names}
        # ptr[R][offset] = root pointed to by an 8-byte pointer member at offset
        self.ptr: dict[str, dict[int, str]] = {b: {} for b in names}
        self.array_list: dict[str, list] = {b: [] for b in names}  # (lo, hi, path, element size, dims)
        # fkey[R][offset] = "S.f" of an 8-byte member (S the struct that declares f): provenance of loads
        self.fkey: dict[str, dict[int, str]] = {b: {} for b in names}
        for b, lay in self.lay.items():
            self._walk(b, lay.members, 0, names, False, b)
        # gpr[R] = [(lo, hi)] of kvm_cpu_context.regs.regs in R: the general registers of a context
        self.gpr: dict[str, list] = {b: [(lo, hi) for lo, hi, path, es, _n in self.array_list[b]
                                         if (path == "regs.regs" or path.endswith(".regs.regs")) and es == 8]
                                     for b in names}
        self._paths: dict = {}

    def _walk(self, b, members, shift, names, in_array, parent=None):
        for m in members:
            off = m.offset + shift
            tn = m.type_name or ""
            if m.size == 8 and not m.array_dims and not in_array and m.name and m.kind in ("pointer", "base"):
                self.fkey[b].setdefault(off, f"{parent or '?'}.{m.name}")
            if m.kind == "struct" and tn.startswith("struct ") and tn[7:] in names and not m.array_dims \
                    and not in_array:
                self.emb[b].setdefault(tn[7:], []).append(off)
            if m.kind == "pointer" and m.size == 8 and not m.array_dims and not in_array:
                t = tn.strip()
                if t.startswith("struct ") and t.endswith(" *") and t[7:-2].strip() in names:
                    self.ptr[b][off] = t[7:-2].strip()
            if m.array_dims and m.element_size and not in_array and m.size:
                self.array_list[b].append((off, off + m.size, m.path, m.element_size, len(m.array_dims)))
            if m.members:
                sub = tn[7:].strip() if tn.startswith("struct ") and "{" not in tn else None
                self._walk(b, m.members, shift, names, in_array or bool(m.array_dims), sub)

    def fits(self, root, off, size) -> bool:
        return 0 <= off and off + size <= self.size[root]

    def contains(self, big, small, at) -> bool:
        """True when struct ``small`` lies at offset ``at`` of ``big`` (or they are the same)."""
        if big == small:
            return at == 0
        return at in self.emb.get(big, {}).get(small, ())

    def containers(self, small):
        """[(B, offset of small in B)], kvm_vcpu first, then by size."""
        out = [(b, o) for b, d in self.emb.items() for o in d.get(small, ())]
        out.sort(key=lambda t: (t[0] != "kvm_vcpu", self.size[t[0]], t[1]))
        return out

    def paths(self, root, off, size):
        k = (root, off, size)
        r = self._paths.get(k)
        if r is None:
            try:
                r = fields_at(self.lay[root], off, size)
            except ValueError:
                r = []
            self._paths[k] = r
        return r


def _parse_mem(ops: str):
    """(regs before the memory operand, base, imm, index reg or None, shift, writeback) or None."""
    i = ops.find("[")
    if i < 0:
        return None
    j = ops.find("]", i)
    if j < 0:
        return None
    regs = [r.strip() for r in ops[:i].split(",") if r.strip()]
    inner = [p.strip() for p in ops[i + 1:j].split(",")]
    post = ops[j + 1:].strip()
    base = inner[0]
    imm, index, shift = 0, None, 0
    if len(inner) >= 2:
        s = inner[1]
        if s.startswith("#"):
            imm = int(s[1:], 0)
        else:
            index = s
            if len(inner) >= 3:
                m = re.search(r"#(\d+)", inner[2])
                shift = int(m.group(1)) if m else 0
    wb = None  # ("pre"|"post", delta)
    if post.startswith("!"):
        wb = ("pre", imm)
    elif post.startswith(","):
        p = post[1:].strip()
        if p.startswith("#"):
            wb = ("post", int(p[1:], 0))
            imm = 0
        else:
            wb = ("post", None)
    return regs, base, imm, index, shift, wb


def _width(reg: str) -> int | None:
    return _WIDTH.get(reg[:1]) if reg else None


# ---------------------------------------------------------------- DWARF seeds

class _Seeds:
    def __init__(self, dwarf, roots: _Roots):
        self.dwarf = dwarf
        self.roots = roots
        self.loc = Locations(dwarf)
        self._type_cache: dict[int, str | None] = {}
        self._origin_type: dict[int, str | None] = {}
        self.walker = None  # _DwarfWalker, for ranges
        self.not_understood: list[tuple[str, str]] = []  # (variable, why): location forms we cannot read

    def pointee_root(self, die) -> str | None:
        """Root name when ``die``'s type is a pointer to a root struct."""
        a = die.attributes
        if "DW_AT_type" not in a:
            ao = a.get("DW_AT_abstract_origin")
            if ao is None:
                return None
            key = die.cu.cu_offset + ao.value if ao.form != "DW_FORM_ref_addr" else ao.value
            if key in self._origin_type:
                return self._origin_type[key]
            try:
                o = die.get_DIE_from_attribute("DW_AT_abstract_origin")
            except Exception:
                self._origin_type[key] = None
                return None
            r = self.pointee_root(o)
            self._origin_type[key] = r
            return r
        try:
            t = die.get_DIE_from_attribute("DW_AT_type")
        except Exception:
            return None
        return self._ptr_root(t)

    def _ptr_root(self, t) -> str | None:
        off = t.offset
        if off in self._type_cache:
            return self._type_cache[off]
        r = None
        n = 0
        while t is not None and t.tag in _QUALS and n < 16:
            n += 1
            t = t.get_DIE_from_attribute("DW_AT_type") if "DW_AT_type" in t.attributes else None
        if t is not None and t.tag == "DW_TAG_pointer_type" and "DW_AT_type" in t.attributes:
            s = t.get_DIE_from_attribute("DW_AT_type")
            while s is not None and s.tag in _QUALS and n < 32:
                n += 1
                s = s.get_DIE_from_attribute("DW_AT_type") if "DW_AT_type" in s.attributes else None
            if s is not None and s.tag == "DW_TAG_structure_type":
                nm = s.attributes.get("DW_AT_name")
                if nm is not None:
                    name = nm.value.decode() if isinstance(nm.value, bytes) else nm.value
                    if name in self.roots.lay:
                        r = name
        self._type_cache[off] = r
        return r

    def name(self, die) -> str:
        a = die.attributes
        nm = a.get("DW_AT_name")
        if nm is None and "DW_AT_abstract_origin" in a:
            try:
                nm = die.get_DIE_from_attribute("DW_AT_abstract_origin").attributes.get("DW_AT_name")
            except Exception:
                nm = None
        if nm is None:
            return "?"
        return nm.value.decode() if isinstance(nm.value, bytes) else nm.value

    def collect(self, die, fn_ranges) -> list[tuple[int, int, int, str, int, str, bool]]:
        """[(lo, hi, reg, root, offset, kind, hctx)] under subprogram ``die``.

        kind "reg": x<reg> points ``offset`` bytes into ``root``; kind "mem": the
        memory at x<reg> + ``offset`` holds a pointer to ``root``. ``hctx``: the
        variable's name says it is the host's saved context (``host_ctxt``)."""
        out: list = []
        self._scope(die, fn_ranges, out)
        return out

    def _scope(self, die, scope_ranges, out) -> None:
        for ch in children(die):
            tag = ch.tag
            if tag in _VAR_TAGS:
                a = ch.attributes
                loc = a.get("DW_AT_location")
                if loc is None:
                    continue
                root = self.pointee_root(ch)
                if root is None:
                    continue
                n_err = self.loc.errors
                ents = self.loc.entries(ch, loc)
                if self.loc.errors > n_err:
                    self.not_understood.append((self.name(ch), f"location form {loc.form} of a {root} pointer"))
                for lo, hi, expr in ents:
                    rv = reg_value(expr, ch.cu.structs)
                    kind = "reg"
                    if rv is None:
                        rv = mem_slot(expr, ch.cu.structs)
                        kind = "mem"
                        if rv is None:
                            if not parses(expr, ch.cu.structs):
                                self.not_understood.append((self.name(ch), f"location expression of a {root} "
                                                            f"pointer not parsed ({expr[:8].hex()})"))
                            continue
                    reg, d = rv
                    spans = scope_ranges if lo is None else [(lo, hi)]
                    hctx = root == "kvm_cpu_context" and HOST_CTXT in self.name(ch)
                    for slo, shi in spans:
                        out.append((slo, shi, reg, root, -d if kind == "reg" else d, kind, hctx))
            elif tag in ("DW_TAG_inlined_subroutine", "DW_TAG_lexical_block"):
                if not ch.has_children:
                    continue
                rs = self.walker.ranges(ch) or scope_ranges
                self._scope(ch, rs, out)


# ---------------------------------------------------------------- line table

class _Lines:
    def __init__(self, dwarf, walker):
        self.dwarf = dwarf
        self.walker = walker
        self._cu: dict[int, tuple] = {}

    def lookup(self, cu, pc):
        t = self._cu.get(cu.cu_offset)
        if t is None:
            t = self._build(cu)
            self._cu[cu.cu_offset] = t
        addrs, rows = t
        i = bisect.bisect_right(addrs, pc) - 1
        if i < 0:
            return None, None
        f, ln, end = rows[i]
        if end:
            return None, None
        return self.walker.file_name(cu, f), ln

    def _build(self, cu):
        lp = line_program(self.dwarf, cu)
        rows = []
        if lp is not None:
            for e in lp.get_entries():
                st = e.state
                if st is None:
                    continue
                rows.append((st.address, st.file, st.line, st.end_sequence))
        rows.sort(key=lambda r: (r[0], not r[3]))  # stable: at one address, end rows first, last row wins
        addrs = [r[0] for r in rows]
        return addrs, [(r[1], r[2], r[3]) for r in rows]


# ---------------------------------------------------------------- the analysis

def _run(elf: ElfImage, facts, roots, progress, use_cache: bool = True):
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    if facts is None:
        _say(progress, "hyp functions")
        facts = hyp_functions(elf)
        timings["hyp_functions"] = time.perf_counter() - t0
    t = time.perf_counter()
    names = list(roots) if roots is not None else list(ROOTS)
    layouts = load_layouts(elf.path, names, use_cache=use_cache)  # and cache.disabled() (--no-cache)
    R = _Roots(layouts)
    timings["layouts"] = time.perf_counter() - t
    stats: dict = {"roots": sorted(R.lay), "functions": 0, "instructions": 0, "access_sites": 0,
                   "accesses": 0, "escalations": 0, "prfm": 0, "seeds": 0, "unresolved": [],
                   "variable_index": [], "unanalysed_functions": [], "undecodable": 0, "timings": timings,
                   "dataflow_bound": [], "call_args": [], "unanalysed": [], "provenance_bound": []}
    if not R.lay:
        stats["unanalysed_functions"] = [(f.name, "no root struct in DWARF") for f in facts.functions]
        return [], [], stats

    # -- DWARF units of the hyp --
    t = time.perf_counter()
    dwarf = open_dwarf(elf)
    walker = _DwarfWalker(elf, dwarf)
    if elf.is_relocatable:
        cus = list(dwarf.iter_CUs())
    else:
        ar = read_aranges(elf)
        spans = [r for f in facts.functions for r in f.ranges]
        lo_all = min((r[0] for r in spans), default=0)
        hi_all = max((r[1] for r in spans), default=0)
        offs = sorted(off for off, rs in ar.items() if _overlaps(rs, lo_all, hi_all))
        cus = [dwarf.get_CU_at(o) for o in offs]
    cu_offs = [cu.cu_offset for cu in cus]
    cu_ends = [cu.cu_offset + cu.size for cu in cus]

    def cu_of(die_off):
        i = bisect.bisect_right(cu_offs, die_off) - 1
        if i >= 0 and die_off < cu_ends[i]:
            return cus[i]
        return dwarf.get_CU_containing(die_off)

    seeds = _Seeds(dwarf, R)
    seeds.walker = walker
    lines = _Lines(dwarf, walker)
    timings["units"] = time.perf_counter() - t

    inl_by_caller: dict = {}
    for inst in facts.inlined:
        inl_by_caller.setdefault(inst.caller, []).append(inst)

    read = _code_reader(elf, section_headers(elf))
    md = disasm._disassembler()
    t = time.perf_counter()
    code: dict = {}
    undecodable: list = []
    for fn in facts.functions:
        insns = []
        n_bad = stats["undecodable"]
        for lo, hi in fn.ranges:
            b = read(lo, hi)
            if b:
                insns.extend(_decode(md, b, lo, stats))
        if stats["undecodable"] > n_bad:
            undecodable.append(Unanalysed("undecodable", fn.key, fn.decl_file, fn.decl_line, None,
                                          f"{stats['undecodable'] - n_bad} instruction(s) not decoded", "binary"))
        insns.sort(key=lambda x: x[0])
        code[fn.key, fn.address] = insns
    clob = _Clobbers(facts, code)
    timings["decode"] = time.perf_counter() - t
    acc_out: dict = {}
    esc_out: dict = {}
    acc_sym: dict = {}  # access key -> provenance symbol
    prov_out: list = []  # (out-of-line function key, {"calls", "stores", "accesses": [access key]})
    una: list = stats["unanalysed"]
    una.extend(undecodable)
    t_seed = t_flow = 0.0
    for fn in facts.functions:
        if not fn.ranges:
            stats["unanalysed_functions"].append((fn.name, "no code ranges"))
            una.append(Unanalysed("no-ranges", fn.key, fn.decl_file, fn.decl_line, None,
                                  "no code ranges: its loads and stores were not read", "binary"))
            continue
        stats["functions"] += 1
        # seeds
        ts = time.perf_counter()
        fseeds = []
        cu = None
        if fn.die_offset is not None:
            try:
                cu = cu_of(fn.die_offset)
                die = cu.get_DIE_from_refaddr(fn.die_offset)
                if "DW_AT_low_pc" in die.attributes or "DW_AT_ranges" in die.attributes:
                    fseeds = seeds.collect(die, list(fn.ranges))
            except Exception as e:  # pragma: no cover - damaged DWARF
                stats["unanalysed_functions"].append((fn.name, f"DWARF: {e}"))
                una.append(Unanalysed("dwarf-form", fn.key, fn.decl_file, fn.decl_line, None,
                                      f"variables not read: {e}", "binary"))
        for var, why in seeds.not_understood:
            una.append(Unanalysed("dwarf-form", fn.key, fn.decl_file, fn.decl_line, None, f"{var}: {why}",
                                  "binary"))
        seeds.not_understood.clear()
        stats["seeds"] += len(fseeds)
        t_seed += time.perf_counter() - ts
        tf = time.perf_counter()
        insns = code[fn.key, fn.address]
        if not insns:
            stats["unanalysed_functions"].append((fn.name, "no code bytes"))
            una.append(Unanalysed("no-ranges", fn.key, fn.decl_file, fn.decl_line, None,
                                  "no code bytes at its ranges", "binary"))
            t_flow += time.perf_counter() - tf
            continue
        stats["instructions"] += len(insns)
        n_unres, n_vi, n_bound = len(stats["unresolved"]), len(stats["variable_index"]), len(stats["dataflow_bound"])
        sites, escs, cargs, pcalls, pstores = _analyse(fn, insns, fseeds, R, stats, clob)
        t_flow += time.perf_counter() - tf
        # provenance summary of this out-of-line function (["p", i]: x_i at its entry)
        psum = {"calls": [], "stores": [[key, msym, vsym] for _pc, key, msym, vsym in pstores], "accesses": []}
        for pc, target, syms in pcalls:
            callee = clob.call_at.get(pc)  # a call site (DWARF, or a relocation in an object file)
            if callee is None:
                if target is None or any(lo <= target < hi for lo, hi in fn.ranges):
                    continue  # a branch inside the function
                callee = clob.fn_at.get(target)
            if callee is not None and callee is not fn and any(x is not None for x in syms):
                psum["calls"].append([callee.key[0], syms])
        prov_out.append((fn.key, psum))
        new_una = stats["unresolved"][n_unres:] + stats["variable_index"][n_vi:]
        if not sites and not escs and not cargs and not new_una and len(stats["dataflow_bound"]) == n_bound:
            continue
        if cu is None:
            cu = _cu_for_pc(walker, cus, insns[0][0], elf)
        insts = inl_by_caller.get(fn.key, ())
        if len(stats["dataflow_bound"]) > n_bound:
            una.append(Unanalysed("dataflow-bound", fn.key, fn.decl_file, fn.decl_line, None,
                                  "register dataflow stopped at its iteration bound before a fixpoint", "binary"))
        for pc, base, root, off, w in new_una:
            pc = int(pc, 16)
            fkey, _via = _attribute(fn, insts, pc, base)
            file, line = lines.lookup(cu, pc) if cu is not None else (None, None)
            una.append(Unanalysed("unmapped-offset", fkey, file, line, None,
                                  f"{hex(pc)}: {w} B at {root}+{off:#x} through {base} not mapped to a field",
                                  "binary"))
        text_at = None
        for pc, reg, root, off, size, kind, paths, sym in sites:
            stats["access_sites"] += 1
            fkey, via = _attribute(fn, insts, pc, reg)
            file, line = lines.lookup(cu, pc) if cu is not None else (None, None)
            if text_at is None:
                text_at = {a: (mn, ops) for a, mn, ops in insns}
            mn, ops = text_at.get(pc, ("?", ""))
            insn = f"{mn} {ops}".strip()
            for p in paths:
                k = (root, p, kind, fkey, file, line, off, size, via, pc)
                if k not in acc_out:
                    acc_out[k] = FieldAccess(root=root, path=p, access=kind, function=fkey, file=file, line=line,
                                             origin="binary", offset=off, size=size, via=via, address=pc,
                                             insn=insn, provenance=sym if sym in ("host", "hyp") else None)
                    acc_sym[k] = sym
                    psum["accesses"].append(k)
        for pc, target, reg, vals in cargs:
            if target is None or any(lo <= target < hi for lo, hi in fn.ranges):
                continue  # a branch inside the function, not a (tail) call
            fkey, _via = _attribute(fn, insts, pc, "")
            stats["call_args"].append((fn.key, fkey, pc, target, reg, vals))
        for pc, frm, to, how in escs:
            fkey, _via = _attribute(fn, insts, pc, "")
            file, line = lines.lookup(cu, pc) if cu is not None else (None, None)
            k = (frm, to, fkey, file, line, how)
            if k not in esc_out:
                esc_out[k] = Escalation(from_root=frm, to_root=to, function=fkey, file=file, line=line,
                                        origin="binary", via=how)
    timings["seeds"] = t_seed
    timings["dataflow"] = t_flow
    accesses = list(acc_out.values())
    escalations = list(esc_out.values())
    # provenance summaries, for the whole-program resolution (scopecheck.provenance.resolve):
    # JSON text, their symbols are mixed-type lists; accesses by index into ``accesses``
    pos = {k: i for i, k in enumerate(acc_out)}
    stats["provenance"] = json.dumps([
        [list(fk), _NPARAMS, [[pos[k], acc_sym[k]] for k in d["accesses"]], d["calls"], d["stores"]]
        for fk, d in prov_out if d["accesses"] or d["calls"] or d["stores"]])
    stats["accesses"] = len(accesses)
    stats["escalations"] = len(escalations)
    timings["total"] = time.perf_counter() - t0
    _say(progress, f"{len(accesses)} accesses, {len(escalations)} escalations")
    return accesses, escalations, stats


def _cu_for_pc(walker, cus, pc, elf):
    for cu in cus:
        top = cu.get_top_DIE()
        if any(lo <= pc < hi for lo, hi in walker.ranges(top)):
            return cu
    return None


def _attribute(fn, insts, pc, reg):
    best = None
    for inst in insts:
        if (best is None or inst.depth > best.depth) and any(lo <= pc < hi for lo, hi in inst.ranges):
            best = inst
    if best is None:
        return fn.key, reg or None
    return best.callee, f"{reg} inlined-in:{fn.name}" if reg else f"inlined-in:{fn.name}"


def _decode(md, code, base, stats):
    out = []
    n = len(code)
    off = 0
    while off < n:
        last = off
        for addr, size, mn, ops in md.disasm_lite(code[off:], base + off):
            out.append((addr, mn, ops))
            last = addr - base + size
        if last >= n:
            break
        stats["undecodable"] += 1
        off = last + 4
    return out


def _branch_target(mn, ops):
    if mn == "b" or mn.startswith("b."):
        s = ops.strip()
    elif mn in _COND_BRANCH:
        s = ops.rsplit(",", 1)[-1].strip()
    else:
        return None
    if s.startswith("#"):
        s = s[1:]
    try:
        return int(s, 0)
    except ValueError:
        return None


def _writes(mn, ops) -> set[int] | None:
    """General registers an instruction may write (over-approximated); None: unknown (a call)."""
    if mn in _CALLS or mn in ("hvc", "smc", "svc"):
        return None
    if mn == "b" or mn.startswith("b.") or mn in _END or mn in _NO_DEST:
        return set()
    out: set[int] = set()
    i = ops.find("[")
    if i >= 0:
        pm = _parse_mem(ops)
        if pm is not None:
            regs, base, _imm, _idx, _sh, wb = pm
            if wb is not None and base in _REGNUM:
                out.add(_REGNUM[base])
            if _STORE.match(mn) and not mn.startswith(("stxr", "stlxr", "stxp", "stlxp")):
                return out
            if mn.startswith("st") and _ATOMIC.match(mn):
                return out
            out.update(_REGNUM[r] for r in regs if r in _REGNUM)
        return out
    d = ops.split(",", 1)[0].strip()
    if d in _REGNUM:
        out.add(_REGNUM[d])
    return out


class _Clobbers:
    """Registers a call to a hyp function may change: what the callee (and its callees) write.

    GCC's -fipa-ra keeps values in caller-saved registers across calls to functions it
    knows leave them alone, so clobbering x0-x18 at every ``bl`` would lose them. Calls
    to unknown targets (and ``blr``) clobber x0-x18 and x30."""

    ALL = frozenset(_CALL_CLOBBER)

    def __init__(self, facts, code):
        self.code = code
        self.fn_at: dict[int, object] = {}
        by_key = {}
        for f in facts.functions:
            if f.address is not None:
                self.fn_at[f.address] = f
            by_key.setdefault(f.key, f)
        self.call_at: dict[int, object] = {}
        for e in facts.edges:
            if e.address is not None and e.callee is not None and e.kind in ("call_site", "bl", "tail_call", "b"):
                f = by_key.get(e.callee)
                if f is not None:
                    self.call_at[e.address] = f
        self._memo: dict = {}

    def at_call(self, addr: int, target: int | None) -> frozenset:
        f = self.call_at.get(addr)
        if f is None and target is not None:
            f = self.fn_at.get(target)
        if f is None or f.is_asm:
            return self.ALL
        return self.of(f) | {30}

    def of(self, f, depth=0) -> frozenset:
        k = (f.key, f.address)
        r = self._memo.get(k)
        if r is not None:
            return r
        if depth > 20:
            return self.ALL
        self._memo[k] = self.ALL  # cycle guard
        acc: set[int] = set()
        for a, mn, ops in self.code.get(k, ()):
            w = _writes(mn, ops)
            if w is None:
                if mn == "bl":
                    tgt = _branch_target("b", ops)
                    callee = self.call_at.get(a) or (self.fn_at.get(tgt) if tgt is not None else None)
                    if callee is None or callee.is_asm or callee is f:
                        acc.update(self.ALL)
                    else:
                        acc.update(self.of(callee, depth + 1))
                        acc.add(30)
                else:
                    acc.update(self.ALL)
                continue
            acc.update(w)
            if mn == "b":  # a tail call: the other function's writes too
                tgt = _branch_target("b", ops)
                callee = self.call_at.get(a) or (self.fn_at.get(tgt) if tgt is not None else None)
                if callee is not None and callee is not f:
                    acc.update(self.ALL if callee.is_asm else self.of(callee, depth + 1))
        r = frozenset(acc & set(range(31)))
        self._memo[k] = r
        return r


def _analyse(fn, insns, fseeds, R: _Roots, stats, clob=None):
    """Dataflow over one function: [(pc, reg, root, off, size, kind, paths)], [(pc, from, to, via)]."""
    insns.sort(key=lambda x: x[0])
    index = {a: i for i, (a, _m, _o) in enumerate(insns)}
    n = len(insns)
    # seeds by instruction index
    seed_at: dict[int, list] = {}
    mem_at: dict[int, list] = {}
    prov_at: dict[int, list] = {}
    for lo, hi, reg, root, off, kind, hctx in fseeds:
        dst = seed_at if kind == "reg" else mem_at
        # instructions are 4-byte aligned; walk the covered addresses. A range may start inside an
        # instruction (GCC's "after the call" location views, e.g. 0x86f): it holds from the next one.
        a = (lo + 3) & ~3
        while a < hi:
            j = index.get(a)
            if j is not None:
                dst.setdefault(j, []).append((reg, root, off, hctx))
            a += 4
        if lo % 4 and kind == "reg" and (hctx or root in HYP_TYPES):
            # a range starting inside an instruction (GCC's "after the call" views) gives the roots
            # nothing; the provenance its type or name says still holds from the next instruction on
            a = (lo + 3) & ~3
            while a < hi:
                j = index.get(a)
                if j is not None:
                    prov_at.setdefault(j, []).append((reg, root, hctx))
                a += 4
    # basic blocks
    leaders = {0, index.get(fn.address, 0)}
    succ_target: dict[int, int] = {}
    for i, (a, mn, ops) in enumerate(insns):
        if mn[0] in "bcrte" and (mn == "b" or mn.startswith("b.") or mn in _COND_BRANCH or mn in _END):
            if i + 1 < n:
                leaders.add(i + 1)
            tgt = _branch_target(mn, ops)
            if tgt is not None:
                j = index.get(tgt)
                if j is not None:
                    leaders.add(j)
                    succ_target[i] = j
    for i in range(1, n):  # a gap between ranges starts a block
        if insns[i][0] != insns[i - 1][0] + 4:
            leaders.add(i)
    starts = sorted(leaders)
    block_of = {}
    blocks = []
    for bi, s in enumerate(starts):
        e = starts[bi + 1] if bi + 1 < len(starts) else n
        blocks.append((s, e))
        block_of[s] = bi
    succs: list[list[int]] = [[] for _ in blocks]
    preds: list[list[int]] = [[] for _ in blocks]
    for bi, (s, e) in enumerate(blocks):
        last = e - 1
        a, mn, ops = insns[last]
        falls = not (mn == "b" or mn in _END)
        if falls and e < n and insns[e][0] == a + 4:
            succs[bi].append(block_of[e])
        if last in succ_target:
            succs[bi].append(block_of[succ_target[last]])
        for sb in succs[bi]:
            preds[sb].append(bi)
    # A block nobody is known to reach, right after an unconditional branch, is taken to
    # follow it: kernel alternatives and static keys patch such "b" into "nop" at boot
    # (the code after it is live), and jump-table targets have no visible edge at all.
    entry_block = block_of.get(index.get(fn.address, 0), 0)
    for bi in range(1, len(blocks)):
        if not preds[bi] and bi != entry_block and insns[blocks[bi][0]][0] == insns[blocks[bi - 1][1] - 1][0] + 4:
            preds[bi].append(bi - 1)
            succs[bi - 1].append(bi)

    ctx = _Ctx(R, stats, seed_at, insns)
    ctx.mem_at = mem_at
    ctx.prov_at = prov_at
    ctx.clob = clob
    out_state: list = [None] * len(blocks)
    in_state: list = [None] * len(blocks)
    bound = 50 * len(blocks) + 100

    def roots_step(old, new):
        # the roots alone decide what is revisited: provenance rides along, it never changes which
        # accesses are found (nor the order the blocks are visited in)
        return new, old is None or _roots(new) != _roots(old)

    if not _worklist(ctx, blocks, preds, succs, entry_block, in_state, out_state, R, bound, roots_step):
        stats["dataflow_bound"].append(fn.name)
        in_state = [_roots(x) if x is not None else None for x in in_state]  # no provenance either
    else:
        _settle_provenance(ctx, blocks, preds, succs, entry_block, in_state, out_state, R, bound, stats, fn)
    ctx.record = True
    for bi, (s, e) in enumerate(blocks):
        st = in_state[bi] if in_state[bi] is not None else {}
        ctx.run(st, s, e, record=True)
    return ctx.sites, ctx.escs, ctx.call_args, ctx.calls, ctx.stores


def _roots(st) -> dict:
    return {k: v for k, v in st.items() if k < _M}


def _settle_provenance(ctx, blocks, preds, succs, entry_block, in_state, out_state, R, bound, stats, fn):
    """Second pass, once the roots are at their fixpoint: iterate the provenance to its own, each
    block's output only ever weakening (the meet of what it was and what it is now), so that it
    ends. A function where it does not within the bound keeps no provenance (not known)."""
    def weakening_step(old, new):
        merged = _roots(new)
        for k, v in new.items():
            if k >= _M and k in old:
                w = old[k]
                m = v if v == w else (_sym_meet(v, w) if k < _H else None)
                if m is not None:
                    merged[k] = m
        return merged, merged != old

    if not _worklist(ctx, blocks, preds, succs, entry_block, in_state, out_state, R, bound, weakening_step):
        stats["provenance_bound"].append(fn.name)
        for i, x in enumerate(in_state):
            if x is not None:
                in_state[i] = _roots(x)


def _worklist(ctx, blocks, preds, succs, entry_block, in_state, out_state, R, bound, step) -> bool:
    """Run the blocks to a fixpoint: each block's input is the meet of its predecessors' outputs;
    ``step(old output, new output)`` gives (the output to keep, whether the successors must be
    revisited). False when ``bound`` visits were not enough."""
    work = list(range(len(blocks)))
    inwork = set(work)
    guard = 0
    while work and guard < bound:
        guard += 1
        bi = work.pop(0)
        inwork.discard(bi)
        st = _meet([out_state[p] for p in preds[bi]], R) if preds[bi] else {}
        if bi == entry_block:
            st = _entry_params(st, bool(preds[bi]))
        in_state[bi] = st
        s, e = blocks[bi]
        keep, changed = step(out_state[bi], ctx.run(st, s, e, record=False))
        if keep is not out_state[bi]:
            out_state[bi] = keep
        if changed:
            for sb in succs[bi]:
                if sb not in inwork:
                    work.append(sb)
                    inwork.add(sb)
    return not work


def _entry_params(st, has_preds):
    """At the function's entry x0-x7 hold its parameters: provenance ["p", i]."""
    st = dict(st)
    for i in range(_NPARAMS):
        k = _M + i
        if not has_preds:
            st[k] = ["p", i]
        elif k in st:
            m = _sym_meet(st[k], ["p", i])
            if m is None:
                del st[k]
            else:
                st[k] = m
    return st


def _sym_meet(v, w):
    """The meet of two provenance symbols, in one canonical order (so that the dataflow reaches
    its fixpoint: the same set of definitions is the same value, whichever block came first)."""
    m = _prov_meet([v, w])
    if isinstance(m, list) and m[0] == "meet":
        if len(m[1]) > _MEET_MAX:
            return None
        m = ["meet", sorted(m[1], key=lambda x: json.dumps(x, sort_keys=True))]
    return m


def _depth(sym, d=0) -> int:
    if isinstance(sym, list) and sym:
        if sym[0] == "ld":
            return _depth(sym[1], d + 1)
        if sym[0] == "meet":
            return max((_depth(x, d) for x in sym[1]), default=d)
    return d


def _kill(st, r) -> None:
    """Register r is written with something unknown: its root and its provenance go."""
    st.pop(r, None)
    st.pop(_M + r, None)
    st.pop(_H + r, None)


def _copy_prov(st, rd, rs) -> None:
    for base in (_M, _H):
        v = st.get(base + rs)
        if v is None:
            st.pop(base + rd, None)
        else:
            st[base + rd] = v


def _meet(states, R):
    """Intersection of predecessor states; two values that describe the same address
    (one root embedded in the other at the matching offset) meet to the bigger root."""
    known = [s for s in states if s is not None]
    if not known:
        return {}
    out = dict(known[0])
    for s in known[1:]:
        for k in list(out):
            v, w = out[k], s.get(k)
            if w == v:
                continue
            if k >= _M:  # provenance: the meet of the symbols (absent: not known)
                m = _sym_meet(v, w) if (w is not None and k < _H) else None
                if m is None:
                    del out[k]
                else:
                    out[k] = m
                continue
            m = _merge(v, w, R) if w is not None else None
            if m is None:
                del out[k]
            else:
                out[k] = m
    return out


def _merge(v, w, R):
    (r1, o1, _t1), (r2, o2, _t2) = v[0], w[0]
    if r1 == "?" or r2 == "?":
        return None
    if R.contains(r1, r2, o1 - o2):
        return v
    if R.contains(r2, r1, o2 - o1):
        return w
    return None


class _Ctx:
    def __init__(self, R, stats, seed_at, insns):
        self.R = R
        self.stats = stats
        self.seed_at = seed_at
        self.insns = insns
        self.sites: list = []
        self.escs: list = []
        self.call_args: list = []  # (pc, target address, argument register, ((root, offset), ...))
        self.calls: list = []  # (pc, target address, [provenance symbol of x0..x7])
        self.stores: list = []  # (pc, "S.f", memory symbol, value symbol): 8-byte stores into root fields
        self.record = False
        self.mem_at: dict = {}
        self.prov_at: dict = {}  # instruction index -> [(reg, root, hctx)]: provenance-only seeds
        self.clob = None
        self.i = 0

    # -- seeds --
    def _seed(self, st, reg, root, off):
        R = self.R
        cur = st.get(reg)
        new = ((root, off, None),)
        if cur is None:
            st[reg] = new
            return None
        for r, o, _t in cur:
            if r == root and o == off:
                return None
        pr, po, _pt = cur[0]
        if pr == "?":  # a value that is no root pointer (a host register after kern_hyp_va): typed now
            st[reg] = new
            return None
        # same bytes, bigger current root (e.g. kvm_vcpu+0x50 seen as kvm_vcpu_arch *): keep
        if R.contains(pr, root, po - off):
            return None
        # the seed's root contains the current one: a DWARF-visible container_of
        if R.contains(root, pr, off - po):
            st[reg] = cur + ((root, off, "dwarf"),)
            return (pr, root)
        st[reg] = new
        st.pop(_M + reg, None)  # the seed contradicts what the dataflow knew: so is its provenance
        st.pop(_H + reg, None)
        return None

    def run(self, st, s, e, record):
        st = dict(st)
        insns = self.insns
        R = self.R
        for i in range(s, e):
            a, mn, ops = insns[i]
            self.i = i
            sd = self.seed_at.get(i)
            if sd:
                for reg, root, off, hctx in sd:
                    esc = self._seed(st, reg, root, off)
                    if esc is not None and record:
                        self.escs.append((a, esc[0], esc[1], "dwarf"))
                    if root in HYP_TYPES:
                        st[_M + reg] = "hyp"
                    if hctx:
                        st[_H + reg] = True
                        # the host's saved context lives in hyp's per-cpu data (kvm_host_data): hyp memory
                        st[_M + reg] = "hyp"
            pd = self.prov_at.get(i)
            if pd:
                for reg, root, hctx in pd:
                    st[_M + reg] = "hyp"
                    if hctx:
                        st[_H + reg] = True
            self._step(st, a, mn, ops, record, R)
        return st

    def _step(self, st, a, mn, ops, record, R):
        c0 = mn[0]
        # branches and calls
        if c0 == "b" and (mn in _CALLS or mn == "b" or mn.startswith("b.") or mn in _END):
            if self.record and (mn == "bl" or mn == "b"):
                self._args(st, a, _branch_target("b", ops))
            if mn in _CALLS:
                regs = _CALL_CLOBBER
                if mn == "bl" and self.clob is not None:
                    regs = self.clob.at_call(a, _branch_target("b", ops))
                for r in regs:
                    if 19 <= r <= 28:  # callee-saved (AAPCS64): the value, so its provenance, survives
                        st.pop(r, None)
                    else:
                        _kill(st, r)
            return
        if mn in _END or mn in _COND_BRANCH:
            return
        if mn in ("hvc", "smc", "svc"):
            for r in _SMC_CLOBBER:
                _kill(st, r)
            return
        if mn == "mov":
            d, _, s = ops.partition(",")
            d, s = d.strip(), s.strip()
            rd = _REGNUM.get(d)
            if rd is None:
                return
            if d in _X and s in _X and _REGNUM[s] in st:
                st[rd] = st[_REGNUM[s]]
            else:
                st.pop(rd, None)
            if d in _X and s in _X:
                _copy_prov(st, rd, _REGNUM[s])
            else:
                st.pop(_M + rd, None)
                st.pop(_H + rd, None)
            return
        if mn in ("add", "sub") and "[" not in ops:
            parts = [p.strip() for p in ops.split(",")]
            rd = _REGNUM.get(parts[0])
            if rd is None:
                return
            if len(parts) >= 3 and parts[0] in _X and parts[1] in _X and parts[2].startswith("#"):
                # a pointer plus a constant points into the same memory (kern_hyp_va's adds too)
                _copy_prov(st, rd, _REGNUM[parts[1]])
                try:
                    imm = int(parts[2][1:], 0)
                except ValueError:
                    st.pop(rd, None)
                    return
                if len(parts) == 4 and parts[3].replace(" ", "") == "lsl#12":
                    imm <<= 12
                elif len(parts) > 3:
                    st.pop(rd, None)
                    return
                if mn == "sub":
                    imm = -imm
                v = st.get(_REGNUM[parts[1]])
                if v is None:  # an unknown value plus a constant: kept for [xB, xI, lsl #s] indexes
                    st[rd] = (("?", imm, None),)
                    return
                tag0 = "sub" if mn == "sub" else v[0][2]
                nv = ((v[0][0], v[0][1] + imm, tag0),) + tuple((r, o + imm, t) for r, o, t in v[1:])
                r0, o0 = v[0][0], v[0][1] + imm
                if mn == "sub" and o0 < 0 and len(nv) == 1:
                    # container_of: the result points exactly at a container of the root
                    for b, eo in self.R.containers(r0):
                        if eo + o0 == 0:
                            nv = nv + ((b, 0, "sub"),)
                            if record:
                                self.escs.append((a, r0, b, "sub"))
                            break
                st[rd] = nv
            else:
                _kill(st, rd)
            return
        if "[" in ops:
            self._memory(st, a, mn, ops, record, R)
            return
        # any other instruction: its first operand, if a general register, is written
        if mn in _NO_DEST:
            return
        d = ops.split(",", 1)[0].strip()
        rd = _REGNUM.get(d)
        if rd is not None:
            src = self._prov_source(mn, d, ops)
            st.pop(rd, None)
            if src == "adr":  # the address of a hyp symbol: hyp's own memory
                st[_M + rd] = "hyp"
                st.pop(_H + rd, None)
            elif src is not None:
                _copy_prov(st, rd, src)
                st.pop(_H + rd, None)
            else:
                st.pop(_M + rd, None)
                st.pop(_H + rd, None)

    @staticmethod
    def _prov_source(mn, d, ops):
        """The register whose provenance ``mn d, ...`` keeps (one register source, the rest immediates),
        "adr" for adrp/adr, else None."""
        if d not in _X:
            return None
        if mn in ("adrp", "adr"):
            return "adr"
        if mn not in _KEEP_PROV:
            return None
        parts = [p.strip() for p in ops.split(",")]
        if mn == "movk":
            return _REGNUM[d]
        if len(parts) < 3 or parts[1] not in _X:
            return None
        if any(not (p.startswith("#") or p.startswith(("lsl", "lsr", "asr", "ror"))) for p in parts[2:]):
            return None
        return _REGNUM[parts[1]]

    def _args(self, st, a, target):
        """Root pointers in the argument registers x0-x7 at a call or tail call, and every
        argument register's provenance symbol."""
        for r in range(8):
            v = st.get(r)
            if v is not None and v[0][0] != "?":
                self.call_args.append((a, target, r, tuple((vr, vo) for vr, vo, _t in v)))
        self.calls.append((a, target, [self.sym(st, r) for r in range(_NPARAMS)]))

    @staticmethod
    def sym(st, r):
        """Whose memory register r points into: its dataflow provenance symbol (None: not known).
        A hyp-only type (pkvm_hyp_vcpu) makes it "hyp" where the pointer is typed so (a DWARF seed,
        a load of such a pointer), not through the roots: two paths that meet, one with the host's
        vcpu, one with hyp's, leave a root that may be seen as either, and a provenance not known."""
        return st.get(_M + r)

    def _loaded(self, st, base, got, off) -> object:
        """The provenance of a 64-bit value loaded from [base + off] (``got``: the (root, offset) it
        was mapped to, or None): a host register of a host_ctxt is the host's; anything loaded from
        host memory is too; a pointer from a field that holds host addresses is host-owned; else
        a pointer loaded from that field of that memory (resolved over the whole program)."""
        rb = _REGNUM.get(base)
        if rb is None:
            return None
        bsym = self.sym(st, rb)
        if got is not None:
            root, o = got
            if st.get(_H + rb) and any(lo <= o < hi for lo, hi in self.R.gpr.get(root, ())):
                return "host"
            key = self.R.fkey.get(root, {}).get(o)
            if key in HOST_FIELDS:
                return "host"
        else:
            key = None
        if bsym == "host":
            return "host"
        if bsym is None or key is None or _depth(bsym) >= _LD_DEPTH:
            return None
        return ["ld", bsym, key]

    def _memory(self, st, a, mn, ops, record, R):
        pm = _parse_mem(ops)
        if pm is None:
            return
        regs, base, imm, index, shift, wb = pm
        kind = None
        size = None
        dests: list[str] = []
        datas: list[str] = []
        if mn in ("prfm", "prfum"):
            kind = "prfm"
        else:
            m = _LOAD.match(mn)
            if m:
                kind = "read"
                dests = regs
                datas = regs
                sfx = m.group(2) or ""
                if mn.startswith("ldpsw"):
                    size = 4
                elif sfx.endswith("b"):
                    size = 1
                elif sfx.endswith("h"):
                    size = 2
                elif sfx.endswith("w"):
                    size = 4
            else:
                m = _STORE.match(mn)
                if m:
                    kind = "write"
                    if mn.startswith(("stxr", "stlxr", "stxp", "stlxp")):
                        dests = regs[:1]
                        datas = regs[1:]
                    else:
                        datas = regs
                    sfx = m.group(2) or ""
                    if sfx == "b":
                        size = 1
                    elif sfx == "h":
                        size = 2
                elif _ATOMIC.match(mn):
                    kind = "rw"
                    if mn.startswith("st"):
                        datas = regs
                    elif mn.startswith("casp"):
                        datas = regs[:2]
                        dests = regs[:2]
                    elif mn.startswith("cas"):
                        datas = regs[:1]
                        dests = regs[:1]
                    else:  # ldadd ws, wt, [xn]: wt receives the old value
                        datas = regs[:1]
                        dests = regs[1:2]
                    sfx = _ATOMIC.match(mn).group(5) or ""
                    if sfx == "b":
                        size = 1
                    elif sfx == "h":
                        size = 2
        bv = st.get(_REGNUM.get(base, -1)) if base in _X else None
        if bv is not None and bv[0][0] == "?":
            bv = None
        bsym = self.sym(st, _REGNUM[base]) if base in _X else None
        loaded: list = []
        pair = mn.startswith(_PAIRS) and len(datas) >= 2
        w0 = size or (_width(datas[0]) if datas else None) or 8
        parts = [(imm, w0), (imm + w0, w0)] if pair else [(imm, w0)]
        data_syms = [self.sym(st, _REGNUM[d]) if d in _X else None for d in datas] if kind == "write" else []
        # the access
        if kind is None:
            if bv is not None and record:
                self.stats.setdefault("unhandled_mnemonics", {}).setdefault(mn, 0)
                self.stats["unhandled_mnemonics"][mn] += 1
        elif kind == "prfm":
            if bv is not None and record:
                self.stats["prfm"] += 1
        elif bv is not None and datas:
            w = size or _width(datas[0]) or 8
            if index is not None:
                if record:
                    iv = st.get(_REGNUM.get(index, -1)) if index in _X else None
                    k = iv[0][1] if iv is not None and iv[0][0] == "?" else 0
                    self._indexed(a, base, bv, w, shift, kind, k, bsym)
            else:
                for k_off, k_w in parts:
                    got = self._resolve(a, base, bv, k_off, k_w, kind, record, bsym)
                    loaded.append(got)
                    if record and kind == "write" and got is not None and k_w == 8:
                        key = R.fkey.get(got[0], {}).get(got[1])
                        j = len(loaded) - 1
                        dreg = datas[j] if j < len(datas) else None
                        if key is not None and dreg in _X:  # xzr/wzr (NULL) stores nothing
                            self.stores.append((a, key, bsym, data_syms[j]))
        # provenance of what is loaded (computed before any destination is written): 64-bit loads
        # into x registers (narrower values are no pointers)
        load_syms: list = []
        if kind == "read" and base in _X and index is None:
            for j, d in enumerate(regs[:len(parts)]):
                ok = d in _X and parts[j][1] == 8
                got = loaded[j] if j < len(loaded) else None
                ls = self._loaded(st, base, got, parts[j][0]) if ok else None
                if ok and ls != "host":
                    # a pointer typed as hyp-only memory (a member, or a stack slot DWARF types so)
                    tgt = R.ptr.get(got[0], {}).get(got[1]) if got is not None else None
                    for mreg, mroot, moff, _h in (self.mem_at.get(self.i) or ()):
                        if mreg == _REGNUM[base] and moff == parts[j][0]:
                            tgt = mroot
                    if tgt in HYP_TYPES:
                        ls = "hyp"
                load_syms.append(ls)
        if bv is not None and datas and kind == "read" and index is None and dests:
            # pointer loads: new roots in the destination
            for j, d in enumerate(dests[:len(parts)]):
                rd = _REGNUM.get(d)
                if rd is None:
                    continue
                got = loaded[j] if j < len(loaded) else None
                tgt = None
                if got is not None and parts[j][1] == 8 and d in _X:
                    root, off = got
                    tgt = R.ptr.get(root, {}).get(off)
                if tgt is None and self.mem_at.get(self.i) and base in _X:
                    for mreg, mroot, moff, _h in self.mem_at[self.i]:
                        if mreg == _REGNUM[base] and moff == parts[j][0] and d in _X:
                            tgt = mroot
                if tgt is not None:
                    st[rd] = ((tgt, 0, None),)
                else:
                    st.pop(rd, None)
            dests = dests[len(parts):]
        # register writes
        for d in dests:
            rd = _REGNUM.get(d)
            if rd is not None:
                st.pop(rd, None)
        for d in (regs if kind == "read" else dests if kind else ()):  # their provenance
            rd = _REGNUM.get(d)
            if rd is not None:
                st.pop(_M + rd, None)
                st.pop(_H + rd, None)
        for j, sym in enumerate(load_syms):
            rd = _REGNUM.get(regs[j])
            if rd is not None and sym is not None:
                st[_M + rd] = sym
        if wb is not None and base in _X:
            rb = _REGNUM[base]
            if wb[1] is None or rb not in st:
                st.pop(rb, None)
            else:
                delta = wb[1]
                v = st[rb]
                st[rb] = tuple((r, o + delta, t) for r, o, t in v)

    def _resolve(self, a, base, bv, imm, w, kind, record, bsym=None):
        """Map one access; record it; return (root, offset) used, or None."""
        R = self.R
        pr, po, ptag = bv[0]
        choice = None
        esc = None
        for r, o, t in bv:
            if R.fits(r, o + imm, w):
                choice = (r, o + imm)
                if r != pr:
                    esc = (pr, r, t or "dwarf")
                break
        if choice is None:
            for b, eo in R.containers(pr):
                if R.fits(b, eo + po + imm, w):
                    choice = (b, eo + po + imm)
                    esc = (pr, b, "sub" if ptag == "sub" else "offset")
                    break
        if choice is None:
            if record:
                self.stats["unresolved"].append((hex(a), base, pr, po + imm, w))
            return None
        if record:
            root, off = choice
            paths = R.paths(root, off, w)
            if paths:
                self.sites.append((a, base, root, off, w, kind, paths, bsym))
            if esc is not None:
                self.escs.append((a, esc[0], esc[1], esc[2]))
        return choice

    def _indexed(self, a, base, bv, w, shift, kind, k, bsym=None):
        """``[base, index, lsl #shift]`` with index = unknown + k: an element of an array
        member whose element size is ``1 << shift`` and which holds offset ``o + (k << shift)``."""
        R = self.R
        for r, o, _t in bv:
            at = o + (k << shift)
            for lo, hi, path, es, ndim in R.array_list.get(r, ()):
                if lo <= at < hi and (es == (1 << shift) or (shift == 0 and es == w)):
                    self.sites.append((a, base, r, lo, es, kind, [path + "[*]" * ndim], bsym))
                    return
        self.stats["variable_index"].append((hex(a), base, bv[0][0], bv[0][1], w))
