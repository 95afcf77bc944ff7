"""Plain records about hyp *code*: functions, inlined instances, call edges.

Produced by :mod:`scopecheck.binary.functions`; nothing here imports the binary
or source doors. A function is identified by its :data:`FuncKey`
``(name, decl_file, decl_line)``, which keeps same-named static functions of
different files apart (``__sync_state`` in switch.c and in sysreg-sr.c).
Names are DWARF (source) names: in a vmlinux the hyp symbols carry the
``__kvm_nvhe_`` prefix, the keys do not.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

FuncKey = tuple  # (name: str, decl_file: str | None, decl_line: int | None)

EDGE_KINDS = ("call_site", "tail_call", "inlined", "bl", "b", "blr", "address_taken")


@dataclass(slots=True)
class HypFunction:
    """An out-of-line hyp function: a DWARF subprogram with code, or an assembly symbol."""

    name: str
    symbol: str | None  # linkage name in .symtab (``__kvm_nvhe_foo`` in a vmlinux)
    address: int | None
    size: int
    decl_file: str | None
    decl_line: int | None
    cu_name: str | None
    is_asm: bool = False
    external: bool = False
    die_offset: int | None = None
    ranges: tuple[tuple[int, int], ...] = ()  # ((lo, hi), ...) code ranges, hot and cold parts

    @property
    def key(self) -> FuncKey:
        return (self.name, self.decl_file, self.decl_line)

    @property
    def is_static(self) -> bool:
        return not self.external

    def to_dict(self) -> dict:
        return {"name": self.name, "symbol": self.symbol, "address": self.address, "size": self.size,
                "decl_file": self.decl_file, "decl_line": self.decl_line, "cu": self.cu_name,
                "asm": self.is_asm, "external": self.external, "die_offset": self.die_offset,
                "ranges": [list(r) for r in self.ranges]}


@dataclass(slots=True)
class InlinedInstance:
    """One DW_TAG_inlined_subroutine: ``callee`` inlined into out-of-line function ``caller``."""

    callee: FuncKey  # the abstract origin (name, decl_file, decl_line)
    caller: FuncKey  # the out-of-line function whose code holds the instance
    parent: FuncKey | None  # the enclosing inlined function when nested (depth > 1)
    call_file: str | None
    call_line: int | None
    ranges: tuple[tuple[int, int], ...]  # ((lo, hi), ...)
    depth: int  # 1 = directly in the out-of-line function
    die_offset: int | None = None

    @property
    def callee_name(self) -> str:
        return self.callee[0]

    @property
    def low_pc(self) -> int | None:
        return min(lo for lo, _ in self.ranges) if self.ranges else None

    def to_dict(self) -> dict:
        return {"callee": list(self.callee), "caller": list(self.caller),
                "parent": list(self.parent) if self.parent else None, "call_file": self.call_file,
                "call_line": self.call_line, "ranges": [list(r) for r in self.ranges], "depth": self.depth,
                "die_offset": self.die_offset}


@dataclass(slots=True)
class CallEdge:
    """A control transfer (or a function address taken) from ``caller`` to ``callee``.

    kind: ``call_site`` / ``tail_call`` (DWARF call sites), ``inlined`` (an inlined
    instance), ``bl`` / ``b`` / ``blr`` (disassembly, only where DWARF has no call site
    at that instruction; ``b`` includes conditional branches into another function and
    ``br``), ``address_taken`` (callee's address is stored in a table ``via`` that
    ``caller`` reads, or is computed in ``caller``'s code; ``caller`` None when nobody
    is known to read the table).  ``callee`` None: unresolved (indirect call).
    """

    caller: FuncKey | None
    callee: FuncKey | None
    kind: str
    indirect: bool = False
    target_type: str | None = None  # e.g. the function-pointer typedef of a table (``hcall_t``)
    file: str | None = None
    line: int | None = None
    address: int | None = None  # the branch instruction (or the table slot for address_taken)
    callee_name: str | None = None  # also set when callee is outside the hyp functions
    via: str | None = None  # table symbol for address_taken; register for blr/br
    inline_caller: FuncKey | None = None  # innermost inlined function holding the call

    def to_dict(self) -> dict:
        return {"caller": list(self.caller) if self.caller else None,
                "callee": list(self.callee) if self.callee else None, "kind": self.kind,
                "indirect": self.indirect, "target_type": self.target_type, "file": self.file,
                "line": self.line, "address": self.address, "callee_name": self.callee_name,
                "via": self.via, "inline_caller": list(self.inline_caller) if self.inline_caller else None}


@dataclass(slots=True)
class HypFacts:
    """Everything :func:`scopecheck.binary.functions.hyp_functions` found in one ELF."""

    path: str
    functions: list[HypFunction]
    inlined: list[InlinedInstance]
    edges: list[CallEdge]
    cus: list[str] = field(default_factory=list)
    timings: dict = field(default_factory=dict)
    # subprograms with code whose ranges could not be read (a form not understood): never silent
    unanalysed: list = field(default_factory=list)

    def named(self, name: str) -> list[HypFunction]:
        return [f for f in self.functions if f.name == name]

    def by_key(self) -> dict:
        out: dict = {}
        for f in self.functions:
            out.setdefault(f.key, []).append(f)
        return out

    @property
    def entry_points(self) -> list[HypFunction]:
        """Assembly functions (vectors, guest enter/exit, host entry, ...)."""
        return [f for f in self.functions if f.is_asm]

    def edges_from(self, key: FuncKey) -> Iterator[CallEdge]:
        return (e for e in self.edges if e.caller == key)

    def unresolved_indirect(self) -> list[CallEdge]:
        return [e for e in self.edges if e.indirect and e.callee is None]

    def call_graph(self, kinds: tuple[str, ...] = EDGE_KINDS):
        """A networkx DiGraph of FuncKeys; edge attribute ``kinds`` is the set of edge kinds."""
        import networkx as nx

        g = nx.DiGraph()
        for f in self.functions:
            g.add_node(f.key)
        for e in self.edges:
            if e.caller is None or e.callee is None or e.kind not in kinds:
                continue
            if g.has_edge(e.caller, e.callee):
                g[e.caller][e.callee]["kinds"].add(e.kind)
            else:
                g.add_edge(e.caller, e.callee, kinds={e.kind})
        return g

    def to_dict(self) -> dict:
        return {"path": self.path, "cus": self.cus, "functions": [f.to_dict() for f in self.functions],
                "inlined": [i.to_dict() for i in self.inlined], "edges": [e.to_dict() for e in self.edges]}


# ---------------------------------------------------------------- field accesses
#
# Produced by both doors: the source door (libclang on compile_commands.json, and
# asm-offsets constants in .S files) and the binary door (loads and stores through
# registers known to hold a root-struct pointer). The graph/query layer merges them.

ACCESS_KINDS = ("read", "write", "rw", "addr")  # addr: the address is taken (&vcpu->arch.ctxt)
ORIGINS = ("source", "asm", "binary")


@dataclass(slots=True)
class FieldAccess:
    """One access to a field of a root struct, e.g. ``kvm_vcpu: arch.ctxt.regs.pc`` (write).

    ``path`` uses C spelling from the root, with ``[N]`` for constant indexes and
    ``[*]`` for variable ones; members of anonymous structs/unions are named as in C.
    ``function`` is the key of the function whose *source* holds the access (for an
    access inside a static inline, the inline function itself); ``file``/``line``/``col``
    locate the access (for a macro, the line where the macro is expanded).
    """

    root: str
    path: str
    access: str
    function: FuncKey
    file: str | None
    line: int | None
    col: int | None = None
    origin: str = "source"
    offset: int | None = None  # byte offset from the root, when known
    size: int | None = None
    via: str | None = None  # macro, alias variable, asm-offsets constant or register
    # where the pointer came from: "hyp" (hyp-owned memory: pkvm_hyp_vcpu, its embedded vcpu),
    # "host" (a host address: a host register, pkvm_hyp_vcpu.host_vcpu, kern_hyp_va of either), None unknown
    provenance: str | None = None
    address: int | None = None  # binary door: the load/store instruction's address
    insn: str | None = None  # binary door: the instruction, e.g. "ldr x0, [x19, #0x7a8]"

    def to_dict(self) -> dict:
        d = {"root": self.root, "path": self.path, "access": self.access,
             "function": list(self.function), "file": self.file, "line": self.line, "col": self.col,
             "origin": self.origin, "offset": self.offset, "size": self.size, "via": self.via,
             "provenance": self.provenance}
        if self.address is not None:
            d["address"] = self.address
            d["insn"] = self.insn
        return d


@dataclass(slots=True)
class Escalation:
    """A pointer to a smaller root turned into a pointer to a bigger one (container_of, cast)."""

    from_root: str  # e.g. kvm_cpu_context
    to_root: str  # e.g. kvm_vcpu
    function: FuncKey
    file: str | None
    line: int | None
    col: int | None = None
    origin: str = "source"
    via: str | None = None  # "container_of", "cast", ...

    def to_dict(self) -> dict:
        return {"from_root": self.from_root, "to_root": self.to_root, "function": list(self.function),
                "file": self.file, "line": self.line, "col": self.col, "origin": self.origin, "via": self.via}


@dataclass(slots=True)
class SourceCall:
    """A call in a function's source: direct (callee named) or through a pointer of ``target_type``."""

    caller: FuncKey
    callee: str | None
    file: str | None
    line: int | None
    col: int | None = None
    indirect: bool = False
    target_type: str | None = None  # canonical function type of the pointer, e.g. "void (struct kvm_cpu_context *)"
    via: str | None = None  # expression or table name for an indirect call
    # per argument, the root-struct pointer it evaluates to as "root:path" ("kvm_vcpu:" the vcpu
    # itself, "kvm_vcpu:arch.ctxt" &vcpu->arch.ctxt), "" for anything else; None: not recorded
    args: tuple | None = None


@dataclass(slots=True)
class SourceFunction:
    """A function definition seen in the source (C, including static inlines in headers)."""

    name: str
    file: str
    line: int
    col: int | None = None
    is_static: bool = False
    is_inline: bool = False
    type: str | None = None  # canonical function type, for matching indirect calls
    params: tuple[tuple[str, str], ...] = ()  # ((name, type spelling), ...)

    @property
    def key(self) -> FuncKey:
        return (self.name, self.file, self.line)


@dataclass(slots=True)
class AddressTaken:
    """A function whose address is taken in source: a table initialiser or an assignment."""

    function: str
    file: str | None
    line: int | None
    type: str | None = None  # canonical function type
    where: str | None = None  # the table or variable that stores it (host_hcall, ...)
    in_function: FuncKey | None = None  # None at file scope


@dataclass(slots=True)
class Unanalysed:
    """Evidence a door saw but could not turn into field accesses or call edges.

    Nothing is dropped silently: pointer arithmetic on a root pointer that could not be
    mapped to a field, an assembler macro body, a function whose ranges could not be read,
    dataflow that hit its bound, a DWARF form not understood, an unresolved indirect call.
    ``kind`` is a short stable word (``pointer-arith``, ``asm-macro``, ``unmapped-offset``,
    ``dataflow-bound``, ``dwarf-form``, ``no-ranges``, ``indirect-call``, ...).
    """

    kind: str
    function: FuncKey | None
    file: str | None
    line: int | None
    col: int | None = None
    detail: str = ""
    origin: str = "source"  # source | asm | binary

    def to_dict(self) -> dict:
        return {"kind": self.kind, "function": list(self.function) if self.function else None,
                "file": self.file, "line": self.line, "col": self.col, "detail": self.detail,
                "origin": self.origin}


@dataclass(slots=True)
class SourceFacts:
    """Everything the source door learned about a set of translation units."""

    functions: list[SourceFunction] = field(default_factory=list)
    accesses: list[FieldAccess] = field(default_factory=list)
    escalations: list[Escalation] = field(default_factory=list)
    calls: list[SourceCall] = field(default_factory=list)
    address_taken: list[AddressTaken] = field(default_factory=list)
    diagnostics: list[str] = field(default_factory=list)  # parse errors, skipped files
    files: list[str] = field(default_factory=list)  # translation units / asm files read
    unanalysed: list[Unanalysed] = field(default_factory=list)  # seen but not mapped (never silent)
