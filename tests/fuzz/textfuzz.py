"""Structured fuzzing (hypothesis) of the text inputs: compile_commands.json, query TOML,
asm-offsets.h (and the hyp ``.S`` lines that use its constants).

Each ``check_*`` writes one generated input to a file and runs the library call the CLI
makes on it, bounded in time (:func:`fuzz.harness.run_case`); the outcome must be a return
(exit 0) or one ScopecheckError line (exit 2).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from hypothesis import strategies as st

from fuzz.harness import Outcome, run_case

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "fixtures" / "mini_hyp" / "build" / "after-dwarf5"
QUERIES = ROOT / "scopecheck" / "queries"
ENTRY_S = ROOT / "fixtures" / "mini_hyp" / "src" / "entry.S"
TIMEOUT = 10.0

# ---------------------------------------------------------------- generic values

_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=24)
_odd_text = st.one_of(_text, st.sampled_from(["", " ", "\0", "..", "/", "-I", "-D", "-include", "-isystem",
                                              "'", '"', "\\", "@x", "@", "*", "[", "arch.", "arch..ctxt",
                                              "9" * 5000, "a" * 4097]))
_scalar = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                    _odd_text)
json_values = st.recursive(_scalar, lambda kids: st.one_of(st.lists(kids, max_size=4),
                                                          st.dictionaries(_odd_text, kids, max_size=4)),
                           max_leaves=12)


def _raw_mutation(base: bytes):
    """Truncations, byte overwrites and insertions of a real file, as a strategy of bytes."""
    n = len(base)

    @st.composite
    def build(draw):
        data = bytearray(base)
        for _ in range(draw(st.integers(1, 4))):
            op = draw(st.sampled_from(("cut", "set", "insert", "delete")))
            pos = draw(st.integers(0, max(0, len(data) - 1)))
            if op == "cut":
                del data[pos:]
            elif op == "set" and data:
                data[pos] = draw(st.integers(0, 255))
            elif op == "insert":
                data[pos:pos] = draw(st.binary(max_size=8) | st.sampled_from(
                    [b"[", b"{", b'"', b"\\", b"\n", b"#", b"0x", b"**9", b"\xff", b"\0", b"9" * 5000]))
            elif data:
                del data[pos: pos + draw(st.integers(1, 32))]
        return bytes(data)
    return build() if n else st.binary()


# ---------------------------------------------------------------- compile_commands.json

_entry = st.fixed_dictionaries({}, optional={
    "directory": st.one_of(_odd_text, json_values), "file": st.one_of(_odd_text, json_values),
    "arguments": st.one_of(st.lists(_odd_text, max_size=8), json_values),
    "command": st.one_of(_odd_text, st.lists(_odd_text, max_size=3).map(" ".join), json_values),
    "output": st.one_of(_odd_text, json_values)})


@st.composite
def compdb_texts(draw) -> bytes:
    kind = draw(st.sampled_from(("entries", "json", "raw", "deep", "bignum")))
    if kind == "entries":
        return json.dumps(draw(st.lists(_entry, max_size=5))).encode()
    if kind == "json":
        return json.dumps(draw(json_values)).encode()
    if kind == "deep":  # nesting deeper than json's recursion limit
        d = draw(st.integers(1, 100_000))
        return b"[" * d + b"]" * draw(st.integers(0, d))
    if kind == "bignum":  # longer than Python's int digits limit
        return b'[{"directory": ' + b"7" * draw(st.integers(4000, 20000)) + b"}]"
    return draw(_raw_mutation((FIXTURE / "compile_commands.json").read_bytes()))


def check_compdb(data: bytes, tmp: Path) -> Outcome:
    from scopecheck.source import compdb

    p = tmp / "compile_commands.json"
    p.write_bytes(data)

    def call():
        for root in (None, tmp):
            for c in compdb.load(p, source_root=root):
                compdb.clang_args(c)
                _ = c.is_asm
    return run_case(call, TIMEOUT)


# ---------------------------------------------------------------- query TOML

def toml_value(v) -> str:
    """A TOML rendering of a JSON-like value (inline tables and arrays)."""
    if v is None:
        return '""'
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return "{" + ", ".join(f"{json.dumps(str(k))} = {toml_value(x)}" for k, x in v.items()) + "}"


def toml_doc(d: dict) -> str:
    return "".join(f"{json.dumps(str(k))} = {toml_value(v)}\n" for k, v in d.items())


_paths = st.one_of(st.sampled_from(["arch.ctxt", "*", "", "arch", "arch.ctxt.regs.pc", "@rfc", "@", "@missing",
                                    "arch.sys_regs[3]", "vcpu", ".", "arch..x"]), _odd_text)
_roots = st.sampled_from(["kvm_vcpu", "kvm_cpu_context", "kvm_vcpu_arch", "pkvm_hyp_vcpu", "vcpu_hyp_state"])
_any = st.one_of(json_values, _paths)
_query = st.fixed_dictionaries({
    "id": st.one_of(st.sampled_from(["q", "rfc-hyp-scope"]), st.sampled_from(["Bad_Id", "-x", ""]), _any)}, optional={
    "title": _any, "description": _any,
    "severity": st.one_of(st.sampled_from(["error", "warning", "note", "fatal"]), _any),
    "allow": st.one_of(st.dictionaries(st.one_of(_roots, _odd_text),
                                       st.one_of(st.lists(st.one_of(_paths, json_values), max_size=4), _any),
                                       max_size=4), _any),
    "virtual": st.one_of(st.dictionaries(st.sampled_from(["rfc", "missing", "x"]) | _odd_text,
                                         st.one_of(st.lists(st.one_of(_paths, json_values), max_size=4), _any),
                                         max_size=3), _any),
    "roots": st.one_of(st.lists(st.one_of(_roots, _any), max_size=3), _any),
    "other_roots": st.one_of(st.sampled_from(["ignore", "leak", "other"]), _any),
    "entry_points": st.one_of(st.lists(st.one_of(_odd_text, json_values), max_size=3), _any),
    "escalations": _any,
    "applies_to": st.one_of(st.fixed_dictionaries({}, optional={
        "only_param_type": st.one_of(st.sampled_from(["struct kvm_cpu_context *", "struct kvm_vcpu *"]), _any),
        "vcpu_param_types": st.one_of(st.lists(st.one_of(_odd_text, json_values), max_size=3), _any)}), _any),
})


@st.composite
def query_texts(draw) -> bytes:
    if draw(st.integers(0, 3)) == 0:
        base = draw(st.sampled_from(sorted(QUERIES.glob("*.toml"))))
        return draw(_raw_mutation(base.read_bytes()))
    return toml_doc(draw(_query)).encode("utf-8", "surrogatepass")


class _Src:  # the source facts _applicable_functions looks at
    def __init__(self):
        from types import SimpleNamespace

        self.functions = [SimpleNamespace(key=("f", "a.c", 1), params=[("vcpu", "struct kvm_vcpu *")]),
                          SimpleNamespace(key=("g", "a.c", 9), params=[("c", "struct kvm_cpu_context *")])]


class _Graph:
    @staticmethod
    def map_key(k):
        return k


def check_query(data: bytes, tmp: Path) -> Outcome:
    from scopecheck import proof, query

    p = tmp / "q.toml"
    p.write_bytes(data)

    def call():
        q = query.load_query(p)
        for root in [*q.allow, "kvm_vcpu", "kvm_cpu_context", "pkvm_hyp_vcpu", "other"]:
            q.allowed_prefixes(root)
            q.judges_root(root)
            for path in ("arch.ctxt.regs.pc", "arch", "", "vcpu.arch.x", "arch.sys_regs[3]"):
                q.is_allowed(*query.canonical(root, path))
                proof._contains_allowed(q, root, path)
        proof._applicable_functions(q, _Src(), _Graph(), None)
        proof._applicable_functions(q, None, _Graph(), None)
    return run_case(call, TIMEOUT)


# ---------------------------------------------------------------- asm-offsets.h and .S

_ident = st.one_of(st.sampled_from(["VCPU_CONTEXT", "VCPU_ID", "X", "Y", "CPU_XREG_OFFSET", "_"]),
                   st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ_", min_size=1, max_size=12))
_number = st.one_of(st.integers(-2**40, 2**70).map(str), st.integers(0, 2**64).map(hex),
                    st.sampled_from(["0", "00", "0123", "-0", "0x", "09", "1" * 5000, "0x" + "f" * 40]))
_fpath = st.one_of(st.sampled_from(["arch.ctxt", "arch.ctxt.regs.regs[19]", "arch.ctxt.sys_regs[SP_EL1]",
                                    "vcpu_id", "arch . ctxt", "[", "a[b[c]]", ""]), _odd_text)


@st.composite
def offsets_line(draw) -> str:
    kind = draw(st.integers(0, 4))
    if kind <= 2:
        return (f"#define {draw(_ident)} {draw(_number)} /* offsetof("
                f"{draw(st.sampled_from(['struct ', 'union ', '']))}{draw(_ident | st.just('kvm_vcpu'))}, "
                f"{draw(_fpath)}) */")
    if kind == 3:
        return f"#define {draw(_ident)}({draw(_ident)}) {draw(_asm_expr)}"
    return draw(_odd_text)


_asm_expr = st.one_of(st.sampled_from(["(VCPU_CONTEXT + 8*x)", "(X + 8*X)", "(Y**9**9)", "((((((((1))))))))",
                                       "X*X*X*X", "(" * 200 + "1" + ")" * 200, "0x10 + X", "__X + 1"]),
                      _odd_text)


@st.composite
def asm_line(draw) -> str:
    mn = draw(st.sampled_from(["ldr", "str", "ldp", "stp", "add", "sub", "mov", "adrp", "bl", "ldrb", "stlxr",
                               "SYM_FUNC_START(f)", ".macro m", ".endm", "f:", ".global f"]))
    reg = draw(st.sampled_from(["x0", "x1", "w2", "sp", "xzr", "x99", ""]))
    const = draw(st.one_of(_ident, st.sampled_from(["VCPU_CONTEXT", "VCPU_CTXT_X19", "CPU_XREG_OFFSET"])))
    arg = draw(st.one_of(st.sampled_from(["19", "9**9**9", "x", "(" * 300, "1)", "18446744073709551616" * 3]),
                         _odd_text))
    form = draw(st.integers(0, 3))
    if form == 0:
        return f"\t{mn}\t{reg}, [x0, #{const}]"
    if form == 1:
        return f"\t{mn}\t{reg}, [x0, #{const}({arg})]"
    if form == 2:
        return f"\t{mn}\t{reg}, {reg}, #{const}"
    return f"\t{mn} {draw(_odd_text)}"


@st.composite
def asm_inputs(draw) -> tuple[bytes, bytes]:
    if draw(st.booleans()):
        header = draw(_raw_mutation((FIXTURE / "offsets.h").read_bytes()))
    else:
        header = "\n".join(draw(st.lists(offsets_line(), max_size=12))).encode("utf-8", "surrogatepass")
    # a real constant and a function-like macro over it, so that macro uses are evaluated
    if draw(st.booleans()):
        header += b"\n#define VCPU_CONTEXT 80 /* offsetof(struct kvm_vcpu, arch.ctxt) */\n"
    pre = ["#define CPU_XREG_OFFSET(x) (VCPU_CONTEXT + 8*x)"] if draw(st.booleans()) else []
    s = "\n".join(pre + draw(st.lists(st.one_of(asm_line(), offsets_line()), max_size=12)))
    return header, s.encode("utf-8", "surrogatepass")


def check_asm(header: bytes, s_text: bytes, tmp: Path) -> Outcome:
    from scopecheck.source.asm_offsets import asm_accesses, parse_asm_offsets

    h = tmp / "asm-offsets.h"
    s = tmp / "fuzz.S"
    h.write_bytes(header)
    s.write_bytes(s_text)

    def call():
        consts = parse_asm_offsets(h)
        parse_asm_offsets(h, {"SP_EL1": 21})
        asm_accesses([ENTRY_S, s], consts, source_root=ROOT, headers=[h])
    return run_case(call, TIMEOUT)
