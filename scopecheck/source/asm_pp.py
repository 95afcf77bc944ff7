"""Hyp assembly through the real preprocessor: field accesses of ``.S`` files.

Each ``.S`` file is preprocessed with its own compile command (the kernel's cpp flags,
includes and ``-D`` options; ``-E``, bounded by a timeout) so that every C macro expands
(``CPU_XREG_OFFSET(n)`` -> ``(CPU_USER_PT_REGS + 8 * (n))``). The asm-offsets header is
*shadowed* for that run: a copy where each ``offsetof`` constant keeps its value but also
names itself (``#define VCPU_CONTEXT (__scopecheck_c_VCPU_CONTEXT + 2048)``; the marker
is 0 in ``#if``), so an immediate still says which struct it was computed from.

Assembler macros (``.macro`` ... ``.endm``) are expanded here (named, default and
``:req``/``:vararg`` parameters, ``\\()``, ``.if``/``.ifc``/``.ifb`` and friends on values
we can evaluate, ``.rept``/``.irp``); a body whose expansion cannot be followed (a
condition on an assembler symbol, ``.irpc``, ...) and that holds memory operands becomes an
:class:`~scopecheck.model_code.Unanalysed` record of kind ``asm-macro``.

Registers are followed within a function: ``add xD, xS, #CONST`` points xD into CONST's
struct; ``adrp``/``add :lo12:`` of a symbol whose C type is a root points at that root;
``mov`` copies; ``mrs xN, tpidr_el2`` + ``add`` keeps the per-CPU base; a load of a pointer
field to a root starts that root; ``bl`` and other writes forget. At a function's label the
argument registers of its C prototype (``u64 __guest_enter(struct kvm_vcpu *vcpu)``) are
roots. ``[xN, #imm]``, ``[xN]``, pre/post-index and ``ldp``/``stp`` pairs on a known
register become field accesses by byte range (libclang's layout of the root); an
immediate built from a constant on an unknown register uses the constant's struct.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import shlex
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from scopecheck.model_code import FieldAccess, Unanalysed
from scopecheck.source.compdb import CompileCommand

MARK = "__scopecheck_c_"
CPP_TIMEOUT = 120  # seconds per .S file
MAX_EXPANSION = 20_000  # lines expanded from one top-level statement (runaway .rept)

_LINEMARK = re.compile(r'^#\s*(\d+)\s+"((?:[^"\\]|\\.)*)"')
_DEFINE = re.compile(r"^(\s*#\s*define\s+(\w+)\s+)(-?(?:0x[0-9a-fA-F]+|\d+))(\s*/\*\s*offsetof\(.*)$")
_SYM_LABEL = re.compile(r"\bSYM_(?:FUNC|CODE|INNER_LABEL|DATA)[A-Z_]*\s*\(\s*(\w+)")
_LABEL = re.compile(r"^\s*([A-Za-z_.$][\w.$]*)\s*:(?!:)")
_REG = re.compile(r"^([xw])(\d+|zr)$|^(sp|xzr|wzr)$|^([qdsbh])(\d+)$")

READS = re.compile(r"^(ldr|ldur|ldar|ldapr|ldapur|ldxr|ldaxr|ldp|ldnp|ldxp|ldaxp|ldtr|ldlar)(s?[bhw])?$")
WRITES = re.compile(r"^(str|stur|stlr|stlur|stxr|stlxr|stp|stnp|stxp|stlxp|sttr|stllr)([bhw])?$")
PAIRS = {"ldp", "ldnp", "stp", "stnp", "ldxp", "ldaxp", "stxp", "stlxp", "ldpsw"}
NO_DEST = ("b", "bl", "br", "blr", "ret", "eret", "cbz", "cbnz", "tbz", "tbnz", "cmp", "cmn", "tst", "msr", "isb",
           "dsb", "dmb", "hvc", "smc", "svc", "nop", "prfm", "sb", "wfi", "wfe", "sev", "hint", "brk", "clrex",
           "ic", "dc", "tlbi", "at", "ccmp", "ccmn", "bti", "paciasp", "autiasp", "eretaa", "retaa", "esb",
           "psb", "csdb", "ssbb", "pssbb", "yield", "sevl", "hlt", "udf")


@dataclass
class Result:
    accesses: list[FieldAccess] = field(default_factory=list)
    unanalysed: list[Unanalysed] = field(default_factory=list)
    diagnostics: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- preprocessing

def shadow_header(text: str) -> str:
    """The asm-offsets header with every offsetof constant naming itself (value unchanged)."""
    out = []
    for line in text.splitlines():
        m = _DEFINE.match(line)
        if m:
            line = f"{m.group(1)}({MARK}{m.group(2)} + {m.group(3)}){m.group(4)}"
        out.append(line)
    return "\n".join(out) + "\n"


def _include_dirs(cmd: CompileCommand) -> list[str]:
    out, args = [], list(cmd.arguments[1:])
    i = 0
    while i < len(args):
        a = args[i]
        i += 1
        if a in ("-I", "-iquote", "-isystem", "-idirafter"):
            if i < len(args):
                out.append(os.path.normpath(os.path.join(cmd.directory, args[i])))
                i += 1
        elif a.startswith("-I") and len(a) > 2:
            out.append(os.path.normpath(os.path.join(cmd.directory, a[2:])))
    return out


def shadow_name(cmd: CompileCommand, asm_offsets: str) -> str | None:
    """The name under which ``cmd`` includes the asm-offsets header (relative to one of its -I dirs)."""
    p = os.path.normpath(os.path.abspath(asm_offsets))
    best = None
    for d in _include_dirs(cmd):
        if p.startswith(d.rstrip(os.sep) + os.sep):
            rel = os.path.relpath(p, d)
            if best is None or len(rel) < len(best):
                best = rel
    return best


def cpp_command(cmd: CompileCommand, shadow_dir: str | None, depfile: str | None = None) -> list[str]:
    """The compile command turned into ``-E`` (no object, no dependency side files)."""
    args = list(cmd.arguments)
    out = [args[0]]
    if shadow_dir:
        out.append(f"-I{shadow_dir}")
    skip = False
    for a in args[1:]:
        if skip:
            skip = False
            continue
        if a in ("-o", "-MF", "-MT", "-MQ"):
            skip = True
            continue
        if a in ("-c", "-S", "-E", "-MD", "-MMD", "-M", "-MM", "-MP", "-MG") or a.startswith(("-Wp,-M", "-MF")):
            continue
        if a.startswith("-o") and len(a) > 2:
            continue
        if os.path.normpath(os.path.join(cmd.directory, a)) == cmd.file:
            continue
        out.append(a)
    if depfile:
        out += ["-MD", "-MF", depfile]
    return out + ["-E", cmd.file]


def preprocess(cmd: CompileCommand, shadow_dir: str | None, timeout: float = CPP_TIMEOUT,
               depfile: str | None = None) -> str:
    argv = cpp_command(cmd, shadow_dir, depfile)
    try:
        r = subprocess.run(argv, cwd=cmd.directory, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           timeout=timeout, text=True, errors="replace")
    except FileNotFoundError:
        raise RuntimeError(f"{argv[0]} not found") from None
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"preprocessing took longer than {timeout:.0f} s") from None
    if r.returncode != 0:
        lines = r.stderr.strip().splitlines() or ["?"]
        err = next((x for x in lines if "error" in x), lines[-1])
        raise RuntimeError(f"{argv[0]} -E failed: {err[:200]}")
    return r.stdout


def kbuild_asm_commands(build_dir, under: str = "arch/arm64/kvm/hyp", pattern: str = ".*.o.cmd") -> list[CompileCommand]:
    """Compile commands of the ``.S`` objects below ``under`` from kbuild's ``.*.o.cmd`` files.

    Kernels whose ``gen_compile_commands.py`` lists only C files (6.1) still record each
    assembly object's exact command in ``<build>/<dir>/.<obj>.cmd``.
    """
    b = Path(build_dir)
    out = []
    seen = set()
    for p in sorted((b / under).rglob(pattern)):
        try:
            text = p.read_text(errors="replace")
        except OSError:
            continue
        m = re.search(r"^(?:saved)?cmd_\S+\s*:=\s*(.*)$", text, re.M)
        if not m:
            continue
        line = m.group(1)
        try:
            argv = shlex.split(line) if any(c in line for c in "'\"\\") else line.split()
        except ValueError:
            argv = line.split()
        srcs = [a for a in argv if a.endswith(".S") and not a.startswith("-")]
        if not srcs:
            continue
        src = os.path.normpath(os.path.join(b, srcs[-1]))
        if src in seen:
            continue
        seen.add(src)
        if ";" in argv:
            argv = argv[:argv.index(";")]
        out.append(CompileCommand(file=src, directory=str(b.resolve()), arguments=tuple(argv)))
    return out


# ---------------------------------------------------------------- expressions

_ALLOWED = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Constant, ast.Add, ast.Sub, ast.Mult, ast.FloorDiv,
            ast.Mod, ast.LShift, ast.RShift, ast.BitAnd, ast.BitOr, ast.BitXor, ast.USub, ast.UAdd, ast.Invert,
            ast.Compare, ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.BoolOp, ast.And, ast.Or,
            ast.Not)


def evaluate(expr: str) -> int | None:
    """An integer assembler expression (no symbols), or None."""
    e = expr.strip().lstrip("#").strip()
    if not e or len(e) > 400:
        return None
    e = re.sub(r"(?<![\w.])0x([0-9a-fA-F]+)[uUlL]*", lambda m: str(int(m.group(1), 16)), e)
    e = re.sub(r"\b(\d+)[uUlL]+\b", r"\1", e)
    if re.search(r"[A-Za-z_$.\\]", e):
        return None
    e = e.replace("/", "//").replace("&&", " and ").replace("||", " or ").replace("!=", "@@")
    e = e.replace("!", " not ").replace("@@", "!=")
    try:
        tree = ast.parse(e, mode="eval")
    except (SyntaxError, ValueError):
        return None
    for n in ast.walk(tree):
        if not isinstance(n, _ALLOWED):
            return None
        if isinstance(n, ast.Constant) and not isinstance(n.value, int):
            return None
        if isinstance(n, ast.BinOp) and isinstance(n.op, (ast.LShift,)) and \
                isinstance(n.right, ast.Constant) and n.right.value > 64:
            return None
    try:
        v = eval(compile(tree, "<asm>", "eval"), {"__builtins__": {}}, {})  # checked: integers and operators only
    except Exception:  # noqa: BLE001 - division by zero, ...
        return None
    return int(v)


def immediate(expr: str, constants: dict) -> tuple[int | None, str | None]:
    """(value, the one offsetof constant it was built from or None) of a preprocessed immediate."""
    names = re.findall(MARK + r"(\w+)", expr)
    plain = re.sub(MARK + r"\w+", "0", expr)
    v = evaluate(plain)
    uniq = set(n for n in names if n in constants)
    return v, (uniq.pop() if len(uniq) == 1 and len(names) == 1 else None)


# ---------------------------------------------------------------- source lines and macros

@dataclass
class Line:
    file: str
    line: int
    text: str
    via: str | None = None  # outermost assembler macro this line came from


@dataclass
class Macro:
    name: str
    params: list  # [(name, default, qualifier)]
    body: list  # [Line]
    file: str
    line: int


def split_lines(pp: str) -> list[Line]:
    """Preprocessed text -> statements with their original (file, line); ``;`` separates statements."""
    out = []
    cur_file, cur_line = "", 0
    for raw in pp.split("\n"):
        m = _LINEMARK.match(raw)
        if m:
            cur_line, cur_file = int(m.group(1)), m.group(2)
            continue
        if raw.strip():
            for part in _split_semicolons(raw):
                if part.strip():
                    out.append(Line(cur_file, cur_line, part))
        cur_line += 1
    return out


def _split_semicolons(s: str) -> list[str]:
    if ";" not in s:
        return [s]
    out, cur, q = [], [], False
    for ch in s:
        if ch == '"':
            q = not q
        if ch == ";" and not q:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    out.append("".join(cur))
    return out


def _params(spec: str) -> list:
    out = []
    for p in re.split(r"\s*,\s*|\s+(?=[A-Za-z_])", spec.strip()):
        p = p.strip()
        if not p:
            continue
        qual = None
        if ":" in p.split("=")[0]:
            name, _, rest = p.partition(":")
            qual, _, default = rest.partition("=")
        else:
            name, _, default = p.partition("=")
        out.append((name.strip(), default.strip() or None, (qual or "").strip() or None))
    return out


def _args(text: str) -> list[str]:
    """Macro invocation arguments: separated by commas, or by blanks outside brackets/parens."""
    text = text.strip()
    if not text:
        return []
    parts, cur, depth = [], [], 0
    for ch in text:
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur).strip())
            cur = []
            continue
        cur.append(ch)
    parts.append("".join(cur).strip())
    if len(parts) == 1 and depth == 0 and " " in parts[0] and "(" not in parts[0]:
        parts = parts[0].split()
    return parts


class Unfollowable(Exception):
    pass


def _bind(m: Macro, args: list[str]) -> dict:
    vals: dict = {}
    pos = 0
    named = {}
    positional = []
    for a in args:
        mm = re.fullmatch(r"(\w+)\s*=\s*(.*)", a)
        if mm and any(p[0] == mm.group(1) for p in m.params):
            named[mm.group(1)] = mm.group(2)
        else:
            positional.append(a)
    for i, (name, default, qual) in enumerate(m.params):
        if name in named:
            vals[name] = named[name]
        elif qual == "vararg":
            vals[name] = ", ".join(positional[pos:])
            pos = len(positional)
        elif pos < len(positional):
            vals[name] = positional[pos]
            pos += 1
        elif default is not None:
            vals[name] = default
        elif qual == "req":
            raise Unfollowable(f"missing required argument {name}")
        else:
            vals[name] = ""
    return vals


def _subst(text: str, vals: dict, counter: int) -> str:
    def rep(mm):
        n = mm.group(1)
        if n == "@":
            return str(counter)
        if n == "()":
            return ""
        return vals.get(n, mm.group(0))
    return re.sub(r"\\(@|\(\)|\w+)", rep, text)


_COND = re.compile(r"^\s*\.(if|ifeq|ifne|ifc|ifnc|ifb|ifnb|ifdef|ifndef|ifeqs|ifnes|ifgt|ifge|iflt|ifle|elseif|else|endif)"
                   r"\b\s*(.*)$")


def _cond_value(kind: str, arg: str) -> bool:
    if kind in ("ifc", "ifnc", "ifeqs", "ifnes"):
        a, sep, b = arg.partition(",")
        if not sep:
            raise Unfollowable(f".{kind} {arg}")
        a, b = a.strip().strip('"').strip("'"), b.strip().strip('"').strip("'")
        return (a == b) == (kind in ("ifc", "ifeqs"))
    if kind in ("ifb", "ifnb"):
        return (not arg.strip()) == (kind == "ifb")
    if kind in ("ifdef", "ifndef"):
        raise Unfollowable(f".{kind} {arg}")
    v = evaluate(arg)
    if v is None:
        raise Unfollowable(f".{kind} {arg.strip()}")
    return {"if": v != 0, "elseif": v != 0, "ifne": v != 0, "ifeq": v == 0, "ifgt": v > 0, "ifge": v >= 0,
            "iflt": v < 0, "ifle": v <= 0}[kind]


def _has_memory(lines: list[Line]) -> bool:
    return any("[" in ln.text and "]" in ln.text for ln in lines)


class Expander:
    """Expands assembler macros, conditionals and repetitions into plain statements."""

    def __init__(self, on_unfollowable):
        self.macros: dict[str, Macro] = {}
        self.counter = 0
        self.on_unfollowable = on_unfollowable  # (Line, macro name or None, reason)
        self.budget = 2 * MAX_EXPANSION  # statements one file may expand to (self-invoking macros)

    def run(self, lines: list[Line], depth: int = 0, via: str | None = None, site: Line | None = None):
        i = 0
        n = len(lines)
        produced = 0
        while i < n:
            ln = lines[i]
            t = ln.text.strip()
            low = t.lower()
            if low.startswith(".macro"):
                j, body = self._block(lines, i, ".macro", ".endm")
                hdr = t[len(".macro"):].strip()
                name, _, spec = hdr.replace(",", " , ", 1).partition(" ")
                name = name.strip().rstrip(",")
                self.macros[name] = Macro(name, _params(spec.lstrip(" ,")), body, ln.file, ln.line)
                i = j
                continue
            if low.startswith(".purgem"):
                self.macros.pop(t.split(None, 1)[1].strip() if " " in t else "", None)
                i += 1
                continue
            m = _COND.match(t)
            if m and m.group(1).startswith("if"):
                j, taken, reason = self._conditional(lines, i)
                where = site or ln
                if reason is not None:
                    skipped = lines[i + 1:j - 1]
                    if _has_memory(skipped):
                        self.on_unfollowable(where, via, reason)
                elif taken:
                    yield from self.run(taken, depth, via, site)
                i = j
                continue
            if low.startswith((".rept", ".irp ", ".irpc", ".irp\t")):
                j, body = self._block(lines, i, (".rept", ".irp", ".irpc"), ".endr")
                try:
                    reps = self._repeat(t, body)
                except Unfollowable as e:
                    if _has_memory(body):
                        self.on_unfollowable(site or ln, via, str(e))
                    i = j
                    continue
                for r in reps:
                    produced += len(r)
                    if produced > MAX_EXPANSION:
                        self.on_unfollowable(site or ln, via, "expansion too long")
                        return
                    yield from self.run(r, depth, via, site)
                i = j
                continue
            word = re.match(r"^\s*(?:[\w.$]+:\s*)*([A-Za-z_.$][\w.$]*)\b(.*)$", ln.text)
            if word and word.group(1) in self.macros:
                mac = self.macros[word.group(1)]
                label = re.match(r"^\s*((?:[\w.$]+:\s*)+)", ln.text)
                if label:
                    yield Line(ln.file, ln.line, label.group(1), via)
                if depth >= 16:
                    self.on_unfollowable(site or ln, via or mac.name, "macro nesting deeper than 16")
                    i += 1
                    continue
                try:
                    vals = _bind(mac, _args(word.group(2)))
                except Unfollowable as e:
                    self.on_unfollowable(site or ln, via or mac.name, f"{mac.name}: {e}")
                    i += 1
                    continue
                self.counter += 1
                self.budget -= len(mac.body) + 1
                if self.budget < 0:
                    self.on_unfollowable(site or ln, via or mac.name, "expansion budget exhausted")
                    i += 1
                    continue
                outer = site or ln
                body = [Line(outer.file, outer.line, _subst(b.text, vals, self.counter), via or mac.name)
                        for b in mac.body]
                yield from self.run(body, depth + 1, via or mac.name, outer)
                i += 1
                continue
            yield Line(ln.file, ln.line, ln.text, via if via else ln.via)
            i += 1

    def _block(self, lines, i, opens, close):
        if isinstance(opens, str):
            opens = (opens,)
        depth = 0
        body = []
        j = i
        while j < len(lines):
            t = lines[j].text.strip().lower()
            if any(t.startswith(o) for o in opens):
                depth += 1
                if depth == 1:
                    j += 1
                    continue
            elif t.startswith(close):
                depth -= 1
                if depth == 0:
                    return j + 1, body
            body.append(lines[j])
            j += 1
        return j, body

    def _conditional(self, lines, i):
        """(index after .endif, lines of the taken branch, reason if it cannot be decided)."""
        depth = 0
        branches: list[tuple[str, str, list]] = []
        j = i
        while j < len(lines):
            t = lines[j].text.strip()
            m = _COND.match(t)
            if m:
                k = m.group(1)
                if k.startswith("if"):
                    depth += 1
                    if depth == 1:
                        branches.append((k, m.group(2), []))
                        j += 1
                        continue
                elif k == "endif":
                    depth -= 1
                    if depth == 0:
                        break
                elif depth == 1 and k in ("else", "elseif"):
                    branches.append((k, m.group(2), []))
                    j += 1
                    continue
            if branches:
                branches[-1][2].append(lines[j])
            j += 1
        for k, arg, body in branches:
            if k == "else":
                return j + 1, body, None
            try:
                if _cond_value(k, arg):
                    return j + 1, body, None
            except Unfollowable as e:
                return j + 1, None, str(e)
        return j + 1, [], None

    def _repeat(self, head: str, body: list[Line]) -> list[list[Line]]:
        h = head.strip()
        if h.lower().startswith(".rept"):
            n = evaluate(h[5:])
            if n is None or n < 0 or n > 4096:
                raise Unfollowable(f"{h}")
            return [list(body) for _ in range(n)]
        if h.lower().startswith(".irpc"):
            raise Unfollowable(".irpc")
        rest = h[4:].strip()
        sym, _, vals = rest.partition(",")
        sym = sym.strip()
        out = []
        for v in [x.strip() for x in vals.split(",")] if vals.strip() else [""]:
            out.append([Line(b.file, b.line, _subst(b.text, {sym: v}, self.counter), b.via) for b in body])
        return out


# ---------------------------------------------------------------- registers and operands

def reg(op: str) -> str | None:
    """Canonical register name (x0..x30, sp, xzr) of a general register operand, else None."""
    o = (op or "").strip().lower().strip("[]!").strip()
    m = _REG.match(o)
    if not m:
        return None
    if m.group(3):
        return "sp" if m.group(3) == "sp" else "xzr"
    if m.group(1):
        return "xzr" if m.group(2) == "zr" else f"x{m.group(2)}"
    return None


def _width(mnem: str, first: str) -> int:
    m = READS.match(mnem) or WRITES.match(mnem)
    suffix = m.group(2) if m else None
    if suffix:
        return {"b": 1, "h": 2, "w": 4, "sb": 1, "sh": 2, "sw": 4}[suffix]
    r = (first or "").strip().lower()
    if r.startswith("w"):
        return 4
    if r.startswith("q"):
        return 16
    if r.startswith("d"):
        return 8
    if r.startswith("s"):
        return 4 if r != "sp" else 8
    if r.startswith("h"):
        return 2
    if r.startswith("b"):
        return 1
    return 8


def _operands(s: str) -> list[str]:
    out, cur, depth = [], [], 0
    for ch in s:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        if ch == "," and depth == 0:
            out.append("".join(cur).strip())
            cur = []
            continue
        cur.append(ch)
    if cur:
        out.append("".join(cur).strip())
    return out


@dataclass
class Tracked:
    root: str
    offset: int | None  # bytes from the root's start (None: somewhere inside)


class FileAnalysis:
    """One preprocessed .S file: functions, register tracking, accesses."""

    def __init__(self, name: str, constants: dict, layouts: dict, symbol_roots: dict, prototypes: dict,
                 function_names: set, result: Result, relpath):
        self.name = name
        self.constants = constants
        self.layouts = layouts
        self.symbol_roots = symbol_roots
        self.prototypes = prototypes
        self.function_names = function_names
        self.out = result
        self.rel = relpath
        self.regs: dict[str, Tracked | str] = {}
        self.current = None
        self.globals: set = set()
        self.functions: set = set()

    def unfollowable(self, ln: Line, via, reason):
        self.out.unanalysed.append(Unanalysed(kind="asm-macro", function=self.current, file=self.rel(ln.file),
                                              line=ln.line, col=None, origin="asm",
                                              detail=f"{via or 'assembler'}: {reason}"))

    def scan(self, lines: list[Line]):
        for ln in lines:
            t = ln.text.strip()
            m = re.match(r"^\.(?:globl|global)\s+(\w+)", t)
            if m:
                self.globals.add(m.group(1))
            m = re.match(r"^\.type\s+(\w+)\s*,\s*[%@#]function", t)
            if m:
                self.functions.add(m.group(1))

    def start(self, name: str, ln: Line):
        self.current = (name, self.rel(ln.file), ln.line)
        self.regs = {}
        for r, root in self.prototypes.get(name, {}).items():
            self.regs[r] = Tracked(root, 0)

    def statement(self, ln: Line):
        text = ln.text
        while True:
            m = _LABEL.match(text)
            if not m:
                break
            name = m.group(1)
            if name in self.globals or name in self.functions or name in self.function_names:
                self.start(name, ln)
            elif not name.startswith(".L") and not name.isdigit():
                # a named local label is a symbol of its own in the ELF (the binary door's
                # function): accesses after it are its own; registers flow on (fallthrough)
                self.current = (name, self.rel(ln.file), ln.line)
            text = text[m.end():]
        t = text.strip()
        if not t or t.startswith(".") or t.startswith("#"):
            return
        m = re.match(r"^([A-Za-z][\w.]*)\s*(.*)$", t)
        if not m:
            return
        mnem, rest = m.group(1).lower(), m.group(2)
        ops = _operands(rest)
        if READS.match(mnem) or WRITES.match(mnem) or mnem == "ldpsw":
            self._memory(mnem, ops, ln)
        elif mnem in ("add", "sub", "adds", "subs"):
            self._add(mnem, ops, ln)
        elif mnem == "mov" and len(ops) == 2:
            d, s = reg(ops[0]), reg(ops[1])
            if d:
                v = self.regs.get(s) if s else None
                if v is None:
                    self.regs.pop(d, None)
                else:
                    self.regs[d] = v
        elif mnem == "adrp" and len(ops) == 2:
            d = reg(ops[0])
            if d:
                self.regs[d] = "@page:" + ops[1].strip()
        elif mnem in ("adr", "ldr=") and len(ops) == 2:
            d = reg(ops[0])
            sym = ops[1].strip()
            if d:
                root = self.symbol_roots.get(sym)
                if root:
                    self.regs[d] = Tracked(root, 0)
                else:
                    self.regs.pop(d, None)
        elif mnem == "mrs" and len(ops) == 2:
            d = reg(ops[0])
            if d:
                if ops[1].strip().lower() in ("tpidr_el2", "tpidr_el1"):
                    self.regs[d] = "@percpu"
                else:
                    self.regs.pop(d, None)
        elif mnem in ("bl", "blr"):
            for i in list(range(19)) + [30]:
                self.regs.pop(f"x{i}", None)
        elif mnem.startswith(NO_DEST) and (mnem in NO_DEST or mnem.startswith(("b.", "tlbi", "dc", "ic"))):
            return
        else:
            d = reg(ops[0]) if ops else None
            if d:
                self.regs.pop(d, None)
            if mnem not in NO_DEST and not re.fullmatch(r"[a-z][a-z0-9.]*", mnem):
                for o in ops:
                    r = reg(o)
                    if r:
                        self.regs.pop(r, None)

    def _add(self, mnem, ops, ln):
        if len(ops) < 3:
            if ops:
                d = reg(ops[0])
                if d:
                    self.regs.pop(d, None)
            return
        d, s = reg(ops[0]), reg(ops[1])
        if not d:
            return
        src = self.regs.get(s) if s else None
        third = ops[2].strip()
        lo12 = re.match(r"#?\s*:lo12:\s*([\w.$]+)", third)
        if lo12:
            if isinstance(src, str) and src == "@page:" + lo12.group(1):
                root = self.symbol_roots.get(lo12.group(1))
                if root:
                    self.regs[d] = Tracked(root, 0)
                    return
            self.regs.pop(d, None)
            return
        r3 = reg(third.split()[0]) if third else None
        if r3:  # register + register: a per-CPU offset keeps the base
            other = self.regs.get(r3)
            if mnem == "add" and (isinstance(src, Tracked) and other == "@percpu"):
                self.regs[d] = src
            elif mnem == "add" and (src == "@percpu" and isinstance(other, Tracked)):
                self.regs[d] = other
            else:
                self.regs.pop(d, None)
            return
        if len(ops) > 3:  # shifted immediate (add x0, x0, #1, lsl #12)
            self.regs.pop(d, None)
            return
        val, const = immediate(third, self.constants)
        if val is None:
            self.regs.pop(d, None)
            return
        sign = -1 if mnem.startswith("sub") else 1
        new = None
        if isinstance(src, Tracked) and src.offset is not None:
            if const is None or self._consistent(src, const):
                new = Tracked(src.root, src.offset + sign * val)
        if new is None and const is not None:
            croot = self.constants[const][0]
            new = Tracked(croot, val if sign > 0 else 0)
        if new is None or new.offset is None or new.offset < 0:
            self.regs.pop(d, None)
            return
        self.regs[d] = new
        if sign > 0 and const is not None:
            self._emit(new.root, new.offset, None, "addr", ln, const)

    def _consistent(self, t: Tracked, const: str) -> bool:
        """Does register ``t`` point at an object of the constant's struct (so offsets add up)?"""
        croot = self.constants[const][0]
        if t.root == croot and t.offset == 0:
            return True
        lay = self.layouts.get(t.root)
        if lay is None or t.offset is None:
            return False
        from scopecheck.source.raw_access import member_at

        return member_at(lay, t.offset, croot) is not None

    def _memory(self, mnem, ops, ln):
        kind = "read" if (READS.match(mnem) or mnem == "ldpsw") else "write"
        pair = mnem in PAIRS
        mem_i = next((i for i, o in enumerate(ops) if o.startswith("[")), None)
        if mem_i is None:
            if kind == "read" and ops:
                d = reg(ops[0])
                if d:
                    self.regs.pop(d, None)
            return
        mem = ops[mem_i]
        inner = mem.strip()
        writeback = inner.endswith("!")
        inner = inner.rstrip("!").strip()[1:-1] if inner.rstrip("!").strip().endswith("]") else inner[1:]
        parts = [p.strip() for p in inner.split(",")]
        base = reg(parts[0]) if parts else None
        post = mem_i + 1 < len(ops)  # [xN], #imm
        width = _width(mnem, ops[0] if ops else "")
        dests = [reg(o) for o in ops[:2 if pair else 1]] if kind == "read" else []
        val, const = 0, None
        regoff = False
        if len(parts) >= 2 and not post:
            if parts[1].split() and reg(parts[1].split()[0]):
                regoff = True
            else:
                val, const = immediate(parts[1], self.constants)
        tracked = self.regs.get(base) if base else None
        root = off = None
        if isinstance(tracked, Tracked) and tracked.offset is not None and val is not None and (
                const is None or self._consistent(tracked, const)):
            root, off = tracked.root, tracked.offset + val
        elif const is not None and val is not None:
            root, off = self.constants[const][0], val
        if regoff and isinstance(tracked, Tracked):
            self.out.unanalysed.append(Unanalysed(
                kind="pointer-arith", function=self.current, file=self.rel(ln.file), line=ln.line, origin="asm",
                detail=f"{mnem} {', '.join(ops)}: register offset from {tracked.root}"))
            root = None
        if root is not None:
            n = 2 if pair else 1
            for k in range(n):
                self._emit(root, off + k * width, width, kind, ln, const,
                           loaded=dests[k] if k < len(dests) else None)
        for d in dests:
            if d and not (root is not None and isinstance(self.regs.get(d), Tracked) and
                          self.regs[d] is not tracked):
                if d in self.regs and not isinstance(self.regs.get(d), Tracked):
                    self.regs.pop(d, None)
                elif root is None:
                    self.regs.pop(d, None)
        if (writeback or post) and base in self.regs:
            self.regs.pop(base, None)

    def _emit(self, root, off, width, kind, ln, const, loaded=None):
        lay = self.layouts.get(root)
        fn = self.current or ("?", self.rel(ln.file), None)
        via = ln.via or const
        if lay is None:
            if const is not None and kind != "addr":
                c_root, c_path, c_val = self.constants[const]
                if c_root == root and c_val == off:
                    self._add_access(root, c_path, kind, fn, ln, off, width, via)
                    return
            self.out.unanalysed.append(Unanalysed(kind="unmapped-offset", function=fn, file=self.rel(ln.file),
                                                  line=ln.line, origin="asm",
                                                  detail=f"{root}+{off}: no layout of struct {root}"))
            return
        from scopecheck.source.clang_layout import paths_for_range

        try:
            paths = paths_for_range(lay, off, width or 1)
        except ValueError:
            self.out.unanalysed.append(Unanalysed(kind="unmapped-offset", function=fn, file=self.rel(ln.file),
                                                  line=ln.line, origin="asm",
                                                  detail=f"{root}+{off}: outside struct {root} ({lay.size} bytes)"))
            return
        if kind == "addr":  # the address of the outermost member starting there (add x29, x0, #VCPU_CONTEXT)
            c = self.constants.get(const) if const else None
            paths = [c[1]] if c and c[0] == root and c[2] == off else [_outermost_at(lay, off) or (paths[:1] or [""])[0]]
            paths = [p for p in paths if p]
        for p in paths:
            self._add_access(root, p, kind, fn, ln, off, width, via)
        if loaded and kind == "read" and len(paths) == 1:
            self._loaded_pointer(lay, paths[0], loaded)
        elif loaded:
            self.regs.pop(loaded, None)

    def _loaded_pointer(self, lay, path, d):
        from scopecheck.layout import member

        try:
            m = member(lay, path)
        except (KeyError, ValueError):
            self.regs.pop(d, None)
            return
        t = re.sub(r"\b(const|volatile|struct|union)\b", "", m.type_name).strip()
        if t.endswith("*") and t[:-1].strip() in self.layouts:
            self.regs[d] = Tracked(t[:-1].strip(), 0)
        else:
            self.regs.pop(d, None)

    def _add_access(self, root, path, kind, fn, ln, off, width, via):
        self.out.accesses.append(FieldAccess(root=root, path=path, access=kind, function=fn,
                                             file=self.rel(ln.file), line=ln.line, col=None, origin="asm",
                                             offset=off, size=width, via=via))


def _outermost_at(lay, off: int) -> str | None:
    for m in lay.members:
        if m.offset == off and m.name is not None and m.size:
            return m.path
        if m.size and m.offset <= off < m.offset + m.size and m.members and not m.array_dims:
            inner = _outermost_at_members(m.members, off)
            if inner:
                return inner
    return None


def _outermost_at_members(members, off):
    for m in members:
        if m.offset == off and m.name is not None and m.size:
            return m.path
        if m.size and m.offset <= off < m.offset + m.size and m.members and not m.array_dims:
            return _outermost_at_members(m.members, off)
    return None


def analyse_file(pp: str, raw_text: str, name: str, constants: dict, layouts: dict, symbol_roots: dict,
                 prototypes: dict, result: Result, relpath) -> None:
    """Accesses of one preprocessed .S (``pp``); ``raw_text`` is the unpreprocessed file (SYM_* names)."""
    lines = split_lines(pp)
    fa = FileAnalysis(name, constants, layouts, symbol_roots, prototypes,
                      set(_SYM_LABEL.findall(raw_text)), result, relpath)
    fa.scan(lines)
    main = os.path.normpath(name)
    ex = Expander(fa.unfollowable)
    for ln in ex.run(lines):
        if os.path.normpath(ln.file) != main and ln.via is None:
            continue  # a header's own statements (macros are expanded where they are used)
        try:
            fa.statement(ln)
        except (IndexError, ValueError, KeyError, TypeError) as e:  # a statement we cannot parse: say so
            result.unanalysed.append(Unanalysed(kind="asm-parse", function=fa.current, file=relpath(ln.file),
                                                line=ln.line, origin="asm",
                                                detail=f"{ln.text.strip()[:80]}: {type(e).__name__}"))


# ---------------------------------------------------------------- layouts and prototypes from C

def c_context(cmd: CompileCommand | None, roots: Iterable[str]) -> tuple[dict, dict, dict, list[str]]:
    """(layouts, symbol roots, prototypes, included files) from one hyp C translation unit (libclang).

    Layouts of the root structs (libclang's type layout, as the C code sees them), globals
    whose type is a root (``kvm_host_data``, per-CPU ``kvm_hyp_ctxt``) and functions
    declared with root-pointer parameters (``__guest_enter(struct kvm_vcpu *)`` -> x0).
    Parses ``cmd`` with function bodies skipped; :func:`c_context_of` reads a translation unit
    the C door has parsed already.
    """
    if cmd is None:
        return {}, {}, {}, []
    import clang.cindex as ci

    from scopecheck.source.compdb import clang_args

    try:
        tu = ci.Index.create().parse(cmd.file, args=clang_args(cmd), options=0x40)  # skip function bodies
    except ci.TranslationUnitLoadError:
        return {}, {}, {}, []
    return c_context_of(tu, roots)


def c_context_of(tu, roots: Iterable[str]) -> tuple[dict, dict, dict, list[str]]:
    """:func:`c_context` of a parsed translation unit."""
    import clang.cindex as ci

    from scopecheck.source import clangext as cx
    from scopecheck.source.clang_layout import layout_of

    roots = set(roots)
    layouts: dict = {}
    symbols: dict = {}
    protos: dict = {}
    K = ci.CursorKind

    def root_of_ptr(t):
        p = cx.pointee(t)
        if p is None:
            return None
        names = [n for n in cx.record_names(p) if n in roots]
        return names[0] if names else None

    named_root = re.compile("|".join(re.escape(r) for r in sorted(roots, key=len, reverse=True)))
    struct_ids = {K.STRUCT_DECL.value, K.UNION_DECL.value}
    for k, c in cx.top_level_of(tu, (K.STRUCT_DECL, K.UNION_DECL, K.VAR_DECL, K.FUNCTION_DECL)):
        if k in struct_ids:
            if c.spelling in roots and c.spelling not in layouts and c.is_definition():
                lay = layout_of(c.type, c.spelling)
                if lay is not None:
                    layouts[c.spelling] = lay
        elif k == K.VAR_DECL.value:
            names = [n for n in cx.record_names(c.type) if n in roots]
            if names:
                symbols[c.spelling] = names[0]
        else:
            # ~10,000 declarations per kernel TU: only those whose type names a root have their
            # parameters looked at (the written and the canonical spelling: typedefs, tags)
            if not named_root.search(c.type.spelling) and not named_root.search(c.type.get_canonical().spelling):
                continue
            regs = {}
            for i, a in enumerate(c.get_arguments()):
                r = root_of_ptr(a.type)
                if r and i < 8:
                    regs[f"x{i}"] = r
            if regs:
                protos.setdefault(c.spelling, regs)
    includes = sorted({os.path.normpath(i.include.name) for i in tu.get_includes()})
    return layouts, symbols, protos, includes


# ---------------------------------------------------------------- the entry point

def context_roots(asm_offsets, roots: Iterable[str] = ()) -> set[str]:
    """The root structs :func:`asm_facts` reads the C context for: ``roots`` and those the
    asm-offsets constants name."""
    from scopecheck.source.asm_offsets import parse_asm_offsets

    constants = parse_asm_offsets(asm_offsets) if asm_offsets else {}
    return set(roots) | {r for r, _, _ in constants.values()}


def asm_facts(s_cmds: list[CompileCommand], asm_offsets, c_cmd: CompileCommand | None = None,
              roots: Iterable[str] = (), source_root=None, cache: bool = True,
              timeout: float = CPP_TIMEOUT, context: Callable[[], tuple | None] | None = None) -> Result:
    """Field accesses (origin ``asm``) and Unanalysed records of hyp ``.S`` files, preprocessed.

    ``s_cmds``: the compile commands of the ``.S`` files; ``asm_offsets``: the generated
    asm-offsets header (its ``offsetof`` comments name each constant's struct); ``c_cmd``:
    one hyp C translation unit for layouts, root-typed globals and prototypes; ``roots``:
    root struct names (default: those of the constants). ``context``: asked (on a cache miss)
    for ``c_cmd``'s :func:`c_context` computed elsewhere (the C door's worker that parsed it);
    when it gives None, ``c_cmd`` is parsed here.
    """
    from scopecheck.source.asm_offsets import parse_asm_offsets

    res = Result()
    constants = parse_asm_offsets(asm_offsets) if asm_offsets else {}
    roots = context_roots(asm_offsets, roots)
    root_dir = os.path.normpath(os.path.abspath(str(source_root))) if source_root else None

    def rel(name: str) -> str:
        p = os.path.normpath(name)
        if root_dir and p.startswith(root_dir.rstrip(os.sep) + os.sep):
            return os.path.relpath(p, root_dir)
        return p

    ident = _ident(s_cmds, asm_offsets, c_cmd, sorted(roots), root_dir)
    if cache:
        hit = _cache_read(ident)
        if hit is not None:
            return hit
    got = context() if context is not None else None
    layouts, symbols, protos, includes = got if got is not None else c_context(c_cmd, roots)
    shadow_text = shadow_header(Path(asm_offsets).read_text(errors="replace")) if asm_offsets else None
    deps: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory(prefix="scopecheck-cpp-") as tmp:
        for cmd in s_cmds:
            res.files.append(cmd.file)
            shadow_dir = None
            if shadow_text is not None:
                sname = shadow_name(cmd, str(asm_offsets))
                if sname is None:
                    res.diagnostics.append(f"{rel(cmd.file)}: the asm-offsets header is not below any -I "
                                           f"directory of its command; offsets are plain numbers")
                else:
                    shadow_dir = os.path.join(tmp, f"s{len(res.files)}")
                    p = Path(shadow_dir) / sname
                    p.parent.mkdir(parents=True, exist_ok=True)
                    p.write_text(shadow_text)
            depfile = os.path.join(tmp, f"d{len(res.files)}")
            try:
                pp = preprocess(cmd, shadow_dir, timeout, depfile)
            except RuntimeError as e:
                res.diagnostics.append(f"{rel(cmd.file)}: {e}")
                res.unanalysed.append(Unanalysed(kind="asm-file", function=None, file=rel(cmd.file), line=None,
                                                 origin="asm", detail=str(e)))
                continue
            deps[cmd.file] = _read_deps(depfile, cmd.directory, tmp)
            try:
                raw = Path(cmd.file).read_text(errors="replace")
            except OSError:
                raw = ""
            analyse_file(pp, raw, cmd.file, constants, layouts, symbols, protos, res, rel)
    if cache and not any(u.kind == "asm-file" for u in res.unanalysed):  # a failed cpp run (no compiler) is not kept
        files = sorted({f for v in deps.values() for f in v} | set(includes) | {c.file for c in s_cmds} |
                       ({c_cmd.file} if c_cmd else set()) | ({os.path.abspath(str(asm_offsets))} if asm_offsets
                                                             else set()))
        _cache_write(ident, res, files)
    return res


def _read_deps(depfile: str, directory: str, tmp: str) -> list[str]:
    try:
        text = Path(depfile).read_text(errors="replace")
    except OSError:
        return []
    text = text.replace("\\\n", " ")
    _, _, rest = text.partition(":")
    out = []
    for d in rest.split():
        p = os.path.normpath(os.path.join(directory, d))
        if not p.startswith(tmp):
            out.append(p)
    return sorted(set(out))


# ---------------------------------------------------------------- cache

CACHE_SCHEMA = 1


def _sha(path: str, memo: dict) -> str:
    h = memo.get(path)
    if h is None:
        try:
            h = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        except OSError:
            h = "missing"
        memo[path] = h
    return h


def _ident(s_cmds, asm_offsets, c_cmd, roots, root_dir) -> str:
    from scopecheck import __version__

    return hashlib.sha256(json.dumps([CACHE_SCHEMA, __version__, [[c.file, list(c.arguments)] for c in s_cmds],
                                      str(asm_offsets), [c_cmd.file, list(c_cmd.arguments)] if c_cmd else None,
                                      roots, root_dir, _code_hash()]).encode()).hexdigest()


def _code_hash() -> str:
    here = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for n in ("asm_pp.py", "clang_layout.py", "raw_access.py", "asm_offsets.py"):
        try:
            h.update((here / n).read_bytes())
        except OSError:
            pass
    return h.hexdigest()


def _key(ident: str, files: list[str]) -> str:
    memo: dict = {}
    h = hashlib.sha256(ident.encode())
    for f in files:
        h.update(f.encode() + b"\0" + _sha(f, memo).encode())
    return h.hexdigest()


def _cache_read(ident: str) -> Result | None:
    from scopecheck.paths import cache_dir

    d = cache_dir("asm")
    try:
        files = json.loads((d / f"{ident}.index.json").read_text())["files"]
        data = json.loads((d / f"{_key(ident, files)}.json").read_text())
        return Result(accesses=[_rec(FieldAccess, a) for a in data["accesses"]],
                      unanalysed=[_rec(Unanalysed, u) for u in data["unanalysed"]],
                      diagnostics=list(data["diagnostics"]), files=list(data["files"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _rec(cls, d: dict):
    from dataclasses import fields as dc_fields

    kw = {f.name: d[f.name] for f in dc_fields(cls) if f.name in d}
    if isinstance(kw.get("function"), list):
        kw["function"] = tuple(kw["function"])
    return cls(**kw)


def _cache_write(ident: str, res: Result, files: list[str]) -> None:
    from dataclasses import asdict

    from scopecheck.paths import atomic_write_text, cache_dir

    if any("failed" in x or "longer than" in x or "not found" in x for x in res.diagnostics):
        return  # a failed or interrupted preprocessor run is not cached
    d = cache_dir("asm")
    atomic_write_text(d / f"{ident}.index.json", json.dumps({"files": files}))
    atomic_write_text(d / f"{_key(ident, files)}.json",
                      json.dumps({"accesses": [asdict(a) for a in res.accesses],
                                  "unanalysed": [asdict(u) for u in res.unanalysed],
                                  "diagnostics": res.diagnostics, "files": res.files}))
