"""asm-offsets constants and their uses in hyp assembly.

``include/generated/asm-offsets.h`` (and the mini-hyp fixture's ``offsets.h``) carry the
expression each constant was computed from in a comment::

    #define VCPU_CONTEXT 80 /* offsetof(struct kvm_vcpu, arch.ctxt) */

:func:`parse_asm_offsets` maps the names to ``(root, path, value)``; :func:`asm_accesses`
finds them in memory operands of ``.S`` files (``ldr x1, [x0, #VCPU_CTXT_PC]``). A
function-like macro whose body uses one constant (the kernel's
``#define CPU_XREG_OFFSET(x) (CPU_USER_PT_REGS + 8*x)``) counts as that constant; the
byte offset is computed when the body is plain arithmetic.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Callable, Iterable

from scopecheck.errors import InputError
from scopecheck.model_code import FieldAccess

# values: at most 64 bits, as the compiler prints them (decimal, or 0x hex)
_DEFINE = re.compile(r"^\s*#\s*define\s+(\w+)\s+(-?(?:0x[0-9a-fA-F]{1,16}|\d{1,20}))\s*/\*\s*offsetof\(\s*"
                     r"(?:struct\s+|union\s+)?(\w+)\s*,\s*([^)]*?)\s*\)\s*\*/")
_FN_MACRO = re.compile(r"^\s*#\s*define\s+(\w+)\((\w+)\)\s+(.*?)\s*(?://.*|/\*.*)?$")
_LABEL = re.compile(r"^\s*([A-Za-z_.$][\w.$]*):")
_SYM = re.compile(r"^\s*(?:SYM_FUNC_START|SYM_FUNC_START_LOCAL|SYM_FUNC_START_PI|SYM_CODE_START|"
                  r"SYM_CODE_START_LOCAL|SYM_FUNC_START_WEAK|SYM_INNER_LABEL|ENTRY|"
                  r"SYM_FUNC_START_NOALIGN|SYM_CODE_START_NOALIGN)\s*\(\s*(\w+)")
_GLOBAL = re.compile(r"^\s*\.(?:global|globl)\s+(\w+)")
_MACRO_START = re.compile(r"^\s*\.macro\s+(\w+)")
_MACRO_END = re.compile(r"^\s*\.endm\b")
_INSN = re.compile(r"^\s*(?:[\w.$]+:\s*)*([a-z][a-z0-9.]*)\s+(.*)$")
_IDENT = re.compile(r"[A-Za-z_]\w*")

READS = re.compile(r"^(ldr|ldur|ldar|ldapr|ldxr|ldaxr|ldp|ldnp|ldxp|ldaxp)(s?[bhw])?$")
WRITES = re.compile(r"^(str|stur|stlr|stxr|stlxr|stp|stnp|stxp|stlxp)([bhw])?$")
PAIRS = ("ldp", "ldnp", "stp", "stnp", "ldxp", "ldaxp", "stxp", "stlxp")


def parse_asm_offsets(path, enum_values: dict[str, int] | None = None) -> dict[str, tuple[str, str, int]]:
    """``{NAME: (root, path, value)}`` from an asm-offsets header; sizeof and plain lines are skipped.

    ``enum_values`` (optional) turns enum indexes into numbers (``sys_regs[SP_EL1]`` ->
    ``sys_regs[21]``) so the paths compare with the source door's.
    """
    p = Path(path)
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{p}: cannot read asm offsets: {e}") from None
    out = {}
    for line in text.splitlines():
        m = _DEFINE.match(line)
        if not m:
            continue
        name, value, root, fpath = m.groups()
        fpath = re.sub(r"\s+", "", fpath)
        if enum_values:
            fpath = re.sub(r"\[(\w+)\]", lambda mm: f"[{enum_values.get(mm.group(1), mm.group(1))}]", fpath)
        out[name] = (root, fpath, int(value, 16) if "x" in value else int(value, 10))  # "010" is ten
    return out


def _fn_macros(lines: Iterable[str], constants: dict) -> dict[str, tuple[str, str, str]]:
    """Function-like ``#define NAME(x) body`` whose body names one constant: NAME -> (const, param, body)."""
    out = {}
    for line in lines:
        m = _FN_MACRO.match(line)
        if not m:
            continue
        name, param, body = m.groups()
        used = [i for i in _IDENT.findall(body) if i in constants]
        if len(set(used)) == 1:
            out[name] = (used[0], param, body)
    return out


def _arith(expr: str) -> int | None:
    if not re.fullmatch(r"[\d\s+\-*()x]+", expr) or "__" in expr or "**" in expr or len(expr) > 200:
        return None  # ** (9**9**9 never ends) and deep nesting are no asm-offsets arithmetic
    try:
        return int(eval(expr, {"__builtins__": {}}, {}))  # digits and + - * ( ) only
    except Exception:  # noqa: BLE001 - anything odd: no offset
        return None


def _use(operand: str, constants: dict, macros: dict):
    """(constant, via, offset) for the first constant (or constant macro) an operand names."""
    for m in re.finditer(r"([A-Za-z_]\w*)(\s*\(\s*([^()]*)\))?", operand):
        ident = m.group(1)
        if ident in constants:
            return ident, ident, constants[ident][2]
        if ident in macros and m.group(2):
            const, param, body = macros[ident]
            arg = m.group(3).strip()
            expr = re.sub(rf"\b{re.escape(param)}\b", f"({arg})", body)
            expr = re.sub(rf"\b{re.escape(const)}\b", str(constants[const][2]), expr)
            return const, f"{ident}({arg})", _arith(expr)
    return None


def _reg(op: str) -> str | None:
    m = re.fullmatch(r"\s*\[?\s*([xw])(\d+|zr)\s*\]?!?\s*", op or "")
    if not m:
        return "sp" if (op or "").strip().strip("[]!") == "sp" else None
    return "x" + m.group(2)


def _dests(mnem: str, opl: list[str]) -> list[str]:
    regs = [r for r in (_reg(o) for o in opl[:2 if mnem in PAIRS else 1]) if r]
    return regs if READS.match(mnem) else []


def _track_other(mnem, opl, dest, regs, symbol_roots):
    if mnem in ("bl", "blr"):
        for i in range(19):
            regs.pop(f"x{i}", None)
        regs.pop("x30", None)
        return
    if mnem == "adrp" and dest and len(opl) >= 2 and re.fullmatch(r"\w+", opl[1]):
        regs[dest] = ("@page", opl[1], None)
        return
    if mnem == "mov" and dest and len(opl) >= 2 and (src := _reg(opl[1])) and src in regs:
        regs[dest] = regs[src]
        return
    if mnem.startswith(("b", "c", "t", "msr", "ret", "eret", "isb", "dsb", "dmb", "hvc", "smc", "nop",
                        "prfm")) and mnem not in ("bic", "bfi", "bfxil", "csel", "cset", "csinc", "clz"):
        return
    # anything else (an instruction, or an assembler macro such as get_vcpu_ptr that may
    # clobber any of its operands): forget every register it names
    for o in opl:
        r = _reg(o)
        if r:
            regs.pop(r, None)


def asm_accesses(s_files: Iterable, constants: dict, function_of: Callable | None = None,
                 source_root=None, headers: Iterable = (), symbol_roots: dict | None = None) -> list[FieldAccess]:
    """Field accesses of ``.S`` files through asm-offsets constants.

    ``ldr``/``ldp`` (and variants) read, ``str``/``stp`` write, ``add``/``sub`` with the
    constant as an immediate take the address (``addr``). For a pair (``ldp``/``stp``) on
    an indexed path (``regs[19]``) the second register's element (``regs[20]``) is reported
    too. The function is the nearest preceding ``SYM_FUNC_START(name)`` /
    ``SYM_CODE_START(name)`` / ``ENTRY(name)`` / global ``name:`` label, as the key
    ``(name, file, line-of-label)``; inside ``.macro NAME`` ... ``.endm`` it is
    ``(".macro NAME", file, line)``. ``function_of(file, line)`` overrides that.
    ``headers``: extra files whose ``#define NAME(x) ...`` macros count as constants.

    Registers are followed within a function, simply: ``adrp xN, SYM`` + ``add xN, xN,
    :lo12:SYM`` points xN at root ``symbol_roots[SYM]`` (default: a symbol named like a
    root of ``constants``, e.g. ``kvm_host_data``); ``add xD, xS, #CONST`` points xD at
    CONST's field (below xS's, when xS is known); ``mov`` copies; any other write, and
    ``bl``, forgets. A memory operand on a known register is reported from that
    register's root: ``[x0, #CPU_CTXT_HYP_RUNNING]`` after ``add x0, x0, #HOST_DATA_CTXT``
    is ``kvm_host_data: host_ctxt.__hyp_running_vcpu``.
    """
    if symbol_roots is None:
        symbol_roots = {r: r for r, _, _ in constants.values()}
    extra = []
    for h in headers:
        try:
            extra += Path(h).read_text().splitlines()
        except OSError:
            pass
    out: list[FieldAccess] = []
    root = os.path.normpath(str(source_root)) if source_root else None
    for sf in s_files:
        p = Path(sf)
        try:
            lines = p.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(f"{p}: cannot read: {e}") from None
        name = os.path.normpath(str(p))
        if root and name.startswith(root.rstrip(os.sep) + os.sep):
            name = os.path.relpath(name, root)
        macros = _fn_macros(extra + lines, constants)
        globals_ = {m.group(1) for line in lines if (m := _GLOBAL.match(line))}
        current = None
        saved = None
        regs: dict[str, tuple] = {}  # register -> (root, path, offset) it points to
        for lineno, raw in enumerate(lines, 1):
            line = re.sub(r"//.*$", "", re.sub(r"/\*.*?\*/", "", raw))
            if m := _MACRO_START.match(line):
                saved, current = current, (f".macro {m.group(1)}", name, lineno)
                regs = {}
                continue
            if _MACRO_END.match(line):
                current, saved = saved, None
                regs = {}
                continue
            if m := _SYM.match(line):
                current = (m.group(1), name, lineno)
                regs = {}
            elif (m := _LABEL.match(line)) and m.group(1) in globals_:
                current = (m.group(1), name, lineno)
                regs = {}
            if line.lstrip().startswith("#"):
                continue
            m = _INSN.match(line)
            if not m:
                continue
            mnem, ops = m.group(1).lower(), m.group(2)
            opl = [o.strip() for o in ops.split(",")]
            dest = _reg(opl[0]) if opl else None
            if READS.match(mnem):
                kind = "read"
            elif WRITES.match(mnem):
                kind = "write"
            elif mnem in ("add", "sub", "adds", "subs"):
                kind = "addr"
            else:
                _track_other(mnem, opl, dest, regs, symbol_roots)
                continue
            if kind == "addr":
                operand = opl[-1] if "[" not in ops and len(opl) >= 3 else ""
                src = _reg(opl[1]) if len(opl) >= 3 else None
                if "#" not in operand or "lo12" in operand:
                    sym = re.search(r":lo12:(\w+)", operand)
                    if dest and src == dest and sym and regs.get(dest) == ("@page", sym.group(1), None):
                        r = symbol_roots.get(sym.group(1))
                        if r:
                            regs[dest] = (r, "", 0)
                        else:
                            regs.pop(dest, None)
                    elif dest:
                        regs.pop(dest, None)
                    continue
            else:
                mm = re.search(r"\[([^\]]*)\]", ops)
                if not mm:
                    _track_other(mnem, opl, dest, regs, symbol_roots)
                    continue
                operand = mm.group(1)
                src = _reg(operand.split(",")[0])
            use = _use(operand, constants, macros)
            if kind != "addr":
                for r_ in _dests(mnem, opl):
                    regs.pop(r_, None)
            if use is None:
                if kind == "addr" and dest:
                    regs.pop(dest, None)
                continue
            const, via, offset = use
            croot, cpath, _ = constants[const]
            base = regs.get(src) if src else None
            if base and base[0] != "@page" and not (base[1] and base[0] == croot):
                # (a struct cannot contain itself: a constant of the register's own root
                # means our idea of the register is stale; trust the constant)
                croot, cpath = base[0], f"{base[1]}.{cpath}" if base[1] else cpath
                offset = base[2] + offset if base[2] is not None and offset is not None else None
            if kind == "addr" and dest:
                if mnem.startswith("add"):
                    regs[dest] = (croot, cpath, offset)
                else:
                    regs.pop(dest, None)
            fn = function_of(name, lineno) if function_of else current
            fn = fn or ("?", name, None)
            col = raw.find(via.split("(")[0]) + 1 or None
            paths = [(cpath, offset)]
            if mnem in PAIRS and (im := re.search(r"\[(\d+)\]$", cpath)):
                width = 4 if re.match(r"\s*w", ops) else 8
                paths.append((cpath[: im.start()] + f"[{int(im.group(1)) + 1}]",
                              offset + width if offset is not None else None))
            for path, off in paths:
                out.append(FieldAccess(root=croot, path=path, access=kind, function=fn, file=name,
                                       line=lineno, col=col, origin="asm", offset=off, via=via))
    return out
